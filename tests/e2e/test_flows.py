"""Prefect for real: `prefect server start` on a free loopback port, `python -m flows.serve` against it,
`prefect deployment run 'train-gan/local' --watch` as a user types it, on a temp git + DVC project."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.e2e.project import new_project, project_env, sh
from tests.e2e.servers import start_server, stop

pytestmark = pytest.mark.e2e
TINY = ["gan.steps=4", "gan.batch_size=8", "gan.ngf=4", "gan.ndf=4", "gan.latent_dim=8", "gan.sample_every=4",
        "gan.checkpoint_every=4", "data.image_size=16", "classifier.epochs=1", "evaluate.kid_subset_size=8"]  # fmt: skip


def _pictures(folder: Path, n: int, shade: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (24, 24), (shade, (i * 9) % 256, 100)).save(folder / f"img_{i:02d}.png")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC repo with a folder dataset at two revisions (v1 dark pictures, then v2 bright)."""
    d = tmp_path_factory.mktemp("flowproj")
    tmp = d / ".home"
    env = project_env(PREFECT_HOME=str(tmp / "prefect"))
    new_project(
        d, env, lambda params: params["data"].update(source="folder", root="data/raw/own"), copy=("flows",)
    )
    _pictures(d / "data/raw/own", 24, 20)
    sh(["dvc", "add", "data/raw/own"], d, env)
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "v1"], d, env)
    sh(["git", "tag", "v1"], d, env)
    shutil.rmtree(d / "data/raw/own")
    _pictures(d / "data/raw/own", 24, 230)
    sh(["dvc", "add", "data/raw/own"], d, env)
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "v2"], d, env)

    tmp.mkdir()
    with open(tmp / "server.log", "w") as slog, open(tmp / "serve.log", "w") as flog:

        def launch(port: int) -> subprocess.Popen:
            return subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                    cwd=d, env=env | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"},
                                    stdout=slog, stderr=subprocess.STDOUT)  # fmt: skip

        server, port = start_server(launch, "/api/health")
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        served = None
        try:
            served = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=d, env=env, stdout=flog,
                                      stderr=subprocess.STDOUT)  # fmt: skip
            yield d, env, tmp
        finally:
            if served is not None:
                stop(served)
            stop(server)


def _run(
    d: Path, env: dict, *params: str, deployment: str = "train-gan/local"
) -> subprocess.CompletedProcess:
    cmd = ["prefect", "deployment", "run", deployment, "--watch", "--watch-timeout", "500"]
    for p in params:
        cmd += ["--param", p]
    # the deployment may need a moment to appear after `flows.serve` starts
    for _ in range(60):
        r = sh(cmd, d, env, check=False)
        if "not found" not in (r.stdout + r.stderr).lower():
            return r
        time.sleep(1)
    return r


def _runs(d: Path):
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("ganops")
    return c, c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


def test_deployment_run_trains_logs_and_promotes(project):
    d, env, tmp = project
    r = _run(d, env, f"overrides={json.dumps(TINY)}")
    assert r.returncode == 0, r.stdout + r.stderr + (tmp / "serve.log").read_text()[-3000:]
    c, runs = _runs(d)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["entry_point"] == "prefect" and run.data.tags.get("prefect_flow_run_id")
    assert {"loss_d", "domain_fid", "baseline_fid"} <= set(run.data.metrics)
    assert c.get_model_version_by_alias("ganops-generator", "champion").run_id == run.info.run_id
    assert not (d / "data/prepared").exists()  # the working tree was not touched: outputs in the workspace
    assert (
        d / ".ganops/flow-runs" / run.data.tags["prefect_flow_run_id"] / "models/gan/final/samples.png"
    ).is_file()
    report = sh(["prefect", "artifact", "inspect", "train-gan-report"], d, env | {"COLUMNS": "250"}).stdout
    assert "Promotion" in report and run.info.run_id in report  # the markdown report, linking the MLflow run


def test_older_data_rev_trains_on_that_version(project):
    d, env, _ = project
    r = _run(d, env, f"overrides={json.dumps(TINY)}", "data_rev=v1")
    assert r.returncode == 0, r.stdout + r.stderr
    _, runs = _runs(d)
    head, old = runs[0].data.tags["dataset_hash"], runs[-1].data.tags["dataset_hash"]
    assert old != head
    man = json.loads(
        next(
            (d / ".ganops/flow-runs").glob(
                f"{runs[-1].data.tags['prefect_flow_run_id']}/data/prepared/manifest.json"
            )
        ).read_text()
    )
    assert man["content_hash"] == old and man["count"] == 24


def test_invalid_parameter_fails_fast_with_the_key(project):
    d, env, tmp = project
    r = _run(d, env, 'overrides=["gan.lr_dd=1e-4"]')
    assert r.returncode != 0
    log = (tmp / "serve.log").read_text()
    assert "gan.lr_dd: unknown key (did you mean gan.lr_d?)" in log


def test_style_transfer_deployment_fans_out_pairs(project):
    d, env, tmp = project
    tiny = ["style.size=32", "style.steps=3", "style.style_layers={relu1_1: 1.0, relu2_1: 1.0}"]
    r = _run(d, env, f"overrides={json.dumps(tiny)}", deployment="style-transfer/local")
    assert r.returncode == 0, r.stdout + r.stderr + (tmp / "serve.log").read_text()[-3000:]
    outs = sorted(p.relative_to(d / "data/stylized").as_posix() for p in (d / "data/stylized").rglob("*.png"))
    assert outs == [
        f"{s}/{c}.png" for s in ("shipwreck", "starry_night", "the_scream") for c in ("china", "flower")
    ]
    assert (d / "data/stylized_sheet.png").is_file()
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    pairs = c.search_runs([c.get_experiment_by_name("ganops-stylize").experiment_id])
    assert len(pairs) == 6 and len({p.data.tags["prefect_flow_run_id"] for p in pairs}) == 1
    assert all(p.data.tags["entry_point"] == "prefect" for p in pairs)
