"""The tracking store: its URI, reachability check, one-time creation / migration, and retried writes.

Default store: ``sqlite:///<project root>/mlflow.db`` (an absolute path, so every process — a DVC stage,
a queued ``dvc exp run`` in a temp copy, ``mlflow ui`` — finds the same database), with artifacts in
``<project root>/mlartifacts``. ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


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


# ----------------------------------------------------------------------------- the store

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


def use_store(root: Path | None = None) -> str:
    """Point MLflow at the project's store (checked, created / migrated once); returns the URI."""
    import mlflow

    uri = tracking_uri(root)
    check_reachable(uri)
    prepare_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri
