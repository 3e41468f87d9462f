"""Lineage under extension and concurrency, through the commands users run (a temp git + DVC project).

- Training on past a finished run (`dvc exp run -S gan.steps=...`) makes a new MLflow run and a new
  registered version; the first version's files never change, and it still loads and serves.
- Two queued experiments run by two DVC queue workers at once both land: two runs, two versions, and the
  champion is the better of everything registered on that data.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.e2e.project import BIN, ROOT, TINY_PIPELINE, project_env, sh, tiny_project
from tests.e2e.servers import start_server, stop

pytestmark = pytest.mark.e2e

GAN_STAGES = ["prepare", "classifier", "train_gan", "evaluate", "promote"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("lineage")
    env = project_env()
    tiny_project(d, env, TINY_PIPELINE)
    sh(["dvc", "repro", "promote"], d, env)
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "baseline"], d, env)
    return d, env


def _client(d: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{d / 'mlflow.db'}")


def _files(c: MlflowClient, version: int, dst: Path) -> dict[str, str]:
    """sha256 of every file of a registered version, downloaded afresh."""
    import mlflow

    mlflow.set_tracking_uri(c.tracking_uri)
    folder = Path(
        mlflow.artifacts.download_artifacts(f"models:/ganops-generator/{version}", dst_path=str(dst))
    )
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_training_on_past_a_finished_run_is_a_new_run_and_version(repo, tmp_path):
    d, env = repo
    c = _client(d)
    v1 = c.get_model_version("ganops-generator", "1")  # the baseline's (the module's other test may add more)
    before = _files(c, 1, tmp_path / "v1-before")
    exp_id = c.get_experiment_by_name("ganops").experiment_id
    n_runs = len(c.search_runs([exp_id]))
    n_versions = len(c.search_model_versions("name='ganops-generator'"))
    champion_before = int(c.get_model_version_by_alias("ganops-generator", "champion").version)

    out = sh(["dvc", "exp", "run", "-S", "gan.steps=12"], d, env)
    assert "resuming from" in out.stdout + out.stderr  # the 6-step checkpoint was continued ...
    new = c.search_runs([exp_id], order_by=["attributes.start_time ASC"])[n_runs:]
    assert len(new) == 1  # ... into exactly one new run
    first, second = c.get_run(v1.run_id), new[0]
    assert first.data.params["gan.steps"] == "6"
    # ... into a new run that says where it started, with its own params and experiment name
    assert second.data.tags["resumed_from"] == first.info.run_id and second.data.params["gan.steps"] == "12"
    assert second.data.tags["dvc_exp_name"] and second.data.metrics["resumed_from_step"] == 6

    v2 = c.search_model_versions(f"name='ganops-generator' and run_id='{second.info.run_id}'")
    assert len(v2) == 1 and int(v2[0].version) == n_versions + 1
    assert _files(c, 1, tmp_path / "v1-after") == before  # v1's files never changed
    assert _files(c, int(v2[0].version), tmp_path / "v2")["generator.pt"] != before["generator.pt"]
    # every version's tags describe its own weights: each run's evaluation, compared by promote
    for mv, run in ((v1, first), (v2[0], second)):
        assert float(c.get_model_version("ganops-generator", mv.version).tags["metric.domain_fid"]) == pytest.approx(
            c.get_run(run.info.run_id).data.metrics["domain_fid"])  # fmt: skip
    decision = json.loads((d / "metrics/promote.json").read_text())
    assert decision["candidate"]["version"] == int(v2[0].version)
    assert decision["champion"]["version"] == champion_before
    better = decision["candidate"]["domain_fid"] < decision["champion"]["domain_fid"]
    assert decision["promote"] == better, decision["reason"]

    # v1 still loads and serves: pin it with an alias and serve that alias
    c.set_registered_model_alias("ganops-generator", "first", "1")
    senv = os.environ | {"MLFLOW_TRACKING_URI": c.tracking_uri, "GANOPS_MODEL_ALIAS": "first",
                         "BENTOML_HOME": str(tmp_path / "bentoml"), "PATH": env["PATH"]}  # fmt: skip
    with open(tmp_path / "serve.log", "w") as log:
        proc, port = start_server(
            lambda port: subprocess.Popen(
                [
                    str(BIN / "bentoml"),
                    "serve",
                    "serving.service:GanService",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=ROOT,
                env=senv,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),  # fmt: skip
            "/readyz",
        )
        try:
            base = f"http://127.0.0.1:{port}"
            assert httpx.post(base + "/model", json={}, timeout=30).json()["version"] == 1
            r = httpx.post(base + "/generate", json={"n": 4, "seed": 1}, timeout=30)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        finally:
            stop(proc)


def test_two_queued_experiments_on_two_workers_both_land(repo):
    d, env = repo
    c = _client(d)
    exp_id = c.get_experiment_by_name("ganops").experiment_id
    n_runs = len(c.search_runs([exp_id]))
    n_versions = len(c.search_model_versions("name='ganops-generator'"))
    for lr in ("0.0001", "0.0004"):
        sh(["dvc", "exp", "run", "--queue", "-S", f"gan.lr_d={lr}"], d, env)
    sh(["dvc", "queue", "start", "-j", "2"], d, env)
    deadline = time.time() + 900
    while True:  # `dvc queue start` returns at once; the two workers run in the background
        status = sh(["dvc", "queue", "status"], d, env).stdout
        if not any(s in status for s in ("Queued", "Running")):
            break
        assert time.time() < deadline, status
        time.sleep(3)
    assert status.count("Success") >= 2, status
    runs = c.search_runs([exp_id], order_by=["attributes.start_time ASC"])[n_runs:]
    assert sorted(r.data.params["gan.lr_d"] for r in runs) == ["0.0001", "0.0004"]
    assert all("domain_fid" in r.data.metrics and r.data.tags.get("dvc_exp_name") for r in runs)
    assert all(r.data.tags.get("promote_decision") for r in runs)
    versions = c.search_model_versions("name='ganops-generator'")
    assert len(versions) == n_versions + 2
    # the champion is the best of every version measured on this data with this extractor
    champ = c.get_model_version_by_alias("ganops-generator", "champion")
    same = [v for v in versions if v.tags["dataset_hash"] == champ.tags["dataset_hash"]]
    best = min(
        same, key=lambda v: (float(v.tags["metric.domain_fid"]), -float(v.tags.get("metric.coverage", 0)))
    )
    assert float(champ.tags["metric.domain_fid"]) == float(best.tags["metric.domain_fid"])
    assert not [m.name for m in c.search_registered_models() if m.name.endswith(".lock")]
