import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from ganops.cli import app
from ganops.config import parse_params
from ganops.promote import decide
from ganops.tracking import start_run
from tests.conftest import PARAMS

ROOT = Path(__file__).resolve().parents[1]
C = {"run_id": "a", "dataset_hash": "h", "extractor": "x", "domain_fid": 2.0, "coverage": 10}


def test_decide_rules():
    assert decide(C, None, "domain_fid").promote
    assert decide(C | {"domain_fid": 1.0}, C | {"run_id": "b"}, "domain_fid").promote
    worse = decide(C | {"domain_fid": 3.0}, C | {"run_id": "b"}, "domain_fid")
    assert not worse.promote and "does not beat" in worse.reason
    tie = decide(C | {"coverage": 10}, C | {"run_id": "b", "coverage": 9}, "domain_fid")
    assert tie.promote and "coverage" in tie.reason
    assert not decide(C | {"coverage": 9}, C | {"run_id": "b"}, "domain_fid").promote
    assert not decide(C, C, "domain_fid").promote  # same run: already champion
    other = decide(C | {"domain_fid": 9.0}, C | {"run_id": "b", "dataset_hash": "g"}, "domain_fid")
    assert other.promote and "not comparable" in other.reason and "dataset_hash" in other.reason
    with pytest.raises(ValueError, match="no 'kl'"):
        decide({"run_id": "a"}, None, "kl")


def _run_with_checkpoint(tmp: Path) -> str:
    folder = tmp / "ckpt"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    with start_run(parse_params({}), entry_point="test", data_hash="h", root=tmp) as run:
        run.log_artifacts(folder, "checkpoint")
        return run.run_id


def _promote(tmp: Path, run_id: str, fid: float):
    (tmp / "metrics").mkdir(exist_ok=True)
    m = {
        "run_id": run_id,
        "dataset_hash": "h",
        "extractor": "domain-classifier",
        "domain_fid": fid,
        "coverage": 10,
    }
    (tmp / "metrics" / "evaluate.json").write_text(json.dumps(m))
    r = CliRunner().invoke(app, ["promote"])
    assert r.exit_code == 0, r.output
    return json.loads((tmp / "metrics" / "promote.json").read_text()), r.output


def test_better_run_becomes_champion_and_a_worse_one_does_not(tmp_path, monkeypatch, isolated_tracking):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    c = MlflowClient(isolated_tracking)

    first = _run_with_checkpoint(tmp_path)
    d, out = _promote(tmp_path, first, 5.0)
    assert d["promote"] and d["reason"] == "no champion yet" and "v1 is now @champion" in out
    second = _run_with_checkpoint(tmp_path)
    d, _ = _promote(tmp_path, second, 3.0)
    assert d["promote"] and d["champion"]["domain_fid"] == 5.0 and d["candidate"]["domain_fid"] == 3.0
    assert c.get_model_version_by_alias("ganops-generator", "champion").run_id == second
    third = _run_with_checkpoint(tmp_path)
    d, out = _promote(tmp_path, third, 4.0)
    assert not d["promote"] and "@champion stays v2" in out
    assert c.get_model_version_by_alias("ganops-generator", "champion").run_id == second
    assert len(c.search_model_versions("name='ganops-generator'")) == 3  # every candidate is registered
    assert c.get_run(third).data.tags["promote_decision"] == "kept champion"
    # promoting the same run again registers nothing new and keeps the decision
    _promote(tmp_path, third, 4.0)
    assert len(c.search_model_versions("name='ganops-generator'")) == 3
    r = CliRunner().invoke(app, ["champion"])
    assert r.exit_code == 0 and "ganops-generator@champion = v2" in r.output


def test_promote_without_evaluation_or_run(tmp_path, monkeypatch, isolated_tracking):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["promote"])
    assert r.exit_code == 2 and "ganops evaluate" in r.output
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"run_id": "f" * 32, "domain_fid": 1.0}))
    r = CliRunner().invoke(app, ["promote"])
    assert r.exit_code == 2 and "not in sqlite" in r.output
    r = CliRunner().invoke(app, ["champion"])
    assert r.exit_code == 2 and "no model ganops-generator@champion" in r.output
