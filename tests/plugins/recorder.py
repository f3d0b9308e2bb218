"""A test hook that records the loop's events in order (``run.hooks=["tests.plugins.recorder:Recorder"]``)."""

from __future__ import annotations

from types import SimpleNamespace

from jobs.hooks import Hook, PreemptionWatch

EVENTS: list[tuple] = []  # (event, epoch, detail), cleared by the test


class Recorder(Hook):
    def on_train_start(self, loop) -> None:
        EVENTS.append(("on_train_start", loop.epoch, None))

    def on_step_end(self, loop, so_far) -> None:
        EVENTS.append(("on_step_end", loop.epoch, so_far["step"]))

    def on_evaluate(self, loop, row) -> None:
        EVENTS.append(("on_evaluate", loop.epoch, row["epoch"]))

    def on_epoch_end(self, loop, row) -> None:
        EVENTS.append(("on_epoch_end", loop.epoch, loop.last_checkpoint))

    def on_train_end(self, loop) -> None:
        EVENTS.append(("on_train_end", loop.epoch, loop.steps_this_attempt))

    def on_final(self, loop, final, export_dir) -> None:
        EVENTS.append(("on_final", loop.epoch, export_dir.is_dir()))


class NoticeAtStep(PreemptionWatch):
    """The preemption watch, with a notice that arrives at optimizer step ``step`` of the first epoch."""

    def __init__(self, step: int):
        super().__init__(lambda: self.notice)
        self.step, self.notice = int(step), None

    def on_step_end(self, loop, so_far) -> None:
        self.notice = (
            SimpleNamespace(deadline_ms=None, preempted_node_ids=["node-a"]) if so_far["step"] == self.step else None
        )
        super().on_step_end(loop, so_far)
