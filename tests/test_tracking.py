import socket
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from PIL import Image

from ganops.config import parse_params
from ganops.tracking import RunContext, TrackingError, check_reachable, retry_locked, start_run, tracking_uri


def test_default_uri_is_absolute_sqlite_at_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", "/somewhere/else")
    assert tracking_uri().startswith("sqlite:////somewhere/else/")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri() == "http://127.0.0.1:1"


def test_unreachable_server_fails_fast():
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="not reachable"):
        check_reachable(f"http://127.0.0.1:{port}", timeout=2)
    assert time.perf_counter() - t0 < 10


def test_bad_sqlite_and_file_store(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        check_reachable(f"sqlite:///{tmp_path}/no/such/dir/mlflow.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TrackingError, match="not a usable sqlite"):
        check_reachable(f"sqlite:///{junk}")
    with pytest.raises(TrackingError, match="file store"):
        check_reachable("./mlruns")


def test_run_logs_params_tags_metrics_and_images(tmp_path, isolated_tracking):
    p = parse_params({"tracking": {"experiment": "t"}})
    png = tmp_path / "g.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(png)
    with start_run(p, ctx=RunContext("test"), data_hash="h123", root=tmp_path) as run:
        run.on_metrics(1, {"loss_d": 1.5, "loss_g": 0.7})
        run.on_metrics(2, {"loss_d": 1.2, "loss_g": 0.9})
        run.on_sample(2, png)
        run_id = run.run_id
    c = MlflowClient(isolated_tracking)
    r = c.get_run(run_id)
    assert r.data.params["gan.lr_d"] == "0.0002" and r.data.tags["dataset_hash"] == "h123"
    assert r.data.tags["entry_point"] == "test" and "git_commit" in r.data.tags
    assert [m.value for m in c.get_metric_history(run_id, "loss_d")] == [1.5, 1.2]
    arts = [a.path for a in c.list_artifacts(run_id, "images")]
    assert arts, "sample grid image not logged"
    exp = c.get_experiment(r.info.experiment_id)
    assert exp.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())


def test_a_finished_run_is_never_reopened_an_unfinished_one_is_continued(tmp_path, isolated_tracking):
    p = parse_params({})
    c = MlflowClient(isolated_tracking)
    with start_run(p, ctx=RunContext("t"), data_hash="h", root=tmp_path) as run:
        finished = run.run_id
    with start_run(p, ctx=RunContext("t"), data_hash="h", root=tmp_path, resume_run_id=finished) as run:
        extended = run.run_id  # training on from a finished run: a new run that says where it came from
    assert extended != finished and c.get_run(extended).data.tags["resumed_from"] == finished
    assert c.get_run(finished).info.status == "FINISHED"

    with (
        pytest.raises(KeyboardInterrupt),
        start_run(p, ctx=RunContext("t"), data_hash="h", root=tmp_path) as run,
    ):
        interrupted = run.run_id
        raise KeyboardInterrupt  # Ctrl-C mid-training: the run ends KILLED, its export never logged
    with start_run(p, ctx=RunContext("t"), data_hash="h", root=tmp_path, resume_run_id=interrupted) as run:
        assert run.run_id == interrupted and "resumed_from" not in c.get_run(interrupted).data.tags
    assert c.get_run(interrupted).info.status == "FINISHED"

    # SIGKILLed after its export was logged (status still RUNNING): the export is a recorded fact
    killed = c.create_run(c.get_experiment_by_name("ganops").experiment_id).info.run_id
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    c.log_artifacts(killed, str(folder), "checkpoint")
    with start_run(p, ctx=RunContext("t"), data_hash="h", root=tmp_path, resume_run_id=killed) as run:
        assert run.run_id != killed and c.get_run(run.run_id).data.tags["resumed_from"] == killed

    with start_run(p, ctx=RunContext("t"), data_hash="h", root=tmp_path, resume_run_id="0" * 32) as run:
        assert run.run_id not in (finished, interrupted)  # unknown id: a new run, not an error
    mlflow.set_tracking_uri(None)


def test_run_context_tags(tmp_path, isolated_tracking):
    ctx = RunContext("prefect", flow_run_id="f-1", dvc_exp_name="exp-a")
    with start_run(parse_params({}), ctx=ctx, data_hash="h", root=tmp_path) as run:
        pass
    tags = MlflowClient(isolated_tracking).get_run(run.run_id).data.tags
    assert (tags["entry_point"], tags["prefect_flow_run_id"], tags["dvc_exp_name"]) == (
        "prefect",
        "f-1",
        "exp-a",
    )
    mlflow.set_tracking_uri(None)


def test_retry_locked_retries_only_a_locked_database():
    import sqlite3

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert retry_locked(flaky) == "ok" and len(calls) == 3
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_locked(
            lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is locked")), attempts=2
        )
    other = []
    with pytest.raises(ValueError):
        retry_locked(lambda: other.append(1) or (_ for _ in ()).throw(ValueError("no")))
    assert len(other) == 1  # anything else is not retried


def test_store_is_wal_and_concurrent_first_use_by_many_processes_works(tmp_path):
    # Four processes open a brand-new store at once: one migration, one experiment, every metric recorded.
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import sys; from ganops.config import parse_params; from ganops.tracking import RunContext, start_run\n"
        "with start_run(parse_params({}), ctx=RunContext('t'), data_hash='h', root=__import__('pathlib').Path(sys.argv[1])) as r:\n"
        "    [r.on_metrics(i, {'x': float(i)}) for i in range(20)]\n"
    )
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stderr=subprocess.PIPE)
             for _ in range(4)]  # fmt: skip
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for e in errs]  # the tracebacks, not the INFO
    c = MlflowClient(uri)
    exps = [e for e in c.search_experiments() if e.name == "ganops"]
    assert len(exps) == 1
    runs = c.search_runs([exps[0].experiment_id])
    assert len(runs) == 4 and all(len(c.get_metric_history(r.info.run_id, "x")) == 20 for r in runs)
    # one dataset (same data), created by whichever run came first; every run has it as its input
    assert all([d.dataset.digest for d in r.inputs.dataset_inputs] == ["h"] for r in runs)
    import sqlite3

    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_kill_while_the_store_is_created_never_leaves_a_broken_store(tmp_path):
    # MLflow builds a new sqlite store through seconds of schema migrations, some of them sqlite "batch"
    # table rebuilds (create _alembic_tmp_<table>, copy, drop, rename). The creator dies right after such a
    # temp table is created (os._exit: no cleanup, like SIGKILL; found by bench/kill_soak.py). The next
    # user must still get a working store.
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = """
import os, sys
from alembic.ddl.impl import DefaultImpl
create = DefaultImpl.create_table
def dies_mid_rebuild(self, table, **kw):
    create(self, table, **kw)
    if table.name.startswith("_alembic_tmp_"):
        os._exit(9)
DefaultImpl.create_table = dies_mid_rebuild
from ganops.tracking import prepare_store
prepare_store(sys.argv[1])
"""
    r = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr[-2000:]  # it did die inside a table rebuild
    with start_run(parse_params({}), ctx=RunContext("t"), data_hash="h", root=tmp_path) as run:
        run.on_metrics(1, {"x": 1.0})
    assert MlflowClient(uri).get_run(run.run_id).data.metrics == {"x": 1.0}
    assert not list(tmp_path.glob("mlflow.db.creating-*"))  # the dead creator's temp file is gone
    mlflow.set_tracking_uri(None)


def _plant_lock(client: MlflowClient, name: str, owner: str, since: float) -> None:
    client.create_registered_model(f"{name}.lock", tags={"owner": owner, "since": repr(since)})


def test_a_stale_promotion_lock_is_taken_over(isolated_tracking):
    from ganops.tracking import registry_lock

    mlflow.set_tracking_uri(isolated_tracking)
    c = MlflowClient(isolated_tracking)
    _plant_lock(c, "gen", "dead-host:1", time.time() - 60)
    with registry_lock("gen", timeout=5, stale_after=1):
        held = c.get_registered_model("gen.lock")
        assert held.tags["owner"] != "dead-host:1"  # ours now, not the dead holder's
    names = {m.name for m in c.search_registered_models()}
    assert "gen.lock" not in names  # released
    mlflow.set_tracking_uri(None)


def test_a_fresh_promotion_lock_blocks_until_timeout_and_names_its_owner(isolated_tracking):
    from ganops.tracking import registry_lock

    mlflow.set_tracking_uri(isolated_tracking)
    c = MlflowClient(isolated_tracking)
    _plant_lock(c, "gen", "busy-host:42", time.time())
    t0 = time.monotonic()
    with (
        pytest.raises(TrackingError, match="busy-host:42"),
        registry_lock("gen", timeout=0.5, stale_after=60),
    ):
        pytest.fail("acquired a lock somebody else holds")
    assert time.monotonic() - t0 >= 0.5
    assert c.get_registered_model("gen.lock").tags["owner"] == "busy-host:42"  # left alone
    mlflow.set_tracking_uri(None)


_TAKER = """
import json, sys, time
from mlflow import MlflowClient
from ganops.tracking import registry_lock
start, out = float(sys.argv[1]), sys.argv[2]
time.sleep(max(0.0, start - time.time()))  # every taker looks at the dead lock at the same moment
with registry_lock("gen", timeout=120, stale_after=30):  # a live holder (1 s) is never stale, even on a loaded machine
    t0 = time.time()
    owner = MlflowClient().get_registered_model("gen.lock").tags["owner"]
    time.sleep(1.0)
    still = MlflowClient().get_registered_model("gen.lock").tags["owner"]
    t1 = time.time()
with open(out, "a") as f:
    f.write(json.dumps([t0, t1, owner, still]) + "\\n")
"""


TAKERS = 5


def take_one_dead_lock(tmp_path: Path, uri: str, takers: int) -> None:
    """A dead promoter's lock in the store at ``uri``, ``takers`` processes taking it over at once: each holds
    it alone, for its whole critical section (deleting by name let a late taker delete the lock another had
    just taken)."""
    import json
    import os
    import subprocess
    import sys

    c = MlflowClient(uri)
    c.search_experiments()  # create the store once, before the processes share it
    _plant_lock(c, "gen", "dead-host:1", time.time() - 600)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    out, start = tmp_path / "held.jsonl", time.time() + 8
    procs = [subprocess.Popen([sys.executable, "-c", _TAKER, str(start), str(out)], env=env, stderr=subprocess.PIPE)
             for _ in range(takers)]  # fmt: skip
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for e in errs]
    held = sorted(json.loads(line) for line in out.read_text().splitlines())
    assert len(held) == takers
    for (_t0, t1, owner, still), nxt in zip(held, held[1:] + [None], strict=True):
        assert owner == still and owner != "dead-host:1"  # nobody took it from under the holder
        assert nxt is None or nxt[0] >= t1  # and nobody held it at the same time
    assert "gen.lock" not in {m.name for m in c.search_registered_models()}  # released, no marker left
    assert not [m.name for m in c.search_registered_models() if "takeover" in m.name]


def test_takers_of_one_dead_lock_end_with_exactly_one_holder_at_a_time(tmp_path):
    # on sqlite (tests/e2e/test_tracking_server.py runs it on mlflow server + PostgreSQL)
    take_one_dead_lock(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", TAKERS)


def test_a_holder_whose_lock_was_taken_over_does_not_release_the_new_one(isolated_tracking):
    from ganops.tracking import registry_lock

    mlflow.set_tracking_uri(isolated_tracking)
    c = MlflowClient(isolated_tracking)
    with registry_lock("gen", timeout=5, stale_after=60):
        # meanwhile (presumed dead, too slow) another process took the lock over
        c.delete_registered_model("gen.lock")
        _plant_lock(c, "gen", "other-host:7", time.time())
    assert c.get_registered_model("gen.lock").tags["owner"] == "other-host:7"  # left alone
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("name", ["it's mine", 'say "hi"', "both ' and \" <img src=x onerror=\"a='b'\">"])
def test_registered_names_with_quotes_register_once_and_list_only_their_own_versions(name, tmp_path,
                                                                                      isolated_tracking):  # fmt: skip
    from ganops.tracking.registry import model_versions, register_generator

    with start_run(parse_params({}), ctx=RunContext("t"), data_hash="h", root=tmp_path) as run:
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "config.json").write_text("{}")
        run.log_artifacts(tmp_path / "ckpt", "checkpoint")
    other = name.replace("'", "_").replace('"', "_")  # what a LIKE with _ for each quote matches as well
    first = register_generator(run.run_id, name, {"dataset_hash": "h"})
    assert register_generator(run.run_id, name, {"dataset_hash": "h"})["version"] == first["version"]  # once
    register_generator(run.run_id, other, {"dataset_hash": "h"})
    assert [v["version"] for v in model_versions(name)] == [first["version"]]
    assert MlflowClient(isolated_tracking).get_model_version(name, str(first["version"])).run_id == run.run_id


HASH = "0123456789abcdef" * 4  # a content hash: 64 hex


def test_runs_are_named_for_what_they_train_and_resumed_or_dvc_runs_too(tmp_path, isolated_tracking):
    c = MlflowClient(isolated_tracking)
    p = parse_params({"gan": {"steps": 300}, "data": {"image_size": 16}})
    with start_run(p, ctx=RunContext("dvc", dvc_exp_name="fuzzy-owls"), data_hash=HASH, root=tmp_path) as run:
        first = run.run_id
    r = c.get_run(first)
    assert r.info.run_name == "dcgan-digits-16px-300" and r.data.tags["dvc_exp_name"] == "fuzzy-owls"
    note = r.data.tags["mlflow.note.content"]
    assert "dcgan generator trained on digits at 16 px for 300 steps" in note and "fuzzy-owls" in note
    more = parse_params({"gan": {"steps": 500}, "data": {"image_size": 16}})
    with start_run(more, ctx=RunContext("cli"), data_hash=HASH, root=tmp_path, resume_run_id=first) as run:
        resumed = run.run_id  # on from a finished run: a new run, named for its own steps
    r = c.get_run(resumed)
    assert r.info.run_name == "dcgan-digits-16px-500" and f"resumed from run {first}" in r.data.tags[
        "mlflow.note.content"]  # fmt: skip
    own = parse_params({"data": {"source": "folder", "root": "data/raw/holiday-2026", "image_size": 64},
                        "gan": {"arch": "msg", "steps": 40}})  # fmt: skip
    with start_run(own, ctx=RunContext("cli"), data_hash=HASH, root=tmp_path) as run:
        pass
    assert c.get_run(run.run_id).info.run_name == "msg-holiday-2026-64px-40"
    exp = c.get_experiment(r.info.experiment_id)
    assert "one run per training" in exp.tags["mlflow.note.content"]  # the experiment says what it holds
    mlflow.set_tracking_uri(None)


def test_the_prepared_data_is_the_runs_dataset_input_with_the_content_hash_as_digest(
    tmp_path, isolated_tracking
):
    from ganops.data import manifest, prepare
    from ganops.tracking import log_dataset

    c = MlflowClient(isolated_tracking)
    p = parse_params({"data": {"image_size": 16, "limit": 64}})
    h = manifest(prepare(p.data))["content_hash"]
    with start_run(p, ctx=RunContext("t"), data_hash=h, root=tmp_path) as run:
        pass
    [di] = c.get_run(run.run_id).inputs.dataset_inputs
    tags = {t.key: t.value for t in di.tags}
    assert di.dataset.digest == h[:32] and tags["content_hash"] == h and len(h) == 64
    assert (di.dataset.name, tags["mlflow.data.context"]) == ("digits", "training")
    assert di.dataset.source.startswith('{"uri": "digits@')
    found = c.search_runs([c.get_run(run.run_id).info.experiment_id])
    assert [d.dataset.digest for d in found[0].inputs.dataset_inputs] == [h[:32]]  # what the UI lists
    # evaluate logs its data too: the same data stays one input; other data is a second one, for evaluation
    log_dataset(run.run_id, p, h, context="evaluation", rev="abc")
    log_dataset(run.run_id, p, "f" * 64, context="evaluation", rev="abc")
    inputs = {
        d.dataset.digest: {t.key: t.value for t in d.tags}
        for d in c.get_run(run.run_id).inputs.dataset_inputs
    }
    assert (
        inputs[h[:32]]["mlflow.data.context"] == "training"
        and inputs["f" * 32]["mlflow.data.context"] == "evaluation"
    )
    mlflow.set_tracking_uri(None)


def test_a_finished_runs_description_grows_an_evaluation_paragraph_and_nothing_else_changes(tmp_path,
                                                                                            isolated_tracking):  # fmt: skip
    from ganops.tracking import set_note_section

    c = MlflowClient(isolated_tracking)
    with start_run(parse_params({}), ctx=RunContext("t"), data_hash=HASH, root=tmp_path) as run:
        (tmp_path / "ck").mkdir()
        (tmp_path / "ck" / "config.json").write_text("{}")
        run.log_artifacts(tmp_path / "ck", "checkpoint")
    before = c.get_run(run.run_id)
    set_note_section(run.run_id, "Evaluated: ", "domain_fid 12 (real-vs-real 0.3)")
    set_note_section(run.run_id, "Evaluated: ", "domain_fid 9 (real-vs-real 0.3)")  # evaluated again
    after = c.get_run(run.run_id)
    note = after.data.tags["mlflow.note.content"]
    assert note.startswith(before.data.tags["mlflow.note.content"]) and note.count("Evaluated: ") == 1
    assert note.endswith("Evaluated: domain_fid 9 (real-vs-real 0.3)")
    assert after.data.params == before.data.params and after.info.status == "FINISHED"  # a recorded fact
    assert [a.path for a in c.list_artifacts(run.run_id, "checkpoint")] == ["checkpoint/config.json"]
    mlflow.set_tracking_uri(None)
