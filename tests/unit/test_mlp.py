"""The mlp workload without Ray: shapes, a loss that falls, metric keys, the data sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs import config as config_lib
from jobs.loop import eval_loader, make_optimizer, run_epoch
from workloads import mlp
from workloads.data import DataError, load_images


def cfg_for(**overrides):
    return config_lib.load_config(
        None, ["workload=mlp", "data.source=digits", *[f"{k}={v}" for k, v in overrides.items()]]
    )


def test_shapes_and_metric_keys():
    cfg = cfg_for()
    splits = mlp.build_data(cfg)
    model = mlp.build_model(cfg, splits)
    x, y = splits.train[:8]
    assert x.shape == (8, 64) and model(x).shape == (8, 10)
    metrics = mlp.evaluate(model, eval_loader(splits, splits.val, 64), splits)
    assert set(metrics) == {"loss", "accuracy", "f1"}
    assert len(splits.train) + len(splits.val) == 1797 - 1797 // 5  # digits minus the fixed test split


def test_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    cfg = cfg_for(**{"model.dropout": 0.0})
    splits = mlp.build_data(cfg)
    model = mlp.build_model(cfg, splits)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = splits.train[:32]
    losses = []
    for _ in range(30):
        loss = mlp.train_step(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_one_epoch_through_the_shared_loop_learns():
    torch.manual_seed(0)
    cfg = cfg_for(**{"train.batch_size": 64})
    splits = mlp.build_data(cfg)
    model = mlp.build_model(cfg, splits)
    before = mlp.evaluate(model, eval_loader(splits, splits.val, 256), splits)["accuracy"]
    loader = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=True)
    for _ in range(3):
        stats = run_epoch(model, loader, make_optimizer(cfg, model), mlp, cfg, torch.device("cpu"))
    after = mlp.evaluate(model, eval_loader(splits, splits.val, 256), splits)["accuracy"]
    assert stats["samples"] == len(splits.train) and after > max(0.8, before)


def test_split_is_seeded_and_disjoint():
    a, b = mlp.build_data(cfg_for()), mlp.build_data(cfg_for())
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    c = mlp.build_data(cfg_for(**{"data.seed": 1}))
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])


def test_npz_source_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, x_train=rng.integers(0, 255, (20, 5, 5), dtype=np.uint8), y_train=rng.integers(0, 3, 20))
    arrays, labels, _ = load_images(str(good))
    assert arrays["train"][0].shape == (20, 5, 5) and arrays["train"][0].max() <= 1.0 and labels == ["0", "1", "2"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((20, 5, 5)), y_train=np.zeros(19))
    with pytest.raises(DataError, match="20 images but y_train has 19 labels"):
        load_images(str(bad))
    with pytest.raises(DataError, match="not found"):
        load_images(str(tmp_path / "missing.npz"))


@pytest.mark.skipif(
    not __import__("workloads.data", fromlist=["x"]).fashion_mnist_available(),
    reason="Debian dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_the_debian_package():
    arrays, labels, fp = load_images("fashion_mnist")
    assert arrays["train"][0].shape == (60000, 28, 28) and arrays["test"][0].shape == (10000, 28, 28)
    assert np.bincount(arrays["train"][1]).tolist() == [6000] * 10 and len(labels) == 10 and len(fp) == 16
