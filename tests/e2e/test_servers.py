"""The helpers that start real servers: a port taken by something that is not our server is retried."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from tests.e2e.servers import PortTaken, start_server, wait_http

ZMQ_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f"  # what answered on a taken port in CI


def _not_http(port: int) -> socket.socket:
    """A listener on ``port`` that greets every connection like ZeroMQ does, then hangs up."""
    srv = socket.create_server(("127.0.0.1", port))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:  # closed
                return
            with conn:
                conn.sendall(ZMQ_GREETING)

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_wait_http_names_a_non_http_service():
    srv = _not_http(0)
    proc = _sleeper()
    try:
        with pytest.raises(PortTaken, match="non-HTTP"):
            wait_http(f"http://127.0.0.1:{srv.getsockname()[1]}/", proc, timeout=10)
    finally:
        srv.close()
        proc.kill()


def test_start_server_moves_to_another_port_when_one_is_taken():
    launched, squatters = [], []

    def launch(port: int) -> subprocess.Popen:
        if not launched:  # first try: the port gets taken before our "server" binds it
            squatters.append(_not_http(port))
            proc = _sleeper()
        else:
            cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        launched.append((port, proc))
        return proc

    try:
        proc, port = start_server(launch, "/", timeout=30)
        assert len(launched) == 2 and port == launched[1][0] != launched[0][0]
        assert launched[0][1].poll() is not None  # the first try was stopped
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        for s in squatters:
            s.close()
        for _, p in launched:
            p.kill()
