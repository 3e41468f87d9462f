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


def _installed(d: Path) -> Path:
    """A project whose install stamp is newer than pyproject.toml (nothing re-installs); returns .venv/bin."""
    (d / "pyproject.toml").write_text("")
    os.utime(d / "pyproject.toml", (1_000_000, 1_000_000))
    bin_ = d / ".venv/bin"
    bin_.mkdir(parents=True, exist_ok=True)
    (d / ".venv/.installed").write_text("")
    return bin_


def _recording(bin_: Path, name: str, log: Path, rc: int = 0) -> None:
    """An executable `name` in .venv/bin that appends its command line to `log` and exits with `rc`: it
    shows which commands a make target runs, in which order, and that make stops at the first failure."""
    exe = bin_ / name
    exe.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit {rc}\n')
    exe.chmod(0o755)


def _calls(log: Path) -> list[str]:
    return [ln.rstrip() for ln in log.read_text().splitlines()]


def test_demo_runs_dvc_repro_then_the_summary_and_stops_if_the_pipeline_fails(tmp_path):
    d = _project(tmp_path)
    bin_, log = _installed(d), tmp_path / "calls.log"
    _recording(bin_, "dvc", log)
    _recording(bin_, "ganops", log)
    r = _make(d, "demo")
    assert r.returncode == 0, r.stderr
    assert _calls(log) == ["dvc repro", "ganops summary"]

    log.unlink()
    _recording(bin_, "dvc", log, rc=1)
    assert _make(d, "demo").returncode != 0
    assert _calls(log) == ["dvc repro"]  # no summary of a failed pipeline


def test_serve_checks_the_champion_first_then_serves_on_loopback_at_port(tmp_path):
    d = _project(tmp_path)
    bin_, log = _installed(d), tmp_path / "calls.log"
    _recording(bin_, "ganops", log)
    _recording(bin_, "bentoml", log)
    assert _make(d, "serve", "PORT=3999").returncode == 0
    assert _calls(log) == [
        "ganops champion",
        "bentoml serve serving.service:GanService --host 127.0.0.1 --port 3999",
    ]
    log.unlink()
    _recording(bin_, "ganops", log, rc=1)  # no champion: `ganops champion` says what to run, nothing serves
    assert _make(d, "serve").returncode != 0
    assert _calls(log) == ["ganops champion"]


def test_lint_runs_ruff_and_mypy_and_test_runs_pytest_only_after_lint(tmp_path):
    d = _project(tmp_path)
    bin_, log = _installed(d), tmp_path / "calls.log"
    for name in ("ruff", "mypy"):
        _recording(bin_, name, log)
    assert _make(d, "lint").returncode == 0
    assert _calls(log) == [
        "ruff check src tests bench flows serving",
        "ruff format --check src tests bench flows serving",
        "mypy",
    ]
    log.unlink()
    _recording(bin_, "ruff", log, rc=1)
    assert _make(d, "lint").returncode != 0
    assert _calls(log) == ["ruff check src tests bench flows serving"]

    # `test` = lint, the optional system packages, then the whole suite (printed only: the browser and
    # postgres targets would install Debian packages as root).
    r = _make(d, "-n", "test")
    assert r.returncode == 0, r.stderr
    cmds = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    assert cmds.index(".venv/bin/mypy") < cmds.index(".venv/bin/python -m pytest -q") == len(cmds) - 1


def test_clean_flow_runs_keeps_the_20_newest_workspaces(tmp_path):
    # The real `ganops gc` of this environment, through the make target.
    import json
    import sys
    import time

    d = _project(tmp_path)
    bin_ = _installed(d)
    (bin_ / "ganops").symlink_to(Path(sys.executable).parent / "ganops")
    runs = d / ".ganops/flow-runs"
    now = time.time()
    for i in range(23):
        ws = runs / f"run-{i:02d}"
        ws.mkdir(parents=True)
        (ws / "DONE.json").write_text(json.dumps({"flow_run_id": ws.name}))
        os.utime(ws / "DONE.json", (now - 1000 + i, now - 1000 + i))
        os.utime(ws, (now - 1000 + i, now - 1000 + i))
    r = _make(d, "clean-flow-runs")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in runs.iterdir()) == [f"run-{i:02d}" for i in range(3, 23)]


def test_prefect_targets_run_the_commands_the_readme_gives(tmp_path):
    d = _project(tmp_path)
    bin_, log = _installed(d), tmp_path / "calls.log"
    _recording(bin_, "prefect", log)
    exe = bin_ / "prefect"  # also record where each command sends Prefect's API calls
    exe.write_text(
        exe.read_text().replace("prefect $*", "prefect $* [$PREFECT_API_URL$PREFECT_SERVER_UI_API_URL]")
    )
    assert _make(d, "prefect-server").returncode == 0
    assert _make(d, "train-flow", 'OVERRIDES=["gan.steps=500"]', "DATA_REV=v1").returncode == 0
    assert _make(d, "style-flow", "PREFECT_PORT=4300").returncode == 0
    assert _calls(log) == [
        "prefect server start --host 127.0.0.1 --port 4200 [http://127.0.0.1:4200/api]",
        'prefect deployment run train-gan/local --param overrides=["gan.steps=500"] --param data_rev=v1 --watch'
        " [http://127.0.0.1:4200/api]",
        "prefect deployment run style-transfer/local --param overrides=[] --watch [http://127.0.0.1:4300/api]",
    ]
