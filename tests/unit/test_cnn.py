"""CNN workload on scikit-learn's 8x8 digits and random 28x28 images: shapes, pooling, learning, metrics."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from jobs import config as config_lib
from jobs.loop import eval_loader, seed_everything
from workloads import cnn
from workloads.data import Splits


def make_cfg(*overrides: str):
    return config_lib.load_config(None, ["workload=cnn", "data.source=digits", *overrides])


@pytest.fixture(scope="module")
def digits():
    cfg = make_cfg()
    return cfg, cnn.build_data(cfg)


def test_digits_data_is_images_with_a_channel(digits):
    _, splits = digits
    x, y = splits.train[0:5]
    assert x.shape == (5, 1, 8, 8) and y.dtype == torch.int64
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert abs(float(splits.train.tensors[0].mean())) < 1e-3  # standardised on the training split


@pytest.mark.parametrize("side, pools", [(8, 1), (28, 2)])
def test_pooling_adapts_to_the_image_size(side, pools):
    cfg = make_cfg()
    splits = Splits(
        train=None, val=None, test=None, labels=[str(i) for i in range(10)], info={"height": side, "width": side}
    )
    model = cnn.build_model(cfg, splits)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == pools  # 8x8 keeps 4x4 maps, 28x28 goes to 7x7
    assert model(torch.randn(3, 1, side, side)).shape == (3, 10)


def test_loss_falls_and_metrics_are_reported(digits):
    cfg, splits = digits
    seed_everything(0)
    model = cnn.build_model(cfg, splits)
    before = cnn.evaluate(model, eval_loader(splits, splits.val, 256), splits)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=True)
    model.train()
    for x, y in loader:
        loss = cnn.train_step(model, (x, y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = cnn.evaluate(model, eval_loader(splits, splits.val, 256), splits)
    assert set(after) == {"loss", "accuracy", "f1"}
    assert after["loss"] < 0.5 * before["loss"] and after["accuracy"] > 0.8  # one epoch; chance is 0.1


def test_one_cycle_state_survives_a_weights_only_checkpoint(digits):
    cfg, splits = digits
    model = cnn.build_model(cfg, splits)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    scheduler = cnn.build_scheduler(cfg, optimizer, steps_per_epoch=5)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    resumed = cnn.build_scheduler(cfg, torch.optim.AdamW(model.parameters(), lr=cfg.train.lr), steps_per_epoch=5)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))  # what a resumed run does
    assert resumed.get_last_lr() == scheduler.get_last_lr() and resumed.last_epoch == 7
