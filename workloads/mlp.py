"""MLP classifier: a 3-layer perceptron (two ReLU hidden layers) on flattened images.

    python -m jobs.train --config configs/mlp.yaml [--smoke-test] [key=value ...]

Data: Fashion-MNIST (Debian ``dataset-fashion-mnist``; ``data.source=auto`` falls back to scikit-learn digits),
or your own IDX / NPZ / Parquet images.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from workloads import Section, common
from workloads.data import Splits, load_images, split_train_val, subsample


# ----------------------------------------------------------------------------- config
class Data(Section):
    source: str = "auto"  # auto | fashion_mnist | digits | path.npz | path.parquet | IDX prefix DIR/train
    val_fraction: float = Field(0.1, ge=0, lt=1)  # share of the training set held out for validation
    max_train_samples: int = Field(0, ge=0)  # 0 = all; a quick run caps this
    seed: int = 0  # the train/val split


class Model(Section):
    hidden1: int = Field(512, ge=1)
    hidden2: int = Field(256, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)


class Train(common.Train):  # the shared knobs (workloads/common.py); only what differs here
    epochs: int = 12
    batch_size: int = 128
    weight_decay: float = 1e-4


class Config(Section):
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()


METRIC, MODE = "val_accuracy", "max"
SEARCH_SPACE = {
    "train.lr": {"loguniform": [1e-4, 3e-3]},
    "model.hidden1": {"choice": [128, 256, 512]},
    "model.dropout": {"uniform": [0.0, 0.4]},
}
SMOKE_TEST = {"data.max_train_samples": 2000, "train.epochs": 2, "model.hidden1": 64, "model.hidden2": 32}


# ----------------------------------------------------------------------------- [1] data
def validate(cfg) -> None:
    load_images(cfg.data.source)


def build_data(cfg) -> Splits:
    arrays, labels, fp = load_images(cfg.data.source)
    x, y = arrays["train"]
    train_idx, val_idx = split_train_val(len(y), cfg.data.val_fraction, cfg.data.seed, y)
    train_idx = subsample(train_idx, cfg.data.max_train_samples, cfg.data.seed)
    flat = x.reshape(len(x), -1)
    mean, std = float(flat[train_idx].mean()), float(flat[train_idx].std()) or 1.0

    def dataset(xs: np.ndarray, ys: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy((xs.reshape(len(xs), -1) - mean) / std), torch.from_numpy(ys))

    return Splits(
        train=dataset(x[train_idx], y[train_idx]),
        val=dataset(x[val_idx], y[val_idx]),
        test=dataset(*arrays["test"]) if "test" in arrays else None,
        labels=labels,
        fingerprint=fp,
        info={"in_features": int(flat.shape[1]), "shape": list(x.shape[1:]), "mean": mean, "std": std},
    )


# ----------------------------------------------------------------------------- [2] model
def build_model(cfg, splits: Splits) -> nn.Module:
    m = cfg.model
    return nn.Sequential(
        nn.Linear(splits.info["in_features"], m.hidden1),
        nn.ReLU(),
        nn.Dropout(m.dropout),
        nn.Linear(m.hidden1, m.hidden2),
        nn.ReLU(),
        nn.Dropout(m.dropout),
        nn.Linear(m.hidden2, len(splits.labels)),
    )


# ----------------------------------------------------------------------------- [3] step / eval
def train_step(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@torch.no_grad()
def evaluate(model: nn.Module, loader, splits: Splits) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    model.eval()
    pairs = [(model(x).float().cpu(), y.cpu()) for x, y in loader]
    logits, gold = (torch.cat(column) for column in zip(*pairs))
    p, g = logits.argmax(-1).numpy(), gold.numpy()
    return {
        "loss": nn.functional.cross_entropy(logits, gold).item(),
        "accuracy": float(accuracy_score(g, p)),
        "f1": float(f1_score(g, p, average="macro", zero_division=0)),
    }
