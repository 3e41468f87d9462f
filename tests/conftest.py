"""Shared fixtures. Tests never reach the network and never write outside their tmp_path.

Tiers: tests without a marker are ``unit``; ``e2e`` tests drive real components; ``slow`` ones (soaks)
are left out unless the ``-m`` expression asks for them (``pytest -m slow``). ``--shuffle SEED`` runs
the modules in a random order and the tests of each module in a random order (module fixtures stay
built once), to show that no test depends on another having run first.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import time
from pathlib import Path

import pytest

# Offline switches for every library the project drives (telemetry would try the network).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# The params every test starts from: a fixed copy, so a user's `dvc exp apply` or an edited params.yaml in
# the working copy never changes what the suite tests (tests/test_config.py keeps it in step with the schema).
PARAMS = Path(__file__).resolve().parent / "params.yaml"

# `make test` sets this to a file (bench/results/test_durations.txt): the run's slowest test phases, as
# `--durations=25` prints them, are written there at the end. CI keeps files, not console output.
DURATIONS_ENV = "GANOPS_TEST_DURATIONS"
_durations_file = pytest.StashKey[tuple[Path, float]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shuffle", type=int, default=None, metavar="SEED",
                     help="run modules, and the tests within each module, in an order shuffled by SEED")  # fmt: skip


def _asks_for_slow(config: pytest.Config) -> bool:
    """Whether the -m expression asks for ``slow`` tests: it selects a test marked ``slow`` and would not
    select an unmarked one (``-m slow``, ``-m "e2e or slow"``; not ``-m "not e2e"``, not ``-m "not slow"``).
    A real parse of the expression, not a substring match."""
    from _pytest.mark.expression import Expression

    expr = config.getoption("-m") or ""
    if not expr:
        return False
    e = Expression.compile(expr)
    return e.evaluate(lambda name, **_: name == "slow") and not e.evaluate(lambda name, **_: False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = _asks_for_slow(config)
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("e2e", "slow")):
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with -m slow"))
    seed = config.getoption("--shuffle")
    if seed is not None:
        rng = random.Random(seed)
        modules: dict[str, list[pytest.Item]] = {}
        for item in items:
            modules.setdefault(item.nodeid.split("::")[0], []).append(item)
        order = list(modules)
        rng.shuffle(order)
        for tests in modules.values():
            rng.shuffle(tests)
        items[:] = [item for m in order for item in modules[m]]


def pytest_configure(config: pytest.Config) -> None:
    # popped: the servers, `dvc` and `make` the tests start must not inherit it (nor write the file)
    target = os.environ.pop(DURATIONS_ENV, "")
    if target:
        config.stash[_durations_file] = (config.invocation_params.dir / target, time.time())
        if config.option.durations is None:  # on the console too
            config.option.durations = 25


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Write the slowest test phases to $GANOPS_TEST_DURATIONS' file, if set; a file that cannot be written
    is a warning, never a failed run."""
    if _durations_file not in config.stash:
        return
    path, started = config.stash[_durations_file]
    n = config.option.durations or None  # --durations=0: all of them
    stats = terminalreporter.stats
    reports = [r for reps in stats.values() for r in reps if hasattr(r, "duration")]  # as --durations does
    reports.sort(key=lambda r: r.duration, reverse=True)
    kinds = ("passed", "failed", "error", "skipped")
    counts = ", ".join(f"{len(stats[k])} {k}" for k in kinds if stats.get(k))
    lines = [
        f"# the {n or 'all'} slowest test phases (pytest --durations={n or 0}) of one run",
        f"# finished {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} after {time.time() - started:.0f} s "
        f"on {os.cpu_count()} CPUs: exit status {int(exitstatus)}, {counts or 'no tests'}",
        f"# pytest {' '.join(config.invocation_params.args)}".rstrip(),
        *(f"{r.duration:.2f}s {r.when:<8} {r.nodeid}" for r in reports[:n]),
    ]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    except OSError as err:  # a read-only checkout: the run's result stands
        terminalreporter.write_line(f"could not write the test durations to {path}: {err}", yellow=True)
    else:
        terminalreporter.write_line(f"test durations written to {path}")


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = config.getoption("--shuffle")
    return f"shuffled order: --shuffle {seed}" if seed is not None else None


class NetworkBlocked(OSError):
    """A test tried to reach a host other than this machine's loopback."""


def _loopback(address: object) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if not isinstance(host, str):
        return True  # AF_UNIX paths (bytes/str without a tuple) are local
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost: would need DNS and the network


@pytest.fixture(autouse=True, scope="session")
def offline_guard():
    """Every in-process connection goes to 127.0.0.1/::1 or a Unix socket; anything else fails at once with
    NetworkBlocked, so "works offline" is checked by every test that runs in-process (subprocesses such as
    `dvc`, `bentoml serve` and servers are not covered by this guard)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            raise NetworkBlocked(f"test tried to reach {address!r}: tests run offline")

    def connect(self: socket.socket, address: object) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex  # type: ignore[method-assign]


@pytest.fixture
def isolated_tracking(tmp_path, monkeypatch):
    """A private sqlite MLflow store for one test; returns its URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
