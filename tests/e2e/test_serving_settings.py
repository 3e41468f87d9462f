"""Service settings and an unconditional champion: GANOPS_MODEL_NAME / GANOPS_MODEL_ALIAS pick what is served;
`label` on an unconditional generator is a 400; `/stylize` with no registered fast net is a 404; the size
limits, the batch cap, GANOPS_MAX_N (exactly, one above, and above the batch cap) and the allowed hosts and
origins come from the environment; a deleted alias keeps the service serving; no champion at start, or a
CUDA device on a machine without one, stops the server with what to do."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ganops.config import PLAIN_DCGAN, DataParams, GanParams, parse_params
from ganops.data import manifest, prepare
from ganops.tracking import RunContext, register_generator, set_alias, start_run
from ganops.train_gan import fit
from tests.e2e.servers import free_port, stop
from tests.e2e.serving_env import ROOT, serve

LIMITS = {"GANOPS_MAX_BODY_BYTES": "300", "GANOPS_MAX_UPLOAD_BYTES": "3000", "GANOPS_MAX_BATCH": "4",
          "GANOPS_ACCESS_LOG": "1", "GANOPS_TORCH_THREADS": "3",  # threads: min(4, cores) by default
          "GANOPS_MAX_N": "6",  # above GANOPS_MAX_BATCH: one request of 6 is two forward passes
          "GANOPS_ALLOWED_HOSTS": "gen.internal, 127.0.0.1",  # localhost (a default) is no longer allowed
          "GANOPS_ALLOWED_ORIGINS": "https://app.example"}  # fmt: skip

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
            r = fit(d.images, p, tmp / "gan", progress=False)  # no labels: unconditional
            run.log_artifacts(r.export, "checkpoint")
        facts = register_generator(run.run_id, "my-gen", {"dataset_hash": manifest(d)["content_hash"]})
        set_alias("my-gen", "prod", facts["version"])
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    try:
        with serve(tmp, uri, GANOPS_MODEL_NAME="my-gen", GANOPS_MODEL_ALIAS="prod", **LIMITS) as base:
            yield base, facts | {"tmp": tmp, "uri": uri}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_model_name_and_alias_settings_pick_the_served_model(plain):
    base, facts = plain
    info = httpx.post(base + "/model", json={}, timeout=30).json()
    assert (info["name"], info["alias"], info["version"], info["run_id"]) == (
        "my-gen", "prod", facts["version"], facts["run_id"])  # fmt: skip
    assert not info["class_counts"]  # unconditional
    assert (info["device"], info["torch_threads"]) == ("cpu", 3)  # GANOPS_TORCH_THREADS=3
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


def _png(size: int = 32, noise: bool = False) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    img = Image.new("RGB", (size, size), (1, 2, 3))
    if noise:  # incompressible: the file is about 3 bytes per pixel
        img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_size_limits_come_from_the_environment(plain):
    base, _ = plain
    small = b'{"n": 2, "seed": 1}'
    assert httpx.post(base + "/generate", content=small, headers={"content-type": "application/json"},
                      timeout=30).status_code == 200  # fmt: skip
    padded = small[:-1] + b" " * 400 + b"}"  # valid JSON, 420 bytes > GANOPS_MAX_BODY_BYTES=300
    r = httpx.post(
        base + "/generate", content=padded, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 413, r.text
    noisy = _png(size=64, noise=True)  # > GANOPS_MAX_UPLOAD_BYTES=3000 (the default allows 8 MiB)
    assert len(noisy) > 3000
    r = httpx.post(base + "/stylize", files={"image": ("p.png", noisy, "image/png")}, data={"style": "x"},
                   timeout=30)  # fmt: skip
    assert r.status_code == 413, r.text


def _batch_histogram(base: str) -> dict[str, float]:
    """The service's images-per-forward-pass histogram: {"count", "sum", "le4.0", ...} from /metrics."""
    hist = {}
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        m = re.match(r"ganops_forward_batch_images_(count|sum|bucket)(\{[^}]*\})? (\S+)$", line)
        if m:
            le = re.search(r'le="([^"]+)"', m[2] or "")
            hist["le" + le[1] if le else m[1]] = float(m[3])
    return hist


def test_max_n_exactly_is_served_in_batches_the_batcher_allows_and_one_above_is_a_4xx(plain):
    import io

    import numpy as np

    base, _ = plain
    before = _batch_histogram(base)
    r = httpx.post(base + "/generate", json={"n": 6, "seed": 2, "format": "npy"}, timeout=60)
    assert r.status_code == 200, r.text
    assert np.load(io.BytesIO(r.content)).shape == (6, 16, 16, 1)
    after = _batch_histogram(base)
    passes = after["count"] - before["count"]
    assert passes >= 2 and after["sum"] - before["sum"] == 6  # GANOPS_MAX_N=6 > GANOPS_MAX_BATCH=4: split
    assert after["le4.0"] - before["le4.0"] == passes  # ... and no forward pass took more than 4 images
    r = httpx.post(base + "/generate", json={"n": 7}, timeout=30)
    assert 400 <= r.status_code < 500 and "n" in r.text, r.text


def test_allowed_hosts_and_origins_come_from_the_environment(plain):
    base, _ = plain
    ask = lambda **headers: httpx.post(base + "/generate", json={"n": 1}, headers=headers, timeout=30)  # noqa: E731
    assert ask(host="gen.internal:3000").status_code == 200  # GANOPS_ALLOWED_HOSTS names it (any port)
    r = ask(host="localhost:3000")  # a default host, not in this service's list
    assert r.status_code == 400 and "gen.internal" in r.text, r.text
    assert ask(origin="https://app.example").status_code == 200  # GANOPS_ALLOWED_ORIGINS names it
    r = ask(origin="https://evil.example")
    assert r.status_code == 403 and "GANOPS_ALLOWED_ORIGINS" in r.text, r.text


def test_batches_never_exceed_max_batch_and_requests_are_logged(plain):
    base, facts = plain
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda s: httpx.post(base + "/generate", json={"n": 1, "seed": s}, timeout=60)
                              .status_code, range(48)))  # fmt: skip
    assert codes == [200] * 48
    hist = _batch_histogram(base)
    assert hist["sum"] >= 48
    assert hist["le4.0"] == hist["count"], hist  # every forward pass took at most GANOPS_MAX_BATCH=4 images
    assert hist["count"] * 4 >= hist["sum"]
    log = (facts["tmp"] / "serve.log").read_text()
    assert len(re.findall(r"path=/generate\b", log)) >= 48  # GANOPS_ACCESS_LOG=1: one line per request


def test_a_deleted_alias_keeps_the_service_serving_with_a_warning(plain):
    base, facts = plain
    os.environ["MLFLOW_TRACKING_URI"] = facts["uri"]
    try:
        from mlflow import MlflowClient

        MlflowClient().delete_registered_model_alias("my-gen", "prod")
        r = httpx.post(base + "/reload", json={}, timeout=60)
        assert r.status_code == 200 and r.json() == {"switched": False, "version": facts["version"]}
        g = httpx.post(base + "/generate", json={"n": 2, "seed": 1}, timeout=30)
        assert g.status_code == 200 and g.headers["x-model-version"] == str(facts["version"])
        assert (
            "my-gen@prod is gone from the registry; still serving" in (facts["tmp"] / "serve.log").read_text()
        )
    finally:
        set_alias("my-gen", "prod", facts["version"])  # the other tests of this module serve @prod
        del os.environ["MLFLOW_TRACKING_URI"]


def test_no_champion_at_start_stops_the_server_saying_what_to_run(tmp_path):
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "BENTOML_DO_NOT_TRACK": "true",
                        "BENTOML_HOME": str(tmp_path / "bentoml"),
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(["bentoml", "serve", "serving.service:GanService", "--host", "127.0.0.1",
                                 "--port", str(free_port())], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            proc.wait(timeout=240)  # BentoML alone would restart the worker forever
        finally:
            stop(proc)
    text = (tmp_path / "serve.log").read_text()
    assert "cannot start: no model ganops-generator@champion" in text and "`dvc repro` or `make demo`" in text


def test_a_cuda_device_on_a_machine_without_cuda_stops_the_server_naming_the_setting(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: GANOPS_DEVICE=cuda is valid here")
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "BENTOML_DO_NOT_TRACK": "true",
                        "BENTOML_HOME": str(tmp_path / "bentoml"), "GANOPS_DEVICE": "cuda",
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
    assert "cannot start: GANOPS_DEVICE is 'cuda' but CUDA is not available here" in text, text[-2000:]
