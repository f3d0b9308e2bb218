"""LoRA via peft (``model.lora.enabled=true``) for the Hugging Face workloads: wrap in build_model, merge in export."""

from __future__ import annotations

import copy
import sys
import warnings

import torch
from pydantic import Field

from jobs.errors import DataError
from workloads import Section


class Lora(Section):
    enabled: bool = False  # train low-rank adapters (+ the task head) instead of every weight
    r: int = Field(8, ge=1)  # adapter rank: the sweepable knob (trainable params grow linearly with it)
    alpha: int = Field(16, gt=0)  # adapter scale = alpha / r
    dropout: float = Field(0.1, ge=0, lt=1)  # on the adapter input
    target_modules: list[str] = Field(["query", "value"], min_length=1)  # BERT attention projections (LoRA paper)


TASK_TYPES = {"token": "TOKEN_CLS", "sequence": "SEQ_CLS", "causal": "CAUSAL_LM"}  # peft task types


def wrap(model: torch.nn.Module, lora: Lora, task: str) -> torch.nn.Module:
    """``model`` with LoRA adapters when ``lora.enabled`` (else unchanged). ``task``: token | sequence | causal."""
    if not lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if missing := [m for m in lora.target_modules if m not in names]:
        raise DataError(
            f"model.lora.target_modules {missing} match no layer of this model — "
            "use names such as query, key, value, dense"
        )
    config = LoraConfig(
        task_type=TASK_TYPES[task],
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
    )
    with warnings.catch_warnings():  # peft 0.21 calls a transformers-5 deprecated alias; nothing for us to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    if "peft" not in sys.modules:  # never imported: no model here can be a PeftModel (and peft's import is slow)
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapters folded in (a copy: ``model`` keeps its adapters)."""
    return copy.deepcopy(model).merge_and_unload() if is_lora(model) else model


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())
