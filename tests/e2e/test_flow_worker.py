"""Prefect workers for real: the README's recipe for a `process` work pool, as a user types it.

`prefect work-pool create ganops-process --type process`, `prefect deploy --all` (prefect.yaml) and
`prefect worker start --pool ganops-process` against `prefect server start` on a free loopback port, in a
temp git + DVC project; `prefect deployment run 'train-gan/local' --watch` then runs in the worker's own
subprocess and registers a generator version tagged with the flow-run id.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.e2e.project import ROOT, flow_project, sh
from tests.e2e.servers import prefect_server, stop
from tests.e2e.test_flows import TINY

pytestmark = pytest.mark.e2e
POOL = "ganops-process"  # the pool prefect.yaml names


def test_process_pool_worker_runs_a_deployment_and_registers_a_version(tmp_path):
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

    with prefect_server(d, env, home / "server.log") as api, open(home / "worker.log", "w") as wlog:
        env["PREFECT_API_URL"] = api
        sh(["prefect", "work-pool", "create", POOL, "--type", "process"], d, env)
        # the recipe in prefect.yaml / README: GANOPS_PROJECT_ROOT names the folder the worker runs in
        deploy = sh(["prefect", "--no-prompt", "deploy", "--all"], d, env | {"GANOPS_PROJECT_ROOT": str(d)})
        assert "train-gan/local" in deploy.stdout, deploy.stdout
        worker = subprocess.Popen(["prefect", "worker", "start", "--pool", POOL], cwd=tmp_path, env=env,
                                  stdout=wlog, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            r = sh(["prefect", "deployment", "run", "train-gan/local", "--param", f"overrides={json.dumps(TINY)}",
                    "--watch", "--watch-timeout", "500"], d, env, check=False)  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr + (home / "worker.log").read_text()[-4000:]
        finally:
            stop(worker)

    m = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout)
    assert m, r.stdout
    flow_run_id = m.group(1)
    assert "Completed" in r.stdout, r.stdout
    log = (home / "worker.log").read_text()
    assert flow_run_id in log  # the worker, not some other process, ran it
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("ganops")
    runs = c.search_runs([exp.experiment_id], f"tags.prefect_flow_run_id = '{flow_run_id}'")
    assert len(runs) == 1 and runs[0].data.tags["entry_point"] == "prefect"
    versions = c.search_model_versions("name = 'ganops-generator'")
    assert [v.run_id for v in versions] == [runs[0].info.run_id]
    assert (d / ".ganops/flow-runs" / flow_run_id / "DONE.json").is_file()
