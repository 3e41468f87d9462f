"""Service settings and an unconditional champion: GANOPS_MODEL_NAME / GANOPS_MODEL_ALIAS pick what is served;
`label` on an unconditional generator is a 400; `/stylize` with no registered fast net is a 404."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from ganops.config import PLAIN_DCGAN, DataParams, GanParams, parse_params
from ganops.data import manifest, prepare
from ganops.tracking import RunContext, register_generator, set_alias, start_run
from ganops.train_gan import train_gan
from tests.e2e.serving_env import serve

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def plain():
    """An unconditional generator registered as `my-gen`, aliased `prod`; no style nets; served by name."""
    tmp = Path(tempfile.mkdtemp(prefix="ganops-serve-plain-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    d = prepare(DataParams(image_size=16, limit=64))
    p = GanParams(
        **PLAIN_DCGAN, latent_dim=8, ngf=4, ndf=4, batch_size=16, steps=2, sample_every=2, checkpoint_every=2
    )
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        with start_run(parse_params({}), ctx=RunContext("test"), data_hash="h", root=tmp) as run:
            r = train_gan(d.images, p, tmp / "gan", progress=False)  # no labels: unconditional
            run.log_artifacts(r.export, "checkpoint")
        facts = register_generator(run.run_id, "my-gen", {"dataset_hash": manifest(d)["content_hash"]})
        set_alias("my-gen", "prod", facts["version"])
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    try:
        with serve(tmp, uri, GANOPS_MODEL_NAME="my-gen", GANOPS_MODEL_ALIAS="prod") as base:
            yield base, facts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_model_name_and_alias_settings_pick_the_served_model(plain):
    base, facts = plain
    info = httpx.post(base + "/model", json={}, timeout=30).json()
    assert (info["name"], info["alias"], info["version"], info["run_id"]) == (
        "my-gen", "prod", facts["version"], facts["run_id"])  # fmt: skip
    assert not info["class_counts"]  # unconditional
    r = httpx.post(base + "/generate", json={"n": 4, "seed": 3}, timeout=30)
    assert r.status_code == 200 and r.headers["x-model-version"] == str(facts["version"])


def test_label_on_an_unconditional_champion_is_a_400(plain):
    base, _ = plain
    r = httpx.post(base + "/generate", json={"n": 2, "seed": 1, "label": 0}, timeout=30)
    assert r.status_code == 400 and "label" in r.text
    assert httpx.post(base + "/generate", json={"n": 2}, timeout=30).status_code == 200  # still serving


def test_stylize_without_any_registered_fast_net_is_a_404(plain):
    base, _ = plain
    r = httpx.post(base + "/stylize", files={"image": ("p.png", _png(), "image/png")}, data={"style": "waves"},
                   timeout=30)  # fmt: skip
    assert r.status_code == 404 and "no style nets registered" in r.text


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()
