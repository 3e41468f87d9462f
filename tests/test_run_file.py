"""The training stage owns its MLflow run: ``models/gan/run.json`` names it, evaluate reads it from there,
and a workspace trained before run.json existed (the id in the export's ``meta``) still evaluates."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from ganops.cli import app
from tests.conftest import PARAMS
from tests.test_cli import TINY


@pytest.fixture
def trained(tmp_path, monkeypatch, isolated_tracking):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for cmd in (
        ["prepare"],
        ["classifier", "--no-progress", "-S", "classifier.epochs=1"],
        ["train-gan", "--no-progress"],
    ):
        r = runner.invoke(app, [*cmd, *TINY])
        assert r.exit_code == 0, r.output
    return tmp_path


def _evaluate():
    return CliRunner().invoke(app, ["evaluate", *TINY, "-S", "evaluate.kid_subset_size=10"])


def test_evaluate_logs_to_the_run_that_run_json_names(trained):
    facts = json.loads((trained / "models/gan/run.json").read_text())
    assert set(facts) == {"mlflow_run_id", "step"} and facts["step"] == 4
    assert "meta" not in json.loads((trained / "models/gan/final/config.json").read_text())
    assert _evaluate().exit_code == 0
    assert json.loads((trained / "metrics/evaluate.json").read_text())["run_id"] == facts["mlflow_run_id"]


def test_an_unfinished_training_run_is_not_evaluated(trained):
    run_file = trained / "models/gan/run.json"
    run_file.write_text(json.dumps({"mlflow_run_id": "0123abc"}))  # opened, never finished
    r = _evaluate()
    assert r.exit_code == 2 and "did not finish" in r.output and "0123abc" in r.output


def test_a_workspace_from_before_run_json_evaluates_from_the_exports_meta(trained):
    run_id = json.loads((trained / "models/gan/run.json").read_text())["mlflow_run_id"]
    (trained / "models/gan/run.json").unlink()
    cfg = trained / "models/gan/final/config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"meta": {"mlflow_run_id": run_id}}))
    assert _evaluate().exit_code == 0
    assert json.loads((trained / "metrics/evaluate.json").read_text())["run_id"] == run_id
