"""`bentoml serve` on a free loopback port with a champion in a temp MLflow registry; real HTTP.

The server is the session fixture ``server`` (tests/e2e/conftest.py). Bad input: test_serving_input.py;
following the champion: test_serving_follow.py; the gallery in a browser: test_gallery.py.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.e2e.serving_env import MAX_N

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def post(base: str, path: str, **kw) -> httpx.Response:
    return httpx.post(base + path, timeout=30, **kw)


def test_grid_png(server):
    base, _ = server
    r = post(base, "/generate", json={"n": 9, "seed": 1})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "1"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (3 * 18 + 2, 3 * 18 + 2)  # 3x3 tiles of 16 px with 2 px padding
    r = post(base, "/generate", json={})
    assert r.status_code == 200 and int(r.headers["x-seed"]) >= 0  # defaults: 16 images, a random seed
    assert Image.open(io.BytesIO(r.content)).size == (4 * 18 + 2, 4 * 18 + 2)


def test_png_list_and_determinism(server):
    base, _ = server
    a = post(base, "/generate", json={"n": 5, "seed": 42, "format": "png_list"}).json()
    b = post(base, "/generate", json={"n": 5, "seed": 42, "format": "png_list"}).json()
    c = post(base, "/generate", json={"n": 5, "seed": 43, "format": "png_list"}).json()
    assert a["seed"] == 42 and len(a["images"]) == 5
    assert a["images"] == b["images"] and a["images"] != c["images"]
    im = Image.open(io.BytesIO(base64.b64decode(a["images"][0])))
    assert im.size == (16, 16) and im.mode == "L"
    # the first k images of a seed do not depend on n (each z row is drawn in order)
    d = post(base, "/generate", json={"n": 2, "seed": 42, "format": "png_list"}).json()
    assert d["images"] == a["images"][:2]


def test_label_asks_a_conditional_champion_for_one_class(server, tmp_path):
    from ganops.models.gan import load_generator, noise_for_class

    base, facts = server
    sevens = post(base, "/generate", json={"n": 6, "seed": 9, "label": 7, "format": "png_list"}).json()
    again = post(base, "/generate", json={"n": 6, "seed": 9, "label": 7, "format": "png_list"}).json()
    assert sevens == again
    # what was served is the champion's G on the seed's noise moved into class 7, pixel for pixel
    G = load_generator(facts["export"])
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = ((G(noise_for_class(z, torch.full((6,), 7), G.cfg.class_counts)) + 1) * 127.5).round()
    got = torch.stack(
        [torch.from_numpy(np.array(Image.open(io.BytesIO(base64.b64decode(b))))) for b in sevens["images"]]
    ).float()  # (6, S, S): grey PNGs
    assert (got - want[:, 0]).abs().max() <= 1
    assert G.labels_for(noise_for_class(z, torch.full((6,), 7), G.cfg.class_counts)).eq(7).all()
    info = post(base, "/model", json={}).json()
    assert len(info["class_counts"]) == 10 and "class_counts" not in info["metrics"]


def test_concurrent_small_requests_are_batched_and_correct(server):
    base, _ = server
    seeds = list(range(100, 140))
    with ThreadPoolExecutor(16) as pool:
        got = list(
            pool.map(
                lambda s: post(base, "/generate", json={"n": 1, "seed": s, "format": "png_list"}).json(),
                seeds,
            )
        )
    alone = [
        post(base, "/generate", json={"n": 1, "seed": s, "format": "png_list"}).json() for s in seeds[:5]
    ]
    assert [g["images"] for g in got[:5]] == [a["images"] for a in alone]  # batching changes nothing
    # the service's own histogram of images per forward pass (serving/batcher.py reports every batch)
    metrics = httpx.get(base + "/metrics", timeout=10).text
    stat = {}
    for line in metrics.splitlines():
        if line.startswith(("ganops_forward_batch_images_sum", "ganops_forward_batch_images_count")):
            stat[line.split("{")[0].split(" ")[0].rsplit("_", 1)[1]] = float(line.rsplit(" ", 1)[1])
    assert stat["sum"] >= len(seeds)  # every request went through the batcher
    assert stat["count"] < stat["sum"], f"no two requests were ever batched together: {stat}"


def test_npy_format_is_the_same_images_raw(server):
    base, _ = server
    r = post(base, "/generate", json={"n": 3, "seed": 5, "format": "npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    a = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert a.shape == (3, 16, 16, 1) and a.dtype == np.uint8
    pngs = post(base, "/generate", json={"n": 3, "seed": 5, "format": "png_list"}).json()["images"]
    assert all(
        (np.array(Image.open(io.BytesIO(base64.b64decode(p)))) == a[i, ..., 0]).all()
        for i, p in enumerate(pngs)
    )


def test_every_answer_names_the_model_version(server):
    base, facts = server
    v = str(facts["version"])
    answers = [
        post(base, "/generate", json={"n": 1}),
        post(base, "/generate", json={"n": 0}),  # an error too
        post(base, "/model", json={}),
        httpx.get(base + "/ui/", timeout=10),
        httpx.get(base + "/readyz", timeout=10),
        post(base, "/stylize", files=_upload(Image.new("RGB", (20, 20))), data={"style": "waves"}),
    ]
    assert [r.headers.get("x-model-version") for r in answers] == [v] * len(answers)
    assert answers[-1].headers["x-style-version"] == "1"


def test_model_info(server):
    base, facts = server
    info = post(base, "/model", json={}).json()
    assert info["name"] == "ganops-generator" and info["alias"] == "champion"
    assert info["version"] == facts["version"] and info["run_id"] == facts["run_id"]
    assert info["image_size"] == 16 and info["channels"] == 1 and info["max_n"] == MAX_N
    assert info["metrics"]["domain_fid"] == 1.5 and info["metrics"]["baseline_fid"] == 0.25
    assert info["metrics"]["artifact_score"] == 0.125  # not a version tag: read from the version's run
    assert len(info["dataset_hash"]) == 64 and info["styles"] == ["waves"]
    assert info["versions"] == [{"version": facts["version"], "run_id": facts["run_id"],
                                 "dataset_hash": info["dataset_hash"],
                                 "metrics": {"artifact_score": 0.125, "domain_fid": 1.5, "baseline_fid": 0.25}}]  # fmt: skip


def test_health_endpoints(server):
    base, _ = server
    assert httpx.get(base + "/livez", timeout=10).status_code == 200
    assert httpx.get(base + "/readyz", timeout=10).status_code == 200
    assert httpx.get(base + "/", timeout=10).status_code == 200  # BentoML's own docs page, left alone
    spec = httpx.get(base + "/docs.json", timeout=10).json()
    assert "/generate" in spec["paths"] and "/model" in spec["paths"]


def _offline() -> list[str]:
    """The prefix that runs a command in a network namespace of its own, without routes (``unshare -rn``):
    a build that tries the network fails there at once. [] where user namespaces are not allowed."""
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    ):
        return ["unshare", "-rn"]
    return []


def test_bento_builds_without_the_network(tmp_path):
    offline = _offline()
    if not offline:
        pytest.skip("no unshare -rn here: the build cannot be cut off from the network")
    probe = "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)"
    cut = subprocess.run([*offline, sys.executable, "-c", probe], capture_output=True, text=True)
    assert cut.returncode != 0 and "unreachable" in cut.stderr.lower(), cut.stderr  # really no network
    env = os.environ | {"BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    work = tmp_path / "ctx"
    # the build context without the working copy's bulk: venv, git, DVC cache, tool caches, stage outputs
    skip = shutil.ignore_patterns(".venv", ".git", ".dvc", ".ganops", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                                  "data", "models", "mlartifacts", "metrics", "*.db*", "dist", "__pycache__",
                                  "dvc_plots", "bench")  # fmt: skip
    shutil.copytree(ROOT, work, ignore=skip)
    # `make bento`'s two commands, as the target runs them
    for cmd in ([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", "."],
                [str(BIN / "bentoml"), "build", "-f", "serving/bentofile.yaml", "."]):  # fmt: skip
        r = subprocess.run([*offline, *cmd], cwd=work, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    assert "Successfully built Bento" in r.stdout + r.stderr


def _upload(img: Image.Image | bytes, name: str = "photo.png") -> dict:
    if isinstance(img, Image.Image):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        img = buf.getvalue()
    return {"image": (name, img, "image/png")}


def test_stylize_returns_an_image_of_the_upload_size(server):
    base, _ = server
    r = post(
        base, "/stylize", files=_upload(Image.new("RGB", (50, 37), (200, 30, 30))), data={"style": "waves"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (50, 37)


def test_stylize_applies_the_registered_net(server):
    # the served pixels are the registered fast net's forward pass on the upload, not just "an image"
    import json

    import mlflow

    from ganops.models.style import TransformerConfig, TransformerNet

    base, facts = server
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    r = post(base, "/stylize", files=_upload(photo), data={"style": "waves"})
    assert r.status_code == 200, r.text
    served = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.int16)
    mlflow.set_tracking_uri(f"sqlite:///{facts['root'] / 'mlflow.db'}")
    try:
        folder = Path(mlflow.artifacts.download_artifacts("models:/ganops-style-waves@champion"))
    finally:
        mlflow.set_tracking_uri(None)
    net = TransformerNet(TransformerConfig(**json.loads((folder / "config.json").read_text())["model"]))
    net.load_state_dict(torch.load(folder / "transformer.pt", weights_only=True))
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        y = net.eval()(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    expected = (y * 255).round().astype(np.int16)
    assert served.shape == expected.shape and np.abs(served - expected).max() <= 1
    assert r.headers["x-style-version"] == "1"


def test_stylize_scales_an_oversized_upload_down_to_the_long_side_limit(server):
    base, _ = server
    r = post(
        base, "/stylize", files=_upload(Image.new("RGB", (1200, 60), (10, 200, 90))), data={"style": "waves"}
    )
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (1024, 51)  # GANOPS_STYLE_MAX_SIDE (1024), aspect kept
