"""Shared fixtures. Unit tests need none of these; integration tests use a real Ray cluster."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from jobs.cluster_local import LocalCluster
from jobs.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A HOME of the test session's own: the Ray auth token the test clusters generate, and anything else a tool keeps
# under ~, never touch the developer's (a test passing only because ~/.ray/auth_token already exists proves nothing).
# tests/lanes.sh runs one lane as a background job, which starts with SIGINT ignored: take it back, so that an
# interrupt runs the fixtures' teardown (which stops the Ray clusters they started)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TEST_HOME = tempfile.mkdtemp(prefix="perennial-test-home-")
os.environ["HOME"] = TEST_HOME
# A Ray head's dashboard reads ~/ray_bootstrap_config.yaml for its cluster report; without one it probes the cloud
# instance-metadata servers (169.254.169.254, metadata.google.internal). Naming the local provider skips the probe.
(Path(TEST_HOME) / "ray_bootstrap_config.yaml").write_text("provider: {type: local}\n")

# Under CI, every Python process the tests start refuses (and logs) a connection beyond 127.0.0.1:
# tests/netguard/sitecustomize.py, on the PYTHONPATH that every subprocess, job and Ray worker inherits.
NET_GUARD_DIR = ROOT / "tests" / "netguard"
NET_GUARD = bool(os.environ.get("CI")) or os.environ.get("PERENNIAL_NET_GUARD") == "1"
if NET_GUARD:
    # One log per test session (a log the caller names is kept), judged at the session's end.
    os.environ.setdefault("PERENNIAL_NET_GUARD_LOG", str(Path(TEST_HOME) / "net-guard.log"))
    sys.path.insert(0, str(NET_GUARD_DIR))
    import sitecustomize as _net_guard

    _net_guard.install()
TEST_PYTHONPATH = os.pathsep.join([str(ROOT), *([str(NET_GUARD_DIR)] if NET_GUARD else [])])
os.environ["PYTHONPATH"] = TEST_PYTHONPATH


RAY_TEMP_DIRS: list[str] = []  # the Ray heads' temp dirs (logs): removed at the end of a session that passed


def pytest_sessionfinish(session, exitstatus):
    """The guard's verdict: any refused connection fails the session, naming the process and the address. Then
    the session's own temp folders go (its HOME; the Ray heads' logs unless the session failed)."""
    log = Path(os.environ.get("PERENNIAL_NET_GUARD_LOG", "/nonexistent"))
    if NET_GUARD and log.is_file() and log.read_text().strip():
        lines = log.read_text().splitlines()
        print(f"\nNETWORK GUARD: {len(lines)} attempt(s) to reach beyond 127.0.0.1 (first 20):", file=sys.stderr)
        print("\n".join(lines[:20]), file=sys.stderr)
        session.exitstatus = 1
    if session.exitstatus == 0:
        for folder in RAY_TEMP_DIRS:
            shutil.rmtree(folder, ignore_errors=True)
    elif RAY_TEMP_DIRS:
        print(f"\nRay logs of this session's test clusters: {' '.join(RAY_TEMP_DIRS)}", file=sys.stderr)
    shutil.rmtree(TEST_HOME, ignore_errors=True)  # the guard's log (read above) and the token live there


def base_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: the venv's bin first on PATH (Ray jobs run `python`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(PY).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = TEST_PYTHONPATH
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


class RayCluster:
    """A one-node cluster of jobs.cluster_local for the tests, with the environments their jobs get."""

    def __init__(self, num_cpus: int = 2, token_auth: bool = True):
        folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are capped at 107 chars
        RAY_TEMP_DIRS.append(folder)
        # One node, never more: no spot notice to watch, so no Ray Train preemption watcher (an actor process per
        # run), as jobs.train does on its own embedded cluster; the multi-node clusters of test_preemption.py keep it.
        base = base_env(RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0")
        self.cluster = LocalCluster.start(folder, num_cpus=num_cpus, token_auth=token_auth, env=base)
        self.address, self.dashboard = self.cluster.address, self.cluster.dashboard
        self.token_file = self.cluster.token_path
        self.dashboard_port = int(self.dashboard.rsplit(":", 1)[1])
        self.ray_tmpdir = self.cluster.dir  # the cluster's RAY_TMPDIR: it names itself in <it>/ray/ray_current_cluster
        self.proc = psutil.Process(self.cluster.supervisor_pid)  # every process of the cluster descends from it
        # what a test hands a job: the cluster's token, no address (job_env adds it; a submit test names the dashboard)
        client = {k: v for k, v in self.cluster.env().items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        self.env = base | client | {"RAY_TMPDIR": str(self.ray_tmpdir)}

    def job_env(self, **extra: str) -> dict[str, str]:
        """Environment for a process that should use this cluster (as `ray job submit` gives)."""
        return self.env | {"RAY_ADDRESS": self.address} | extra

    def alive(self) -> bool:
        return self.cluster.alive()

    def stop(self) -> None:
        self.cluster.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    cluster = RayCluster()
    yield cluster
    cluster.stop()


def run_job(
    args: list[str], env: dict[str, str], timeout: float = 300, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """Run ``python -m jobs.<verb> ...`` as a real subprocess; output kept for assertions."""
    return subprocess.run([PY, "-m", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def smoke_train(store: str | Path, *overrides: str, config: str = "configs/mlp.yaml") -> list[str]:
    """The arguments of a ``jobs.train --smoke-test`` run of ``config`` into ``store``, for ``run_job``."""
    return ["jobs.train", "--config", config, "--smoke-test", "--store", str(store), *overrides]


def run_jobs_at_once(
    *jobs: tuple[list[str], dict[str, str]], timeout: float = 300
) -> list[subprocess.CompletedProcess]:
    """Several independent ``run_job`` calls at once (each ``(args, env)``), results in order: their start-ups and
    waits overlap, which shortens a test that needs two runs side by side."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: run_job(job[0], job[1], timeout=timeout), jobs))


def one_error_line(res: subprocess.CompletedProcess, code: int = 2, only_line: bool = True) -> str:
    """The contract of bad input (exit 2) and of no cluster (exit 1): that exit code, exactly one
    ``error: <problem> — <fix>`` line and no Python traceback; with ``only_line``, nothing else on stderr.
    Returns the line."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    # lines Ray forwards from its own actors ("(TrainController pid=12)") are Ray's log, not this command's output
    ours = [ln for ln in lines if not re.match(r"(\x1b\[\d+m)?\(\w+ pid=\d+", ln)]
    errors = [ln for ln in ours if ln.startswith("error: ")]
    assert res.returncode == code, f"exit {res.returncode}, want {code}:\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
    assert len(errors) == 1, f"want one 'error:' line:\n{res.stderr[-2000:]}"
    assert not any(ln.startswith("Traceback") for ln in ours), f"a traceback of this command:\n{res.stderr[-2000:]}"
    assert not only_line or len(lines) == 1, f"want nothing but the error line on stderr:\n{res.stderr[-2000:]}"
    return errors[0]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


class S3Server:
    """A real S3 API server (moto's server mode) on 127.0.0.1, with credentials in AWS_* env vars."""

    def __init__(self, services: str = "s3"):  # "all": EC2, IAM and the rest too (the cloud bootstrap tests)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("moto_s3.py")), str(self.port), services],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:  # ready once it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server on 127.0.0.1:{self.port} did not start") from None
                time.sleep(0.1)
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def make_bucket(self, name: str) -> str:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_server():
    """Session-wide S3 server; its AWS_* variables are set in this process for pyarrow/boto3."""
    server = S3Server()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
