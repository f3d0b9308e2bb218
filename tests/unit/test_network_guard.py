"""The network guard that CI runs the suite under (tests/netguard/sitecustomize.py, turned on by tests/conftest.py):
a Python process with it refuses a TCP connection or a name lookup beyond 127.0.0.1 and logs it, and lets
loopback through. The refused attempts run inside an empty network namespace (`unshare -n`), so nothing could
leave the machine even if the guard were broken."""

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
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("192.0.2.1", 9))  # a UDP connect sends nothing: allowed (Ray learns its outward IP this way)
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
