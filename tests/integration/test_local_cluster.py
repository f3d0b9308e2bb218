"""The README's "Ray jobs on a local cluster" path from an empty HOME: `make cluster-up` starts one node
(jobs.cluster_local) on loopback with a token of its own; `jobs.cluster_local env` points a client at it; `ray job
submit` runs a job on it; `make cluster-down` stops that cluster and nothing else (the session's other test cluster
keeps running)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
from conftest import PY, ROOT, base_env

from jobs.cluster_local import LocalCluster
from jobs.store import Store


def listening_ports(pids: set[int]) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def test_cluster_up_submit_down_from_an_empty_home(ray_cluster, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    folder = tempfile.mkdtemp(prefix="pr-", dir="/tmp")  # short: Ray's socket paths live under it
    env = base_env(HOME=str(home), PERENNIAL_CLUSTER_DIR=folder)
    for key in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(key, None)  # the README's shell has neither set
    make = ["make", "-s", "CLUSTER_ARGS=--num-cpus=2"]  # what configs/mlp.yaml asks of one worker
    try:
        up = subprocess.run([*make, "cluster-up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        cluster = LocalCluster.attach(folder)
        assert cluster is not None and not cluster.rehearsal
        assert oct(cluster.token_path.stat().st_mode & 0o777) == "0o600"  # generated, owner-only
        assert not (home / ".ray").exists()  # the user's ~/.ray is left alone

        procs = psutil.Process(cluster.supervisor_pid).children(recursive=True)
        assert len(procs) >= 4, [p.name() for p in procs]  # gcs, raylet, dashboard, monitors, agents
        ports = listening_ports({p.pid for p in procs})
        assert ports and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _ in ports), ports

        exports = subprocess.run(
            [PY, "-m", "jobs.cluster_local", "env"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        ).stdout
        assert exports.startswith("export ")
        client = env | dict(kv.split("=", 1) for kv in shlex.split(exports)[1:])
        assert client["RAY_AUTH_MODE"] == "token" and client["RAY_AUTH_TOKEN_PATH"] == str(cluster.token_path)
        store, runs = tmp_path / "store", tmp_path / "runs"
        submit = [str(Path(PY).parent / "ray"), "job", "submit", "--working-dir", ".", "--", "python", "-m"]
        job = subprocess.run(
            [*submit, "jobs.train", "--config", "configs/mlp.yaml", "--smoke-test", "--store", str(store)]
            + [f"run.storage_path={runs}"],
            cwd=ROOT,
            env=client,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout
        rows = Store(store).df("runs")
        assert list(rows["status"]) == ["completed"]

        no_token = subprocess.run(  # token auth is on: a client without the token is refused
            [str(Path(PY).parent / "ray"), "job", "list"],
            cwd=ROOT,
            env={k: v for k, v in client.items() if k != "RAY_AUTH_TOKEN_PATH"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert no_token.returncode != 0 and "token" in (no_token.stdout + no_token.stderr).lower()
    finally:
        down = subprocess.run([*make, "cluster-down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
    assert down.returncode == 0, down.stderr[-2000:]
    assert "stopped" in down.stdout
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    assert LocalCluster.attach(folder) is None
    assert ray_cluster.alive()  # the other cluster on the machine is untouched
    again = subprocess.run([*make, "cluster-down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "no local cluster runs" in again.stdout
