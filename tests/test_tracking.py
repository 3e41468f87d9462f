import socket
import time

import mlflow
import pytest
from mlflow import MlflowClient
from PIL import Image

from ganops.config import parse_params
from ganops.tracking import TrackingError, check_reachable, start_run, tracking_uri


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
    with start_run(p, entry_point="test", data_hash="h123", root=tmp_path) as run:
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


def test_resume_run_continues_the_same_run(tmp_path, isolated_tracking):
    p = parse_params({})
    with start_run(p, entry_point="t", data_hash="h", root=tmp_path) as run:
        first = run.run_id
    with start_run(p, entry_point="t", data_hash="h", root=tmp_path, resume_run_id=first) as run:
        assert run.run_id == first
    with start_run(p, entry_point="t", data_hash="h", root=tmp_path, resume_run_id="0" * 32) as run:
        assert run.run_id != first  # unknown id: a new run, not an error
    mlflow.set_tracking_uri(None)
