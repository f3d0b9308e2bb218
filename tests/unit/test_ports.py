"""jobs.ports: ports for the servers the project starts, outside the range the kernel hands to port 0."""

from __future__ import annotations

import socket

from jobs import ports


def test_a_free_port_is_outside_the_kernels_ephemeral_range_and_above_rays_worker_ports():
    lo, hi = ports.ephemeral_range()
    got = {ports.free_port() for _ in range(50)}
    assert all(ports.LOWEST <= p < lo for p in got), (sorted(got), lo, hi)
    assert len(got) > 1  # drawn at random, not one fixed port every caller would share


def test_a_port_a_socket_holds_is_never_handed_out(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        monkeypatch.setattr(ports, "LOWEST", taken)
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (taken + 1000, 60999))
        monkeypatch.setattr(ports.random, "randrange", lambda a, b: taken)  # the draw always lands on the held port
        port = ports.free_port()
    assert port != taken  # fell back to the kernel's choice after the draws kept hitting it


def test_the_port_handed_out_can_be_bound_by_the_server():
    port = ports.free_port()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", port))
        srv.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
