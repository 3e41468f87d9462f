"""A temp copy of the project as a fresh git + DVC repo, for tests that run the real pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PARAMS = ROOT / "tests" / "params.yaml"  # a fixed copy: the working copy's params.yaml is the user's
PIPELINE_FILES = ["dvc.yaml", ".gitignore", ".dvcignore", "data/raw/.gitkeep", "data/.gitignore",
                  "models/.gitignore", "data/photos/README.md", "data/photos/china.jpg", "data/photos/flower.jpg",
                  "data/paintings/README.md", "data/paintings/starry_night.jpg",
                  "data/paintings/the_scream.jpg", "data/paintings/shipwreck.jpg"]  # fmt: skip

# The whole pipeline at toy sizes (seconds per stage): what the DVC tests reproduce. An experiment reproduces
# every stage, style included, so those are tiny too.
TINY_PIPELINE = {
    "data": {"image_size": 16, "limit": 0},
    "gan": {"steps": 6, "batch_size": 16, "ngf": 4, "ndf": 4, "latent_dim": 8, "sample_every": 3,
            "checkpoint_every": 3, "log_every": 2, "grid_samples": 16, "monitor_every": 0},
    "classifier": {"epochs": 1},
    "evaluate": {"kid_subset_size": 20, "n_samples": 200},
    "style": {"size": 32, "steps": 3, "style_layers": {"relu1_1": 1.0, "relu2_1": 1.0}},
}  # fmt: skip


def sh(
    cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run a command as a user would; on failure show its output."""
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def project_env(**extra: str) -> dict[str, str]:
    """This venv first on PATH, offline switches, a git identity; no inherited MLflow/DVC/Prefect pointers."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_URI", "DVC_", "PREFECT_"))
    }
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip
    return env | extra


def new_project(
    d: Path, env: dict[str, str], edit_params: Callable[[dict], None], copy: tuple[str, ...] = ()
) -> None:
    """Copy the pipeline files, the tests' params (and the ``copy`` folders) into ``d``, edit params, ``git init`` + ``dvc init``."""
    for rel in PIPELINE_FILES:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, d / rel)
    shutil.copy(PARAMS, d / "params.yaml")
    for rel in copy:
        shutil.copytree(ROOT / rel, d / rel, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((d / "params.yaml").read_text())
    edit_params(params)
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], d, env)
    sh(["dvc", "init", "-q"], d, env)


def flow_project(tmp_path: Path, edit_params: Callable[[dict], None]) -> tuple[Path, Path, dict[str, str]]:
    """A project for the flows (``flows/`` and ``src/`` copied in) in ``tmp_path/proj``, and a Prefect home
    beside it; returns (project, home, env with ``PREFECT_HOME``)."""
    d, home = tmp_path / "proj", tmp_path / "home"
    d.mkdir()
    home.mkdir()
    env = project_env(PREFECT_HOME=str(home / "prefect"))
    new_project(d, env, edit_params, copy=("flows", "src"))
    return d, home, env


def tiny_project(d: Path, env: dict[str, str], groups: dict[str, dict], *, commit: bool = True) -> Path:
    """:func:`new_project` (copying ``src``) with each params group updated from ``groups``; committed
    unless ``commit`` is false. Returns ``d``."""

    def edit(params: dict) -> None:
        for group, values in groups.items():
            params[group].update(values)

    new_project(d, env, edit, copy=("src",))
    if commit:
        sh(["git", "add", "-A"], d, env)
        sh(["git", "commit", "-qm", "project"], d, env)
    return d
