"""MLflow runs: who started them (RunContext), opening / continuing one, logging into it (RunLogger).

A training run holds the flattened params and provenance tags; a style run holds one (content, style) pair.
"""

from __future__ import annotations

import logging
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganops.config import Params
from ganops.tracking.store import (
    TrackingError,
    _already_exists,
    project_root,
    retry_locked,
    tracking_uri,
    use_store,
)

log = logging.getLogger(__name__)

# The run tag `ganops evaluate` sets: the metric keys it logged to the run (comma-separated). Only these of a
# run's metrics describe a version (not the training curves).
EVALUATED_TAG = "ganops.evaluated"
# A run's evaluated metrics, read once per this many seconds (the gallery lists 50 versions at every poll).
_RUN_METRICS_TTL = 30.0
_run_metrics_cache: dict[tuple[str, str], tuple[float, dict[str, float]]] = {}


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


NOTE = "mlflow.note.content"  # the description MLflow's UI shows for a run, an experiment or a model
TRAINING_EXPERIMENT_NOTE = (
    "ganops GAN training: one run per training (`ganops train-gan`, `dvc repro`, `dvc exp run`, the "
    "train-gan flow), named architecture-data-size-steps (e.g. dcgan-digits-32px-2000). Params, loss curves, sample grids (samples), "
    "evaluation metrics beside their real-vs-real baselines, the generator under checkpoint/. The Dataset "
    "column names the prepared data (digest = its content hash); the tag dvc_exp_name the DVC experiment."
)
STYLE_EXPERIMENT_NOTE = (
    "ganops style transfer: one run per (photo, painting) pair, named <style>/<photo>; the styled image, "
    "its content / style / TV losses and the feature extractor."
)


def _experiment_tags(description: str) -> dict[str, str]:
    """The description, and the kind that makes MLflow's UI open the experiment on its runs table (the
    "model training" view) rather than the GenAI overview."""
    return {NOTE: description, "mlflow.experimentKind": "custom_model_development"} if description else {}


def _experiment_id(name: str, root: Path, description: str = "") -> str:
    """Get or create the experiment ``name`` (described by ``description`` when it has no description
    yet), safe against a concurrent creator."""
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
            found, tags = exp.experiment_id, _experiment_tags(description)
            for key in [k for k in tags if k not in exp.tags]:  # created before experiments were described
                retry_locked(lambda: mlflow.MlflowClient().set_experiment_tag(found, key, tags[key]))  # noqa: B023
            return exp.experiment_id
        tags = _experiment_tags(description)
        try:
            return retry_locked(lambda: mlflow.create_experiment(name, artifact_location=location, tags=tags))  # noqa: B023
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


def end_abandoned_run(run_id: str) -> bool:
    """Mark run ``run_id`` KILLED if it still says RUNNING although its process is gone (MLflow would show it
    running for ever); resuming its checkpoint later reopens it. True if it was marked."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    c = MlflowClient()
    try:
        if retry_locked(lambda: c.get_run(run_id)).info.status != "RUNNING":
            return False
    except MlflowException:  # deleted, or another store's
        return False
    retry_locked(lambda: c.set_terminated(run_id, "KILLED"), what="mark an abandoned run KILLED")
    return True


def data_name(params: Params) -> str:
    """What a run's data is called: the source (``digits``, ``cifar10``) or an image folder's name."""
    if params.data.source == "folder":
        return Path(params.data.root).name or "folder"
    return params.data.source


def training_run_name(params: Params) -> str:
    """``<arch>-<data>-<size>px-<steps>``, e.g. ``dcgan-digits-32px-2000``: what the run trains, at a glance in
    the run list (a run resumed from a finished one gets its own, with its own step count)."""
    return f"{params.gan.arch}-{data_name(params)}-{params.data.image_size}px-{params.gan.steps}"


def _training_note(params: Params, ctx: RunContext, data_hash: str, resumed_from: str | None) -> str:
    subset = f" (first {params.data.limit} pictures)" if params.data.limit else ""
    how = f"{ctx.entry_point}" + (f", DVC experiment {ctx.dvc_exp_name}" if ctx.dvc_exp_name else "")
    return (f"{params.gan.arch} generator trained on {data_name(params)}{subset} at {params.data.image_size} "
            f"px for {params.gan.steps} steps (batch {params.gan.batch_size}, loss {params.gan.loss}); data "
            f"{data_hash[:12]}; started by {how}" + (f"; resumed from run {resumed_from}" if resumed_from else ""))  # fmt: skip


def log_dataset(run_id: str, params: Params, content_hash: str, *, context: str, rev: str) -> None:
    """Log the prepared data as run ``run_id``'s MLflow dataset input (the UI's Dataset column,
    ``search_runs``' ``inputs``): named for the data, digest = the content hash's first 32 hex characters
    (MLflow keeps at most 36), the full hash in the input's tags, source = the data's source or folder
    ``@`` the git revision. MLflow keeps one input per dataset and run: logged again by evaluate for the
    data the run trained on, it stays the ``training`` one."""
    from mlflow import MlflowClient
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    local: Any = next(
        s for s in get_registered_sources() if getattr(s, "__name__", "") == "LocalArtifactDatasetSource"
    )
    where = params.data.root if params.data.source == "folder" else params.data.source
    ds = MetaDataset(local(f"{where}@{rev[:12]}"), name=data_name(params), digest=content_hash[:32])  # type: ignore[abstract]
    tags = [InputTag("mlflow.data.context", context), InputTag("content_hash", content_hash),
            InputTag("git_commit", rev)]  # fmt: skip
    entity = DatasetInput(ds._to_mlflow_entity(), tags)
    for attempt in range(3):
        try:
            retry_locked(lambda: MlflowClient().log_inputs(run_id, [entity]), what="log_inputs")
            return
        except MlflowException as err:  # two runs creating one dataset at once: one insert loses; look again
            if attempt == 2:
                log.warning("could not log the dataset input of run %s: %s", run_id, err)
            time.sleep(0.1 + 0.2 * random.random())


def run_summary(run_id: str) -> str:
    """One line on what run ``run_id`` trained, from its own params and tags (for a registered version's
    description): architecture, data, size, steps, the run's name and what it resumed from."""
    from mlflow import MlflowClient

    run = retry_locked(lambda: MlflowClient().get_run(run_id))
    p, tags = run.data.params, run.data.tags
    source = p.get("data.source", "?")
    data = (Path(p.get("data.root", "")).name or "folder") if source == "folder" else source
    resumed = f", resumed from run {tags['resumed_from']}" if tags.get("resumed_from") else ""
    return (f"{p.get('gan.arch', 'dcgan')} generator, {data} at {p.get('data.image_size', '?')} px, "
            f"{p.get('gan.steps', '?')} steps; run {run.info.run_name} ({run_id}){resumed}")  # fmt: skip


def set_note_section(run_id: str, key: str, text: str) -> None:
    """Set the paragraph of run ``run_id``'s description that starts with ``key`` to ``key + text`` (added
    after the others when new): evaluate keeps one "Evaluated" paragraph however often it runs."""
    from mlflow import MlflowClient

    c = MlflowClient()
    note = retry_locked(lambda: c.get_run(run_id)).data.tags.get(NOTE, "")
    kept = [par for par in note.split("\n\n") if par and not par.startswith(key)]
    retry_locked(lambda: c.set_tag(run_id, NOTE, "\n\n".join([*kept, key + text])), what="set_tag")


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
    exp_id = _experiment_id(params.tracking.experiment, root, TRAINING_EXPERIMENT_NOTE)
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
        name = run_name or training_run_name(params)
        run = retry_locked(lambda: mlflow.start_run(experiment_id=exp_id, run_name=name))
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
        if not continued:
            tags[NOTE] = _training_note(params, ctx, data_hash, resumed_from)
        retry_locked(lambda: mlflow.set_tags(tags))
        log_dataset(run.info.run_id, params, data_hash, context="training", rev=tags["git_commit"])
        yield RunLogger(run.info.run_id)


# ----------------------------------------------------------------------------- runs after training


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
    forget_run_metrics(run_id)


def log_artifact_to_run(run_id: str, path: Path, artifact_path: str) -> None:
    """Add a file to an existing (possibly finished) run under a new ``artifact_path`` (what training logged
    is never rewritten: evaluate adds its own folder)."""
    from mlflow import MlflowClient

    retry_locked(lambda: MlflowClient().log_artifact(run_id, str(path), artifact_path))


def run_params(run_id: str) -> dict[str, str]:
    """The params a run was logged with (flattened keys)."""
    from mlflow import MlflowClient

    return dict(retry_locked(lambda: MlflowClient().get_run(run_id)).data.params)


# ----------------------------------------------------------------------------- style transfer


@contextmanager
def style_run(
    params: Params, *, ctx: RunContext, style: str, content: str, extractor: str, root: Path | None = None
) -> Iterator[RunLogger]:
    """One MLflow run per (content, style) pair in the experiment ``<tracking.experiment>-stylize``."""
    import mlflow

    root = root or project_root()
    use_store(root)
    exp_id = _experiment_id(f"{params.tracking.experiment}-stylize", root, STYLE_EXPERIMENT_NOTE)
    run = retry_locked(lambda: mlflow.start_run(experiment_id=exp_id, run_name=f"{style}/{content}"))
    with _ending(run):
        style_params = {k: v for k, v in params.flat().items() if k.startswith(("style.", "base."))}
        retry_locked(lambda: mlflow.log_params(style_params))
        tags = {"style": style, "content": content, "extractor": extractor, "git_commit": git_commit(root)}
        retry_locked(lambda: mlflow.set_tags(tags | ctx.tags()))
        yield RunLogger(run.info.run_id)


def evaluated_metrics(run_id: str | None) -> dict[str, float]:
    """The metrics `ganops evaluate` logged to ``run_id`` (those its ``ganops.evaluated`` tag names); {} for a
    run never evaluated, deleted, or not in this store. Cached for a few seconds per run."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    key, now = (mlflow.get_tracking_uri(), run_id), time.monotonic()
    hit = _run_metrics_cache.get(key)
    if hit is not None and now - hit[0] < _RUN_METRICS_TTL:
        return dict(hit[1])
    try:
        data = retry_locked(lambda: MlflowClient().get_run(run_id)).data
    except MlflowException as err:
        log.debug("run %s of a registered version cannot be read: %s", run_id, err)
        return {}
    names = [k for k in data.tags.get(EVALUATED_TAG, "").split(",") if k in data.metrics]
    found = {k: float(data.metrics[k]) for k in names}
    if len(_run_metrics_cache) > 1024:
        _run_metrics_cache.clear()
    _run_metrics_cache[key] = (now, found)
    return dict(found)


def forget_run_metrics(run_id: str) -> None:
    """Drop ``run_id``'s cached evaluated metrics (after logging new ones to it)."""
    for key in [k for k in _run_metrics_cache if k[1] == run_id]:
        _run_metrics_cache.pop(key, None)
