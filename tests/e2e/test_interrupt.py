"""Interrupt -> resume through the commands users run: `ganops train-gan` and `dvc repro`, with signals.

The oracle is an uninterrupted run of the same settings: the resumed weights must equal it exactly (CPU).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests.e2e.project import BIN, project_env, sh, tiny_project

pytestmark = pytest.mark.e2e

# Small nets but enough steps that a signal sent at the first checkpoint lands mid-run.
TINY = {
    "data": {"image_size": 16, "limit": 96},
    "gan": {"steps": 600, "batch_size": 16, "ngf": 8, "ndf": 8, "latent_dim": 8, "sample_every": 300,
            "checkpoint_every": 10, "log_every": 50, "grid_samples": 16, "monitor_every": 0},
    "classifier": {"epochs": 1},
}  # fmt: skip


def _project(d: Path, env: dict[str, str]) -> Path:
    tiny_project(d, env, TINY)
    sh(["ganops", "prepare"], d, env)
    return d


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return torch.load(d / "models/gan/final/generator.pt", weights_only=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _interrupt_when_checkpointed(cmd: list[str], d: Path, env: dict, sig: int) -> subprocess.CompletedProcess:
    """Start ``cmd`` in its own process group; at the first checkpoint send ``sig`` to the whole group
    (what a terminal's Ctrl-C does); return its result."""
    ckpt = d / "models/gan/checkpoint.pt"
    proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not ckpt.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's final generator weights."""
    env = project_env()
    d = _project(tmp_path_factory.mktemp("reference"), env)
    sh(["ganops", "train-gan", "--no-progress"], d, env)
    return _weights(d)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_train_gan_command_stops_cleanly_and_resumes_exactly(tmp_path, reference, sig):
    env = project_env()
    d = _project(tmp_path, env)
    r = _interrupt_when_checkpointed([str(BIN / "ganops"), "train-gan", "--no-progress"], d, env, sig)
    assert r.returncode == 130, r.stdout + r.stderr
    assert "stopping after this step and saving a checkpoint" in r.stderr
    assert "run again to resume" in r.stderr and not (d / "models/gan/final").exists()
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    [stopped] = c.search_runs([c.get_experiment_by_name("ganops").experiment_id])
    assert stopped.info.status != "FINISHED" and not c.list_artifacts(stopped.info.run_id, "checkpoint")

    again = sh(["ganops", "train-gan", "--no-progress"], d, env)
    assert "resuming from" in again.stderr
    assert _same(_weights(d), reference)  # exactly where an uninterrupted run ends
    runs = c.search_runs([c.get_experiment_by_name("ganops").experiment_id])
    assert [r.info.run_id for r in runs] == [stopped.info.run_id]  # the unfinished run was continued
    run = runs[0]
    assert run.info.status == "FINISHED" and c.list_artifacts(run.info.run_id, "checkpoint")
    assert 0 < run.data.metrics["resumed_from_step"] < TINY["gan"]["steps"]


def test_dvc_repro_interrupted_then_repro_resumes_exactly(tmp_path, reference):
    env = project_env()
    d = _project(tmp_path, env)
    r = _interrupt_when_checkpointed(["dvc", "repro", "train_gan"], d, env, signal.SIGINT)
    assert r.returncode != 0, r.stdout + r.stderr
    assert (d / "models/gan/checkpoint.pt").is_file()  # persist: true keeps it for the next repro
    again = sh(["dvc", "repro", "train_gan"], d, env)
    assert "resuming from" in again.stdout + again.stderr
    assert _same(_weights(d), reference)
    assert "didn't change" in sh(["dvc", "repro", "train_gan"], d, env).stdout
