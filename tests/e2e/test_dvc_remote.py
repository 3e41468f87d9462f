"""A DVC remote: push the pipeline's data and outputs, then a fresh clone reproduces with nothing to run.

The remote is a local folder (what a team would point at S3 with `dvc-s3`: README "Scaling out").
"""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.project import TINY_PIPELINE, project_env, sh, tiny_project

pytestmark = pytest.mark.e2e

STAGES = ("prepare", "train_gan", "classifier", "evaluate", "promote", "stylize_sheet")


def test_push_then_fresh_clone_pulls_and_repro_runs_nothing(tmp_path):
    env = project_env()
    d, remote, clone = tmp_path / "project", tmp_path / "remote", tmp_path / "clone"
    d.mkdir()
    tiny_project(d, env, TINY_PIPELINE, commit=False)
    sh(["dvc", "remote", "add", "-d", "store", str(remote)], d, env)
    r = sh(["dvc", "repro"], d, env)
    assert all(f"Running stage '{s}'" in r.stdout for s in STAGES)
    sh(["git", "add", "-A"], d, env)  # dvc.lock, params, the metrics files (cache: false: git keeps them)
    sh(["git", "commit", "-qm", "pipeline run"], d, env)
    pushed = sh(["dvc", "push"], d, env)
    assert "pushed" in pushed.stdout and any(remote.rglob("*"))

    subprocess.run(["git", "clone", "-q", str(d), str(clone)], env=env, check=True)
    assert not (clone / "models/gan/final/generator.pt").exists()  # git holds pointers, not the outputs
    sh(["dvc", "pull"], clone, env)
    for out in ("data/prepared/dataset.pt", "models/gan/final/generator.pt", "models/classifier/classifier.pt",
                "data/stylized_sheet.png"):  # fmt: skip
        assert (clone / out).read_bytes() == (d / out).read_bytes(), out
    again = sh(["dvc", "repro"], clone, env)
    assert "Running stage" not in again.stdout, again.stdout  # every stage unchanged: nothing trains
    assert sh(["dvc", "status"], clone, env).stdout.strip() == "Data and pipelines are up to date."
