"""The suite's offline guard (tests/conftest.py): in-process tests cannot reach the network."""

import socket

import pytest

from tests.conftest import NetworkBlocked


def test_a_connection_off_this_machine_is_refused_before_it_leaves():
    # 192.0.2.1 is TEST-NET-1 (documentation only): the guard refuses it without sending anything.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s,
        pytest.raises(NetworkBlocked, match="offline"),
    ):
        s.connect(("192.0.2.1", 80))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkBlocked):
        s.connect_ex(("example.org", 443))


def test_loopback_is_allowed():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(server.getsockname())
            conn, _ = server.accept()
            conn.close()
