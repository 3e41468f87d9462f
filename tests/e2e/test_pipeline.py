"""The real pipeline in a temp copy of the project: git + DVC repo, `dvc repro`, `dvc exp run`, MLflow sqlite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.e2e.project import project_env, sh, tiny_project

pytestmark = pytest.mark.e2e

TINY = {
    "data": {"image_size": 16, "limit": 0},  # all 1,797 digits: a subset (data.limit) never becomes champion
    "gan": {"steps": 6, "batch_size": 16, "ngf": 4, "ndf": 4, "latent_dim": 8, "sample_every": 3,
            "checkpoint_every": 3, "log_every": 2, "grid_samples": 16},
    "classifier": {"epochs": 2},
    "evaluate": {"kid_subset_size": 20, "n_samples": 200},
    "style": {"size": 32, "steps": 5, "style_layers": {"relu1_1": 1.0, "relu2_1": 1.0}},
}  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh git + DVC repo holding the project's pipeline files, with tiny params, committed, and its
    first `dvc repro` (its output is the third item: tests may run in any order, so the first reproduction
    happens here, not in whichever test comes first)."""
    d = tmp_path_factory.mktemp("project")
    env = project_env()
    tiny_project(d, env, TINY)
    first = sh(["dvc", "repro"], d, env)
    return d, env, first


def _runs(d: Path):
    """The GAN training runs (experiment `ganops`), oldest first."""
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("ganops")
    return c, c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


def test_repro_trains_logs_and_is_idempotent(repo):
    d, env, r = repo
    for stage in ("prepare", "train_gan", "classifier", "evaluate", "promote",
                  "stylize@starry_night", "stylize@the_scream", "stylize@shipwreck", "stylize_sheet"):  # fmt: skip
        assert f"Running stage '{stage}'" in r.stdout
    for out in ["data/prepared/dataset.pt", "data/prepared/manifest.json", "models/gan/final/generator.pt",
                "models/gan/final/samples.png", "metrics/train_gan.json", "metrics/train_gan_losses.csv",
                "models/classifier/classifier.pt", "metrics/evaluate.json", "metrics/promote.json"]:  # fmt: skip
        assert (d / out).is_file(), out
    # the default store: an absolute sqlite file at the project root
    c, runs = _runs(d)
    run = runs[0]  # the first reproduction's run (other tests may have added experiments since)
    assert run.data.tags["entry_point"] == "dvc" and len(run.data.tags["dataset_hash"]) == 64
    assert {"loss_d", "loss_g", "d_real", "d_fake", "img_per_s"} <= set(run.data.metrics)
    assert len(c.get_metric_history(run.info.run_id, "loss_d")) == 3  # steps 2, 4, 6
    assert c.list_artifacts(run.info.run_id, "images"), "no sample grid logged"
    assert c.list_artifacts(run.info.run_id, "checkpoint")
    # evaluate logged into the training run; promote registered it as v1 and made it the champion
    assert {"domain_fid", "baseline_fid", "coverage", "kl"} <= set(c.get_run(run.info.run_id).data.metrics)
    assert c.get_model_version("ganops-generator", "1").run_id == run.info.run_id
    assert c.get_run(run.info.run_id).data.tags["promote_decision"] == "promoted"
    assert c.get_run(run.info.run_id).data.tags["promote_reason"] == "no champion yet"

    n_runs = len(runs)
    again = sh(["dvc", "repro"], d, env)
    for stage in (
        "prepare",
        "train_gan",
        "classifier",
        "evaluate",
        "promote",
        "stylize@starry_night",
        "stylize_sheet",
    ):
        assert f"Stage '{stage}' didn't change" in again.stdout
    assert len(_runs(d)[1]) == n_runs  # nothing trained

    # style transfer: 2 photos x 3 paintings, a contact sheet, one MLflow run per pair, real VGG19 features
    styles = ("starry_night", "the_scream", "shipwreck")
    for style in styles:
        for content in ("china", "flower"):
            assert (d / "data/stylized" / style / f"{content}.png").is_file()
        assert (
            json.loads((d / "metrics/stylize" / f"{style}.json").read_text())["extractor"] == "vgg19-caffe-q8"
        )
    assert (d / "data/stylized_sheet.png").is_file()
    exp = c.get_experiment_by_name("ganops-stylize")
    pairs = c.search_runs([exp.experiment_id])
    assert sorted({r.data.tags["style"] + "/" + r.data.tags["content"] for r in pairs}) == sorted(
        f"{s}/{c}" for s in styles for c in ("china", "flower"))  # fmt: skip
    for pr in pairs:
        assert pr.data.metrics["final_total"] < pr.data.metrics["start_total"]
        assert pr.data.tags["extractor"] == "vgg19-caffe-q8"
        assert [a.path for a in c.list_artifacts(pr.info.run_id, "stylized")]

    metrics = sh(["dvc", "metrics", "show"], d, env).stdout
    assert "metrics/train_gan.json" in metrics and "loss_d" in metrics
    sh(["dvc", "plots", "show", "-o", str(d / "dvc_plots")], d, env)
    assert (d / "dvc_plots" / "index.html").is_file()


def _committed_baseline(d: Path, env: dict[str, str]) -> int:
    """Commit the reproduced workspace (experiments start from a commit); the runs so far."""
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "baseline", "--allow-empty"], d, env)
    return len(_runs(d)[1])


def test_exp_run_with_changed_param_is_a_second_mlflow_run(repo):
    d, env, _ = repo
    n_before = _committed_baseline(d, env)
    out = sh(["dvc", "exp", "run", "-S", "gan.lr_d=0.0001"], d, env)
    c, runs = _runs(d)
    assert len(runs) == n_before + 1
    assert runs[-1].data.params["gan.lr_d"] == "0.0001" and runs[0].data.params["gan.lr_d"] == "0.0002"
    assert runs[-1].data.tags.get("dvc_exp_name")
    # the decision is the one the numbers call for: the new run's domain FID against the champion's
    decision = json.loads((d / "metrics/promote.json").read_text())
    cand, champ = decision["candidate"], decision["champion"]
    assert cand["run_id"] == runs[-1].info.run_id and champ["run_id"] != cand["run_id"]
    wins = (
        cand["dataset_hash"] != champ["dataset_hash"]  # measured on other data: not comparable, takes over
        or cand["domain_fid"] < champ["domain_fid"]
        or (cand["domain_fid"] == champ["domain_fid"] and cand.get("coverage", 0) > champ.get("coverage", 0))
    )
    assert decision["promote"] == wins, decision["reason"]
    assert runs[-1].data.tags["promote_decision"] == ("promoted" if wins else "kept champion")
    champion = c.get_model_version_by_alias("ganops-generator", "champion")
    assert champion.run_id == (cand["run_id"] if wins else champ["run_id"])
    assert "Stage 'classifier' didn't change" in out.stdout  # same data: the classifier is reused
    show = sh(["dvc", "exp", "show", "--no-pager", "--md"], d, env).stdout
    assert "0.0001" in show and "loss_d" in show


def test_queued_sweep_runs_every_point_into_the_project_store(repo):
    """The README's sweep recipe: a grid queued with one command, run, compared; MLflow gets every point.
    (Two points, one axis swept: each point is a whole pipeline run, and the grid's product is DVC's.)"""
    d, env, _ = repo
    n_before = _committed_baseline(d, env)
    out = sh(["dvc", "exp", "run", "--queue", "-S", "gan.lr_g=0.0003", "-S", "gan.loss=bce,hinge"], d, env)
    assert out.stdout.count("Queued experiment") == 2, out.stdout
    sh(["dvc", "exp", "run", "--run-all"], d, env, timeout=900)
    c, runs = _runs(d)
    swept = runs[n_before:]  # queued runs execute in .dvc/tmp/exps/ but log to the project's mlflow.db
    assert sorted((r.data.params["gan.lr_g"], r.data.params["gan.loss"]) for r in swept) == [
        ("0.0003", "bce"), ("0.0003", "hinge")]  # fmt: skip
    assert all(r.data.tags.get("dvc_exp_name") and "domain_fid" in r.data.metrics for r in swept)
    show = sh(["dvc", "exp", "show", "--no-pager", "--md", "--sort-by", "domain_fid", "--sort-order", "asc"],
              d, env).stdout  # fmt: skip
    assert "hinge" in show and "0.0003" in show
    # the README's next step: `dvc exp apply <name>` brings the chosen point's params and outputs into the
    # workspace, and the generator there is the one trained with them (its config carries the settings)
    pick = next(
        r for r in swept if (r.data.params["gan.lr_g"], r.data.params["gan.loss"]) == ("0.0003", "hinge")
    )
    sh(["dvc", "exp", "apply", pick.data.tags["dvc_exp_name"]], d, env)
    gan = yaml.safe_load((d / "params.yaml").read_text())["gan"]
    assert (gan["lr_g"], gan["loss"]) == (0.0003, "hinge")
    settings = json.loads((d / "models/gan/final/config.json").read_text())["settings"]
    assert (settings["lr_g"], settings["loss"]) == (0.0003, "hinge")
    assert "up to date" in sh(["dvc", "status"], d, env).stdout.lower()  # outputs match params and deps
    sh(["git", "checkout", "--", "."], d, env)  # leave the workspace at the baseline for the next test
    sh(["dvc", "checkout", "--force"], d, env)


def test_own_images_through_dvc_add_and_exp_run(repo):
    d, env, _ = repo
    from PIL import Image

    own = d / "data" / "raw" / "own"
    own.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        Image.new("RGB", (40, 30), (i * 6, 255 - i * 6, 128)).save(own / f"img_{i:02d}.png")
    (own / "broken.jpg").write_bytes(b"not a jpeg at all")
    sh(["dvc", "add", "data/raw/own"], d, env)
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "my pictures"], d, env)
    sh(["dvc", "exp", "run", "-S", "data.source=folder", "-S", "data.root=data/raw/own"], d, env)
    import json

    man = json.loads((d / "data/prepared/manifest.json").read_text())
    assert man["source"] == "folder" and man["count"] == 40 and man["channels"] == 3 and man["skipped"] == 1
    report = json.loads((d / "data/prepared/report.json").read_text())
    assert report["skipped"][0]["file"] == "broken.jpg"
    _, runs = _runs(d)
    assert runs[-1].data.tags["data_source"] == "folder"
