"""Every generator family exports, registers and is served at full size: a fastgan (3 channels, 32 px), a
dcgan with resize upsampling (1 channel, 16 px) and a class-conditional progressive pair stopped before its
last level (1 channel, 16 px, drawn at 4 px), trained tiny, registered in one registry; `bentoml serve`
follows the alias from one to the next, and each answers /generate with its own full-size images, exactly
what the exported generator draws for that seed."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from ganops.config import PLAIN_DCGAN, DataParams, GanParams, parse_params
from ganops.data import manifest, prepare
from ganops.models.gan import load_generator, seeded_noise
from ganops.tracking import RunContext, register_generator, set_alias, start_run
from ganops.train_gan import fit
from tests.e2e.serving_env import serve

pytestmark = pytest.mark.e2e


def _register(tmp: Path, name: str, data: DataParams, **gan) -> tuple[dict, Path]:
    d = prepare(data)
    p = GanParams(**(PLAIN_DCGAN | {"latent_dim": 8, "ngf": 4, "ndf": 4, "batch_size": 16, "steps": 2,
                                    "sample_every": 2, "checkpoint_every": 2} | gan))  # fmt: skip
    with start_run(parse_params({}), ctx=RunContext("test"), data_hash="h", root=tmp) as run:
        r = fit(d.images, p, tmp / name, labels=d.labels, progress=False)
        run.log_artifacts(r.export, "checkpoint")
    return register_generator(
        run.run_id, "ganops-generator", {"dataset_hash": manifest(d)["content_hash"]}
    ), r.export


def test_fastgan_resize_and_progressive_generators_are_served_at_full_size():
    tmp = Path(tempfile.mkdtemp(prefix="ganops-serve-archs-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        fast, fast_dir = _register(
            tmp, "fast", DataParams(image_size=32, channels=3, limit=32), arch="fastgan"
        )
        resize, resize_dir = _register(tmp, "resize", DataParams(image_size=16, limit=32), upsample="resize")
        grow = {"arch": "progressive", "conditional": "auto", "grow_fade_steps": 4, "grow_stable_steps": 1}
        pro, pro_dir = _register(tmp, "pro", DataParams(image_size=16, limit=32), **grow)
        set_alias("ganops-generator", "champion", fast["version"])
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    try:
        with serve(tmp, uri) as base:
            for facts, folder, shape in (
                (fast, fast_dir, (3, 32, 32, 3)),
                (resize, resize_dir, (3, 16, 16, 1)),
                (pro, pro_dir, (3, 16, 16, 1)),
            ):
                if facts is not fast:
                    os.environ["MLFLOW_TRACKING_URI"] = uri
                    try:
                        set_alias("ganops-generator", "champion", facts["version"])
                    finally:
                        del os.environ["MLFLOW_TRACKING_URI"]
                    assert httpx.post(base + "/reload", json={}, timeout=60).status_code == 200
                r = httpx.post(base + "/generate", json={"n": 3, "seed": 5, "format": "npy"}, timeout=60)
                assert r.status_code == 200 and r.headers["x-model-version"] == str(facts["version"])
                got = np.load(io.BytesIO(r.content))
                assert got.shape == shape  # the full size, in the data's channels
                G = load_generator(folder)
                with torch.no_grad():
                    want = G(seeded_noise(3, 8, 5)).permute(0, 2, 3, 1)  # (3, S, S, C) in [-1, 1]
                want = ((want + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
                assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # the export's own images
                if facts is pro:  # 2 of 21 steps: still at 8 px, fading in at alpha 0, so 4-px squares
                    assert G.cfg.n_classes >= 2 and (got == got[:, ::4, ::4].repeat(4, 1).repeat(4, 2)).all()
                info = httpx.post(base + "/model", json={}, timeout=30).json()
                assert info["image_size"] == shape[1] and info["channels"] == shape[3]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
