"""The loop's hooks: everything optional it does besides training. A hook subclasses :class:`Hook`, overrides
the events it needs and gets the running :class:`jobs.loop.Loop`; ``run.hooks`` adds ``"module:Class?k=v"`` ones.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from urllib.parse import parse_qsl

import torch
import yaml

from jobs import config as config_lib
from jobs import tracking
from jobs.ray_compat import preemption_reader


def log(message: str) -> None:
    """Print from rank 0, past Ray Train's print patch (it would show every line twice)."""
    print(message, file=sys.__stdout__ or sys.stdout, flush=True)


class Hook:
    """The events of the loop, in the order they come; each does nothing unless overridden."""

    def on_train_start(self, loop) -> None: ...  # setup and restore are done
    def on_batch_end(self, loop, step: int, total: int, loss: float, samples: int) -> None: ...  # 1-based step
    def on_step_end(self, loop, so_far: dict) -> None: ...  # after each optimizer step but the epoch's last
    def on_evaluate(self, loop, row: dict) -> None: ...  # the epoch's row is in loop.history; its checkpoint is next
    def on_epoch_end(self, loop, row: dict) -> None: ...  # the epoch's checkpoint is reported
    def on_train_end(self, loop) -> None: ...  # the epochs are over; test, export and final report are next
    def on_final(self, loop, final: dict, export_dir) -> None: ...  # after the final report (export_dir goes after)
    def on_exception(self, loop, status: str) -> None: ...  # status: failed, or stopped_early (a scheduler's stop)


class Tracking(Hook):
    """Progress lines, TensorBoard, MLflow, W&B (jobs/tracking.py), on rank 0 only."""

    def __init__(self, cfg):
        self.tracker = tracking.Tracker(cfg, log)

    def on_train_start(self, loop) -> None:
        cfg = loop.cfg
        info = tracking.RunInfo(
            run_id=loop.session.run_name,
            workload=cfg.workload,
            storage_path=loop.session.storage_path,
            git_sha=os.environ.get("PERENNIAL_GIT_SHA", ""),
            data_fingerprint=loop.splits.fingerprint or "",
            metric=loop.metric,
            mode=loop.mode,
            epochs=cfg.train.epochs,
            world_size=loop.world,
            **loop.tags,  # sweep_id, trial_id, mlflow_parent_run_id (jobs.sweep)
        )
        # meta is the checkpoint's (resumed or finished run), else epoch 0 and no history
        self.tracker.start(info, config_lib.flatten(cfg), loop.meta["epoch"], history=loop.meta["history"])

    def on_batch_end(self, loop, step, total, loss, samples) -> None:
        self.tracker.on_step(loop.epoch, step, total or 0, loss, samples, loop.optimizer.param_groups[0]["lr"])

    def on_epoch_end(self, loop, row) -> None:
        self.tracker.on_epoch(row)  # after the report: an epoch a tracker shows has its checkpoint uploaded

    def on_final(self, loop, final, export_dir) -> None:
        self.tracker.on_test(final)
        self.tracker.finish("stopped_early" if loop.stopped_early else "completed", export_dir)

    def on_exception(self, loop, status) -> None:
        self.tracker.finish(status)


class StepCheckpoints(Hook):
    """``train.checkpoint_every_steps=N``: a mid-epoch checkpoint every N optimizer steps."""

    def __init__(self, every_steps: int):
        self.every_steps = every_steps

    def on_step_end(self, loop, so_far) -> None:
        if so_far["step"] % self.every_steps == 0:
            loop.save_step_checkpoint(so_far)


class EarlyStopping(Hook):
    """``train.patience=N``: stop once N epochs in a row bring no gain on the metric."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_evaluate(self, loop, row) -> None:
        loop.stopped_early = row["epoch"] - loop.best_epoch >= self.patience and row["epoch"] < loop.cfg.train.epochs

    def on_epoch_end(self, loop, row) -> None:
        if loop.stopped_early and loop.rank == 0:
            log(f"early stop: no {loop.metric} gain for {self.patience} epochs (best epoch {loop.best_epoch})")


class PreemptionWatch(Hook):
    """A checkpoint at the first step after a preemption notice, on every rank at once; records its cost per step."""

    def __init__(self, check):
        self.check, self.poll_s, self.handled = check, 0.0, False

    def on_step_end(self, loop, so_far) -> None:
        if self.handled:  # once per worker group: it ends at the deadline
            return
        t_poll = time.perf_counter()
        notice = self.check()
        self.poll_s += time.perf_counter() - t_poll
        if notice:
            self.handled = True
            name, took_s, saved_at = loop.save_step_checkpoint(so_far)
            deadline_ms = getattr(notice, "deadline_ms", None)
            left = f"{deadline_ms / 1000 - saved_at:.1f} s before the deadline" if deadline_ms else "no deadline given"
            nodes = ", ".join(getattr(notice, "preempted_node_ids", [])) or "another rank's node"
            if loop.rank == 0:
                log(f"preemption notice for {nodes}: checkpoint {name} written in {took_s:.2f} s, {left}")

    def on_train_end(self, loop) -> None:
        loop.last_attempt["preemption_watch_us_per_step"] = self.poll_s / max(loop.steps_this_attempt, 1) * 1e6


PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
PREEMPTION_CHECK_EVERY_S = 0.5  # with several workers: how often (in step time) the ranks agree on a notice


def preemption_watch(dist: bool, device: torch.device, read=None):
    """A per-step check for a preemption notice every rank sees at the same step; None when Train's watcher is off."""
    if os.environ.get(PREEMPTION_WATCHER, "1").strip().lower() in ("0", "false"):
        return None
    read = read or preemption_reader()  # bench/preemption_watch.py passes its own
    return AgreedNotice(read, device) if dist and read is not None else read


class AgreedNotice:
    """The ranks' agreement on a notice: an async all-reduce about every ``PREEMPTION_CHECK_EVERY_S`` (rank 0 sets
    the step interval in it), read at the next check."""

    def __init__(self, read, device: torch.device):
        self.read, self.device = read, device
        self.leader = torch.distributed.get_rank() == 0
        self.pending = None  # (work, buffer) of the all-reduce started at the previous check
        self.steps, self.left, self.t = 1, 1, time.perf_counter()  # the same on every rank: set from the all-reduce

    def __call__(self):
        self.left -= 1
        if self.left > 0:
            return None
        seen = False
        last, self.t = self.t, time.perf_counter()
        step_s = (self.t - last) / self.steps
        if self.pending is not None:
            work, buffer = self.pending
            work.wait()
            seen = buffer[0].item() > 0
            self.steps = max(1, int(buffer[1].item()))
        self.left = self.steps
        suggest = min(1000, max(1, int(PREEMPTION_CHECK_EVERY_S / max(step_s, 1e-6)))) if self.leader else 0
        buffer = torch.tensor([0.0 if self.read() is None else 1.0, float(suggest)], device=self.device)
        self.pending = torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.MAX, async_op=True), buffer
        return (self.read() or True) if seen else None


def built_in(cfg, rank: int, dist: bool, device: torch.device) -> list[Hook]:
    hooks: list[Hook] = [Tracking(cfg)] if rank == 0 else []  # progress and trackers: rank 0 only (docs/tracking.md)
    if (check := preemption_watch(dist, device)) is not None:  # None when Ray Train's watcher is off
        hooks.append(PreemptionWatch(check))
    if cfg.train.checkpoint_every_steps:
        hooks.append(StepCheckpoints(cfg.train.checkpoint_every_steps))
    if cfg.train.patience:
        hooks.append(EarlyStopping(cfg.train.patience))
    return hooks


def from_spec(spec: str) -> Hook:
    """A hook from a ``run.hooks`` entry ``"module:Class?key=value&..."``."""
    path, _, query = spec.partition("?")
    module_name, _, name = path.partition(":")
    fix = "write run.hooks entries as 'package.module:Class?key=value'"
    if not module_name or not name:
        raise config_lib.ConfigError(f"run.hooks entry '{spec}' names no class — {fix}")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise config_lib.ConfigError(f"run.hooks entry '{spec}' cannot be imported ({e}) — {fix}") from None
    if not (isinstance(cls, type) and issubclass(cls, Hook)):
        raise config_lib.ConfigError(f"run.hooks entry '{spec}' is not a jobs.hooks.Hook subclass — subclass it")
    kwargs = {key: yaml.safe_load(value) for key, value in parse_qsl(query, keep_blank_values=True)}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise config_lib.ConfigError(f"run.hooks entry '{spec}': {e} — {fix}") from None
