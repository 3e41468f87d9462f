"""`ganops train-gan --nproc 2`: two gloo ranks launched through torchrun, as a user runs them.

One uninterrupted two-rank run (module fixture) is the oracle; a run whose ranks are SIGKILLed mid-way and
relaunched must end on exactly its weights, in the same MLflow run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from ganops.artifacts import load_checkpoint
from tests.e2e.project import BIN, new_project, project_env, sh

pytestmark = pytest.mark.e2e

STEPS, LOG_EVERY, SAMPLE_EVERY = 400, 20, 100
TINY = {
    "data": {"image_size": 16, "limit": 96},
    "gan": {"steps": STEPS, "batch_size": 8, "ngf": 8, "ndf": 8, "latent_dim": 8, "sample_every": SAMPLE_EVERY,
            "checkpoint_every": 10, "log_every": LOG_EVERY, "grid_samples": 16, "monitor_every": 0},
}  # fmt: skip
CMD = [str(BIN / "ganops"), "train-gan", "--nproc", "2", "--no-progress"]


def _project(d: Path, env: dict[str, str]) -> Path:
    def tiny(params: dict) -> None:
        for group, values in TINY.items():
            params[group].update(values)

    new_project(d, env, tiny)
    sh(["ganops", "prepare"], d, env)
    return d


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return torch.load(d / "models/gan/final/generator.pt", weights_only=True)


def _runs(d: Path) -> tuple[MlflowClient, list]:
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    return c, c.search_runs([c.get_experiment_by_name("ganops").experiment_id])


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc), deepest last."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return ""


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return "gone"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    env = project_env()
    d = _project(tmp_path_factory.mktemp("ddp"), env)
    r = sh(CMD, d, env)
    return d, r


def test_two_ranks_log_one_mlflow_run_with_world_size_and_backend(uninterrupted):
    d, r = uninterrupted
    assert r.stdout.count("trained 400 steps") == 1  # rank 0 reports; rank 1 says nothing
    c, runs = _runs(d)
    [run] = runs  # rank 0 alone opens it: one run, named once
    assert run.info.status == "FINISHED" and run.info.run_name == f"dcgan-digits-16px-{STEPS}"
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [run.data.tags["dataset_hash"][:32]]
    assert run.data.tags["world_size"] == "2" and run.data.tags["ddp_backend"] == "gloo"
    assert run.data.params["gan.nproc"] == "2"
    # one writer: each logged step holds one value (two writers would log every step twice)
    hist = c.get_metric_history(run.info.run_id, "loss_d")
    assert [m.step for m in hist] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    grids = sorted(p.name for p in (d / "models/gan/samples").iterdir())
    assert grids == [f"step_{s:06d}.png" for s in range(SAMPLE_EVERY, STEPS + 1, SAMPLE_EVERY)]
    assert [a.path for a in c.list_artifacts(run.info.run_id, "checkpoint")]
    state, _ = load_checkpoint(d / "models/gan/checkpoint.pt")
    assert state["step"] == STEPS and len(state["rng_aug_ranks"]) == 2  # every rank's augmentation stream


def test_sigkill_both_ranks_then_relaunch_resumes_to_the_uninterrupted_weights(tmp_path, uninterrupted):
    ref, _ = uninterrupted
    env = project_env()
    d = _project(tmp_path, env)
    ckpt = d / "models/gan/checkpoint.pt"
    proc = subprocess.Popen(CMD, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not ckpt.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    # both ranks (torchrun starts each in its own session, so they are not in our process group) and the
    # launchers above them, all at once: no chance to clean up
    ranks = [
        p
        for p in _descendants(proc.pid)
        if "ganops.cli" in _cmdline(p) and "distributed.run" not in _cmdline(p)
    ]
    assert len(ranks) == 2, [_cmdline(pid) for pid in _descendants(proc.pid)]
    for pid in [*ranks, *_descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    for pid in ranks:  # wait until the kernel has taken them down (gone, or a zombie)
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            time.sleep(0.05)
    assert not (d / "models/gan/final").exists()  # killed mid-run
    killed_at = load_checkpoint(ckpt)[0]["step"]
    assert 0 < killed_at < STEPS

    again = sh(CMD, d, env)
    assert "resuming from" in again.stderr
    assert _weights(d).keys() == _weights(ref).keys()
    assert all(torch.equal(v, _weights(ref)[k]) for k, v in _weights(d).items())
    c, runs = _runs(d)
    [run] = runs  # the killed run never finished, so it was continued
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert 0 < run.data.metrics["resumed_from_step"] < STEPS
