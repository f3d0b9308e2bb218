"""cluster.yaml rehearsed on one machine (jobs.cluster_local): real raylets that Ray's fake multi-node
autoscaler adds and removes, checkpoints and store on S3 (moto on 127.0.0.1), token auth on.

Few tests, each checking several things, to keep the CI short (about a minute or two each on 2 cores):
- the README's rehearsal block, run by bash as printed (its own cluster, up and down);
- the cluster itself: loopback only, token refused without it, starts with 0 worker nodes;
- refusals before any worker starts: a worker no node type can hold, node-local checkpoints;
- autoscaling: a 4-trial sweep on one node type makes the autoscaler add nodes of that type only
  (<= max_workers); after the idle timeout the cluster is back at min_workers (0);
- a batch job (--retries 1) of a 2-worker run on 2 nodes loses one (SIGKILL to its raylet and everything under it)
  after its first S3 checkpoint; the watcher resumes it, on a node the autoscaler adds, with every epoch recorded once.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from cluster_fixtures import (
    IDLE_TIMEOUT_MIN,
    NodeWatcher,
    client_env,
    kill_node,
    local_cluster_fixture,  # noqa: F401 (the local_cluster fixture)
    node_type_of,
    nodes,
    wait_for_workers,
    worker_nodes,
)
from conftest import PY, ROOT, base_env, run_job

from jobs.cluster_local import LOCAL_HEAD_TYPE, LocalCluster, local_config
from jobs.store import Store

MLP = str(ROOT / "configs" / "mlp.yaml")
FIGURES: dict[str, dict] = {}  # what the tests measured, printed with -s; bench/cluster_local.py prints it as a table


def readme_block(marker: str) -> str:
    """The ```bash block that follows ``marker`` in README.md, as printed."""
    text = (ROOT / "README.md").read_text()
    return text[text.index(marker) :].split("```bash\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_rehearsal_block_runs_as_printed(tmp_path):
    """First in this module, so the module's own cluster is not up yet beside it."""
    block = readme_block("<!-- the rehearsal block:")
    checkout = tmp_path / "checkout"  # this one's files, linked, so that the block's ./store and ./runs are its own
    checkout.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("store", "runs"):
            (checkout / entry.name).symlink_to(entry)
    (tmp_path / "home").mkdir()
    folder = tempfile.mkdtemp(prefix="prr-", dir="/tmp")  # short: Ray's socket paths live under it
    env = base_env(HOME=str(tmp_path / "home"), PERENNIAL_CLUSTER_DIR=folder)
    # a new shell: no venv on PATH, no store named
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(Path(PY).parent))
    env.pop("PERENNIAL_STORE", None)
    try:
        res = subprocess.run(
            ["bash", "-e", "-c", block], cwd=checkout, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        if (cluster := LocalCluster.attach(folder)) is not None:
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "local cluster stopped" in res.stdout
    runs = Store(checkout / "store").df("runs")
    trials = runs[runs["trial_id"] != ""]
    assert len(trials) >= 2 and set(trials["status"]) <= {"completed", "stopped_early"}, trials[["status", "error"]]
    assert set(trials["worker_node_types"]) == {"gpu_1x"}  # placed on the nodes the autoscaler added
    assert (checkout / "runs").is_dir()


def test_a_node_is_typed_by_the_resource_that_names_its_type():
    cfg = local_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()), gcs_address="127.0.0.1:1")
    assert node_type_of({"CPU": 1.0, "gpu_1x": 1.0, "memory": 5.0}, cfg) == "gpu_1x"
    assert node_type_of({"memory": 5.0, "node:__internal_head__": 1.0}, cfg) == LOCAL_HEAD_TYPE


def test_local_cluster_is_loopback_only_token_guarded_and_starts_empty(local_cluster):
    procs = psutil.Process(local_cluster.supervisor_pid).children(recursive=True)
    listening = {(c.laddr.ip, c.laddr.port) for p in procs for c in _connections(p) if c.status == psutil.CONN_LISTEN}
    assert listening and all(_loopback(ip) for ip, _ in listening), sorted(listening)
    with pytest.raises(urllib.error.HTTPError) as e:  # no token, no answer
        urllib.request.urlopen(f"{local_cluster.dashboard}/api/v0/nodes", timeout=10)
    assert e.value.code == 401
    assert worker_nodes(local_cluster) == []  # min_workers 0 everywhere in cluster.yaml
    assert oct(local_cluster.token_path.stat().st_mode & 0o777) == "0o600"


def test_refused_before_any_worker_starts(local_cluster, s3_server):
    bucket = s3_server.make_bucket(f"perennial-{uuid.uuid4().hex[:8]}")
    env = client_env(local_cluster)
    t0 = time.time()
    # more CPUs per worker than any node type has: one line naming the largest type, not an endless "pending"
    res = run_job(
        ["jobs.train", "--config", MLP, "--smoke-test", "scaling.cpus_per_worker=4", f"run.storage_path={bucket}/runs"],
        env,
        timeout=180,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no node type of this cluster can hold one worker") and "CPU=4" in line
    assert "the largest, cpu_worker, has CPU=1" in line, line
    # node-local checkpoints on a cluster of several nodes: refused up front, naming s3://
    res = run_job(
        ["jobs.train", "--config", MLP, "--smoke-test", "scaling.num_workers=2", "scaling.cpus_per_worker=1"],
        env,
        timeout=180,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "run.storage_path='./runs' is a folder on this machine" in line and "s3://" in line, line
    assert time.time() - t0 < 120
    assert worker_nodes(local_cluster) == []  # neither asked the autoscaler for a node
    assert "runs" not in Store(f"{bucket}/store").tables()


def test_sweep_scales_one_node_type_up_then_back_to_zero(local_cluster, s3_server):
    bucket = s3_server.make_bucket(f"perennial-{uuid.uuid4().hex[:8]}")
    watcher = NodeWatcher(local_cluster)
    watcher.start()
    t_submit = time.time()
    res = run_job(
        [
            "jobs.sweep",
            "--config",
            MLP,
            "--smoke-test",
            "--store",
            f"{bucket}/store",
            f"run.storage_path={bucket}/runs",
            "sweep.num_samples=4",
            "sweep.max_concurrent_trials=2",
            "sweep.trial_overrides={train.epochs: 2, data.max_train_samples: 1000}",
            "scaling.cpus_per_worker=1",
            "scaling.node_type=gpu_1x",  # a GPU type in cluster.yaml: here a 1-CPU node carrying gpu_1x: 1
        ],
        client_env(local_cluster),
        timeout=420,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = Store(f"{bucket}/store").df("runs")
    trials = runs[runs["trial_id"] != ""]
    assert len(trials) == 4 and set(trials["status"]) <= {"completed", "stopped_early"}, trials[["status", "error"]]
    # only the requested type was launched, never more than its max_workers (3)
    types = list(watcher.seen.values())
    assert types and set(types) == {"gpu_1x"} and len(types) <= 3, watcher.seen
    for trial_types in trials["worker_node_types"]:
        assert trial_types == "gpu_1x"
    # back to min_workers (0) after the idle timeout
    wait_for_workers(local_cluster, 0, timeout_s=240)
    time.sleep(1.5)  # one more watcher sample
    watcher.stop()
    last_trial_end = max(runs["finished_at"]).timestamp()
    back_to_zero = next((t for t, n in watcher.counts if t > last_trial_end and n == 0), time.time())
    FIGURES["autoscaling"] = {
        "submit -> first trial started (s)": min(runs["started_at"]).timestamp() - t_submit,
        "submit -> first node up (s)": watcher.first_up - t_submit if watcher.first_up else None,
        "nodes launched per type": dict(collections.Counter(types)),
        "last trial end -> back to 0 worker nodes (s)": back_to_zero - last_trial_end,
        "idle timeout (s)": IDLE_TIMEOUT_MIN * 60,
    }
    print(f"\nfigures: {FIGURES['autoscaling']}")


def test_batch_job_resumes_after_losing_a_workers_node(local_cluster, s3_server, tmp_path):
    """A batch job (--retries 1) whose 2-worker run loses one worker's node: the driver ends with exit 75, the
    watcher submits it again with --resume, and the run finishes from its checkpoint on a node the autoscaler adds."""
    bucket = s3_server.make_bucket(f"perennial-{uuid.uuid4().hex[:8]}")
    epochs = 3
    overrides = [
        f"run.storage_path={bucket}/runs",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=1",
        "scaling.node_type=cpu_worker",
        f"train.epochs={epochs}",
        "train.batch_size=16",
        "data.max_train_samples=6000",
        "model.hidden1=64",
        "model.hidden2=32",
    ]
    spec = tmp_path / "batch.yaml"
    spec.write_text(json.dumps({"jobs": [{"config": "configs/mlp.yaml", "overrides": overrides}]}))
    cmd = [PY, "-m", "jobs.submit", "batch", str(spec), "--retries", "1", "--store", f"{bucket}/store", "--follow"]
    env = client_env(local_cluster) | {"RAY_ADDRESS": local_cluster.dashboard}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # wait until Train has committed the first epoch checkpoint (its snapshot names it; an upload in flight is not
    # what a resumed run starts from), then kill the node of one worker
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")

    def committed() -> bool:
        for o in s3.list_objects_v2(Bucket=bucket[5:], Prefix="runs/").get("Contents", []):
            if o["Key"].endswith("/checkpoint_manager_snapshot.json"):
                with contextlib.suppress(s3.exceptions.NoSuchKey):  # replaced between the listing and the read
                    if b"epoch_0001" in s3.get_object(Bucket=bucket[5:], Key=o["Key"])["Body"].read():
                        return True
        return False

    deadline = time.time() + 300
    while time.time() < deadline:
        if committed():
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.3)
    else:
        proc.kill()
        raise AssertionError("no committed epoch_0001 checkpoint in 300 s")
    before = {n["node_id"] for n in worker_nodes(local_cluster)}
    assert len(before) == 2
    victim = sorted(before)[-1]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket[5:], Prefix="runs/").get("Contents", [])]
    last_at_kill = max(int(m) for m in re.findall(r"/epoch_(\d+)/", " ".join(keys)))
    t_kill = time.time()
    killed = kill_node(local_cluster, victim)
    out, _ = proc.communicate(timeout=600)
    recovery_s = time.time() - t_kill
    store = Store(f"{bucket}/store")
    if proc.returncode or not re.search(r"ended: 1 succeeded", out):
        first = run_job(["jobs.submit", "logs", store.df("jobs")["submission_id"].iloc[0]], env).stdout
        raise AssertionError(out[-2000:] + first[-5000:])
    jobs = store.df("jobs")
    finals = jobs[jobs["status"] != "submitted"].sort_values("attempt")
    assert list(finals["status"]) == ["failed", "succeeded"] and list(finals["attempt"]) == [1, 2], finals
    assert "exit code 75" in finals.iloc[0]["message"], finals.iloc[0]["message"]
    assert "--resume" in finals.iloc[1]["entrypoint"]
    runs = store.df("runs")
    assert len(runs) == 1
    run = runs.iloc[0].to_dict()
    assert run["status"] == "completed" and run["num_workers"] == 2 and run["job_id"] == finals.iloc[1]["submission_id"]
    node_ids, node_types = run["worker_node_ids"].split(","), run["worker_node_types"].split(",")
    assert len(set(node_ids)) == 2 and node_types == ["cpu_worker", "cpu_worker"], run
    assert victim not in node_ids and set(node_ids) - before, (victim, node_ids, before)  # a node added after the loss
    epochs_rows = store.df("epochs")
    assert sorted(epochs_rows["epoch"]) == list(range(1, epochs + 1))  # no epoch lost or recorded twice
    logs = run_job(["jobs.submit", "logs", finals.iloc[1]["submission_id"]], env).stdout
    resumed = [int(m) for m in re.findall(r"resumed from the epoch (\d+) checkpoint", logs)]
    # the last checkpoint at the kill (or the one before, if Train had not yet registered the newest)
    assert resumed and resumed[0] >= last_at_kill - 1, (resumed, last_at_kill, logs[-3000:])
    samples = (epochs_rows["samples_per_s"] * epochs_rows["train_time_s"]).round()
    assert samples.nunique() == 1, samples  # every epoch saw the whole training set once: no sample lost or doubled
    FIGURES["node loss"] = {
        "processes killed": killed,
        "kill -> batch job completed (s)": recovery_s,
        "whole epochs redone (besides the one in flight)": last_at_kill - resumed[0],
        "attempts": len(finals),
    }
    print(f"\nfigures: {FIGURES['node loss']}")


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


def _connections(p: psutil.Process) -> list:
    try:
        return p.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def test_submit_status_logs_and_stop_with_workers_on_other_nodes(local_cluster, s3_server):
    bucket = s3_server.make_bucket(f"perennial-{uuid.uuid4().hex[:8]}")
    env = client_env(local_cluster)
    common = [
        "--store",
        f"{bucket}/store",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=1",
        "scaling.node_type=cpu_worker",
        f"run.storage_path={bucket}/runs",
    ]
    res = run_job(["jobs.submit", "submit", MLP, "--smoke-test", *common], env, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    job = re.search(r"submitted (\S+):", res.stdout).group(1)
    logs = run_job(["jobs.submit", "logs", job, "--follow"], env, timeout=420)
    assert logs.returncode == 0 and "2 worker(s) on cpu" in logs.stdout, logs.stdout[-3000:] + logs.stderr[-2000:]
    status = run_job(["jobs.submit", "status", job], env, timeout=120)
    assert status.returncode == 0 and "status: succeeded" in status.stdout, status.stdout + status.stderr
    run = Store(f"{bucket}/store").df("runs").iloc[0].to_dict()
    assert run["job_id"] == job and run["status"] == "completed"
    assert len(set(run["worker_node_ids"].split(","))) == 2 and run["worker_node_types"] == "cpu_worker,cpu_worker"
    head = [
        n["node_id"] for n in nodes(local_cluster) if n["node_type"] == local_cluster.state["config"]["head_node_type"]
    ]
    assert head[0] not in run["worker_node_ids"]  # the driver ran on the head, the workers elsewhere

    # a long job, stopped while its workers train on the worker nodes (its first epoch line is in its logs): the
    # job ends as stopped and its Train workers are gone, so the nodes go idle (scale-down: the sweep test above)
    res = run_job(["jobs.submit", "submit", MLP, *common, "train.epochs=200", "data.max_train_samples=2000"], env)
    long_job = re.search(r"submitted (\S+):", res.stdout).group(1)
    follow = subprocess.Popen(
        [PY, "-m", "jobs.submit", "logs", long_job, "--follow"], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        seen = wait_for_line(follow, re.compile(r"epoch 1/200\s+train_loss"), timeout_s=300)
    finally:
        follow.kill()
        follow.wait()
    assert seen, "the long job never logged its first epoch"
    assert train_workers(local_cluster), "no Train worker alive while the job trains"
    stop = run_job(["jobs.submit", "stop", long_job], env, timeout=180)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    deadline = time.time() + 120
    while train_workers(local_cluster):  # nothing of the job left holding the nodes
        assert time.time() < deadline, f"Train workers still alive 120 s after the stop: {train_workers(local_cluster)}"
        time.sleep(1)
    jobs = Store(f"{bucket}/store").df("jobs")
    assert set(jobs[jobs["submission_id"] == long_job]["status"]) >= {"stopped"}, jobs


def wait_for_line(proc: subprocess.Popen, pattern: re.Pattern, timeout_s: float) -> bool:
    """Whether ``proc`` prints a line matching ``pattern`` within ``timeout_s`` (read on a thread: never stuck)."""
    found = threading.Event()

    def read():
        for line in proc.stdout:
            if pattern.search(line):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    return found.wait(timeout_s)


def train_workers(cluster) -> list[str]:
    """Ids of the cluster's alive Ray Train worker actors (the dashboard's state API, with the cluster's token)."""
    req = urllib.request.Request(
        f"{cluster.dashboard}/api/v0/actors?detail=1&limit=10000",
        headers={"Authorization": f"Bearer {cluster.token_path.read_text().strip()}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        rows = json.loads(resp.read())["data"]["result"]["result"]
    return [a["actor_id"] for a in rows if a["state"] == "ALIVE" and a["class_name"] == "RayTrainWorker"]


def test_down_ends_every_process_of_the_cluster(local_cluster):
    """Last in this module: stops the module's cluster (the fixture's own stop is then a no-op)."""
    procs = psutil.Process(local_cluster.supervisor_pid).children(recursive=True)
    assert any(p.name() == "raylet" for p in procs) and any(p.name() == "gcs_server" for p in procs)
    local_cluster.stop()
    gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    assert not local_cluster.alive()
    assert not (local_cluster.dir / "cluster.json").exists()
