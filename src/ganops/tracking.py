"""The only module that talks to MLflow: tracking URI, run setup, metric / image / artifact logging.

Default store: ``sqlite:///<project root>/mlflow.db`` (an absolute path, so every process — a DVC stage,
a queued ``dvc exp run`` in a temp copy, ``mlflow ui`` — finds the same database), with artifacts in
``<project root>/mlartifacts``. ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ganops.config import Params

log = logging.getLogger(__name__)
T = TypeVar("T")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


@dataclass(frozen=True)
class RunContext:
    """Who started a piece of work: passed as a value from the CLI and the flows down to every MLflow run
    (never through process-wide state, so concurrent flow runs and in-process callers cannot mix them up).

    Attributes:
        entry_point: ``cli``, ``dvc``, ``prefect`` (or ``test`` / ``bench``); tag ``entry_point``.
        flow_run_id: the Prefect flow run, if any; tag ``prefect_flow_run_id``.
        dvc_exp_name: the DVC experiment, if any; tag ``dvc_exp_name``.
    """

    entry_point: str = "cli"
    flow_run_id: str | None = None
    dvc_exp_name: str | None = None

    def tags(self) -> dict[str, str]:
        tags = {"entry_point": self.entry_point}
        if self.flow_run_id:
            tags["prefect_flow_run_id"] = self.flow_run_id
        if self.dvc_exp_name:
            tags["dvc_exp_name"] = self.dvc_exp_name
        return tags


# ----------------------------------------------------------------------------- concurrency helpers


def _is_locked(err: BaseException) -> bool:
    return "database is locked" in str(err) or "database table is locked" in str(err)


def _already_exists(err: BaseException) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(err).lower()


def retry_locked(fn: Callable[[], T], *, attempts: int = 8, what: str = "MLflow write") -> T:
    """``fn()``, retried with jittered exponential backoff while sqlite says "database is locked".

    sqlite admits one writer at a time; a writer that waits past the driver's busy timeout gets that error.
    Under a handful of concurrent trainings that is transient, so every write we make goes through here.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:
            if not _is_locked(err) or attempt == attempts - 1:
                raise
            delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
            log.debug("%s: database locked, retry %d in %.2f s", what, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


_PREPARED: set[str] = set()  # stores this process has already prepared (a cache, not context)


def prepare_store(uri: str) -> None:
    """Create / migrate the tracking store once, before any fan-out, and make sqlite concurrency-friendly.

    For sqlite, under an exclusive lock on ``<db>.lock`` (two first users must not race on MLflow's schema
    migration): a new store is built in a temp file beside it and renamed into place, so a kill during
    MLflow's migrations (seconds of DDL on first use) never leaves a half-built database behind; then the
    database is switched to WAL (readers never block the writer; persistent in the file). A tracking server
    migrates its own database. Idempotent and cheap after the first call.

    Raises:
        TrackingError: the database was left half-migrated by an interrupted upgrade.
    """
    if uri in _PREPARED or not uri.startswith("sqlite:///"):
        _PREPARED.add(uri)
        return
    from mlflow import MlflowClient

    path = Path(uri[len("sqlite:///") :])
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in path.parent.glob(f"{path.name}.creating-*"):  # a creation that was killed
                stale.unlink(missing_ok=True)
            if not _initialised(path):
                tmp = path.with_name(f"{path.name}.creating-{os.getpid()}")
                MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)  # runs every migration
                os.replace(tmp, path)  # rollback-journal mode: every table is in the file itself
            with sqlite3.connect(path, timeout=30) as con:
                if con.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp_%'").fetchone():
                    raise TrackingError(f"MLflow store {path} was interrupted in the middle of a schema upgrade "
                                        "(a _alembic_tmp_ table is left): restore it from a backup")  # fmt: skip
                con.execute("PRAGMA journal_mode=WAL")
            retry_locked(lambda: MlflowClient(uri).search_experiments(max_results=1), what="store migration")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _PREPARED.add(uri)


def _initialised(path: Path) -> bool:
    """Whether ``path`` is an sqlite database MLflow has created (it records its schema in alembic_version)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with sqlite3.connect(path, timeout=30) as con:
        return bool(con.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone())


def project_root() -> Path:
    """The project folder: ``DVC_ROOT`` when DVC runs us (queued experiments too), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute sqlite URI at ``<root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with what to do, when the tracking store cannot be used.

    Raises:
        TrackingError: sqlite file not creatable / not a database, server not answering, file store.
    """
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.parent.is_dir():
            raise TrackingError(f"MLflow store {uri}: folder {path.parent} does not exist")
        try:
            with sqlite3.connect(path, timeout=timeout) as con:
                con.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as err:
            raise TrackingError(f"MLflow store {uri} is not a usable sqlite database: {err}") from None
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read()
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(
                f"MLflow tracking server {uri} is not reachable ({err}); start it "
                f"(`mlflow server --backend-store-uri sqlite:///mlflow.db`) or unset MLFLOW_TRACKING_URI "
                "to log to the project's mlflow.db"
            ) from None
    elif uri.startswith("file:") or "://" not in uri:
        raise TrackingError(
            f"MLflow tracking URI {uri!r} is a file store, which MLflow 3 refuses; use sqlite:///<abs path>.db"
        )


def git_commit(root: Path) -> str:
    """HEAD's commit (suffixed ``-dirty`` when tracked files changed), or ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


class RunLogger:
    """Callbacks for the training loop that log into one MLflow run (by id: safe from any thread)."""

    def __init__(self, run_id: str):
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient()

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        import mlflow

        retry_locked(lambda: mlflow.log_metrics(metrics, step=step, run_id=self.run_id), what="log_metrics")

    def on_sample(self, step: int, png: Path) -> None:
        from PIL import Image

        with Image.open(png) as im:
            img = im.copy()
        # key + step: MLflow's UI shows the grids on a step slider
        retry_locked(
            lambda: self.client.log_image(self.run_id, img, key="samples", step=step), what="log_image"
        )

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        import mlflow

        retry_locked(lambda: mlflow.log_metrics(metrics, run_id=self.run_id), what="log_metrics")

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


def _experiment_id(name: str, root: Path) -> str:
    """Get or create the experiment ``name``, safe against a concurrent creator."""
    import mlflow
    from mlflow.exceptions import MlflowException

    # Pin a local store's artifacts to <root>/mlartifacts (MLflow's default is ./mlruns relative to the
    # cwd); a tracking server chooses its own artifact store.
    location = (root / "mlartifacts").as_uri() if mlflow.get_tracking_uri().startswith("sqlite:") else None
    for _ in range(5):
        exp = retry_locked(lambda: mlflow.get_experiment_by_name(name))
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments "
                                    f"restore --experiment-id {exp.experiment_id}`) or set tracking.experiment")  # fmt: skip
            return exp.experiment_id
        try:
            return retry_locked(lambda: mlflow.create_experiment(name, artifact_location=location))
        except MlflowException as err:
            if not _already_exists(err):
                raise
            # another process created it between our look and our create: look again
    raise TrackingError(f"could not get or create MLflow experiment {name!r}")


@contextmanager
def _ending(run: Any) -> Iterator[None]:
    """End the active ``run`` like ``with run:`` does (FINISHED, or FAILED / KILLED on an exception), with
    the status write retried while sqlite is locked (it is the last write of every run)."""
    import mlflow

    status = "FINISHED"
    try:
        yield
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        retry_locked(lambda: mlflow.end_run(status), what="end_run")


def _run_finished(client: Any, run: Any) -> bool:
    """A run is finished (and so frozen) once it ended normally or its export was logged."""
    return run.info.status == "FINISHED" or bool(client.list_artifacts(run.info.run_id, "checkpoint"))


@contextmanager
def start_run(
    params: Params,
    *,
    ctx: RunContext,
    data_hash: str,
    run_name: str | None = None,
    resume_run_id: str | None = None,
    root: Path | None = None,
) -> Iterator[RunLogger]:
    """Open an MLflow run with flattened params and provenance tags; continue an unfinished one.

    A finished run is a recorded fact: training that goes on from its checkpoint (more ``gan.steps``, a retry
    after success, another experiment) gets a new run tagged ``resumed_from`` = that run. Only a run that
    never finished (interrupted, killed) is continued, so its artifacts are written exactly once.

    Args:
        params: all parameters, logged flattened (``gan.lr_d``).
        ctx: who started it (entry point, flow run, DVC experiment), logged as tags.
        data_hash: the prepared dataset's content hash, logged as tag ``dataset_hash``.
        run_name: optional run name.
        resume_run_id: the run of the checkpoint training resumes from, if any.
        root: project root (default :func:`project_root`).

    Raises:
        TrackingError: the store cannot be reached (checked before the run opens).
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    root = root or project_root()
    use_store(root)
    exp_id = _experiment_id(params.tracking.experiment, root)
    client = MlflowClient()
    run, resumed_from = None, None
    if resume_run_id:
        try:
            prev = client.get_run(resume_run_id)
        except MlflowException:
            prev = None  # a checkpoint from another store: start a new run
        if prev is not None and prev.info.experiment_id == exp_id:
            if _run_finished(client, prev):
                resumed_from = resume_run_id
            else:
                run = retry_locked(lambda: mlflow.start_run(run_id=resume_run_id))
    continued = run is not None
    if run is None:
        run = retry_locked(lambda: mlflow.start_run(experiment_id=exp_id, run_name=run_name))
    with _ending(run):
        if not continued:
            retry_locked(lambda: mlflow.log_params(params.flat()))
        tags = {
            "git_commit": git_commit(root),
            "dataset_hash": data_hash,
            "data_source": params.data.source,
            **ctx.tags(),
        }
        if resumed_from:
            tags["resumed_from"] = resumed_from
        retry_locked(lambda: mlflow.set_tags(tags))
        yield RunLogger(run.info.run_id)


# ----------------------------------------------------------------------------- runs after training


def use_store(root: Path | None = None) -> str:
    """Point MLflow at the project's store (checked, created / migrated once); returns the URI."""
    import mlflow

    uri = tracking_uri(root)
    check_reachable(uri)
    prepare_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def require_run(run_id: str | None, what: str) -> str:
    """The run id, checked to exist in the current store; else a TrackingError saying what to do."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id:
        raise TrackingError(f"{what} names no MLflow run: train it again with `ganops train-gan`")
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"{what} was logged to MLflow run {run_id}, which is not in {tracking_uri()}: "
            "use the store it was trained with (MLFLOW_TRACKING_URI) or train again"
        ) from None
    return run_id


def log_to_run(run_id: str, metrics: dict[str, float], tags: dict[str, Any]) -> None:
    """Add metrics and tags to an existing (possibly finished) run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    retry_locked(lambda: MlflowClient().log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    ))  # fmt: skip


# ----------------------------------------------------------------------------- model registry

_META_KEYS = ("run_id", "dataset_hash", "extractor", "export", "data_limit")


def _ensure_registered_model(c: Any, name: str, description: str = "") -> None:
    """Get or create the registered model ``name``, safe against a concurrent creator."""
    from mlflow.exceptions import MlflowException

    try:
        retry_locked(lambda: c.get_registered_model(name))
        return
    except MlflowException as err:
        if getattr(err, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        retry_locked(lambda: c.create_registered_model(name, description=description or None))
    except MlflowException as err:
        if not _already_exists(err):
            raise


@contextmanager
def registry_lock(name: str, *, timeout: float = 120.0, stale_after: float = 120.0) -> Iterator[None]:
    """Hold the promotion lock of registered model ``name`` (a mutex kept in the tracking store itself).

    The lock is a registered model ``<name>.lock``: creating one that exists fails atomically in the store's
    database (sqlite or the tracking server's PostgreSQL alike), so exactly one process holds it, on any
    machine that shares the store. It is deleted on release; one older than ``stale_after`` seconds (its
    holder died mid-promotion) is taken over.

    Raises:
        TrackingError: not acquired within ``timeout`` seconds.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    c, lock = MlflowClient(), f"{name}.lock"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            retry_locked(lambda: c.create_registered_model(
                lock, tags={"owner": owner, "since": repr(time.time())},
                description=f"ganops: held while a promotion of {name} decides; deleted when it is done"))  # fmt: skip
            break
        except MlflowException as err:
            if not _already_exists(err):
                raise
        try:
            held = c.get_registered_model(lock)
            if time.time() - float(held.tags.get("since", "inf")) > stale_after:
                log.warning(
                    "taking over the stale promotion lock %s held by %s", lock, held.tags.get("owner")
                )
                c.delete_registered_model(lock)
                continue
        except MlflowException:
            continue  # released between our create and our look: try again at once
        if time.monotonic() > deadline:
            raise TrackingError(f"promotion lock {lock} is held by {held.tags.get('owner')} for over {timeout:.0f} s; "
                                f"if no promotion is running, delete the registered model {lock}")  # fmt: skip
        time.sleep(0.05 + 0.1 * random.random())
    try:
        yield
    finally:
        retry_locked(lambda: c.delete_registered_model(lock), what="release promotion lock")


def _version_facts(mv: Any) -> dict[str, Any]:
    """What a model version's tags say about it: run, data, extractor and its metrics (floats)."""
    facts: dict[str, Any] = {"version": int(mv.version), "run_id": mv.run_id}
    for k, v in mv.tags.items():
        if k.startswith("metric."):
            facts[k[len("metric.") :]] = float(v)
        elif k in _META_KEYS:
            facts[k] = v
    return facts


def register_generator(
    run_id: str, name: str, facts: dict[str, Any], artifact_path: str = "checkpoint"
) -> dict[str, Any]:
    """Register the run's ``checkpoint/`` (or ``checkpoint_best/``) artifact as a version of ``name`` (once).

    The version's source is our checkpoint folder (weights + config JSON, no pickled code); ``facts``
    (dataset hash, extractor, numeric metrics) are stored as version tags so later decisions can compare.

    Returns:
        The version's facts (as :func:`champion` returns them).
    """
    from mlflow import MlflowClient

    c = MlflowClient()
    _ensure_registered_model(c, name, "ganops DCGAN generators: checkpoint folder (weights + config.json)")
    source = f"runs:/{run_id}/{artifact_path}"
    existing = [
        mv
        for mv in retry_locked(lambda: c.search_model_versions(f"name='{name}' and run_id='{run_id}'"))
        if mv.source == source
    ]
    if existing:
        return _version_facts(existing[0])
    tags = {k: str(v) for k, v in facts.items() if k in _META_KEYS}
    tags |= {
        f"metric.{k}": repr(float(v))
        for k, v in facts.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    mv = retry_locked(lambda: c.create_model_version(name, source=source, run_id=run_id, tags=tags))
    return _version_facts(mv)


def champion(name: str, alias: str) -> dict[str, Any] | None:
    """The facts of the version ``name@alias``, or None when the alias (or the model) does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return _version_facts(retry_locked(lambda: MlflowClient().get_model_version_by_alias(name, alias)))
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: int) -> None:
    from mlflow import MlflowClient

    retry_locked(lambda: MlflowClient().set_registered_model_alias(name, alias, str(version)))


def run_params(run_id: str) -> dict[str, str]:
    """The params a run was logged with (flattened keys)."""
    from mlflow import MlflowClient

    return dict(retry_locked(lambda: MlflowClient().get_run(run_id)).data.params)


def download_champion(name: str, alias: str, dst: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Fetch ``models:/name@alias``'s checkpoint folder; returns (local folder, version facts).

    Raises:
        TrackingError: no such model or alias in the store.
    """
    import mlflow

    facts = champion(name, alias)
    if facts is None:
        raise TrackingError(
            f"no model {name}@{alias} in {mlflow.get_tracking_uri()}: run the pipeline (`dvc repro` or "
            "`make demo`) so that `ganops promote` registers and promotes a generator"
        )
    # by version, not alias: the alias may move between the two calls, and facts and weights must agree
    return download_version(name, facts["version"], dst), facts


def download_version(name: str, version: int, dst: Path | None = None) -> Path:
    """Fetch the checkpoint folder of ``models:/name/version`` (a registered version never changes)."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(
        f"models:/{name}/{version}", dst_path=str(dst) if dst else None
    )
    return Path(path)


def model_versions(name: str, limit: int = 50) -> list[dict[str, Any]]:
    """The facts of the newest ``limit`` registered versions of ``name`` (newest first; [] if none)."""
    from mlflow import MlflowClient

    mvs = MlflowClient().search_model_versions(f"name='{name}'")
    return sorted((_version_facts(mv) for mv in mvs), key=lambda f: -f["version"])[:limit]


# ----------------------------------------------------------------------------- style transfer


@contextmanager
def style_run(
    params: Params, *, ctx: RunContext, style: str, content: str, extractor: str, root: Path | None = None
) -> Iterator[RunLogger]:
    """One MLflow run per (content, style) pair in the experiment ``<tracking.experiment>-stylize``."""
    import mlflow

    root = root or project_root()
    use_store(root)
    exp_id = _experiment_id(f"{params.tracking.experiment}-stylize", root)
    run = retry_locked(lambda: mlflow.start_run(experiment_id=exp_id, run_name=f"{style}/{content}"))
    with _ending(run):
        style_params = {k: v for k, v in params.flat().items() if k.startswith(("style.", "base."))}
        retry_locked(lambda: mlflow.log_params(style_params))
        tags = {"style": style, "content": content, "extractor": extractor, "git_commit": git_commit(root)}
        retry_locked(lambda: mlflow.set_tags(tags | ctx.tags()))
        yield RunLogger(run.info.run_id)


def register_folder(run_id: str, artifact_path: str, name: str, alias: str, tags: dict[str, Any]) -> int:
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name`` and point ``alias`` at it."""
    from mlflow import MlflowClient

    c = MlflowClient()
    _ensure_registered_model(c, name)
    mv = retry_locked(lambda: c.create_model_version(name, source=f"runs:/{run_id}/{artifact_path}",
                                                     run_id=run_id, tags={k: str(v) for k, v in tags.items()}))  # fmt: skip
    set_alias(name, alias, int(mv.version))
    return int(mv.version)


def aliased_with_prefix(prefix: str, alias: str) -> dict[str, int]:
    """{model name: version} for every registered model ``<prefix>*`` that has ``alias`` (no download)."""
    from mlflow import MlflowClient

    return {
        rm.name: int(rm.aliases[alias])
        for rm in MlflowClient().search_registered_models(f"name LIKE '{prefix}%'")
        if alias in (rm.aliases or {})
    }


def registered_with_prefix(prefix: str, alias: str) -> dict[str, Path]:
    """{model name: local folder} for every registered model ``<prefix>*`` that has ``alias``."""
    import mlflow
    from mlflow import MlflowClient

    out = {}
    for rm in MlflowClient().search_registered_models(f"name LIKE '{prefix}%'"):
        if alias in (rm.aliases or {}):
            out[rm.name] = Path(mlflow.artifacts.download_artifacts(f"models:/{rm.name}@{alias}"))
    return out
