"""The only module that talks to MLflow: tracking URI, run setup, metric / image / artifact logging.

Default store: ``sqlite:///<project root>/mlflow.db`` (an absolute path, so every process — a DVC stage,
a queued ``dvc exp run`` in a temp copy, ``mlflow ui`` — finds the same database), with artifacts in
``<project root>/mlartifacts``. ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ganops.config import Params


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


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

        mlflow.log_metrics(metrics, step=step, run_id=self.run_id)

    def on_sample(self, step: int, png: Path) -> None:
        from PIL import Image

        with Image.open(png) as im:
            # key + step: MLflow's UI shows the grids on a step slider
            self.client.log_image(self.run_id, im.copy(), key="samples", step=step)

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics(metrics, run_id=self.run_id)

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


def _experiment_id(name: str, root: Path) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # Pin artifacts to <root>/mlartifacts: MLflow's default is ./mlruns relative to whatever the cwd is.
    return mlflow.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())


@contextmanager
def start_run(
    params: Params,
    *,
    entry_point: str,
    data_hash: str,
    run_name: str | None = None,
    resume_run_id: str | None = None,
    root: Path | None = None,
) -> Iterator[RunLogger]:
    """Open (or resume) an MLflow run with flattened params and provenance tags.

    Args:
        params: all parameters, logged flattened (``gan.lr_d``).
        entry_point: what started the run (``dvc``, ``cli``, ``prefect``), logged as a tag.
        data_hash: the prepared dataset's content hash, logged as tag ``dataset_hash``.
        run_name: optional run name.
        resume_run_id: continue this run (a resumed training) when it exists in the store.
        root: project root (default :func:`project_root`).

    Raises:
        TrackingError: the store cannot be reached (checked before the run opens).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    root = root or project_root()
    uri = tracking_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    exp_id = _experiment_id(params.tracking.experiment, root)
    run = None
    if resume_run_id:
        try:
            if mlflow.get_run(resume_run_id).info.experiment_id == exp_id:
                run = mlflow.start_run(run_id=resume_run_id)
        except MlflowException:
            run = None  # a checkpoint from another store: start a new run
    resumed = run is not None
    if run is None:
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name)
    with run:
        if not resumed:
            mlflow.log_params(params.flat())
        tags = {
            "git_commit": git_commit(root),
            "dataset_hash": data_hash,
            "entry_point": entry_point,
            "data_source": params.data.source,
        }
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
        if os.environ.get("GANOPS_FLOW_RUN_ID"):
            tags["prefect_flow_run_id"] = os.environ["GANOPS_FLOW_RUN_ID"]
        mlflow.set_tags(tags)
        yield RunLogger(run.info.run_id)


# ----------------------------------------------------------------------------- runs after training


def use_store(root: Path | None = None) -> str:
    """Point MLflow at the project's store (checked first); returns the URI."""
    import mlflow

    uri = tracking_uri(root)
    check_reachable(uri)
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
    MlflowClient().log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )


# ----------------------------------------------------------------------------- model registry

_META_KEYS = ("run_id", "dataset_hash", "extractor", "export")


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
    from mlflow.exceptions import MlflowException

    c = MlflowClient()
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(
            name, description="ganops DCGAN generators: checkpoint folder (weights + config.json)"
        )
    source = f"runs:/{run_id}/{artifact_path}"
    existing = [
        mv for mv in c.search_model_versions(f"name='{name}' and run_id='{run_id}'") if mv.source == source
    ]
    if existing:
        return _version_facts(existing[0])
    tags = {k: str(v) for k, v in facts.items() if k in _META_KEYS}
    tags |= {
        f"metric.{k}": repr(float(v))
        for k, v in facts.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags)
    return _version_facts(mv)


def champion(name: str, alias: str) -> dict[str, Any] | None:
    """The facts of the version ``name@alias``, or None when the alias (or the model) does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return _version_facts(MlflowClient().get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: int) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, str(version))


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
    params: Params, *, style: str, content: str, extractor: str, root: Path | None = None
) -> Iterator[RunLogger]:
    """One MLflow run per (content, style) pair in the experiment ``<tracking.experiment>-stylize``."""
    import mlflow

    root = root or project_root()
    use_store(root)
    exp_id = _experiment_id(f"{params.tracking.experiment}-stylize", root)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{style}/{content}") as run:
        mlflow.log_params({k: v for k, v in params.flat().items() if k.startswith(("style.", "base."))})
        if os.environ.get("GANOPS_FLOW_RUN_ID"):
            mlflow.set_tag("prefect_flow_run_id", os.environ["GANOPS_FLOW_RUN_ID"])
        mlflow.set_tags({"style": style, "content": content, "extractor": extractor,
                         "git_commit": git_commit(root),
                         "entry_point": "dvc" if os.environ.get("DVC_STAGE") else os.environ.get("GANOPS_ENTRY_POINT", "cli")})  # fmt: skip
        yield RunLogger(run.info.run_id)


def register_folder(run_id: str, artifact_path: str, name: str, alias: str, tags: dict[str, Any]) -> int:
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name`` and point ``alias`` at it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    c = MlflowClient()
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name)
    mv = c.create_model_version(name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id,
                                tags={k: str(v) for k, v in tags.items()})  # fmt: skip
    c.set_registered_model_alias(name, alias, mv.version)
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
