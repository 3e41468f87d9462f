"""A damaged registered version: the service refuses it at reload, keeps serving the one it has and logs
why; at start, with nothing held yet, it stops naming the version and what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from ganops.config import PLAIN_DCGAN, DataParams, GanParams, parse_params
from ganops.data import prepare
from ganops.tracking import RunContext, register_generator, set_alias, start_run
from ganops.train_gan import fit
from tests.e2e.servers import free_port, stop
from tests.e2e.serving_env import ROOT, serve

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def registry():
    """`gen` v1 (good), v2 (its generator.pt bit-flipped before it was logged) and v3 (only its config.json
    uploaded so far: the test finishes the upload), alias `prod` -> v1."""
    tmp = Path(tempfile.mkdtemp(prefix="ganops-serve-damaged-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    d = prepare(DataParams(image_size=16, limit=64))
    p = GanParams(**PLAIN_DCGAN, latent_dim=8, ngf=4, ndf=4, batch_size=16, steps=2, sample_every=2,
                  checkpoint_every=2)  # fmt: skip
    os.environ["MLFLOW_TRACKING_URI"] = uri
    versions = []
    try:
        for damaged in (False, True):
            with start_run(parse_params({}), ctx=RunContext("test"), data_hash="h", root=tmp) as run:
                r = fit(d.images, p, tmp / f"gan{int(damaged)}", progress=False)
                if damaged:
                    gen = r.export / "generator.pt"
                    data = bytearray(gen.read_bytes())
                    data[len(data) // 2] ^= 0x04
                    gen.write_bytes(bytes(data))
                run.log_artifacts(r.export, "checkpoint")
            versions.append(register_generator(run.run_id, "gen", {"dataset_hash": "h"})["version"])
        with start_run(parse_params({}), ctx=RunContext("test"), data_hash="h", root=tmp) as run:
            r = fit(d.images, p, tmp / "gan2", seed=1, progress=False)
        MlflowClient(uri).log_artifact(run.run_id, str(r.export / "config.json"), "checkpoint")
        versions.append(register_generator(run.run_id, "gen", {"dataset_hash": "h"})["version"])
        set_alias("gen", "prod", versions[0])
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    try:
        yield tmp, uri, versions[:2]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_damaged_version_is_refused_at_reload_and_the_held_one_goes_on(registry):
    tmp, uri, (good, bad) = registry
    with serve(tmp, uri, GANOPS_MODEL_NAME="gen", GANOPS_MODEL_ALIAS="prod", GANOPS_POLL_SECONDS="0") as base:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            set_alias("gen", "prod", bad)
            r = httpx.post(base + "/reload", json={}, timeout=120)
            assert r.status_code == 503 and f"gen v{bad} is damaged" in r.json()["error"]
            assert f"still serving v{good}" in r.json()["error"]
            g = httpx.post(base + "/generate", json={"n": 2, "seed": 1}, timeout=30)
            assert g.status_code == 200 and g.headers["x-model-version"] == str(good)
            assert f"gen v{bad} is damaged" in (tmp / "serve.log").read_text()
        finally:
            set_alias("gen", "prod", good)
            del os.environ["MLFLOW_TRACKING_URI"]


def test_a_damaged_champion_at_start_stops_the_server_naming_it(registry, tmp_path):
    tmp, uri, (good, bad) = registry
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        set_alias("gen", "broken", bad)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "BENTOML_DO_NOT_TRACK": "true", "GANOPS_MODEL_NAME": "gen",
                        "GANOPS_MODEL_ALIAS": "broken", "BENTOML_HOME": str(tmp_path / "bentoml"),
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(["bentoml", "serve", "serving.service:GanService", "--host", "127.0.0.1",
                                 "--port", str(free_port())], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            proc.wait(timeout=240)  # stops by itself: BentoML alone would restart the worker forever
        finally:
            stop(proc)
    text = (tmp_path / "serve.log").read_text()
    assert f"cannot start: gen v{bad} is damaged" in text and "register a good version" in text


def _wait_for(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False


def test_a_version_still_being_uploaded_is_not_served_until_complete(registry):
    # The alias moves to v3 while its files are still on their way to the artifact store (registered by
    # another tool, or an upload that lags): the poll must not switch to it half done, nor give up on it.
    tmp, uri, (good, _bad) = registry
    c = MlflowClient(uri)
    half = max(int(mv.version) for mv in c.search_model_versions("name='gen'"))
    run_id = c.get_model_version("gen", str(half)).run_id
    stored = Path(c.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoint" / "generator.pt"
    weights = (tmp / "gan2" / "final" / "generator.pt").read_bytes()
    log = tmp / "serve.log"

    def served() -> str:
        return httpx.post(base + "/generate", json={"n": 2, "seed": 1}, timeout=30).headers["x-model-version"]

    with serve(
        tmp, uri, GANOPS_MODEL_NAME="gen", GANOPS_MODEL_ALIAS="prod", GANOPS_POLL_SECONDS="0.5"
    ) as base:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            set_alias("gen", "prod", half)  # generator.pt not there at all yet
            assert _wait_for(lambda: f"gen v{half} is incomplete" in log.read_text())
            time.sleep(2)  # several more polls
            assert served() == str(good)
            assert log.read_text().count(f"gen v{half} is incomplete") == 1  # said once, not every poll
            stored.write_bytes(weights[: len(weights) // 2])  # half of it written
            assert _wait_for(lambda: f"gen v{half} is damaged" in log.read_text())
            assert served() == str(good)
            stored.write_bytes(weights)  # the upload completes: the next poll switches
            assert _wait_for(lambda: served() == str(half)), log.read_text()[-3000:]
            assert httpx.post(base + "/model", json={}, timeout=30).json()["version"] == half
        finally:
            set_alias("gen", "prod", good)
            del os.environ["MLFLOW_TRACKING_URI"]
