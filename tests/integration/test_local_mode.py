"""Local mode (one worker, no cluster: the loop runs in the ``jobs.train`` process) against the Train worker
group on an embedded cluster: the same failure policy, resume and store rows on both paths."""

from __future__ import annotations

import pytest
from conftest import base_env, run_job, run_jobs_at_once

from jobs.store import Store
from tests.plugins import faults

TINY = ["scaling.cpus_per_worker=1", "train.epochs=3"]
PATHS = {"never": "in a Ray Train worker group", "auto": "in this process: Ray Train local mode"}


def args(store_dir, runs_dir, local_mode: str, *extra: str) -> list[str]:
    return (
        ["jobs.train", "--config", "configs/mlp.yaml", "--smoke-test", "--store", str(store_dir), *TINY]
        + [f"run.storage_path={runs_dir}"]
        + [f"scaling.local_mode={local_mode}", *extra]
    )


def train(store_dir, runs_dir, local_mode: str, *extra: str, **env: str):
    return run_job(args(store_dir, runs_dir, local_mode, *extra), base_env(**env), timeout=400)


def test_a_failed_attempt_resumes_and_both_paths_record_the_same_run(tmp_path):
    """A loop that dies after epoch 1 with failure.max_failures=1: each path restarts it from the epoch 1
    checkpoint, and the store gets one completed run with epochs 1..3 once each, with the same columns."""
    store_dir = tmp_path / "store"
    fault = faults.after_epoch(1)
    both = [(args(store_dir, tmp_path / "runs", mode, "failure.max_failures=1", fault), base_env()) for mode in PATHS]
    for res, says in zip(run_jobs_at_once(*both, timeout=400), PATHS.values()):  # the two paths at once, one store
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        assert says in out, out[-3000:]  # the run says which path it took
        assert "resumed from the epoch 1 checkpoint" in out, out[-3000:]  # a restart happened, from the checkpoint
    store = Store(str(store_dir))
    runs = store.df("runs").set_index("scaling.local_mode")
    assert set(runs.index) == {"never", "auto"} and set(runs["status"]) == {"completed"}
    for mode in PATHS:
        assert sorted(store.history(runs.loc[mode, "run_id"])["epoch"]) == [1, 2, 3]  # none lost or doubled
    filled = {mode: {k for k, v in runs.loc[mode].items() if v is not None and v == v} for mode in PATHS}
    assert filled["never"] == filled["auto"], filled["never"] ^ filled["auto"]
    assert (
        runs.loc["never", "worker_node_ids"] and not runs.loc["auto", "worker_node_ids"]
    )  # a Ray node, and none at all


@pytest.mark.parametrize("local_mode", ["auto"])
def test_out_of_retries_is_a_failed_run_with_its_error(tmp_path, local_mode):
    """max_failures=0: the first failure ends the run: exit 1, a failed row naming the error, epoch 1 kept."""
    res = train(tmp_path / "store", tmp_path / "runs", local_mode, faults.after_epoch(1))
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    store = Store(str(tmp_path / "store"))
    run = store.df("runs").iloc[0]
    assert run["status"] == "failed" and "fault injection after epoch 1" in run["error"], run.to_dict()
    assert sorted(store.history(run["run_id"])["epoch"]) == [1]
