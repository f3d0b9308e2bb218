"""``jobs.loop.run`` through a plain Session (no Ray): the setup steps, epochs and finish call the hooks in order,
report the same checkpoints a Train run gets, and resume from one; ``run.hooks`` specs that cannot work are
one-line ConfigErrors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from jobs import config as config_lib
from jobs import hooks, loop
from tests.plugins import faults, recorder


class FolderSession:
    """A Session of rank 0 of 1 that copies each reported checkpoint into ``root/<name>``."""

    world_rank, world_size, run_name = 0, 1, "unit-run"
    device = torch.device("cpu")

    def __init__(self, root: Path, resume=None):
        self.storage_path, self.resume, self.reports = str(root), resume, []

    def get_checkpoint(self):
        return self.resume

    def report(self, metrics, checkpoint=None, checkpoint_dir_name=None) -> None:
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, Path(self.storage_path, checkpoint_dir_name))
        self.reports.append((checkpoint_dir_name, metrics))

    def prepare_model(self, model):
        return model

    def prepare_data_loader(self, loader, auto_transfer):
        return loader


def config(*overrides: str):
    base = ["workload=mlp", "data.max_train_samples=256", "train.batch_size=64", "train.epochs=2"]
    base += ["model.hidden1=16", "model.hidden2=8", "tracking.tensorboard=false", "log.every_s=0"]
    return config_lib.load_config(None, [*base, faults.hooks("tests.plugins.recorder:Recorder"), *overrides])


def test_hooks_see_every_event_in_order_and_the_checkpoints_are_a_train_runs(tmp_path):
    recorder.EVENTS.clear()
    session = FolderSession(tmp_path)
    loop.run(config("train.checkpoint_every_steps=2"), session)
    names = [name for name, _ in session.reports]
    steps = 4  # 256 samples in batches of 64 per epoch
    assert names == ["epoch_0001_step_000002", "epoch_0001", "epoch_0002_step_000002", "epoch_0002", "final"]
    events = [e for e, _, _ in recorder.EVENTS]
    per_epoch = ["on_step_end"] * (steps - 1) + ["on_evaluate", "on_epoch_end"]
    assert events == ["on_train_start", *per_epoch, *per_epoch, "on_train_end", "on_final"]
    assert recorder.EVENTS[-2] == ("on_train_end", 1, 2 * steps) and recorder.EVENTS[-1][2] is True
    final = json.loads((tmp_path / "final" / loop.META).read_text())
    assert final["finished"] and [h["epoch"] for h in final["history"]] == [1, 2]
    assert final["last_attempt"] == {"resumed_from": "", "steps": 2 * steps, "preemption_watch_us_per_step": None}
    assert set(loop.load_state(tmp_path / "epoch_0001")) >= {"model", "optimizer"}


def test_a_run_resumed_from_its_epoch_checkpoint_trains_only_the_epochs_after_it(tmp_path):
    import ray.train

    first = FolderSession(tmp_path / "first")
    loop.run(config(), first)
    resumed = FolderSession(tmp_path / "second", resume=ray.train.Checkpoint(str(tmp_path / "first" / "epoch_0001")))
    recorder.EVENTS.clear()
    loop.run(config(), resumed)
    assert [name for name, _ in resumed.reports] == ["epoch_0002", "final"]
    final = json.loads((tmp_path / "second" / "final" / loop.META).read_text())
    assert final["last_attempt"]["resumed_from"] == "epoch 1" and [h["epoch"] for h in final["history"]] == [1, 2]
    first_final = json.loads((tmp_path / "first" / "final" / loop.META).read_text())
    assert final["history"][0] == first_final["history"][0]  # epoch 1 as the checkpoint had it, not trained again


@pytest.mark.parametrize("every_steps", [0, 3])
def test_a_preemption_notice_gets_one_checkpoint_at_that_step(tmp_path, capfd, every_steps):
    session = FolderSession(tmp_path)
    notice = faults.hooks("tests.plugins.recorder:Recorder", "tests.plugins.recorder:NoticeAtStep?step=3")
    loop.run(config(notice, f"train.checkpoint_every_steps={every_steps}"), session)
    names = [name for name, _ in session.reports]
    assert names[:2] == ["epoch_0001_step_000003", "epoch_0001"], names  # one checkpoint, even when both ask
    assert "preemption notice for node-a: checkpoint epoch_0001_step_000003 written in" in capfd.readouterr().out
    final = json.loads((tmp_path / "final" / loop.META).read_text())
    assert final["last_attempt"]["preemption_watch_us_per_step"] >= 0


@pytest.mark.parametrize(
    "spec, says",
    [
        ("tests.plugins.faults", "names no class"),
        ("tests.plugins.nothing_here:Hook", "cannot be imported"),
        ("jobs.loop:Loop", "is not a jobs.hooks.Hook subclass"),
        ("tests.plugins.faults:StepDelay?second=1", "unexpected keyword argument 'second'"),
    ],
)
def test_a_hook_spec_that_cannot_work_is_a_one_line_config_error(spec, says):
    with pytest.raises(config_lib.ConfigError, match=says) as e:
        hooks.from_spec(spec)
    assert "\n" not in str(e.value) and f"run.hooks entry '{spec}'" in str(e.value)


def test_hook_arguments_are_read_as_yaml():
    assert hooks.from_spec("tests.plugins.faults:FaultAtStep?epoch=2&step=8").position == "epoch_0002_step_000008"
    assert hooks.from_spec("tests.plugins.faults:StepDelay?seconds=0.25").seconds == 0.25
