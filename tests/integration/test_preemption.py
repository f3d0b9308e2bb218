"""A spot reclaim rehearsed on the local autoscaling cluster (jobs.cluster_local, S3 on moto, token auth on).

One end-to-end scenario: a 1-worker ``jobs.train`` run on a ``cpu_worker`` node, with no step checkpoints
asked for (``train.checkpoint_every_steps=0``). After its first epoch checkpoint the test runs
``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds 30`` on the worker's node,
as a cloud's spot notice does. Ray Train's preemption watcher hands the worker the notice; the loop
(jobs.loop.preemption_watch) must write a mid-epoch checkpoint before the deadline. The test then SIGKILLs the
node (``ray drain-node`` leaves the kill to its caller; a reclaim may come any time before the deadline, and
killing it once Train has committed the checkpoint keeps an epoch end from landing in between on a fast
machine). Train restarts the worker group on a node the autoscaler adds; it resumes from that checkpoint and
trains only the steps after it; the store gets the run ``completed`` with each epoch recorded once.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import boto3
import psutil
from cluster_fixtures import client_env, kill_node, local_cluster_fixture, worker_nodes  # noqa: F401 (the fixture)
from conftest import PY, ROOT

from jobs.store import Store

FIGURES: dict[str, dict] = {}  # printed with -s; bench/cluster_local.py prints it as a table
DEADLINE_S, EPOCHS, BATCH = 30, 4, 2  # 6,000 steps an epoch (about 6 s unloaded): the notice lands mid-epoch
STEP_CHECKPOINT = re.compile(r"/(epoch_(\d{4})_step_(\d{6}))/meta\.json$")


def test_a_preempted_node_gets_a_checkpoint_before_its_deadline_and_the_run_resumes_from_it(local_cluster, s3_server):
    bucket = s3_server.make_bucket(f"perennial-{uuid.uuid4().hex[:8]}")
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")

    def keys() -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket[5:], Prefix="runs/")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def committed() -> str:
        try:
            key = next(k for k in keys() if k.endswith("/checkpoint_manager_snapshot.json"))
            return s3.get_object(Bucket=bucket[5:], Key=key)["Body"].read().decode()
        except (StopIteration, s3.exceptions.NoSuchKey):
            return ""

    cmd = [PY, "-m", "jobs.train", "--config", str(ROOT / "configs" / "mlp.yaml"), "--store", f"{bucket}/store"]
    cmd += [f"run.storage_path={bucket}/runs", "scaling.num_workers=1", "scaling.cpus_per_worker=1"]
    cmd += ["scaling.node_type=cpu_worker", f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}"]
    cmd += ["failure.max_failures=1"]  # the node is killed before its deadline: a worker failure to Train
    cmd += ["data.max_train_samples=12000", "model.hidden1=64", "model.hidden2=32"]
    env = client_env(local_cluster, RAY_DEDUP_LOGS="0")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # the pipe never fills
    reader.start()
    try:
        deadline = time.time() + 400
        while not any("/epoch_0001/" in k for k in keys()):
            assert proc.poll() is None and time.time() < deadline, "no epoch_0001 checkpoint"
            time.sleep(0.3)
        [node] = worker_nodes(local_cluster)  # the one node the run asked for
        victim = node["node_id"]

        # [1] the spot notice, with its deadline
        drain = [str(Path(PY).parent / "ray"), "drain-node", "--address", local_cluster.address, "--node-id", victim]
        drain += ["--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim (test)"]
        drain += ["--deadline-remaining-seconds", str(DEADLINE_S)]
        t_notice = time.time()
        res = subprocess.run(drain, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        t_drained = time.time()  # the CLI's own start-up (seconds here) is between t_notice and the drain
        t_deadline = t_notice + DEADLINE_S  # the earliest the deadline can be

        # [2] a mid-epoch checkpoint lands before the deadline
        found = None
        while found is None and time.time() < t_deadline:
            found = next((m for k in keys() if (m := STEP_CHECKPOINT.search(k))), None)
            time.sleep(0.2)
        t_checkpoint = time.time()
        assert found is not None, f"no step checkpoint within the {DEADLINE_S} s deadline: {sorted(keys())[-6:]}"

        # [3] the reclaim, once Train has committed the checkpoint (its snapshot on S3 lists it)
        while found.group(1) not in committed() and time.time() < t_deadline:
            time.sleep(0.1)
        t_kill = time.time()
        try:
            kill_node(local_cluster, victim)
        except (psutil.Error, AssertionError):  # past the deadline Ray ends a drained node itself
            pass
        proc.wait(timeout=900)
        reader.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]

    store = Store(f"{bucket}/store")
    run = store.df("runs").iloc[0].to_dict()
    assert run["status"] == "completed" and len(store.df("runs")) == 1, run
    assert victim not in run["worker_node_ids"].split(","), out[-6000:]  # finished on another node
    rows = store.history(run["run_id"])
    assert list(rows["epoch"]) == list(range(1, EPOCHS + 1))  # each epoch once: none lost, none doubled

    # [4] the last worker group resumed from the newest checkpoint Train had committed: the preemption one, or
    # (on a machine fast enough to end the epoch between the commit and the kill) a later epoch's; it trained
    # only the steps after that checkpoint
    name, epoch, step = found.group(1), int(found.group(2)), int(found.group(3))
    with s3.get_object(Bucket=bucket[5:], Key=f"runs/{run['run_id']}/final/meta.json")["Body"] as body:
        attempt = json.loads(body.read())["last_attempt"]
    samples = (rows["samples_per_s"] * rows["train_time_s"]).round()
    assert samples.nunique() == 1, samples  # every epoch, the resumed one too, saw the whole training set once
    steps_per_epoch = math.ceil(samples.iloc[0] / BATCH)
    preempted_at = (epoch - 1) * steps_per_epoch + step  # the global optimizer step of the preemption checkpoint
    m = re.fullmatch(r"epoch (\d+)(?: step (\d+))?", attempt["resumed_from"])
    assert m, attempt
    resumed_at = (
        (int(m.group(1)) - 1) * steps_per_epoch + int(m.group(2)) if m.group(2) else int(m.group(1)) * steps_per_epoch
    )
    assert preempted_at <= resumed_at < preempted_at + steps_per_epoch, (attempt, name)
    assert attempt["steps"] == EPOCHS * steps_per_epoch - resumed_at, attempt

    # figures (docs/cluster.md): the checkpoint against the deadline, the watch's cost, the steps redone
    # the loop's own account (written in x s, y s before Ray's deadline), when Ray forwarded the line
    loop_line = re.search(r"preemption notice for \w+: (checkpoint .*before the deadline)", out)
    FIGURES["spot preemption"] = {
        "deadline (s)": DEADLINE_S,
        "loop: checkpoint written (as it logged)": loop_line.group(1) if loop_line else "n/a (line not forwarded)",
        "`ray drain-node` returned -> checkpoint on S3 (s)": t_checkpoint - t_drained,
        "checkpoint on S3 -> earliest deadline (s)": t_deadline - t_checkpoint,
        "preemption watch (us/step)": attempt["preemption_watch_us_per_step"],
        "resumed from": attempt["resumed_from"],
        "checkpoint on S3 -> node killed (s)": t_kill - t_checkpoint,
        "resume point - preemption checkpoint (optimizer steps)": resumed_at - preempted_at,
        "epoch rows lost / duplicated": f"{EPOCHS - rows['epoch'].nunique()} / {len(rows) - rows['epoch'].nunique()}",
    }
    print(f"\nfigures: {FIGURES['spot preemption']}")
    assert attempt["preemption_watch_us_per_step"] is not None  # the watcher was on: a cluster of several nodes
