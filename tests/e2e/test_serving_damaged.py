"""A damaged registered version: the service refuses it at reload, keeps serving the one it has and logs
why; at start, with nothing held yet, it stops naming the version and what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from ganops.config import PLAIN_DCGAN, DataParams, GanParams, parse_params
from ganops.data import prepare
from ganops.tracking import RunContext, register_generator, set_alias, start_run
from ganops.train_gan import fit
from tests.e2e.servers import free_port, stop
from tests.e2e.serving_env import ROOT, serve

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def registry():
    """`gen` v1 (good) and v2 (its generator.pt bit-flipped before it was logged), alias `prod` -> v1."""
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
        set_alias("gen", "prod", versions[0])
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    try:
        yield tmp, uri, versions
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
