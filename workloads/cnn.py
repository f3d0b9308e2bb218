"""CNN classifier: two conv blocks (conv + BatchNorm + ReLU, max-pool, dropout) and a small dense head.

    python -m jobs.train --config configs/cnn.yaml [--smoke-test] [key=value ...]

Data as in mlp. A block max-pools only while the maps are at least ``model.min_pool_side`` wide, so 8x8 digits
keep 4x4 maps.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from workloads import Section, common, mlp
from workloads.data import Splits
from workloads.mlp import Data, evaluate, train_step, validate  # noqa: F401 (mlp's data, checks, step and metrics)


# ----------------------------------------------------------------------------- config
class Model(Section):
    channels: list[int] = Field([32, 64], min_length=1)  # one conv block per entry
    hidden: int = Field(128, ge=1)  # dense layer before the classifier
    dropout: float = Field(0.25, ge=0, lt=1)
    min_pool_side: int = Field(8, ge=1)  # a block halves the maps only while they are at least this wide


class Train(common.Train):  # the shared knobs (workloads/common.py); only what differs here
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3  # the one-cycle peak
    weight_decay: float = 1e-4
    patience: int = 3  # stop after 3 epochs without a val_accuracy gain; the best epoch is restored


class Config(Section):
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()


METRIC, MODE = "val_accuracy", "max"
SEARCH_SPACE = {
    "train.lr": {"loguniform": [5e-4, 1e-2]},
    "model.dropout": {"uniform": [0.0, 0.5]},
    "model.hidden": {"choice": [64, 128, 256]},
}
SMOKE_TEST = {"data.max_train_samples": 2000, "train.epochs": 2, "model.channels": [8, 16], "model.hidden": 32}


# ----------------------------------------------------------------------------- [1] data
def build_data(cfg) -> Splits:
    splits = mlp.build_data(cfg)  # mlp's flat rows, standardised by the training split's mean and std
    height, width = splits.info["shape"]
    for split in ("train", "val", "test"):
        if (images := getattr(splits, split)) is not None:
            x, y = images.tensors
            setattr(splits, split, TensorDataset(x.view(-1, 1, height, width), y))  # (N, 1, H, W)
    splits.info |= {"height": height, "width": width}
    return splits


# ----------------------------------------------------------------------------- [2] model
def build_model(cfg, splits: Splits) -> nn.Module:
    m = cfg.model
    layers, channels, height, width = [], 1, splits.info["height"], splits.info["width"]
    for out in m.channels:
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        if min(height, width) >= m.min_pool_side:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        layers.append(nn.Dropout2d(m.dropout / 2))  # lighter on feature maps than on the dense layer
        channels = out
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(channels * height * width, m.hidden),
        nn.ReLU(),
        nn.Dropout(m.dropout),
        nn.Linear(m.hidden, len(splits.labels)),
    )


def build_scheduler(cfg, optimizer, steps_per_epoch: int):
    steps = cfg.train.epochs * -(-steps_per_epoch // cfg.train.grad_accum_steps)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.train.lr, total_steps=max(steps, 1))
