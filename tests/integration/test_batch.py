"""`python -m jobs.submit batch` on the session's one-node cluster (2 job slots on its head): Ray admits at most that
many drivers at once, the batch's watcher job resubmits a job whose driver was killed with --resume, a job that
fails on its own is not retried, and a bad entry stops the whole batch before anything is submitted."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import psutil
from conftest import one_error_line, run_job

from jobs.cluster_local import LOCAL_JOB_SLOTS
from jobs.store import Store, StoreError

FAILS = 'run.hooks=["tests.plugins.faults:FaultAfterEpoch?epoch=1"]'  # a worker exits 1: the job's own failure
ONE_CPU = "scaling.cpus_per_worker=1"  # two jobs' workers side by side on the 2-CPU cluster
SLOW = 'run.hooks=["tests.plugins.faults:StepDelay?seconds=0.1"]'


def batch_cli(ray_cluster, *args: str, timeout: float = 600):
    return run_job(["jobs.submit", *args], ray_cluster.env | {"RAY_ADDRESS": ray_cluster.dashboard}, timeout=timeout)


class Drivers(threading.Thread):
    """Samples the cluster's `python -m jobs.train` drivers twice a second: the most at once, and their pids."""

    def __init__(self, cluster_proc: psutil.Process):
        super().__init__(daemon=True)
        self.cluster, self.most, self.running, self.seen = cluster_proc, 0, True, {}

    def drivers(self) -> list[psutil.Process]:
        found = []
        for p in self.cluster.children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if cmd and Path(cmd[0]).name.startswith("python") and cmd[1:3] == ["-m", "jobs.train"]:
                found.append(p)
        return found

    def run(self):
        while self.running:
            now = self.drivers()
            self.most = max(self.most, len(now))
            self.seen.update({p.pid: p for p in now})
            time.sleep(0.5)


def registered(runs: Path, checkpoint: str) -> bool:
    """Whether a run under ``runs`` has Ray Train's record of ``checkpoint`` (the folder it resumes from)."""
    for snapshot in runs.glob("*/checkpoint_manager_snapshot.json"):
        try:
            if checkpoint in snapshot.read_text():
                return True
        except OSError:  # being replaced right now
            pass
    return False


def test_batch_caps_drivers_retries_a_lost_driver_and_not_a_failed_job(ray_cluster, store_dir, tmp_path):
    runs, slow_runs = tmp_path / "runs", tmp_path / "slow"
    spec = tmp_path / "batch.yaml"
    spec.write_text(
        "smoke_test: true\njobs:\n"
        + f"  - {{config: configs/mlp.yaml, overrides: [run.storage_path={runs}, {ONE_CPU}]}}\n"
        + f"  - {{config: configs/mlp.yaml, overrides: [run.storage_path={runs}, {ONE_CPU}, '{FAILS}']}}\n"
        + f"  - {{config: configs/mlp.yaml, overrides: [run.storage_path={slow_runs}, {ONE_CPU}, train.epochs=3, '{SLOW}']}}\n"
    )
    watch = Drivers(ray_cluster.proc)
    watch.start()
    res = batch_cli(ray_cluster, "batch", str(spec), "--retries", "1", "--store", str(store_dir))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    batch_id = re.search(r"^batch (batch-[0-9a-f]{8}): 3 jobs submitted", res.stdout, re.M).group(1)

    # kill the slow job's driver once Ray Train has registered its first checkpoint (its manager's snapshot names
    # it; files on disk before that are not what a restarted trainer resumes from): a lost driver, as with its node
    deadline = time.time() + 600
    while not registered(slow_runs, "epoch_0001"):
        assert time.time() < deadline, "the slow job never checkpointed"
        time.sleep(0.3)
    victim = next(p for p in watch.drivers() if str(slow_runs) in " ".join(p.cmdline()))
    victim.send_signal(signal.SIGKILL)

    def finals() -> int:  # rows the watcher records as jobs end; read in this process, not a CLI per poll
        try:
            return sum(
                s != "submitted" for s in Store(store_dir).read("jobs", columns=["status"])["status"].to_pylist()
            )
        except StoreError:  # a file compacted away between the listing and the read
            return 0

    while finals() < 4 and time.time() < deadline:  # 3 jobs and the killed one's retry
        time.sleep(1)
    while True:  # the watcher job ends once every job has ended
        status = batch_cli(ray_cluster, "status", batch_id)
        assert status.returncode == 0, status.stderr[-2000:]
        if re.search(r"its watcher (succeeded|failed)", status.stdout) or time.time() > deadline:
            break
        time.sleep(1)
    watch.running = False
    assert re.search(r"^batch \S+: 2 succeeded, 1 failed \(4 attempts\); its watcher succeeded", status.stdout, re.M), (
        status.stdout
    )
    assert 0 < watch.most <= LOCAL_JOB_SLOTS, watch.most

    jobs = Store(store_dir).df("jobs")
    assert set(jobs["batch_id"]) == {batch_id}
    finals = jobs[jobs["status"] != "submitted"]
    assert jobs.groupby("submission_id").size().eq(2).all() and len(finals) == 4  # one submitted + one final row each
    retried = finals[finals["attempt"] == 2]
    assert len(retried) == 1 and retried.iloc[0]["status"] == "succeeded", finals[["submission_id", "status"]]
    first = finals[finals["submission_id"] == retried.iloc[0]["submission_id"].rsplit("-r", 1)[0]].iloc[0]
    assert first["status"] == "failed" and re.search(r"exit code (-9|137)\b", first["message"]), first["message"]
    assert "--resume" in retried.iloc[0]["entrypoint"]
    failed = finals[(finals["status"] == "failed") & (finals["attempt"] == 1)]
    assert len(failed) == 2  # the killed driver's first attempt, and the job that failed on its own, never retried

    runs_rows = Store(store_dir).df("runs")
    assert runs_rows["run_id"].is_unique and len(runs_rows) == 3  # the resumed run recorded once
    resumed = runs_rows[runs_rows["job_id"] == retried.iloc[0]["submission_id"]].iloc[0]
    assert resumed["status"] == "completed" and resumed["epochs"] == 3
    logs = batch_cli(ray_cluster, "logs", retried.iloc[0]["submission_id"])
    assert "resumed from the epoch" in logs.stdout, logs.stdout[-3000:]


def test_bad_batch_entry_exits_2_and_submits_nothing(ray_cluster, store_dir, tmp_path):
    spec = tmp_path / "batch.yaml"
    spec.write_text("jobs:\n  - {config: configs/mlp.yaml}\n  - {config: configs/mlp.yaml, overrides: [train.lrr=1]}\n")
    res = batch_cli(ray_cluster, "batch", str(spec), "--store", str(store_dir))
    line = one_error_line(res)
    assert "batch entry 2 (configs/mlp.yaml train.lrr=1)" in line and "train.lrr" in line, line
    assert not Path(store_dir).exists() or "jobs" not in Store(store_dir).tables()


def test_stop_batch_stops_its_watcher_and_its_jobs(ray_cluster, store_dir, tmp_path):
    spec = tmp_path / "batch.yaml"
    grid = f"{{train.seed: [1, 2, 3], run.storage_path: [{tmp_path / 'runs'}]}}"
    spec.write_text(f"smoke_test: true\ngrid:\n  configs: [configs/mlp.yaml]\n  overrides: {grid}\n")
    res = batch_cli(ray_cluster, "batch", str(spec), "--retries", "1", "--store", str(store_dir))
    batch_id = re.search(r"^batch (batch-[0-9a-f]{8}): 3 jobs submitted", res.stdout, re.M).group(1)
    stop = batch_cli(ray_cluster, "stop", "--batch", batch_id)
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    lines = stop.stdout.splitlines()
    assert lines[0] == f"job {batch_id}-watch stopped" and len(lines) == 4, stop.stdout  # the watcher first
    jobs = Store(store_dir).df("jobs")
    assert len(jobs) == 6 and set(jobs["status"]) <= {"submitted", "stopped", "succeeded"}  # nothing resubmitted
