"""The cloud cluster rehearsed on this machine: scale-up, scale-down, node loss, spot preemption, driver loss — figures.

    .venv/bin/python -m bench.cluster_local [--only autoscaling node_loss preemption driver_loss]

Starts the local autoscaling cluster generated from cluster.yaml (jobs.cluster_local, idle timeout
0.2 min) and a local S3 server (moto on 127.0.0.1), then runs the scenarios of
tests/integration/test_cluster_local.py and test_driver_loss.py (the same code, so the bench and
the tests cannot drift) and prints what they measured:
  autoscaling   a 4-trial sweep on gpu_1x nodes: submit -> first node / first trial, nodes per type,
                sweep end -> back to 0 worker nodes
  node_loss     a 2-worker run loses one node (SIGKILL) after its first S3 checkpoint: recovery time,
                epochs redone, epoch rows lost / duplicated
  preemption    `ray drain-node` (reason preemption, 30 s deadline) on a 1-worker run's node: the loop's
                checkpoint against the deadline, the watch's cost per step, where the run resumed
  elastic       a [1,2]-worker run on 2 nodes (ray.cluster_utils) loses one, goes on with 1 worker, grows back
                when a node returns: time to shrink, time to grow, workers per epoch, rows lost / duplicated
  driver_loss   an embedded-cluster (and a local-mode) driver SIGKILLed mid-run: processes left, --resume time, epochs
                redone, rows lost / duplicated
About 5-8 min on 2 busy cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]
SCENARIOS = ("autoscaling", "node_loss", "preemption", "elastic", "driver_loss")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster_local", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import test_cluster_local
    import test_driver_loss
    import test_elastic
    import test_preemption
    from cluster_fixtures import start_local_cluster
    from conftest import S3Server

    s3 = S3Server()
    saved = {k: os.environ.get(k) for k in s3.env}
    os.environ.update(s3.env)
    failures = []
    t0 = time.time()
    try:
        if {"autoscaling", "node_loss", "preemption"} & set(args.only):
            cluster = start_local_cluster(s3)
            try:
                if "autoscaling" in args.only:
                    _run(failures, test_cluster_local.test_sweep_scales_one_node_type_up_then_back_to_zero, cluster, s3)
                if "node_loss" in args.only:
                    tmp = Path(tempfile.mkdtemp(prefix="bench-node-loss-"))
                    test = test_cluster_local.test_batch_job_resumes_after_losing_a_workers_node
                    _run(failures, test, cluster, s3, tmp)
                    shutil.rmtree(tmp, ignore_errors=True)
                if "preemption" in args.only:
                    _run(
                        failures,
                        test_preemption.test_a_preempted_node_gets_a_checkpoint_before_its_deadline_and_the_run_resumes_from_it,
                        cluster,
                        s3,
                    )
            finally:
                cluster.stop()
                shutil.rmtree(cluster.dir, ignore_errors=True)
        if "elastic" in args.only:
            with test_elastic.elastic_cluster() as cluster:
                _run(failures, test_elastic.test_elastic_run_shrinks_to_one_worker_and_grows_back, cluster, s3)
        if "driver_loss" in args.only:
            for local_mode in ("never", "auto"):  # the embedded cluster's driver, then a local-mode driver
                tmp = Path(tempfile.mkdtemp(prefix="bench-driver-loss-"))
                test = test_driver_loss.test_killed_driver_leaves_no_process_and_resume_records_the_run_once
                _run(failures, test, tmp, local_mode)
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        s3.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    figures = test_cluster_local.FIGURES | test_preemption.FIGURES | test_elastic.FIGURES | test_driver_loss.FIGURES
    load = os.getloadavg()[0]
    print(f"\ncluster rehearsal on {os.cpu_count()} cores, load average {load:.1f}, {time.time() - t0:.0f} s in all")
    for scenario, values in figures.items():
        print(f"\n[{scenario}]")
        for name, value in values.items():
            print(f"  {name:<48} {value:.1f}" if isinstance(value, float) else f"  {name:<48} {value}")
    for name, err in failures:
        print(f"\nFAILED {name}: {err}")
    return 1 if failures else 0


def _run(failures: list, test, *args) -> None:
    try:
        test(*args)
    except Exception as e:  # the figures of the other scenarios are still worth printing
        failures.append((test.__name__, str(e).splitlines()[0][:300] if str(e) else "assertion failed"))


if __name__ == "__main__":
    sys.exit(main())
