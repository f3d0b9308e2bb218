"""A test hook that appends each rank's parameter bytes and per-step losses to a JSONL file
(``run.hooks=["tests.plugins.losses:StepLosses?path=/tmp/x.jsonl"]``): what FSDP and DDP runs are compared on."""

from __future__ import annotations

import json

from jobs import sharding
from jobs.hooks import Hook


class StepLosses(Hook):
    def __init__(self, path: str):
        self.path = path

    def write(self, **row) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_start(self, loop) -> None:
        self.write(rank=loop.rank, param_bytes=sharding.local_bytes(loop.model), resumed=loop.checkpoint is not None)

    def on_batch_end(self, loop, step, total, loss, samples) -> None:
        self.write(rank=loop.rank, epoch=loop.epoch, step=step, loss=loss)
