"""Elastic workers (``scaling.num_workers=[1,2]``) on a real multi-node local Ray: a run on two nodes loses
one, goes on with one worker instead of waiting for a node, and grows back to two when a node returns.

Three raylets on this host (``ray.cluster_utils.Cluster``): a CPU-less head and two 1-CPU ``cpu_worker``
nodes, with checkpoints and the store on S3 (moto on 127.0.0.1). No autoscaler here, so that the test, not
an autoscaler's timing, decides when a node goes and when one comes back (tests/integration/
test_cluster_local.py has the autoscaler's own node-loss run). The GCS declares a killed node dead after
~3 s instead of ~15 s, and a worker group that cannot be placed gives up after 20 s instead of 60 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import PY, ROOT, base_env, free_port

from jobs.store import Store
from jobs.train import loopback_only
from tests.plugins import faults

NODE = {"num_cpus": 1, "resources": {"cpu_worker": 1}}


FIGURES: dict[str, dict] = {}  # printed with -s; bench/cluster_local.py prints it as a table


@pytest.fixture
def cluster(s3_server):
    with elastic_cluster() as c:
        yield c


@contextlib.contextmanager
def elastic_cluster():
    """A 0-CPU head and two 1-CPU cpu_worker nodes on 127.0.0.1 (the test and bench/cluster_local.py)."""
    from ray.cluster_utils import Cluster

    loopback_only()
    local = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024**2}
    head = {"dashboard_port": free_port()}  # not 8265: an embedded cluster of a test beside it may hold that one
    saved = {k: os.environ.get(k) for k in ("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S",)}
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "20"  # the Train controller (on the head) reads it
    for attempt in range(3):  # Ray gives a raylet 30 s to register (fixed): an overloaded host can miss it
        c = Cluster(initialize_head=False)
        try:
            c.add_node(
                **local,
                **head,
                num_cpus=0,
                dashboard_host="127.0.0.1",
                _system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
            )
            c.workers = [c.add_node(**local, **NODE) for _ in range(2)]
            c.local = local
            break
        except Exception as e:
            c.shutdown()
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
    try:
        yield c
    finally:
        c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def epoch_metas(s3, bucket: str) -> dict[int, dict]:
    """{epoch: meta.json} of the run's epoch checkpoints on S3."""
    out = {}
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="runs/").get("Contents", []):
        if m := re.search(r"/epoch_(\d+)/meta\.json$", obj["Key"]):
            try:
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            except s3.exceptions.NoSuchKey:  # pruned (run.keep_checkpoints) between the listing and the read
                continue
            out[int(m.group(1))] = json.loads(body)
    return out


def wait_for_epoch(proc, s3, bucket: str, workers: int, after: int, timeout_s: float) -> int:
    """The first epoch > ``after`` trained by ``workers`` workers, once its checkpoint is on S3."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        metas = epoch_metas(s3, bucket)
        done = [e for e, m in metas.items() if e > after and m["history"][-1]["num_workers"] == workers]
        if done:
            return min(done)
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        time.sleep(0.5)
    raise AssertionError(f"no epoch after {after} on {workers} worker(s) in {timeout_s} s\n{train_worker_stacks()}")


def train_worker_stacks() -> str:
    """py-spy dumps of this host's Ray Train workers: where a run that makes no progress waits."""
    import psutil

    dumps = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if "RayTrainWorker" in " ".join(p.info["cmdline"] or []):
            py_spy = [str(Path(PY).with_name("py-spy")), "dump", "--pid", str(p.info["pid"])]
            dumps.append(subprocess.run(py_spy, capture_output=True, text=True, timeout=60).stdout)
    return "\n".join(dumps) or "no Train worker running"


def test_elastic_run_shrinks_to_one_worker_and_grows_back(cluster, s3_server, tmp_path):
    import boto3

    bucket = s3_server.make_bucket(f"perennial-{uuid.uuid4().hex[:8]}")
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    epochs = 30  # a cap: enough for the node to go after epoch ~2 and come back on a busy machine
    stop = tmp_path / "stop"  # once the run has grown back, it ends after its next epoch
    cmd = [
        *(PY, "-m", "jobs.train", "--config", str(ROOT / "configs" / "mlp.yaml"), "--store", f"{bucket}/store"),
        f"run.storage_path={bucket}/runs",
        "scaling.num_workers=[1,2]",
        "scaling.elastic_resize_interval_s=2",
        "scaling.cpus_per_worker=1",
        "scaling.node_type=cpu_worker",
        "failure.max_failures=3",
        f"train.epochs={epochs}",
        "train.batch_size=32",
        "data.max_train_samples=8000",
        "model.hidden1=256",
        "model.hidden2=64",
        # 10 ms after each step: epochs long enough for the node to leave and return before the last one
        faults.hooks("tests.plugins.faults:StepDelay?seconds=0.01", f"tests.plugins.faults:StopOnFile?path={stop}"),
    ]
    env = base_env(RAY_ADDRESS=cluster.address)
    # Generous waits: a worker group starts in ~8 s on a quiet machine, but in 70-80 s with two CPU-bound processes
    # beside it (2 cores), and an epoch then takes ~60 s; CI's other lane can load the machine that much. A passing
    # run waits only as long as it needs to.
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        on_two = wait_for_epoch(proc, s3, bucket[5:], workers=2, after=0, timeout_s=600)
        t_two = time.time()
        cluster.remove_node(cluster.workers[1], allow_graceful=False)  # SIGKILL: its raylet and its worker
        t_kill = time.time()
        on_one = wait_for_epoch(proc, s3, bucket[5:], workers=1, after=on_two, timeout_s=480)
        t_one = time.time()
        cluster.add_node(**cluster.local, **NODE)  # a node returns
        t_back = time.time()
        regrown = wait_for_epoch(proc, s3, bucket[5:], workers=2, after=on_one, timeout_s=480)
        t_regrown = time.time()
        stop.touch()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    store = Store(f"{bucket}/store")
    rows = store.df("epochs").sort_values("epoch")
    last = int(rows["epoch"].max())
    assert regrown <= last <= epochs and list(rows["epoch"]) == list(range(1, last + 1)), list(rows["epoch"])
    counts = "".join(str(n) for n in rows["num_workers"])
    # the shrink and the regrowth were seen live above (checkpoints of epochs on 2, then 1, then 2 workers); the
    # recorded history is the final attempt's, which may start on 1 worker (the first node up) and always ends on 2
    assert "1" in counts and counts.endswith("2"), counts
    samples = (rows["samples_per_s"] * rows["train_time_s"]).round()
    assert samples.max() - samples.min() <= 1, samples  # 1 or 2 workers: each epoch trained the training set once
    run = store.df("runs").iloc[0].to_dict()
    assert run["status"] == "stopped_early" and (run["min_workers"], run["num_workers"]) == (1, 2), run
    assert len(set(run["worker_node_ids"].split(","))) == 2, run
    assert "elastic 1-2: 1 now, global batch kept by accumulating 2x" in out  # the stated batch policy, applied
    FIGURES["elastic workers"] = {
        "start -> first epoch on 2 workers (s)": t_two - t0,
        "node killed -> first epoch on 1 worker (s)": t_one - t_kill,
        "node back -> first epoch on 2 workers (s)": t_regrown - t_back,
        "workers per epoch": counts,
        "epochs trained on 1 worker": regrown - on_one,
        "epoch rows lost / duplicated": f"{last - rows['epoch'].nunique()} / {len(rows) - rows['epoch'].nunique()}",
    }
    print(f"\nfigures: {FIGURES['elastic workers']}")
