"""Prefect on Dask for real: `style-transfer/local` fans its pairs out through prefect-dask's DaskTaskRunner,
either on a LocalCluster of two worker processes (`dask_workers=2`) or on a running scheduler with two
workers started as a user would (`dask scheduler`, `dask worker`; `dask_address=tcp://...`), against
`prefect server start` on a free loopback port and `python -m flows.serve`, in a temp git + DVC project."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest
from mlflow import MlflowClient

from tests.e2e.project import flow_project
from tests.e2e.servers import flows_served, free_port, prefect_server, run_deployment, stop
from tests.e2e.test_flows import STYLE_TINY

pytestmark = pytest.mark.e2e
STYLES = ("shipwreck", "starry_night", "the_scream")
PHOTOS = ("china", "flower")


def _scheduler(d, env: dict, home):  # noqa: ANN001, ANN202 - (address, [processes])
    """`dask scheduler` on a free loopback port and `dask worker` with two one-thread processes, started in
    the project (workers import `flows` from there and report to the same Prefect API)."""
    port = free_port()
    log = open(home / "dask.log", "w")  # noqa: SIM115 - closed with the processes
    procs = [subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT)]  # fmt: skip
    address = f"tcp://127.0.0.1:{port}"
    procs.append(subprocess.Popen(["dask", "worker", address, "--nworkers", "2", "--nthreads", "1",
                                   "--no-dashboard", "--host", "127.0.0.1"], cwd=d,
                                  env=env | {"PYTHONPATH": str(d)}, stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
    from distributed import Client

    with Client(address, timeout=120) as client:  # wait for both workers to join
        client.wait_for_workers(2, timeout=240)
    return address, procs


@pytest.mark.parametrize("where", ["local_cluster", "scheduler_address"])
def test_style_transfer_on_dask(tmp_path, where):
    def edit(params: dict) -> None:
        params["style"].update(size=32, steps=3, style_layers={"relu1_1": 1.0, "relu2_1": 1.0})

    d, home, env = flow_project(tmp_path, edit)
    dask: list[subprocess.Popen] = []
    with prefect_server(d, env, home / "server.log") as api:
        env["PREFECT_API_URL"] = api
        with flows_served(d, env, home / "serve.log"):
            try:
                if where == "local_cluster":
                    fan_out = "dask_workers=2"
                else:
                    address, dask = _scheduler(d, env, home)
                    fan_out = f"dask_address={address}"
                r = run_deployment(["prefect", "deployment", "run", "style-transfer/local",
                                    "--param", f"overrides={json.dumps(STYLE_TINY)}", "--param", fan_out,
                                    "--watch", "--watch-timeout", "500"], d, env)  # fmt: skip
                assert r.returncode == 0, r.stdout + r.stderr + (home / "serve.log").read_text()[-4000:]
            finally:
                for proc in reversed(dask):
                    stop(proc)

    m = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout)
    assert m, r.stdout
    flow_run_id = m.group(1)
    work = d / ".ganops/flow-runs" / flow_run_id
    done = json.loads((work / "DONE.json").read_text())
    paths = sorted(o["path"] for o in done["outputs"])
    assert paths == [f"data/stylized/{s}/{c}.png" for s in STYLES for c in PHOTOS] + [
        "data/stylized_sheet.png"
    ]
    for o in done["outputs"]:
        assert hashlib.sha256((work / o["path"]).read_bytes()).hexdigest() == o["sha256"]
    # every pair ran in a Dask worker process, and both workers took some
    log = "".join((home / f).read_text() for f in ("serve.log", "dask.log") if (home / f).exists())
    workers = re.findall(r" x \S+ on Dask worker (tcp://127\.0\.0\.1:\d+)", log)
    assert len(workers) == len(STYLES) * len(PHOTOS) and len(set(workers)) == 2, log[-4000:]
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("ganops-stylize").experiment_id
    pairs = c.search_runs([exp], f"tags.prefect_flow_run_id = '{flow_run_id}'")
    assert sorted(p.info.run_name for p in pairs) == [f"{s}/{c}" for s in STYLES for c in PHOTOS]
    assert all(p.data.tags["entry_point"] == "prefect" and p.info.status == "FINISHED" for p in pairs)
