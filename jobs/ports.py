"""A free TCP port on 127.0.0.1 for a server that this project starts on a port it names (a Ray head, its dashboard).

Not ``bind(("127.0.0.1", 0))``: the kernel hands that port out of its ephemeral range, the same range it hands every
other process that binds port 0 (each Ray cluster's own gRPC servers) and every outgoing connection. Between the
moment a port is chosen and the moment Ray binds it (seconds, while ``ray start`` comes up), another process on the
machine can take it. That happened in CI: two Ray clusters started side by side, and the dashboard port one of them
had been given answered with a gRPC server's HTTP/2 bytes. So the port is drawn at random from the range below the
ephemeral one and above Ray's worker ports (``--min-worker-port`` 10002 to ``--max-worker-port`` 19999 by default),
which only a process that names its port uses, and it is checked free by binding it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000  # above Ray's default worker ports (10002-19999)
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port 0 and outgoing connections (Linux; elsewhere the IANA range)."""
    try:
        lo, hi = (int(p) for p in _RANGE_FILE.read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 49152, 65535


def _bindable(port: int, host: str) -> bool:
    with socket.socket() as sock:  # no SO_REUSEADDR: a port any socket holds, even one in TIME_WAIT, is refused
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing is bound to now, outside the kernel's ephemeral range when the machine leaves room."""
    lo, _ = ephemeral_range()
    if lo - LOWEST >= 1000:
        for _ in range(200):
            port = random.randrange(LOWEST, lo)
            if _bindable(port, host):
                return port
    with socket.socket() as sock:  # no room below the ephemeral range (or all taken): the kernel's choice
        sock.bind((host, 0))
        return sock.getsockname()[1]
