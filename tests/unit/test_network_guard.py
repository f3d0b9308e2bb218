"""What keeps the tests on loopback. First tests/netns.sh, which `make test` runs pytest under: a network namespace
holding only `lo`, where a connect beyond it has no route. Where no namespace can be made, the network guard
(tests/netguard/sitecustomize.py, turned on by tests/conftest.py): a Python process with it refuses a TCP
connection or a name lookup beyond 127.0.0.1 and logs it, and lets loopback through. The refused attempts run
inside an empty network namespace (`unshare -n`), so nothing could leave the machine even if the guard were broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUARD = ROOT / "tests" / "netguard"

ATTEMPTS = """
import socket
out = []
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("192.0.2.1", 9))  # TEST-NET-1: documentation only
    out.append("connected")
except OSError as e:
    out.append(str(e))
try:
    socket.getaddrinfo("example.com", 443)
    out.append("resolved")
except OSError as e:
    out.append(str(e))
print("|".join(out))
"""

LOOPBACK = """
import socket
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
c = socket.create_connection(srv.getsockname(), timeout=5)
import sitecustomize
# a UDP connect sends nothing: allowed (Ray learns its outward IP this way); the guard's check alone, no syscall
sitecustomize._hook("socket.connect", (socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ("192.0.2.1", 9)))
print("loopback ok")
"""


def guarded_env(log: Path) -> dict[str, str]:
    return dict(os.environ, PERENNIAL_NET_GUARD_LOG=str(log), PYTHONPATH=os.pathsep.join([str(ROOT), str(GUARD)]))


def test_guard_refuses_and_logs_what_would_leave_the_machine(tmp_path):
    if shutil.which("unshare") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the network guard's own test needs `unshare -n` (root), which CI has")
        pytest.skip("needs `unshare -n` (root) to run the refused attempts in an empty network namespace")
    log = tmp_path / "guard.log"
    res = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", ATTEMPTS],
        env=guarded_env(log),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    connect, lookup = res.stdout.strip().split("|")
    assert "network guard: socket.connect to ('192.0.2.1', 9) refused" in connect
    assert "network guard: socket.getaddrinfo to 'example.com' refused" in lookup
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and "192.0.2.1" in lines[0] and "example.com" in lines[1], lines


def test_guard_lets_loopback_through(tmp_path):
    log = tmp_path / "guard.log"
    res = subprocess.run(
        [sys.executable, "-c", LOOPBACK], env=guarded_env(log), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and res.stdout.strip() == "loopback ok", res.stderr[-2000:]
    assert not log.exists()


NETNS = ROOT / "tests" / "netns.sh"
THROUGH_THE_WRAPPER = """
import os, socket
via = {r.split()[0] for r in open("/proc/net/route").read().splitlines()[1:]}  # IPv4: the interface comes first
via |= {r.split()[-1] for r in open("/proc/net/ipv6_route").read().splitlines()}  # IPv6: last
print([name for _, name in socket.if_nameindex()], sorted(via), open("/etc/resolv.conf").read().split())
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
socket.create_connection(srv.getsockname(), timeout=5)
print("loopback ok", os.environ["AWS_EC2_METADATA_DISABLED"], os.environ["RAY_USAGE_STATS_ENABLED"])
"""


def wrapper_env(**extra: str) -> dict[str, str]:
    """This process's environment without the Python guard (CI turns it on), so the wrapper alone is tested."""
    env = {k: v for k, v in os.environ.items() if k not in ("PERENNIAL_NET_GUARD", "AWS_EC2_METADATA_DISABLED", "CI")}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).name != "netguard"]
    return env | {"PYTHONPATH": os.pathsep.join(paths)} | extra


def test_netns_wrapper_lets_loopback_through_and_nothing_else():
    """tests/netns.sh, which `make test` runs pytest under: no interface but `lo`, no route through any other, and
    the resolver on 127.0.0.1 (torch's TCPStore client looks up its peer's name: that query stays on loopback)."""
    if subprocess.run(["unshare", "-n" if os.geteuid() == 0 else "-rn", "true"], capture_output=True).returncode:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root, where `unshare -n` makes the tests' network namespace")
        pytest.skip("no network namespace can be made here (the wrapper falls back to the Python guard)")
    res = subprocess.run(
        ["bash", str(NETNS), sys.executable, "-c", THROUGH_THE_WRAPPER],
        env=wrapper_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("\n")[:2] == ["['lo'] ['lo'] ['nameserver', '127.0.0.1']", "loopback ok true 0"], (
        res.stdout + res.stderr
    )
    assert res.stderr == ""


def test_netns_wrapper_without_a_namespace_says_so_and_turns_the_python_guard_on(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with no unshare on it
    bin_dir.mkdir()
    for tool in ("bash", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    res = subprocess.run(
        ["bash", str(NETNS), sys.executable, "-c", "import os; print(os.environ.get('PERENNIAL_NET_GUARD'))"],
        env=wrapper_env(PATH=str(bin_dir)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and res.stdout.strip() == "1", res.stdout + res.stderr
    assert len(res.stderr.splitlines()) == 1 and "no network namespace" in res.stderr


def test_ray_cluster_report_makes_no_connection_with_the_sessions_bootstrap_file(monkeypatch):
    """tests/conftest.py writes ~/ray_bootstrap_config.yaml: a Ray head's dashboard then reads its provider from it
    instead of probing cloud instance-metadata servers. A Ray upgrade that probes even so fails here."""
    import socket

    from ray._common.usage import usage_lib

    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: attempts.append(addr))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or [])
    monkeypatch.setattr(socket, "create_connection", lambda addr, *a, **k: attempts.append(addr))
    report = usage_lib.get_cluster_config_to_report(os.path.expanduser("~/ray_bootstrap_config.yaml"))
    assert report.cloud_provider == "local"
    assert attempts == []
