"""Prefect for real: `prefect server start` on a free loopback port, `python -m flows.serve` against it,
`prefect deployment run 'train-gan/local' --watch` as a user types it, on a temp git + DVC project."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from PIL import Image

from ganops import workspaces
from ganops.data import load_prepared
from tests.e2e.project import new_project, project_env, sh
from tests.e2e.servers import flows_served, prefect_server, run_deployment

pytestmark = pytest.mark.e2e
TINY = ["gan.steps=4", "gan.batch_size=8", "gan.ngf=4", "gan.ndf=4", "gan.latent_dim=8", "gan.sample_every=4",
        "gan.checkpoint_every=4", "data.image_size=16", "classifier.epochs=1", "evaluate.kid_subset_size=8"]  # fmt: skip


STYLE_TINY = ["style.size=32", "style.steps=3", "style.style_layers={relu1_1: 1.0, relu2_1: 1.0}"]


def _pictures(folder: Path, n: int, shade: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (24, 24), (shade, (i * 9) % 256, 100)).save(folder / f"img_{i:02d}.png")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC repo with a folder dataset at two revisions (v1: 20 dark pictures, then v2: 24 bright)."""
    d = tmp_path_factory.mktemp("flowproj")
    tmp = d / ".home"
    env = project_env(PREFECT_HOME=str(tmp / "prefect"))

    def edit(params: dict) -> None:
        params["data"].update(source="folder", root="data/raw/own")
        params["style"].update(size=32, steps=3, style_layers={"relu1_1": 1.0, "relu2_1": 1.0})

    new_project(d, env, edit, copy=("flows", "src"))  # src: dvc.yaml lists it in deps
    _pictures(d / "data/raw/own", 20, 20)
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
    with prefect_server(d, env, tmp / "server.log") as api:
        env["PREFECT_API_URL"] = api
        with flows_served(d, env, tmp / "serve.log"):
            yield d, env, tmp


def _run(
    d: Path, env: dict, *params: str, deployment: str = "train-gan/local"
) -> subprocess.CompletedProcess:
    cmd = ["prefect", "deployment", "run", deployment, "--watch", "--watch-timeout", "500"]
    for p in params:
        cmd += ["--param", p]
    return run_deployment(cmd, d, env)


def _flow_run_id(r: subprocess.CompletedProcess) -> str:
    """The flow run's id, as `prefect deployment run` prints it (`UUID: ...`)."""
    m = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout)
    assert m, r.stdout
    return m.group(1)


def _mlflow_run(d: Path, flow_run_id: str, experiment: str = "ganops"):
    """The one training run (in ``experiment``) that the flow run ``flow_run_id`` logged."""
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], f"tags.prefect_flow_run_id = '{flow_run_id}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return c, runs[0]


def _artifact(env: dict, key: str, flow_run_id: str) -> str:
    """The markdown of the artifact ``key`` that the flow run ``flow_run_id`` created, from Prefect's API."""
    r = httpx.post(env["PREFECT_API_URL"] + "/artifacts/filter", timeout=30,
                   json={"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [flow_run_id]}}})  # fmt: skip
    r.raise_for_status()
    found = r.json()
    assert len(found) == 1, found
    return found[0]["data"]


def test_deployment_run_trains_logs_and_promotes(project):
    d, env, tmp = project
    r = _run(d, env, f"overrides={json.dumps(TINY)}")
    assert r.returncode == 0, r.stdout + r.stderr + (tmp / "serve.log").read_text()[-3000:]
    c, run = _mlflow_run(d, _flow_run_id(r))
    assert run.data.tags["entry_point"] == "prefect"
    assert {"loss_d", "domain_fid", "baseline_fid"} <= set(run.data.metrics)
    champion = c.get_model_version_by_alias("ganops-generator", "champion")
    decision = run.data.tags["promote_decision"]
    assert (champion.run_id == run.info.run_id) == (decision == "promoted"), run.data.tags["promote_reason"]
    assert not (d / "data/prepared").exists()  # the working tree was not touched: outputs in the workspace
    assert (
        d / ".ganops/flow-runs" / run.data.tags["prefect_flow_run_id"] / "models/gan/final/samples.png"
    ).is_file()
    report = _artifact(env, "train-gan-report", run.data.tags["prefect_flow_run_id"])
    assert "Promotion" in report and run.info.run_id in report  # the markdown report, linking the MLflow run
    assert f".ganops/flow-runs/{run.data.tags['prefect_flow_run_id']}/" in report  # ... and the workspace


def test_older_data_rev_trains_on_that_version(project):
    # Also: the `experiment` parameter, and retention (keep_runs=1 removes older workspaces, not a held one).
    d, env, _ = project
    runs_dir = d / ".ganops/flow-runs"
    old, busy = runs_dir / "old-finished-run", runs_dir / "old-running-run"
    for ws in (old, busy):
        ws.mkdir(parents=True, exist_ok=True)
        os.utime(ws, (time.time() - 3600, time.time() - 3600))
    with workspaces.hold(busy):  # a flow run still working in its workspace
        r = _run(
            d, env, f"overrides={json.dumps(TINY)}", "data_rev=v1", "experiment=ganops-rev", "keep_runs=1"
        )
    assert r.returncode == 0, r.stdout + r.stderr
    flow_run_id = _flow_run_id(r)
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted([flow_run_id, busy.name])
    _, run = _mlflow_run(d, flow_run_id, experiment="ganops-rev")
    images, _, man = load_prepared(d / ".ganops/flow-runs" / flow_run_id / "data/prepared")
    # v1 held 20 pictures with a dark red channel (20); the working tree (v2) holds 24 with a bright one (230)
    assert man["count"] == 20 and man["content_hash"] == run.data.tags["dataset_hash"]
    assert float(images[:, 0].float().mean()) < 60


def test_invalid_parameter_fails_fast_with_the_key(project):
    d, env, tmp = project
    r = _run(d, env, 'overrides=["gan.lr_dd=1e-4"]')
    assert r.returncode != 0
    log = (tmp / "serve.log").read_text()
    assert "gan.lr_dd: unknown key (did you mean gan.lr_d?)" in log


def test_two_style_flows_and_a_dvc_repro_at_once_do_not_collide(project):
    # Two style-transfer flow runs and `dvc repro` of the style stages, all at once: each flow writes only
    # its own workspace (complete, checksummed in DONE.json), DVC's outputs stay exactly what dvc.lock says,
    # and every MLflow pair run carries the id of the flow run that made it.
    d, env, tmp = project
    with ThreadPoolExecutor(3) as pool:
        flows = [pool.submit(_run, d, env, f"overrides={json.dumps(STYLE_TINY)}", deployment="style-transfer/local")
                 for _ in range(2)]  # fmt: skip
        repro = pool.submit(sh, ["dvc", "repro", "stylize_sheet"], d, env)
        results = [f.result() for f in flows]
        repro.result()
    ids = []
    for r in results:
        assert r.returncode == 0, r.stdout + r.stderr + (tmp / "serve.log").read_text()[-3000:]
        ids.append(_flow_run_id(r))
    assert len(set(ids)) == 2
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("ganops-stylize").experiment_id
    for flow_run_id in ids:
        work = d / ".ganops/flow-runs" / flow_run_id
        done = json.loads((work / "DONE.json").read_text())
        paths = sorted(o["path"] for o in done["outputs"])
        styles = ("shipwreck", "starry_night", "the_scream")
        assert paths == [f"data/stylized/{s}/{c}.png" for s in styles for c in ("china", "flower")] + [
            "data/stylized_sheet.png"
        ]
        for o in done["outputs"]:  # complete files: what was published is what is there
            assert hashlib.sha256((work / o["path"]).read_bytes()).hexdigest() == o["sha256"]
        report = _artifact(env, "style-transfer-report", flow_run_id)
        assert all(name in report for name in styles + ("china", "flower", f"`{work}`")), report
        pairs = c.search_runs([exp], f"tags.prefect_flow_run_id = '{flow_run_id}'")
        assert len(pairs) == 6 and all(p.data.tags["entry_point"] == "prefect" for p in pairs)
        # photos and paintings snapshotted into the workspace; a fast net's corpus read in place, not copied
        assert sorted(f.name for f in (work / "inputs").iterdir()) == ["content_dir", "style_dir"]
        assert {p.data.params["style.fast_train_dir"] for p in pairs} == {str(d / "data/photos")}
    status = sh(["dvc", "status", "stylize_sheet"], d, env).stdout
    assert "changed" not in status, status  # DVC's outputs are what dvc.lock recorded
    dvc_pairs = c.search_runs([exp], "tags.entry_point = 'dvc'")
    assert len(dvc_pairs) == 6 and not any(p.data.tags.get("prefect_flow_run_id") for p in dvc_pairs)


def test_a_retried_data_rev_checkout_starts_from_a_clean_copy(project, tmp_path, monkeypatch):
    # A retried flow run checks out into the same workspace: the copy must not nest into the leftovers
    # (a nested folder would become a class label).
    import flows.train_gan as flow_module

    from ganops.config import load_params

    d, _, _ = project
    monkeypatch.setattr(flow_module, "ROOT", d)
    params = load_params(d / "params.yaml")
    dst = tmp_path / "data-rev"
    for _ in range(2):
        flow_module.checkout_data(params, "v1", dst)
        files = sorted(f.relative_to(dst).as_posix() for f in dst.rglob("*") if f.is_file())
        assert files == [f"img_{i:02d}.png" for i in range(20)]
