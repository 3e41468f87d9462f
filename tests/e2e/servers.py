"""Helpers for tests that start real servers on free loopback ports."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class PortTaken(RuntimeError):
    """Something that does not speak HTTP answers on the port we picked."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` died. The timeout is generous: a Prefect
    server needs ~15 s alone but took over 120 s on a 2-core machine running two other suites at once."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        except http.client.HTTPException as err:  # e.g. a ZeroMQ greeting (b"\xff...\x7f"): not our server
            raise PortTaken(f"{url}: a non-HTTP service answers there ({err!r})") from None
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        if time.time() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def start_server(
    launch: Callable[[int], subprocess.Popen], path: str, *, timeout: float = 300, attempts: int = 3
) -> tuple[subprocess.Popen, int]:
    """``launch(port)`` on a free loopback port until ``http://127.0.0.1:<port><path>`` answers 200.

    Picking a free port and the server binding it is a race: another process can take the port in between
    (in CI a socket answering with ZeroMQ's greeting did so — BentoML's process manager uses ZeroMQ). If a non-HTTP service answers there, or the
    server dies before answering, it is stopped and started again on another port, ``attempts`` times.
    """
    for attempt in range(1, attempts + 1):
        port = free_port()
        proc = launch(port)
        try:
            wait_http(f"http://127.0.0.1:{port}{path}", proc, timeout)
            return proc, port
        except (PortTaken, RuntimeError):
            stop(proc)
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@contextmanager
def prefect_server(cwd: Path, env: dict, log: Path) -> Iterator[str]:
    """`prefect server start` on a free loopback port (output to ``log``), stopped on exit; yields its API
    URL (``PREFECT_API_URL`` for the clients)."""
    with open(log, "w") as out:

        def launch(port: int) -> subprocess.Popen:
            return subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                    cwd=cwd, env=env | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"},
                                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip

        server, port = start_server(launch, "/api/health")
        try:
            yield f"http://127.0.0.1:{port}/api"
        finally:
            stop(server)


@contextmanager
def flows_served(cwd: Path, env: dict, log: Path) -> Iterator[subprocess.Popen]:
    """`python -m flows.serve` in ``cwd`` (the project's deployments, as `make flows-serve` runs them),
    output to ``log``, stopped on exit."""
    with open(log, "w") as out:
        served = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=cwd, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        try:
            yield served
        finally:
            stop(served)


def run_deployment(cmd: list[str], cwd: Path, env: dict, tries: int = 60) -> subprocess.CompletedProcess:
    """``cmd`` (a `prefect deployment run ...`), again while the deployment is not found yet: it appears a
    moment after `flows.serve` starts."""
    for _ in range(tries):
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        if "not found" not in (r.stdout + r.stderr).lower():
            return r
        time.sleep(1)
    return r
