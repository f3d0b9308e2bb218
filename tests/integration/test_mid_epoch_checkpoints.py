"""``train.checkpoint_every_steps``, end to end: a 2-worker ``jobs.train`` run on an embedded Ray cluster whose
rank 1 dies after step 8 of epoch 2 (the test hook ``tests.plugins.faults:FaultAtStep``), three steps past
its last mid-epoch checkpoint (step 5), with ``failure.max_failures=1``. The run must resume mid-epoch, redo
only those three steps, and end with the same epochs rows and test score as the same run left alone; the
store gets one row per epoch (never a half-epoch one). The mechanism itself (batch order, RNG, sums) is
unit-tested without Ray in tests/unit/test_mid_epoch_resume.py.
"""

from __future__ import annotations

import re

import pytest
from conftest import base_env, run_jobs_at_once

from jobs.store import Store
from tests.plugins import faults

EVERY, FAULT_STEP = 5, 8
RUN = [
    "train.batch_size=64",
    "scaling.num_workers=2",
    "scaling.cpus_per_worker=1",
    "failure.max_failures=1",
    f"train.checkpoint_every_steps={EVERY}",
]
STEPS = re.compile(r"(\d+) optimizer steps trained by this worker group")


def train_args(tmp_path, name: str, *extra: str) -> list[str]:
    """``jobs.train`` on an embedded cluster of its own (no RAY_ADDRESS)."""
    store = ["--store", str(tmp_path / name / "store")]
    return [
        "jobs.train",
        "--config",
        "configs/mlp.yaml",
        "--smoke-test",
        *store,
        *RUN,
        f"run.storage_path={tmp_path / name / 'runs'}",
        *extra,
    ]


def test_a_run_killed_mid_epoch_resumes_at_its_last_step_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    fault = faults.hooks(f"tests.plugins.faults:FaultAtStep?epoch=2&step={FAULT_STEP}")
    runs = run_jobs_at_once(  # the run left alone and the faulted one at once, each on its own cluster
        (train_args(tmp_path, "plain"), base_env(RAY_DEDUP_LOGS="0")),
        (train_args(tmp_path, "faulted", fault), base_env(RAY_DEDUP_LOGS="0")),
        timeout=900,
    )
    for res in runs:
        assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    log_plain, log = (res.stdout + res.stderr for res in runs)
    plain, faulted = Store(tmp_path / "plain" / "store"), Store(tmp_path / "faulted" / "store")

    # checkpoints every 5 optimizer steps within each epoch, besides the epoch's own
    assert f"checkpoint epoch_0001_step_{EVERY:06d}" in log_plain, log_plain[-3000:]
    total_steps = int(STEPS.findall(log_plain)[-1])

    # rank 1 died 3 steps past the step-5 checkpoint; the new worker group started from that checkpoint
    died = re.search(r"fault injection: rank 1 exits after epoch 2 step 8 \((\d+) steps this attempt", log)
    assert died, log[-4000:]
    assert "resumed from the epoch 2 step 5 checkpoint" in log, log[-4000:]
    redone = int(died.group(1)) + int(STEPS.findall(log)[-1]) - total_steps
    assert redone == FAULT_STEP - EVERY  # only the steps after the checkpoint were trained twice
    print(f"\nsteps per run {total_steps}, redone after the fault {redone}")

    # the same history and model as the run left alone: one row per epoch, same loss, same scores
    run, run_plain = faulted.df("runs").iloc[0], plain.df("runs").iloc[0]
    assert run["status"] == "completed" and len(faulted.df("runs")) == 1
    rows, rows_plain = faulted.history(run["run_id"]), plain.history(run_plain["run_id"])
    assert list(rows["epoch"]) == list(rows_plain["epoch"]) == [1, 2]  # no half-epoch row, none lost or doubled
    for col in ("train_loss", "val_accuracy"):
        assert list(rows[col]) == pytest.approx(list(rows_plain[col]), rel=1e-6), col
    assert rows["samples_per_s"].notna().all()
    assert run["test_accuracy"] == pytest.approx(run_plain["test_accuracy"], abs=1e-9)
