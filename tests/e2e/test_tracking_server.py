"""A shared tracking server: `mlflow server` on a real PostgreSQL with proxied artifacts, reached by the
pipeline through ``MLFLOW_TRACKING_URI`` alone (what `make mlflow-server` starts for a team); the promotion
race and the takeover of a dead promoter's lock hold there as on sqlite.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.e2e import postgres
from tests.e2e.project import BIN, project_env, sh, tiny_project
from tests.e2e.servers import start_server, stop
from tests.e2e.serving_env import serve
from tests.test_promote import race_promotions
from tests.test_tracking import take_one_dead_lock

pytestmark = pytest.mark.e2e

TINY = {
    "data": {"image_size": 16, "limit": 0},  # all digits: a subset never becomes champion
    "gan": {"steps": 6, "batch_size": 16, "ngf": 4, "ndf": 4, "latent_dim": 8, "sample_every": 3,
            "checkpoint_every": 3, "log_every": 2, "grid_samples": 16, "monitor_every": 0},
    "classifier": {"epochs": 1},
    "evaluate": {"kid_subset_size": 20, "n_samples": 200},
}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """PostgreSQL + `mlflow server` on free loopback ports; yields (tracking URI, artifacts folder)."""
    if postgres.binaries() is None:
        pytest.skip(
            "PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` does it as root)"
        )
    pg = postgres.start()
    artifacts = tmp_path_factory.mktemp("artifacts")
    proc = None
    try:
        pg.createdb("mlflow")

        def launch(port: int) -> subprocess.Popen:
            return subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--backend-store-uri", pg.uri("mlflow"),
                 "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1"],
                env=project_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

        proc, port = start_server(launch, "/health", timeout=180)
        yield f"http://127.0.0.1:{port}", artifacts
    finally:
        if proc is not None:
            stop(proc)
        pg.stop()


def _project(d: Path, env: dict[str, str]) -> Path:
    return tiny_project(d, env, TINY)


def test_pipeline_promotes_a_champion_on_the_server(tmp_path, server):
    uri, artifacts = server
    env = project_env(MLFLOW_TRACKING_URI=uri)
    d = _project(tmp_path, env)
    sh(["dvc", "repro", "promote"], d, env)
    out = sh(["ganops", "champion"], d, env).stdout
    assert "ganops-generator@champion = v" in out
    assert not (d / "mlflow.db").exists() and not (d / "mlartifacts").exists()  # nothing went local
    c = MlflowClient(uri)
    champ = c.get_model_version_by_alias("ganops-generator", "champion")
    # proxied artifacts: the registered checkpoint lies in the server's --artifacts-destination
    assert any(p.name == "generator.pt" for p in artifacts.rglob("*")), "artifacts not stored by the server"
    run = c.get_run(champ.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "1"

    # and the service finds that champion through the same URI alone
    with serve(tmp_path, uri) as base:
        info = httpx.post(base + "/model", json={}, timeout=30).json()
        assert (info["version"], info["run_id"]) == (int(champ.version), champ.run_id)
        r = httpx.post(base + "/generate", json={"n": 4, "seed": 1}, timeout=30)
        assert r.status_code == 200 and r.headers["x-model-version"] == champ.version


def test_two_concurrent_trainings_are_both_recorded(tmp_path, server):
    uri, _ = server
    env = project_env(MLFLOW_TRACKING_URI=uri)
    dirs = []
    for name, seed in (("a", 1), ("b", 2)):
        d = tmp_path / name
        d.mkdir()
        _project(d, env)
        sh(["ganops", "prepare"], d, env)
        dirs.append((d, seed))
    procs = [
        subprocess.Popen(
            [
                str(BIN / "ganops"),
                "train-gan",
                "--no-progress",
                "-S",
                f"base.seed={seed}",
                "-S",
                "tracking.experiment=concurrent",
            ],
            cwd=d,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for d, seed in dirs
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.data.params["base.seed"] for r in runs) == ["1", "2"]
    assert all(r.info.status == "FINISHED" and c.list_artifacts(r.info.run_id, "checkpoint") for r in runs)
    assert all(len(c.get_metric_history(r.info.run_id, "loss_d")) == 3 for r in runs)  # steps 2, 4, 6


def test_two_concurrent_promotions_on_the_server_end_with_the_better_one(tmp_path, server, monkeypatch):
    # compare-and-set through the REST API: the lock is a registered model created in PostgreSQL, where
    # a second create of one name fails atomically as it does on sqlite
    uri, _ = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    race_promotions(tmp_path, uri, 10)


def test_takers_of_one_dead_lock_on_the_server_end_with_exactly_one_holder(tmp_path, server, monkeypatch):
    uri, _ = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    take_one_dead_lock(tmp_path, uri, 5)
