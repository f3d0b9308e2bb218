"""The README's "Ray jobs on a local cluster" path, as written, from an empty HOME: `make cluster-up` generates
the token and starts a loopback-only head with token auth; `ray job submit` runs a job on it; `make cluster-down`
stops that cluster and nothing else (the session's other test cluster keeps running)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from conftest import PY, ROOT, base_env, free_port

from jobs.local_cluster import cluster_processes
from jobs.store import Store


def listening_ports(pids: set[int]) -> set[tuple[str, int]]:
    import psutil

    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def test_cluster_up_submit_down_from_an_empty_home(ray_cluster, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="pr-", dir="/tmp")  # short: Ray's socket paths live under it
    port, dash = free_port(), free_port()
    env = base_env(HOME=str(home))
    for key in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(key, None)  # the README's shell has neither set
    args = f"--port {port} --dashboard-port {dash} -- --ray-client-server-port={free_port()} --dashboard-agent-listen-port={free_port()}"
    make = ["make", "-s", f"CLUSTER_DIR={temp_dir}", f"CLUSTER_ARGS={args}"]
    try:
        up = subprocess.run([*make, "cluster-up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        token = home / ".ray" / "auth_token"
        assert token.is_file() and oct(token.stat().st_mode & 0o777) == "0o600"  # generated, owner-only
        assert f"export RAY_ADDRESS=http://127.0.0.1:{dash} RAY_AUTH_MODE=token" in up.stdout

        procs = cluster_processes(temp_dir)
        assert len(procs) >= 4, [p.name() for p in procs]  # gcs, raylet, dashboard, monitors, agents
        ports = listening_ports({p.pid for p in procs})
        assert ports and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _ in ports), ports

        client = env | {"RAY_ADDRESS": f"http://127.0.0.1:{dash}", "RAY_AUTH_MODE": "token"}
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
            env=client | {"HOME": str(tmp_path / "other-home")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert no_token.returncode != 0 and "token" in (no_token.stdout + no_token.stderr).lower()
    finally:
        down = subprocess.run([*make, "cluster-down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr[-2000:]
    assert "stopped" in down.stdout
    assert cluster_processes(temp_dir) == []
    assert ray_cluster.proc.poll() is None  # the other cluster on the machine is untouched
    again = subprocess.run([*make, "cluster-down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "no cluster runs" in again.stdout
