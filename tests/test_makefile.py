"""The Makefile's housekeeping targets, run on a copy of the Makefile in a scratch folder."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

STAGE_OUTPUTS = [
    "data/prepared/x.pt",
    "models/gan/checkpoint.pt",
    "models/classifier/model.pt",
    "models/style/a.png",
    "data/stylized/b.png",
    "data/stylized_sheet.png",
    "metrics/evaluate.json",
    "dvc_plots/index.html",
    "dist/pkg.whl",
]
STORE = ["mlflow.db", "mlflow.db-wal", "mlartifacts/1/a.txt"]


def _project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for rel in STAGE_OUTPUTS + STORE + ["data/raw/keep.png"]:
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    return tmp_path


def _make(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    # Run as a top-level make even when the suite itself runs under `make test` (CI): a sub-make
    # inherits MAKELEVEL/MAKEFLAGS and prints "Entering directory" lines around its output.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(["make", "-f", "Makefile", *args], cwd=cwd, input=stdin, env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_clean_removes_stage_outputs_and_keeps_the_tracking_store(tmp_path):
    # `clean` has no prerequisite (no install): it runs for real here.
    d = _project(tmp_path)
    r = _make(d, "clean")
    assert r.returncode == 0, r.stderr
    for rel in STAGE_OUTPUTS:
        assert not (d / rel).exists(), rel
    for rel in ["data/prepared", "models/gan", "models/classifier", "metrics"]:
        assert not (d / rel).exists(), rel
    for rel in STORE + ["data/raw/keep.png"]:
        assert (d / rel).exists(), rel


def test_clean_tracking_asks_and_keeps_the_store_unless_confirmed(tmp_path):
    d = _project(tmp_path)
    r = _make(d, "clean-tracking", stdin="n\n")
    assert r.returncode != 0
    assert "kept" in r.stdout
    for rel in STORE:
        assert (d / rel).exists(), rel

    r = _make(d, "clean-tracking", "CONFIRM=yes")
    assert r.returncode == 0, r.stderr
    for rel in ["mlflow.db", "mlflow.db-wal", "mlartifacts"]:
        assert not (d / rel).exists(), rel
    assert (d / "models/gan/checkpoint.pt").exists()  # only the store goes


def test_test_unit_runs_pytest_without_the_e2e_tier(tmp_path):
    # test-unit depends on the install stamp: make one newer than pyproject.toml so nothing installs,
    # and only print (-n) what would run.
    d = _project(tmp_path)
    (d / "pyproject.toml").write_text("")
    stamp = d / ".venv/.installed"
    stamp.parent.mkdir()
    stamp.write_text("")
    os.utime(d / "pyproject.toml", (1_000_000, 1_000_000))
    r = _make(d, "-n", "test-unit")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert lines == ['.venv/bin/python -m pytest -q -m "not e2e"'], lines
