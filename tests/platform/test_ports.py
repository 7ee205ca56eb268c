"""free_port: the ports one process hands out (`fusion-prime up`, the test harness) differ.

The kernel offers a port released by a probe socket again soon (2,000 probes repeated 120
times here); two services of one start-up then got the same port, one failed to bind and
the other's answers were taken for its readiness (a CI failure in the full-disk case)."""

from __future__ import annotations

import socket

from fusion_prime.platform.embedded import free_port


def test_free_port_never_hands_out_a_port_twice_and_each_can_be_bound() -> None:
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
    # each is free when handed out: the last ones can be bound and listened on now
    for port in ports[-20:]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
            s.listen()
