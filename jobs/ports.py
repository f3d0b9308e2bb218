"""A free TCP port for a server this project names the port of (a Ray head): drawn below the kernel's ephemeral
range, which every port-0 bind and outgoing connection shares, and above Ray's worker ports (10002-19999)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port 0 and outgoing connections (Linux; elsewhere the IANA range)."""
    try:
        lo, hi = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 49152, 65535


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing is bound to now, outside the kernel's ephemeral range when the machine leaves room."""
    lo, _ = ephemeral_range()
    tries = [random.randrange(LOWEST, lo) for _ in range(200)] if lo - LOWEST >= 1000 else []
    for port in [*tries, 0]:  # 0: no room below the ephemeral range (or all taken): the kernel's choice
        with socket.socket() as sock:  # no SO_REUSEADDR: a port any socket holds, even in TIME_WAIT, is refused
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
