"""Shared fixtures. Tests never reach the network and never write outside their tmp_path.

Tiers: tests without a marker are ``unit``; ``e2e`` tests drive real components; ``slow`` ones (soaks)
are left out unless the ``-m`` expression asks for them (``pytest -m slow``). ``--shuffle SEED`` runs
the modules in a random order and the tests of each module in a random order (module fixtures stay
built once), to show that no test depends on another having run first.
"""

from __future__ import annotations

import os
import random
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


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = config.getoption("--shuffle")
    return f"shuffled order: --shuffle {seed}" if seed is not None else None


@pytest.fixture
def isolated_tracking(tmp_path, monkeypatch):
    """A private sqlite MLflow store for one test; returns its URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
