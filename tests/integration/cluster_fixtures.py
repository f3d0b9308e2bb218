"""A local autoscaling cluster generated from cluster.yaml (jobs.cluster_local), for the multi-node tests.

Import the fixture into a test module: ``from cluster_fixtures import local_cluster_fixture  # noqa: F401``
(it is named ``local_cluster`` for tests).
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import ROOT, base_env

from jobs.cluster_local import LocalCluster
from jobs.errors import ClusterError

IDLE_TIMEOUT_MIN = 0.2  # idle nodes go after ~12 s (+ one autoscaler round) instead of cluster.yaml's minutes


@pytest.fixture(scope="module", name="local_cluster")
def local_cluster_fixture(s3_server):
    """cluster.yaml's node types on this machine: a 0-CPU head, 1-CPU nodes added and removed on demand."""
    cluster = start_local_cluster(s3_server)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.dir, ignore_errors=True)


def start_local_cluster(s3_server) -> LocalCluster:
    """Start the cluster (tests and bench/cluster_local.py): faster autoscaler rounds, S3 credentials on every node."""
    folder = Path(tempfile.mkdtemp(prefix="prc-", dir="/tmp"))  # short: Ray's socket paths are capped at 107 chars
    # S3 credentials in every node's environment, as a cloud node gets them from its instance profile
    env = base_env(
        **s3_server.env,
        AUTOSCALER_UPDATE_INTERVAL_S="2",  # scale decisions every 2 s instead of 5
        AUTOSCALER_HEARTBEAT_TIMEOUT_S="10",  # a killed node is replaced after 10 s instead of 30
    )
    cloud = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    try:
        return LocalCluster.start(folder, cloud, idle_timeout_minutes=IDLE_TIMEOUT_MIN, env=env, timeout_s=300)
    except ClusterError:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def node_type_of(resources: dict, config: dict) -> str:
    """From the custom resource that names its type (as a cloud node has it too), not Ray's node labels."""
    for name in config["available_node_types"]:
        if name != config["head_node_type"] and resources.get(name):
            return name
    return config["head_node_type"]


def nodes(cluster: LocalCluster, alive: bool = True) -> list[dict]:
    """Nodes as ``{"node_id", "node_type", "state", "resources"}``, from the dashboard's state API (this process may
    hold another Ray session)."""
    req = urllib.request.Request(
        f"{cluster.dashboard}/api/v0/nodes?detail=1&limit=1000",
        headers={"Authorization": f"Bearer {cluster.token_path.read_text().strip()}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        rows = json.loads(resp.read())["data"]["result"]["result"]
    return [
        {
            "node_id": n["node_id"],
            "node_type": node_type_of(n["resources_total"], cluster.state["config"]),
            "state": n["state"],
            "resources": n["resources_total"],
        }
        for n in rows
        if n["state"] == "ALIVE" or not alive
    ]


def worker_nodes(cluster: LocalCluster) -> list[dict]:
    return [n for n in nodes(cluster) if n["node_type"] != cluster.state["config"]["head_node_type"]]


def client_env(cluster: LocalCluster, **extra: str) -> dict[str, str]:
    """A job process's environment: pointed at the cluster, with the cluster's token."""
    return base_env(**cluster.env(), **extra)


class NodeWatcher(threading.Thread):
    """Samples the cluster's worker nodes every second: which nodes of which type ever came up."""

    def __init__(self, cluster: LocalCluster):
        super().__init__(daemon=True)
        self.cluster, self.seen, self.counts, self.running = cluster, {}, [], True
        self.first_up: float | None = None  # when the first worker node was seen

    def run(self):
        while self.running:
            try:
                workers = worker_nodes(self.cluster)
            except Exception:
                workers = None
            if workers is not None:
                self.seen.update({n["node_id"]: n["node_type"] for n in workers})
                if workers and self.first_up is None:
                    self.first_up = time.time()
                self.counts.append((time.time(), len(workers)))
            time.sleep(1)

    def stop(self) -> None:
        self.running = False
        self.join(timeout=10)


def wait_for_workers(cluster: LocalCluster, count: int, timeout_s: float) -> float:
    """Seconds until the cluster has ``count`` worker nodes (fails after ``timeout_s``)."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if len(worker_nodes(cluster)) == count:
            return time.time() - t0
        time.sleep(1)
    raise AssertionError(f"{len(worker_nodes(cluster))} worker nodes after {timeout_s} s, expected {count}")


def kill_node(cluster: LocalCluster, node_id: str) -> int:
    """SIGKILL a worker node as a lost machine dies: its raylet and every process under it. Returns how many."""

    def is_its_raylet(p: psutil.Process) -> bool:
        try:
            return p.name() == "raylet" and p.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id
        except psutil.Error:  # another of the cluster's processes exited while we looked
            return False

    raylets = [p for p in psutil.Process(cluster.supervisor_pid).children(recursive=True) if is_its_raylet(p)]
    assert len(raylets) == 1, f"no raylet for node {node_id}"
    procs = [raylets[0], *raylets[0].children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return len(procs)
