"""Prefect workers for real: the README's recipe for a `process` work pool, as a user types it, and what
happens when a worker dies with its flow run or a flow run is cancelled.

`prefect work-pool create ganops-process --type process`, `prefect deploy --all` (prefect.yaml) and
`prefect worker start --pool ganops-process` against `prefect server start` on a free loopback port, in a
temp git + DVC project; `prefect deployment run 'train-gan/local'` then runs in the worker's own subprocess
and registers a generator version tagged with the flow-run id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from ganops.workspaces import held
from tests.e2e.project import ROOT, flow_project, sh
from tests.e2e.servers import prefect_server
from tests.e2e.test_flows import TINY

pytestmark = pytest.mark.e2e
POOL = "ganops-process"  # the pool prefect.yaml names


LONG = [o for o in TINY if not o.startswith(("gan.steps=", "gan.checkpoint_every=", "gan.sample_every="))] + [
    "gan.steps=2000", "gan.checkpoint_every=25", "gan.sample_every=2000", "gan.log_every=100", "gan.monitor_every=0"]  # fmt: skip


def _worker(cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """`prefect worker start` in its own session, output appended to ``log``."""
    with open(log, "a") as out:
        return subprocess.Popen(["prefect", "worker", "start", "--pool", POOL], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _stop_worker(worker: subprocess.Popen) -> None:
    """SIGTERM the worker's session; SIGKILL it if it is not gone within a minute (a loaded machine)."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(worker.pid, sig)
            worker.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _state(flow_run_id: str, d: Path, env: dict) -> str:
    out = sh(["prefect", "flow-run", "inspect", flow_run_id, "-o", "json"], d, env).stdout
    return json.loads(out)["state"]["type"]


def _finished(flow_run_id: str, d: Path, env: dict, timeout: float = 500.0) -> str:
    """Wait for a (re)started flow run to end; its final state type. (`prefect flow-run watch` can stop at
    an earlier attempt's terminal event: its stream replays the run's past.)"""
    deadline = time.monotonic() + timeout
    while (state := _state(flow_run_id, d, env)) not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, f"flow run {flow_run_id} still {state}"
        time.sleep(1)
    return state


def _holders(lock: Path) -> list[int]:
    """The processes with ``lock`` open (the flow-run process holding its workspace)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(lock) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:  # gone, or not ours to look at
            continue
    return pids


def _wait(check, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _start(d: Path, env: dict, overrides: list[str]) -> str:
    r = sh(["prefect", "deployment", "run", "train-gan/local", "--param", f"overrides={json.dumps(overrides)}"],
           d, env)  # fmt: skip
    m = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout)
    assert m, r.stdout
    return m.group(1)


def test_worker_runs_deployments_and_a_killed_or_cancelled_flow_run_resumes_on_retry(tmp_path):
    # (a) A worker dies with its flow run mid-training (both SIGKILLed, as in a machine crash). (b) The next
    # flow run (the README's recipe: own pictures, a deployment run on a process pool) finishes, registers a
    # version, names the dead run with how to go on and settles its states. (c) `prefect flow-run retry`
    # resumes the dead run from its workspace's checkpoint; cancelled while it trains, (d) retried again it
    # finishes, in the same MLflow run throughout.
    def edit(params: dict) -> None:
        params["data"].update(source="folder", root="data/raw/own")

    d, home, env = flow_project(tmp_path, edit)
    shutil.copy(ROOT / "prefect.yaml", d / "prefect.yaml")
    (d / "data/raw/own").mkdir(parents=True)
    for i in range(20):
        Image.new("RGB", (24, 24), (200, (i * 9) % 256, 100)).save(d / f"data/raw/own/img_{i:02d}.png")
    sh(["dvc", "add", "data/raw/own"], d, env)
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "data"], d, env)
    wlog = home / "worker.log"
    mlflow = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")

    with prefect_server(d, env, home / "server.log") as api:
        env["PREFECT_API_URL"] = api
        sh(["prefect", "work-pool", "create", POOL, "--type", "process"], d, env)
        # the recipe in prefect.yaml / README: GANOPS_PROJECT_ROOT names the folder the worker runs in
        deploy = sh(["prefect", "--no-prompt", "deploy", "--all"], d, env | {"GANOPS_PROJECT_ROOT": str(d)})
        assert "train-gan/local" in deploy.stdout, deploy.stdout
        worker = _worker(tmp_path, env, wlog)
        try:
            # (a) killed mid-training, worker and flow-run process at once
            killed = _start(d, env, LONG)
            work = d / ".ganops/flow-runs" / killed
            ckpt = work / "models/gan/checkpoint.pt"
            _wait(ckpt.is_file, "the first checkpoint")
            flow_procs = _holders((work / ".lock").resolve())
            assert flow_procs, "no process holds the workspace"
            os.killpg(worker.pid, signal.SIGKILL)  # the flow run runs in a session of its own: killed too
            for pid in flow_procs:
                os.kill(pid, signal.SIGKILL)
            worker.wait(timeout=30)
            _wait(lambda: not held(work), "the dead flow run's lock to drop", 30)
            assert _state(killed, d, env) == "RUNNING"  # nothing is left to tell Prefect otherwise
            [run] = mlflow.search_runs(["1"], f"tags.prefect_flow_run_id = '{killed}'")
            assert run.info.status == "RUNNING"

            # (b) the next flow run, in a new worker
            worker = _worker(tmp_path, env, wlog)
            nxt = _start(d, env, [*TINY, "gan.monitor_every=0"])
            assert _finished(nxt, d, env) == "COMPLETED", wlog.read_text()[-4000:]
            log = wlog.read_text()
            assert "Worker '" in log and nxt in log  # the worker, not some other process, ran it
            assert (
                f"flow run {killed} ended before it finished" in log
                and f"prefect flow-run retry {killed}" in log
            )
            assert _state(killed, d, env) == "CRASHED"
            assert mlflow.get_run(run.info.run_id).info.status == "KILLED"
            [done] = mlflow.search_runs(["1"], f"tags.prefect_flow_run_id = '{nxt}'")
            assert done.data.tags["entry_point"] == "prefect"
            versions = mlflow.search_model_versions("name = 'ganops-generator'")
            assert [v.run_id for v in versions] == [done.info.run_id]
            assert (d / ".ganops/flow-runs" / nxt / "DONE.json").is_file()

            # (c) retried: it resumes; cancelled while it trains
            sh(["prefect", "flow-run", "retry", killed], d, env)
            first = ckpt.stat().st_ino
            _wait(lambda: held(work) and ckpt.stat().st_ino != first, "a checkpoint of the retry")
            sh(["prefect", "flow-run", "cancel", killed], d, env)
            _wait(lambda: _state(killed, d, env) == "CANCELLED", "the cancel", 120)
            _wait(lambda: not held(work), "the cancelled run to let go of its workspace", 60)
            assert mlflow.get_run(run.info.run_id).info.status != "RUNNING"

            # (d) retried again: it resumes and finishes
            sh(["prefect", "flow-run", "retry", killed], d, env)
            assert _finished(killed, d, env) == "COMPLETED", wlog.read_text()[-4000:]
        finally:
            _stop_worker(worker)
    runs = mlflow.search_runs(["1"], f"tags.prefect_flow_run_id = '{killed}'")
    assert [r.info.run_id for r in runs] == [run.info.run_id] and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["resumed_from_step"] > 0
    assert (work / "DONE.json").is_file()
