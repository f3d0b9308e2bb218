"""Mid-epoch checkpoints (``train.checkpoint_every_steps``) through ``jobs.loop.run_epoch`` itself, no Ray.

An epoch stopped after optimizer step k and resumed from what ``after_step`` handed out (weights, optimizer,
RNG states, the epoch's sums) must end where the uninterrupted epoch ends: same batch order from
``seed_epoch_order``, the first batches skipped, the same dropout draws, the same train_loss. The end-to-end
run on Ray (a worker killed after the checkpoint) is tests/integration/test_mid_epoch_checkpoints.py.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from jobs import config as config_lib
from jobs import loop
from workloads import mlp

CPU = torch.device("cpu")


def setup(overrides=()):
    """A real mlp config (dropout on: the RNG must be restored too), a seeded shuffled loader, AdamW."""
    cfg = config_lib.load_config(
        None, ["workload=mlp", "model.hidden1=16", "model.hidden2=8", "model.dropout=0.3", *overrides]
    )
    splits = SimpleNamespace(info={"in_features": 20}, labels=["a", "b", "c"])
    loop.seed_everything(cfg.train.seed)
    model = mlp.build_model(cfg, splits)
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(40 * 4, 20, generator=g), torch.randint(0, 3, (40 * 4,), generator=g))
    loader = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(cfg.train.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return cfg, model, loader, optimizer


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def epoch(cfg, model, loader, optimizer, n: int, **kw) -> dict:
    loop.seed_epoch_order(loader, n, cfg.train.seed)
    return loop.run_epoch(model, loader, optimizer, mlp, cfg, CPU, **kw)


@pytest.mark.parametrize("accum", [1, 3])
def test_an_epoch_resumed_after_step_k_ends_as_the_uninterrupted_one(accum):
    overrides = [f"train.grad_accum_steps={accum}"]
    cfg, model, loader, optimizer = setup(overrides)
    epoch(cfg, model, loader, optimizer, 0)  # the epoch before: the order must depend on the epoch number
    after_first = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), loop.rng_state())

    # the uninterrupted epoch 1, with a snapshot at optimizer step 5 (what the loop's checkpoint saves)
    saved = {}

    def after_step(so_far):
        if so_far["step"] == 5:
            saved.update(
                partial=dict(so_far) | {"rng": loop.rng_state()},
                model=copy.deepcopy(model.state_dict()),
                optimizer=copy.deepcopy(optimizer.state_dict()),
            )

    full = epoch(cfg, model, loader, optimizer, 1, after_step=after_step)
    assert saved["partial"]["batches"] == 5 * accum

    # a fresh process: same start, then the state of the snapshot, and the epoch resumed from it
    cfg2, model2, loader2, optimizer2 = setup(overrides)
    loop.set_rng_state(after_first[2])  # any state: the resume must set its own
    torch.rand(3)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    steps = []
    optimizer2.register_step_post_hook(lambda *_: steps.append(1))
    resumed = epoch(cfg2, model2, loader2, optimizer2, 1, partial=saved["partial"])

    total_steps = -(-len(loader) // accum)
    assert len(steps) == total_steps - 5  # only the steps after the checkpoint are trained again
    assert torch.equal(flat(model2), flat(model))  # bit-identical weights: same batches, same dropout masks
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-12)
    assert resumed["samples"] == full["samples"] == len(loader.dataset)


def test_the_batch_order_is_a_function_of_seed_and_epoch():
    cfg, _, loader, _ = setup()

    def order(n):
        loop.seed_epoch_order(loader, n, cfg.train.seed)
        return torch.cat([x.flatten() for x, _ in loader])

    first, second = order(0), order(1)
    assert not torch.equal(first, second)  # a new shuffle each epoch
    assert torch.equal(order(1), second) and torch.equal(order(0), first)  # and the same one again on resume


def test_checkpoint_every_steps_must_not_be_negative():
    with pytest.raises(config_lib.ConfigError, match=r"train.checkpoint_every_steps must be >= 0"):
        config_lib.load_config(None, ["workload=mlp", "train.checkpoint_every_steps=-1"])
