"""A user's own folder of colour pictures, end to end through the CLI: judged in VGG19 features with the
spectral and copy checks, and never silently taking over the champion of other data."""

import json
import shutil

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from ganops.cli import app
from tests.conftest import PARAMS

GAN = [
    "-S", "gan.steps=4", "-S", "gan.batch_size=8", "-S", "gan.ngf=4", "-S", "gan.ndf=4", "-S", "gan.latent_dim=8",
    "-S", "gan.sample_every=2", "-S", "gan.checkpoint_every=2", "-S", "gan.log_every=1", "-S", "gan.monitor_every=2",
    "-S", "gan.monitor_samples=16", "-S", "classifier.epochs=1", "-S", "evaluate.kid_subset_size=10",
    "-S", "evaluate.vgg_size=32",
]  # fmt: skip
FOLDER = ["-S", "data.source=folder", "-S", "data.root=data/raw/own", "-S", "data.image_size=16", *GAN]
DIGITS = ["-S", "data.image_size=16", *GAN]


@pytest.fixture
def project(tmp_path, monkeypatch, isolated_tracking):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "data/raw/own"  # flat: no class folders, so no labels
    own.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(48):
        base = rng.integers(0, 256, 3)
        img = np.clip(base + rng.normal(0, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(own / f"p{i:02d}.png")
    return tmp_path


def _pipeline(runner: CliRunner, args: list[str]) -> None:
    for cmd in (["prepare"], ["classifier", "--no-progress"], ["train-gan", "--no-progress"], ["evaluate"]):
        r = runner.invoke(app, [*cmd, *args])
        assert r.exit_code == 0, (cmd, r.output)


def test_an_unlabelled_colour_folder_is_judged_in_vgg_features_and_keeps_off_the_served_champion(
    project, isolated_tracking
):
    runner = CliRunner()
    _pipeline(runner, DIGITS)
    assert runner.invoke(app, ["promote", *DIGITS]).exit_code == 0
    digits_champion = MlflowClient(isolated_tracking).get_model_version_by_alias(
        "ganops-generator", "champion"
    )

    _pipeline(runner, FOLDER)
    ev = json.loads((project / "metrics/evaluate.json").read_text())
    assert ev["extractor"].startswith("vgg19-caffe-q8/") and ev["domain_extractor"].startswith("random-cnn")
    for k in ("vgg_fid", "vgg_kid", "baseline_vgg_fid", "baseline_vgg_kid", "artifact_score",
              "baseline_artifact_score", "artifact_floor", "spectrum_distance", "copy_rate", "precision", "recall"):  # fmt: skip
        assert isinstance(ev[k], float), k
    assert "mode_collapse" not in ev  # no classes: no collapse verdict
    assert (project / "metrics/evaluate_nearest.png").is_file()
    train = json.loads((project / "metrics/train_gan.json").read_text())
    assert (
        train["best_metric"] == "vgg_kid" and "monitor_vgg_kid" in train and "monitor_artifact_score" in train
    )
    c = MlflowClient(isolated_tracking)
    arts = [a.path for a in c.list_artifacts(ev["run_id"], "evaluate")]
    assert arts == ["evaluate/evaluate_nearest.png"]

    r = runner.invoke(app, ["promote", *FOLDER])
    assert r.exit_code == 0, r.output
    decision = json.loads((project / "metrics/promote.json").read_text())
    assert not decision["promote"] and "other data" in decision["reason"] and decision["metric"] == "vgg_kid"
    assert (
        decision["data_line"]["promote"]
        and decision["data_line"]["alias"] == "champion-" + ev["dataset_hash"][:12]
    )
    # what is served did not move; the folder has its own champion
    assert c.get_model_version_by_alias("ganops-generator", "champion").version == digits_champion.version
    own = c.get_model_version_by_alias("ganops-generator", decision["data_line"]["alias"])
    assert own.run_id == ev["run_id"]
