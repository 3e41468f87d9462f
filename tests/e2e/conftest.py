"""Fixtures of the e2e tier shared by several files."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.serving_env import make_champion, serve


@pytest.fixture(scope="session")
def server():
    """One `bentoml serve` of the project's service over a temp registry, for every serving test file that
    only reads (the alias never moves here; tests/e2e/test_serving_follow.py has its own server).

    Yields (base URL, the champion's facts). The registry is polled every second, so every test also runs
    while the follower thread is busy. Uploads must be at least 18 px on each side (``GANOPS_MIN_SIDE``).
    """
    tmp = Path(tempfile.mkdtemp(prefix="ganops-serve-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    facts = make_champion(tmp, uri)
    try:
        # GANOPS_MIN_SIDE above its default (16) and under the tests' 20 px uploads: the setting is read
        with serve(tmp, uri, GANOPS_POLL_SECONDS="1", GANOPS_MIN_SIDE="18") as base:
            yield base, facts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
