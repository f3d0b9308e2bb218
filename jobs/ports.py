"""A free TCP port on 127.0.0.1 for a server this project starts on a port it names (a Ray head, its dashboard).

Drawn at random below the kernel's ephemeral range (which every port-0 bind and outgoing connection shares, so
another process could take the port before Ray binds it) and above Ray's worker ports (10002-19999).
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
