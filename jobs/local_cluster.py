"""A one-machine Ray cluster for `ray job submit` and `python -m jobs.submit`: loopback only, token auth on.

    python -m jobs.local_cluster up   [--temp-dir /tmp/perennial-ray] [--num-cpus N] [--dashboard-port 8265] [-- RAY START ARGS]
    python -m jobs.local_cluster down [--temp-dir /tmp/perennial-ray]
    (make cluster-up / make cluster-down)

``up`` works from a fresh HOME: it generates the token Ray's token auth needs (``ray get-auth-token --generate``,
kept at ``~/.ray/auth_token``, mode 0600) when there is none, then starts the head with ``RAY_AUTH_MODE=token``,
every listener on 127.0.0.1 and its own temp dir. It prints the two variables a client needs.

``down`` stops that cluster and nothing else: the processes whose command line names its temp dir (GCS, raylet,
dashboard, monitors) and every descendant of those (workers and agents, which Ray renames so that their command
line no longer shows the temp dir). Never ``ray stop``: it ends every Ray process of the user, other clusters and
test runs included.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from jobs.errors import ClusterError, UserError, cli_main

DEFAULT_TEMP_DIR = "/tmp/perennial-ray"
STATE = "perennial-cluster.json"


def ray_bin() -> str:
    """The `ray` CLI of this interpreter's environment (the venv), so the cluster runs the project's Python."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else "ray"


def ensure_token() -> Path:
    """``~/.ray/auth_token``, generated if missing, readable by its owner only."""
    path = Path.home() / ".ray" / "auth_token"
    if not path.is_file():
        out = subprocess.run([ray_bin(), "get-auth-token", "--generate"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0 or not path.is_file():
            raise ClusterError(f"could not generate a Ray auth token: {(out.stderr or out.stdout).strip()[-300:]}")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def cluster_env() -> dict[str, str]:
    """What every process of the cluster and every client needs: token auth on, Ray's single-machine mode (all
    listeners on loopback; Ray 2.60 otherwise binds GCS, raylet and metrics ports on all interfaces)."""
    return {"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def up(temp_dir: str, port: int, dashboard_port: int, num_cpus: int | None, extra: list[str] = ()) -> dict:
    temp = Path(temp_dir).resolve()
    if cluster_processes(str(temp)):
        raise UserError(f"a cluster already runs from {temp} — stop it with: make cluster-down (or pick --temp-dir)")
    temp.mkdir(parents=True, exist_ok=True)
    token = ensure_token()
    cmd = [
        ray_bin(),
        "start",
        "--head",
        "--disable-usage-stats",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--temp-dir={temp}",
        *([f"--num-cpus={num_cpus}"] if num_cpus is not None else []),
        *extra,
    ]
    # the jobs' `python` is the first on the cluster's PATH: this environment's (the venv's), as for `ray` itself
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    out = subprocess.run(
        cmd, env=os.environ | cluster_env() | {"PATH": path}, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        lines = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        raise ClusterError(f"ray start failed: {lines[-1][:300] if lines else out.returncode}")
    state = {
        "address": f"127.0.0.1:{port}",
        "dashboard": f"http://127.0.0.1:{dashboard_port}",
        "temp_dir": str(temp),
        "token_file": str(token),
        "started_at": time.time(),
    }
    (temp / STATE).write_text(json.dumps(state, indent=1))
    return state


def cluster_processes(temp_dir: str) -> list:
    """The cluster's processes: those whose command line names ``temp_dir`` (or, for the Ray client server, the
    cluster's GCS address from its state file), plus all their descendants."""
    import psutil

    state_file = Path(temp_dir, STATE)
    address = json.loads(state_file.read_text())["address"] if state_file.is_file() else None

    mine = {os.getpid()} | {p.pid for p in psutil.Process().parents()}  # make, the shell, this command
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            args = proc.info["cmdline"] or ()
            # Ray's own processes name the dir as `--temp-dir=DIR` / `--temp_dir=DIR` or a path in its session
            if proc.pid not in mine and any(
                a.endswith("=" + temp_dir) or f"{temp_dir}/session" in a or (address and a == f"--address={address}")
                for a in args
            ):
                roots.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            found |= {c.pid: c for c in proc.children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    for pid in mine:
        found.pop(pid, None)
    return list(found.values())


def down(temp_dir: str, timeout_s: float = 20.0) -> int:
    """SIGTERM the cluster's processes, SIGKILL what is left after ``timeout_s``; returns how many there were."""
    import psutil

    procs = cluster_processes(str(Path(temp_dir).resolve()))
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.local_cluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("up", "down"):
        s = sub.add_parser(name)
        s.add_argument("--temp-dir", default=os.environ.get("PERENNIAL_CLUSTER_DIR", DEFAULT_TEMP_DIR))
        if name == "up":
            s.add_argument("--port", type=int, default=6379, help="GCS port")
            s.add_argument("--dashboard-port", type=int, default=8265, help="dashboard and job server port")
            s.add_argument("--num-cpus", type=int, help="CPUs the head offers (default: all)")
    argv, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = p.parse_args(argv)
    if args.cmd == "down":
        n = down(args.temp_dir)
        print(
            f"stopped {n} process(es) of the cluster in {args.temp_dir}"
            if n
            else f"no cluster runs from {args.temp_dir}"
        )
        return 0
    state = up(args.temp_dir, args.port, args.dashboard_port, args.num_cpus, extra)
    print(f"Ray cluster up: {state['address']}, dashboard {state['dashboard']} (127.0.0.1 only, token auth on)")
    print(f"token: {state['token_file']}   stop it with: make cluster-down")
    print("in each shell that submits jobs:")
    print(f"  export RAY_ADDRESS={state['dashboard']} RAY_AUTH_MODE=token")
    return 0


if __name__ == "__main__":
    cli_main(main)
