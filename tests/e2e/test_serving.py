"""`bentoml serve` on a free loopback port with a champion in a temp MLflow registry; real HTTP."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from ganops.config import DataParams, GanParams, parse_params
from ganops.data import manifest, prepare
from ganops.tracking import RunContext, register_generator, set_alias, start_run
from ganops.train_gan import train_gan
from tests.e2e.servers import start_server, stop

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MAX_N = 32


def make_champion(root: Path, uri: str) -> dict:
    """Train a tiny generator, log it as an MLflow run, register it and point @champion at it."""
    d = prepare(DataParams(image_size=16, limit=64))
    p = GanParams(latent_dim=8, ngf=4, ndf=4, batch_size=16, steps=3, sample_every=3, checkpoint_every=3,
                  conditional=True)  # fmt: skip
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        with start_run(parse_params({}), ctx=RunContext("test"), data_hash="h" * 64, root=root) as run:
            r = train_gan(d.images, p, root / "gan", labels=d.labels, progress=False)
            run.log_artifacts(r.export, "checkpoint")
        facts = register_generator(run.run_id, "ganops-generator",
                                   {"dataset_hash": manifest(d)["content_hash"], "extractor": "test", "domain_fid": 1.5})  # fmt: skip
        set_alias("ganops-generator", "champion", facts["version"])
        facts["root"] = root
        register_style_net(root)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return facts


def register_style_net(root: Path) -> None:
    """A tiny fast style net, logged and registered as ganops-style-waves@champion (as the stage does)."""
    import json

    from ganops.checkpoint import atomic_write
    from ganops.config import StyleParams
    from ganops.models.style import build_vgg
    from ganops.stylize import train_fast
    from ganops.tracking import register_folder, style_run

    sp = StyleParams(weights="random", size=32, fast_steps=2, fast_width=4, style_layers={"relu1_1": 1.0})
    vgg = build_vgg("random", [sp.content_layer, *sp.style_layers])
    net = train_fast([torch.rand(1, 3, 40, 40)], [(torch.rand(1, 3, 32, 32), 1.0)], vgg, sp)
    folder = root / "style_net"
    atomic_write(folder / "transformer.pt", net.state_dict())
    atomic_write(folder / "config.json", json.dumps({"method": "fast", "model": net.cfg.to_dict()}))
    with style_run(
        parse_params({}),
        ctx=RunContext("test"),
        style="waves",
        content="(training)",
        extractor=vgg.name,
        root=root,
    ) as run:
        run.log_artifacts(folder, "checkpoint")
        register_folder(run.run_id, "checkpoint", "ganops-style-waves", "champion", {"style": "waves"})


@pytest.fixture(scope="module")
def server():
    tmp = Path(tempfile.mkdtemp(prefix="ganops-serve-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    facts = make_champion(tmp, uri)
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "GANOPS_MAX_N": str(MAX_N), "BENTOML_DO_NOT_TRACK": "true",
                        "BENTOML_HOME": str(tmp / "bentoml"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    with open(tmp / "serve.log", "w") as log:

        def launch(port: int) -> subprocess.Popen:
            return subprocess.Popen(
                ["bentoml", "serve", "serving.service:GanService", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

        proc, port = start_server(launch, "/readyz")
        try:
            yield f"http://127.0.0.1:{port}", facts
        finally:
            stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)


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
    G = load_generator(facts["root"] / "gan" / "final")
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
    # BentoML's own histogram of the batch sizes its dispatcher formed for `forward`
    metrics = httpx.get(base + "/metrics", timeout=10).text
    stat = {}
    for line in metrics.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_") and 'method_name="forward"' in line:
            kind = line.split("{")[0].rsplit("_", 1)[1]  # sum | count | bucket
            if kind in ("sum", "count"):
                stat[kind] = stat.get(kind, 0) + float(line.rsplit(" ", 1)[1])
    assert stat["sum"] >= len(seeds)  # every request went through the dispatcher
    assert stat["count"] < stat["sum"], f"no two requests were ever batched together: {stat}"


BAD = [
    ({"json": {"n": 0}}, 400),
    ({"json": {"n": MAX_N + 1}}, 400),
    ({"json": {"n": -3}}, 400),
    ({"json": {"n": "many"}}, 400),
    ({"json": {"n": 2.5}}, 400),
    ({"json": {"format": "jpeg"}}, 400),
    ({"json": {"seed": -1}}, 400),
    ({"json": {"seed": "abc"}}, 400),
    ({"json": [1, 2, 3]}, 400),
    ({"json": {"label": 10}}, 400),  # the champion knows classes 0..9
    ({"json": {"label": -1}}, 400),
    ({"json": {"label": "seven"}}, 400),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
    ({"content": b"\xff\xfe\x00garbage", "headers": {"content-type": "application/json"}}, 400),
    ({"content": b"x" * 200_000, "headers": {"content-type": "application/json"}}, 413),
]


@pytest.mark.parametrize("kwargs,status", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_requests_are_4xx_and_the_server_stays_up(server, kwargs, status):
    base, _ = server
    r = post(base, "/generate", **kwargs)
    assert r.status_code == status, r.text
    assert httpx.get(base + "/readyz", timeout=10).status_code == 200
    assert post(base, "/generate", json={"n": 1, "seed": 0}).status_code == 200


def test_wrong_method_is_405(server):
    base, _ = server
    assert httpx.get(base + "/generate", timeout=10).status_code == 405


def test_model_info(server):
    base, facts = server
    info = post(base, "/model", json={}).json()
    assert info["name"] == "ganops-generator" and info["alias"] == "champion"
    assert info["version"] == facts["version"] and info["run_id"] == facts["run_id"]
    assert info["image_size"] == 16 and info["channels"] == 1 and info["max_n"] == MAX_N
    assert info["metrics"]["domain_fid"] == 1.5 and len(info["dataset_hash"]) == 64


def test_health_endpoints(server):
    base, _ = server
    assert httpx.get(base + "/livez", timeout=10).status_code == 200
    assert httpx.get(base + "/readyz", timeout=10).status_code == 200
    assert httpx.get(base + "/", timeout=10).status_code == 200  # BentoML's own docs page, left alone
    spec = httpx.get(base + "/docs.json", timeout=10).json()
    assert "/generate" in spec["paths"] and "/model" in spec["paths"]


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")), reason="no chromium/chromedriver"
)
def test_gallery_page_generates_in_a_real_browser(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, _ = server
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"]:  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(base + "/ui/")
        WebDriverWait(driver, 30).until(
            lambda d: "serving ganops-generator" in d.find_element(By.ID, "model").text
        )
        driver.find_element(By.ID, "seed").send_keys("7")
        Select(driver.find_element(By.ID, "label")).select_by_visible_text("3")  # the champion is conditional
        driver.find_element(By.ID, "generate").click()
        img = WebDriverWait(driver, 30).until(
            lambda d: (
                (el := d.find_element(By.ID, "grid")).get_attribute("naturalWidth") not in (None, "0") and el
            )
        )
        assert int(img.get_attribute("naturalWidth")) == 4 * 18 + 2  # 16 images, 16 px tiles
        assert "seed 7, 16 images, class 3" in driver.find_element(By.ID, "info").text
        driver.save_screenshot(str(tmp_path / "gallery.png"))
    finally:
        driver.quit()


def test_bento_builds(tmp_path):
    env = os.environ | {"BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    work = tmp_path / "ctx"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".venv", ".git", "data", "models", "mlartifacts",
                                                             "metrics", "*.db", "dist", "__pycache__"))  # fmt: skip
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", "dist", "."], cwd=work,
                   env=env, check=True, capture_output=True)  # fmt: skip
    r = subprocess.run([str(BIN / "bentoml"), "build", "-f", "serving/bentofile.yaml", "."], cwd=work, env=env,
                       capture_output=True, text=True)  # fmt: skip
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


@pytest.mark.parametrize(
    "files,data,status",
    [
        (lambda: _upload(Image.new("RGB", (20, 20))), {"style": "starry"}, 400),  # unknown style
        (lambda: _upload(Image.new("RGB", (20, 20))), {}, 400),  # no style
        (lambda: _upload(b"this is not an image", "notes.png"), {"style": "waves"}, 400),
        (lambda: _upload(b"", "empty.png"), {"style": "waves"}, 400),
        (lambda: {}, {"style": "waves"}, 400),  # no file
        (lambda: _upload(b"x" * (9 * 1024 * 1024), "huge.png"), {"style": "waves"}, 413),
    ],
    ids=["unknown-style", "no-style", "not-an-image", "empty", "no-file", "too-big"],
)
def test_stylize_bad_uploads_are_4xx(server, files, data, status):
    base, _ = server
    r = post(base, "/stylize", files=files(), data=data)
    assert r.status_code == status, r.text
    assert httpx.get(base + "/readyz", timeout=10).status_code == 200
