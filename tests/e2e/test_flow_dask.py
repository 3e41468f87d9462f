"""Prefect on Dask for real: `style-transfer/local` run with `dask_workers=2` fans its pairs out on a Dask
LocalCluster of two worker processes (prefect-dask's DaskTaskRunner), against `prefect server start` on a
free loopback port and `python -m flows.serve`, in a temp git + DVC project."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.e2e.project import new_project, project_env, sh
from tests.e2e.servers import start_server, stop
from tests.e2e.test_flows import STYLE_TINY

pytestmark = pytest.mark.e2e
STYLES = ("shipwreck", "starry_night", "the_scream")
PHOTOS = ("china", "flower")


def test_style_transfer_on_a_dask_local_cluster(tmp_path):
    d = tmp_path / "proj"
    d.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    env = project_env(PREFECT_HOME=str(home / "prefect"))

    def edit(params: dict) -> None:
        params["style"].update(size=32, steps=3, style_layers={"relu1_1": 1.0, "relu2_1": 1.0})

    new_project(d, env, edit, copy=("flows", "src"))
    with open(home / "server.log", "w") as slog, open(home / "serve.log", "w") as flog:

        def launch(port: int) -> subprocess.Popen:
            return subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                    cwd=d, env=env | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"},
                                    stdout=slog, stderr=subprocess.STDOUT)  # fmt: skip

        server, port = start_server(launch, "/api/health")
        served = None
        try:
            env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
            served = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=d, env=env, stdout=flog,
                                      stderr=subprocess.STDOUT)  # fmt: skip
            cmd = ["prefect", "deployment", "run", "style-transfer/local", "--param", f"overrides={json.dumps(STYLE_TINY)}",
                   "--param", "dask_workers=2", "--watch", "--watch-timeout", "500"]  # fmt: skip
            for _ in range(60):  # the deployment appears a moment after flows.serve starts
                r = sh(cmd, d, env, check=False)
                if "not found" not in (r.stdout + r.stderr).lower():
                    break
            assert r.returncode == 0, r.stdout + r.stderr + (home / "serve.log").read_text()[-4000:]
        finally:
            if served is not None:
                stop(served)
            stop(server)

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
    log = (home / "serve.log").read_text()
    workers = re.findall(r" x \S+ on Dask worker (tcp://127\.0\.0\.1:\d+)", log)
    assert len(workers) == len(STYLES) * len(PHOTOS) and len(set(workers)) == 2, log[-4000:]
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("ganops-stylize").experiment_id
    pairs = c.search_runs([exp], f"tags.prefect_flow_run_id = '{flow_run_id}'")
    assert sorted(p.info.run_name for p in pairs) == [f"{s}/{c}" for s in STYLES for c in PHOTOS]
    assert all(p.data.tags["entry_point"] == "prefect" and p.info.status == "FINISHED" for p in pairs)
