"""Network guard for the test suite: any Python process started with PERENNIAL_NET_GUARD_LOG in its environment
(pytest itself, every job, Ray worker and subprocess the tests start, since they inherit it through PYTHONPATH)
refuses to open a TCP connection, send a UDP datagram or resolve a name beyond this machine, and appends a line
naming the process and the address to that log. tests/conftest.py turns it on under CI and fails the session
when the log is not empty. Audit hooks see Python-level sockets only; C++ clients (Arrow's S3, Ray core) are
kept on 127.0.0.1 by the tests' own settings (AWS_ENDPOINT_URL, --node-ip-address)."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

_LOG = os.environ.get("PERENNIAL_NET_GUARD_LOG")
_LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", socket.gethostname()}
# Refused like any other address, but not a test's fault: Ray's dashboard probes the cloud metadata services and
# its usage-stats host even with usage stats off (RAY_USAGE_STATS_ENABLED=0, --disable-usage-stats); measured in
# a CI run, these were the only attempts. Logged to <log>.known, which does not fail the session.
_KNOWN = {"usage-stats.ray.io", "169.254.169.254", "metadata.google.internal"}


def _is_local(host) -> bool:
    if host is None or isinstance(host, int):
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").split("%")[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name that is not this machine's: resolving it is network traffic
    return (
        ip.is_loopback
        or ip.is_unspecified
        or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)
    )


def _refuse(event: str, target) -> None:
    line = f"{os.getpid()} {event} {target!r} {' '.join(sys.argv)[:200]}\n"
    try:
        with open(_LOG + ".known" if target in _KNOWN else _LOG, "a") as f:
            f.write(line)
    except OSError:
        pass
    raise OSError(f"network guard: {event} to {target!r} refused (tests may reach 127.0.0.1 only)")


def _hook(event: str, args) -> None:
    if event == "socket.connect" or event == "socket.sendto":
        sock, address = args[0], args[1]
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # unix sockets
        if event == "socket.connect" and sock.type == socket.SOCK_DGRAM:
            return  # a UDP connect sends nothing (Ray uses one to learn the outward IP)
        if isinstance(address, tuple) and not _is_local(address[0]):
            _refuse(event, address[:2])
    elif event == "socket.getaddrinfo":
        if not _is_local(args[0]):
            _refuse(event, args[0])


def install() -> None:
    if _LOG and not getattr(sys, "_perennial_net_guard", False):
        sys._perennial_net_guard = True
        sys.addaudithook(_hook)


install()
