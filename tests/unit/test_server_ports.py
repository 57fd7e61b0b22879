"""Free loopback ports for the servers tests and perf runs start: the three of one server are distinct."""

from __future__ import annotations

from sdtriton.server import ServerAddress, free_ports


def test_ports_chosen_together_are_distinct() -> None:
    for _ in range(50):
        ports = free_ports(3)
        assert len(set(ports)) == 3 and all(port > 0 for port in ports)
    address = ServerAddress.on_free_ports()
    assert len({address.http_port, address.grpc_port, address.metrics_port}) == 3
