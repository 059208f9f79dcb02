"""The tests' port source never hands out one port twice (CI once gave PostgreSQL and MLflow the same port)."""

import socket

from ports import free_port


def test_free_port_never_repeats_and_is_bindable():
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:  # the last one is free now
        s.bind(("127.0.0.1", ports[-1]))
