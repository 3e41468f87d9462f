"""Shared fixtures. Tests never reach the network and never write outside their tmp_path."""

from __future__ import annotations

import os

import pytest

# Offline switches for every library the project drives (telemetry would try the network).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests without a tier marker are unit tests; `slow` ones run only when asked for (-m slow).
    run_slow = "slow" in (config.getoption("-m") or "")
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("e2e", "slow")):
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with -m slow"))


@pytest.fixture
def isolated_tracking(tmp_path, monkeypatch):
    """A private sqlite MLflow store for one test; returns its URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
