"""Test-only loop hooks (``run.hooks``, jobs/hooks.py): a worker that dies at a chosen point, and a floor under
each step's time. A test names them in its overrides, e.g.

    run.hooks=["tests.plugins.faults:FaultAfterEpoch?epoch=1"]

Ray workers import this module from the repo root, which tests put on PYTHONPATH (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import time

import torch

from jobs.hooks import Hook, log


class Fault(Hook):
    """Rank 1 (rank 0 when alone) dies with ``os._exit(1)`` at checkpoint-name ``position``, once: a worker group
    that resumed from a checkpoint never fires. It dies only once Train has committed the last checkpoint, so with
    ``failure.max_failures>=1`` the run must resume from there and redo the steps after it. In local mode (no Ray
    started: the process is the driver) it raises instead, the run fails."""

    position = ""

    def fire(self, loop) -> None:
        if loop.checkpoint is not None:
            return
        if loop.world > 1:
            torch.distributed.barrier()  # rank 0 has uploaded the checkpoint and queued its report
        if loop.rank != min(1, loop.world - 1):
            return
        import ray

        numbers = [int(n) for n in self.position.removeprefix("epoch_").split("_step_")]
        after = f"epoch {numbers[0]}" + (f" step {numbers[1]}" if len(numbers) > 1 else "")
        if not ray.is_initialized():
            log(f"fault injection: the loop fails after {after} (last checkpoint {loop.last_checkpoint})")
            raise RuntimeError(f"fault injection after {after}")
        wait_until_committed(loop.last_checkpoint)
        log(
            f"fault injection: rank {loop.rank} exits after {after} "
            f"({loop.steps_this_attempt} steps this attempt, last checkpoint {loop.last_checkpoint})"
        )
        os._exit(1)


class FaultAfterEpoch(Fault):
    """Dies right after epoch ``epoch``'s (1-based) report."""

    def __init__(self, epoch: int):
        self.position = f"epoch_{int(epoch):04d}"

    def on_epoch_end(self, loop, row) -> None:
        if row["epoch"] == int(self.position.removeprefix("epoch_")):
            self.fire(loop)


class FaultAtStep(Fault):
    """Dies after optimizer step ``step`` of epoch ``epoch`` (both 1-based), checkpointed or not."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step = int(epoch), int(step)
        self.position = f"epoch_{self.epoch:04d}_step_{self.step:06d}"

    def on_step_end(self, loop, so_far) -> None:
        if loop.epoch + 1 == self.epoch and so_far["step"] == self.step:
            self.fire(loop)


class PauseAfterEpoch(Hook):
    """Once epoch ``epoch``'s checkpoint is committed, rank 0 touches ``path`` and waits there for good: a test kills
    the run at a known point instead of racing its epochs. A run resumed past that epoch never pauses."""

    def __init__(self, epoch: int, path: str):
        self.epoch, self.path = int(epoch), path

    def on_epoch_end(self, loop, row) -> None:
        if row["epoch"] != self.epoch or loop.rank != 0:
            return
        wait_until_committed(loop.last_checkpoint)
        with open(self.path, "w") as f:
            f.write(str(loop.last_checkpoint))
        while True:
            time.sleep(1)


class StepDelay(Hook):
    """Sleeps ``seconds`` after each optimizer step: epochs long enough for a test to act between them, using no
    CPU meanwhile."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def on_step_end(self, loop, so_far) -> None:
        time.sleep(self.seconds)


class StopOnFile(Hook):
    """Ends the run after the first epoch that finds ``path`` on disk, as early stopping does: a test lets a run go
    only as long as it needs. Rank 0's view decides for every rank."""

    def __init__(self, path: str):
        self.path = path

    def on_evaluate(self, loop, row) -> None:
        flag = torch.tensor([int(os.path.exists(self.path))])
        if loop.dist:
            torch.distributed.broadcast(flag, 0)
        loop.stopped_early = loop.stopped_early or bool(flag.item())


def wait_until_committed(name: str | None, timeout_s: float = 300) -> None:
    """Until this run's ``checkpoint_manager_snapshot.json`` lists the checkpoint dir ``name``; without a Train
    storage context (an in-process sweep trial), two of Train's health-check polls."""
    deadline = time.monotonic() + timeout_s
    committed = name is None
    while not committed and (committed := checkpoint_committed(name)) is False:
        if time.monotonic() > deadline:
            return
        time.sleep(0.2)
    if committed is None:
        time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")) + 0.5)


def checkpoint_committed(name: str) -> bool | None:
    """True once the run's checkpoint snapshot lists ``name``; None when this process has no Train storage."""
    import ray.train

    try:
        storage = ray.train.get_context().get_storage()
        fs, run_dir = storage.storage_filesystem, storage.experiment_fs_path
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    try:
        with fs.open_input_stream(f"{run_dir}/checkpoint_manager_snapshot.json") as f:
            snapshot = json.loads(f.read())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return False
    names = {str(r.get("checkpoint_dir_name", "")) for r in snapshot.get("checkpoint_results", [])}
    return name in names


def hooks(*specs: str) -> str:
    """The ``run.hooks`` override that installs ``specs``."""
    return "run.hooks=" + json.dumps(list(specs))


def after_epoch(epoch: int) -> str:
    """The override that makes a run's worker die after epoch ``epoch``'s report."""
    return hooks(f"tests.plugins.faults:FaultAfterEpoch?epoch={epoch}")
