"""Local mode's session (jobs.train.LocalSession): what Ray Train's local mode lacks in 2.60, done with public APIs.
Checkpoints land in the run folder, the newest resumes a run, run.num_to_keep applies (no Ray cluster starts)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from jobs import train
from jobs.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def checkpoint(tmp_path: Path, epoch: int) -> object:
    import ray.train

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "export").mkdir(parents=True)
    (folder / "export" / "model.bin").write_text("weights")
    (folder / "meta.json").write_text(json.dumps({"epoch": epoch}))
    return ray.train.Checkpoint.from_directory(folder)


def test_reports_persist_in_the_run_folder_and_the_newest_whole_one_resumes(tmp_path):
    session = train.LocalSession("run-a", str(tmp_path / "runs"), keep=2)
    assert session.get_checkpoint() is None
    for name, epoch in [("epoch_0001", 1), ("epoch_0002_step_000005", 1), ("epoch_0002", 2)]:
        session.report({"epoch": epoch}, checkpoint(tmp_path, epoch), name)
    run = tmp_path / "runs" / "run-a"
    assert sorted(p.name for p in run.iterdir()) == ["epoch_0002", "epoch_0002_step_000005"]  # num_to_keep=2
    assert (run / "epoch_0002" / "export" / "model.bin").read_text() == "weights"
    (run / "final").mkdir()  # a copy cut short: no meta.json, not a checkpoint
    assert Path(session.get_checkpoint().path).name == "epoch_0002"
    session.report({"final": True}, checkpoint(tmp_path, 3), "final")
    assert Path(train.last_checkpoint(str(run)).path).name == "final"


@pytest.mark.parametrize(
    "names, newest",
    [
        (["epoch_0002", "epoch_0002_step_000010", "epoch_0001"], "epoch_0002"),  # step 10 of epoch 2 < its end
        (["epoch_0001", "epoch_0002_step_000010"], "epoch_0002_step_000010"),
        (["checkpoint_000009", "checkpoint_000010"], "checkpoint_000010"),  # a Tune trial's
        (["final", "epoch_0009"], "final"),
    ],
)
def test_checkpoint_order(names, newest):
    assert max(names, key=train.checkpoint_order) == newest
    assert train.checkpoint_order("tensorboard") is None


def test_a_local_mode_run_completes_and_a_second_call_resumes_from_its_final_checkpoint(tmp_path):
    cfg = load_config(
        ROOT / "configs/mlp.yaml",
        [f"run.storage_path={tmp_path}", "data.source=digits", "scaling.cpus_per_worker=1", "train.epochs=2"],
        smoke_test=True,
    )
    first, error = train.run_in_process(cfg, "run-a")
    assert error is None and Path(first.path).name == "final"
    assert (Path(first.path) / "export" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "run-a").iterdir() if train.checkpoint_order(p.name)) == [
        "epoch_0002",
        "final",
    ]  # epoch_0001 went: run.num_to_keep
    again, error = train.run_in_process(cfg, "run-a")  # same name: resumes from final, trains no epoch again
    assert error is None and again.path == first.path
    assert train.checkpoint_meta(again)["history"][-1]["epoch"] == 2
