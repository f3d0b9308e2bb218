"""A batch of smoke jobs on the rehearsal cluster (cluster.yaml's node types, <= 3 worker nodes): figures.

    .venv/bin/python -m bench.batch_jobs [--jobs 30]

Starts the rehearsal (jobs.cluster_local, as `make cluster-local`: a 0-CPU head with 2 job slots, 1-CPU cpu_worker
nodes added on demand), submits ``--jobs`` mlp smoke jobs as one `python -m jobs.submit batch`, samples once a second
until the batch's watcher ends, and prints: the jobs by final state, `jobs` / `runs` rows per job (each once), the
most drivers running at once against the head's job slots, the head side's peak RSS (GCS, dashboard, job supervisors,
drivers, Train controllers: what runs on a cloud head) and the time from submission to the batch's end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
HEAD_SIDE = re.compile(r"gcs_server|dashboard|JobSupervisor|TrainController|-m jobs\.(train|submit)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batch_jobs", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=30, help="smoke jobs in the batch")
    args = p.parse_args(argv)
    from conftest import base_env

    from jobs import batch, submit
    from jobs.cluster_local import LOCAL_JOB_SLOTS, LocalCluster
    from jobs.store import Store

    folder = Path(tempfile.mkdtemp(prefix="bj-", dir="/tmp"))  # short: Ray's socket paths are capped at 107 chars
    env = base_env(AUTOSCALER_UPDATE_INTERVAL_S="2")
    cluster = LocalCluster.start(folder, yaml.safe_load((ROOT / "cluster.yaml").read_text()), env=env, timeout_s=300)
    try:
        spec, store = folder / "batch.yaml", folder / "store"
        grid = {
            "run.storage_path": [f"file://{folder / 'runs'}"],  # every rehearsal node shares this disk
            "scaling.cpus_per_worker": [1],
            "train.seed": list(range(args.jobs)),
        }
        spec.write_text(
            yaml.safe_dump({"smoke_test": True, "grid": {"configs": ["configs/mlp.yaml"], "overrides": grid}})
        )
        os.environ.update(cluster.env())  # the cluster's address and token, for the CLI and the client here
        ray_client = submit.client(None)
        t0 = time.time()
        cmd = [sys.executable, "-m", "jobs.submit", "batch", str(spec), "--store", str(store)]
        res = subprocess.run(cmd, env=base_env(**cluster.env()), cwd=ROOT, capture_output=True, text=True)
        print(res.stdout, res.stderr, end="")
        batch_id = re.search(r"^batch (batch-\S+):", res.stdout, re.M).group(1)
        most, peak_rss, supervisor = 0, 0, psutil.Process(cluster.supervisor_pid)
        while ray_client.get_job_info(f"{batch_id}-watch").status.value not in submit.TERMINAL:
            procs = []
            for proc in supervisor.children(recursive=True):
                try:
                    procs.append((proc.cmdline(), proc.memory_info().rss))
                except psutil.Error:
                    continue
            drivers = [
                c for c, _ in procs if c and Path(c[0]).name.startswith("python") and c[1:3] == ["-m", "jobs.train"]
            ]
            most = max(most, len(drivers))  # the python processes, not the `sh -c` that Ray starts each in
            peak_rss = max(peak_rss, sum(rss for c, rss in procs if HEAD_SIDE.search(" ".join(c))))
            time.sleep(1)
        drain_s = time.time() - t0
        jobs, runs = Store(str(store)).df("jobs"), Store(str(store)).df("runs")
        latest = submit.latest_attempts(submit.batch_jobs(ray_client, batch_id))
        print(f"batch {batch_id}: {batch.counts([i.status.value.lower() for i in latest])}")
        for info in [i for i in latest if i.status.value != "SUCCEEDED"][:1]:
            print(f"  e.g. {info.submission_id}: {(info.message or '').strip()[-1500:]}")
        print(f"jobs rows per submission: {sorted(set(jobs.groupby('submission_id').size()))} (submitted + final)")
        print(f"runs rows: {len(runs)} for {runs['run_id'].nunique()} runs; {dict(runs['status'].value_counts())}")
        print(f"most drivers at once: {most} (head's job slots: {LOCAL_JOB_SLOTS})")
        print(f"head side peak RSS: {peak_rss / 2**20:.0f} MiB")
        print(f"drain: {drain_s:.0f} s for {args.jobs} jobs")
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
