import os
import time

from typer.testing import CliRunner

from ganops.cli import app
from ganops.workspaces import DONE, flow_run_dir, gc, hold, publish


def _workspace(root, name, age_days):
    d = flow_run_dir(root, name)
    d.mkdir(parents=True)
    (d / "x.txt").write_text(name)
    t = time.time() - age_days * 86400
    os.utime(d, (t, t))
    return d


def test_gc_keeps_the_newest_and_never_a_held_workspace(tmp_path):
    old = [_workspace(tmp_path, f"run-{i}", age_days=10 + i) for i in range(4)]
    new = _workspace(tmp_path, "run-new", age_days=0)
    with hold(old[3]):  # a running flow holds its workspace
        gone = gc(tmp_path, keep=1)
    assert sorted(gone) == sorted(old[:3]) and all(not d.exists() for d in old[:3])
    assert old[3].exists() and new.exists()
    t = time.time() - 13 * 86400
    os.utime(old[3], (t, t))  # holding it touched it; age it again
    assert gc(tmp_path, keep=0, older_than_days=30) == []  # run-3 is 13 days old, run-new today
    assert [d.name for d in gc(tmp_path, keep=0, older_than_days=1, dry_run=True)] == ["run-3"]
    assert old[3].exists()


def test_gc_never_follows_a_symlink_out_of_its_folder(tmp_path):
    outside = tmp_path / "users-photos"
    outside.mkdir()
    (outside / "cat.jpg").write_bytes(b"precious")
    run = _workspace(tmp_path / "project", "run-old", age_days=5)
    (run / "photos").symlink_to(outside, target_is_directory=True)  # a link inside a workspace
    (run / "one.jpg").symlink_to(outside / "cat.jpg")
    link = flow_run_dir(tmp_path / "project", "linked-run")
    link.symlink_to(outside, target_is_directory=True)  # a link among the workspaces: not one of them
    gone = gc(tmp_path / "project", keep=0)
    assert gone == [run] and not run.exists()
    assert (outside / "cat.jpg").read_bytes() == b"precious" and link.is_symlink()
    outer = tmp_path / "elsewhere"
    (outer / ".ganops").mkdir(parents=True)
    (outer / ".ganops" / "flow-runs").symlink_to(tmp_path / "project" / ".ganops" / "flow-runs")
    _workspace(tmp_path / "project", "run-2", age_days=1)
    assert gc(outer, keep=0) == []  # the workspaces folder itself is a link: not this project's


def test_gc_command_lists_what_it_removes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _workspace(tmp_path, "a", 3)
    _workspace(tmp_path, "b", 1)
    r = CliRunner().invoke(app, ["gc", "--keep", "1", "--dry-run"])
    assert r.exit_code == 0 and "would remove .ganops/flow-runs/a" in r.output
    assert (tmp_path / ".ganops/flow-runs/a").exists()
    r = CliRunner().invoke(app, ["gc", "--keep", "1"])
    assert "removed .ganops/flow-runs/a" in r.output and not (tmp_path / ".ganops/flow-runs/a").exists()


def test_publish_lists_outputs_with_checksums_written_last(tmp_path):
    import hashlib
    import json

    (tmp_path / "out").mkdir()
    f = tmp_path / "out" / "a.png"
    f.write_bytes(b"png bytes")
    done = json.loads(publish(tmp_path, [f], {"flow": "t"}).read_text())
    assert done["flow"] == "t" and done["outputs"] == [
        {"path": "out/a.png", "bytes": 9, "sha256": hashlib.sha256(b"png bytes").hexdigest()}
    ]
    assert (tmp_path / DONE).is_file()


_DIES_HOLDING = """
import os, sys
from pathlib import Path
from ganops.workspaces import hold
with hold(Path(sys.argv[1])):
    os._exit(9)  # killed mid-run: no cleanup, like SIGKILL
"""


def test_a_flow_run_killed_mid_run_leaves_an_unfinished_workspace_nobody_holds(tmp_path):
    import subprocess
    import sys

    from ganops.workspaces import held, unfinished

    killed = flow_run_dir(tmp_path, "killed")
    assert subprocess.run([sys.executable, "-c", _DIES_HOLDING, str(killed)], timeout=120).returncode == 9
    done = flow_run_dir(tmp_path, "done")
    with hold(done):
        publish(done, [], {})
    running = flow_run_dir(tmp_path, "running")
    with hold(running):
        assert held(running) and not held(killed)  # the kernel dropped the dead process's lock
        assert unfinished(tmp_path) == [killed]  # not the finished one, not the running one
    assert unfinished(tmp_path) == [killed, running]  # ended without DONE.json: unfinished too


def test_the_next_flow_run_names_an_unfinished_one_and_ends_its_abandoned_mlflow_run(tmp_path,
                                                                                     isolated_tracking):  # fmt: skip
    import logging

    import mlflow
    from flows.unfinished import tell_unfinished
    from mlflow import MlflowClient

    from ganops import stages
    from ganops.stages.common import write_run_file

    mlflow.set_tracking_uri(isolated_tracking)  # as the flow's use_store(ROOT) does before it tells
    c = MlflowClient(isolated_tracking)
    work = flow_run_dir(tmp_path, "f00d")
    with hold(work):
        at = stages.Layout(root=work, tracking_root=tmp_path)
        run = c.create_run(c.create_experiment("e"), tags={"flow_run_id": "f00d"}).info  # opened, never ended
        write_run_file(at, run.run_id)
        at.gan.mkdir(parents=True, exist_ok=True)
        (at.gan / "checkpoint.pt").write_bytes(b"x")
    # the process died here
    assert c.get_run(run.run_id).info.status == "RUNNING"
    records = []
    log = logging.getLogger("test-unfinished")
    log.addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
    assert tell_unfinished(tmp_path, log) == ["f00d"]
    assert "prefect flow-run retry f00d" in records[0] and "keeps a checkpoint" in records[0]
    assert "marked Crashed" not in records[0]  # "f00d" is no Prefect flow-run id: nothing asked
    assert f"MLflow run {run.run_id} is marked KILLED" in records[0]
    assert c.get_run(run.run_id).info.status == "KILLED"
    assert tell_unfinished(tmp_path, log) == ["f00d"] and "marked KILLED" not in records[1]  # once
    mlflow.set_tracking_uri(None)
