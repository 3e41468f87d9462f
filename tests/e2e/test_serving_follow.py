"""The live service follows the champion alias: promote while it serves, under concurrent clients."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving.batcher import forward

from ganops.models.gan import load_generator
from ganops.tracking import set_alias
from tests.e2e.serving_env import make_champion, serve, train_version

pytestmark = pytest.mark.e2e
POLL_S = 2.0


@pytest.fixture(scope="module")
def registry():
    """A registry with v1 as @champion and v2 registered but not promoted, and a service polling it."""
    tmp = Path(tempfile.mkdtemp(prefix="ganops-follow-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    v1 = make_champion(tmp, uri)
    v2 = train_version(tmp, uri, seed=1, metrics={"domain_fid": 1.0})
    try:
        with serve(tmp, uri, GANOPS_POLL_SECONDS=str(POLL_S)) as base:
            yield base, uri, v1, v2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _promote(uri: str, version: int) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        set_alias("ganops-generator", "champion", version)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def _expected(export: Path, seed: int, n: int) -> np.ndarray:
    """What version ``export`` draws for ``seed``: (n, S, S, 1) uint8, computed here, not by the service."""
    import torch

    G = load_generator(export)
    return forward(G, torch.randn(n, G.cfg.latent_dim, generator=torch.Generator().manual_seed(seed)).numpy())


def test_promotion_is_followed_within_the_poll_interval_without_a_failed_request(registry):
    base, uri, v1, v2 = registry
    want = {v1["version"]: _expected(v1["export"], 7, 2), v2["version"]: _expected(v2["export"], 7, 2)}
    assert not np.array_equal(*want.values())  # the two versions draw different images
    answers: list[tuple[float, int, str | None, bytes]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                r = c.post(base + "/generate", json={"n": 2, "seed": 7, "format": "npy"})
                answers.append((time.time(), r.status_code, r.headers.get("x-model-version"), r.content))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        promoted_at = time.time()
        _promote(uri, v2["version"])
        deadline = promoted_at + POLL_S + 20  # the poll interval, plus loading v2 on a busy shared machine
        while time.time() < deadline and not any(a[2] == str(v2["version"]) for a in answers):
            time.sleep(0.1)
        time.sleep(1.0)  # and keep serving a while after the switch
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert [a[1] for a in answers if a[1] != 200] == []  # no failed request during the switch
    first_new = min((a[0] for a in answers if a[2] == str(v2["version"])), default=None)
    assert first_new is not None, "the service never switched to the new champion"
    print(f"switched {first_new - promoted_at:.2f} s after the promotion (poll every {POLL_S} s)")
    for _, _, version, body in answers:  # the header names the version that drew these very images
        assert np.array_equal(np.load(io.BytesIO(body)), want[int(version)])
    info = httpx.post(base + "/model", json={}, timeout=30).json()
    assert info["version"] == v2["version"] and info["metrics"]["domain_fid"] == 1.0
    assert sorted(v["version"] for v in info["versions"]) == [v1["version"], v2["version"]]


def test_reload_switches_at_once_and_model_and_generate_agree(registry):
    base, uri, v1, v2 = registry
    _promote(uri, v1["version"])  # back: a rollback is a promotion too
    r = httpx.post(base + "/reload", json={}, timeout=60).json()
    assert r["version"] == v1["version"]  # switched by this call (or by a poll just before it)
    g = httpx.post(base + "/generate", json={"n": 2, "seed": 7, "format": "npy"}, timeout=30)
    m = httpx.post(base + "/model", json={}, timeout=30)
    assert g.headers["x-model-version"] == m.headers["x-model-version"] == str(v1["version"])
    assert m.json()["version"] == v1["version"]
    assert np.array_equal(np.load(io.BytesIO(g.content)), _expected(v1["export"], 7, 2))
    assert httpx.post(base + "/reload", json={}, timeout=60).json() == {
        "switched": False,
        "version": v1["version"],
    }
