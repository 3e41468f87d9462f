"""The model registry: versions of our checkpoint folders, their facts, the champion alias, downloads.

Generators are registered once per (run, artifact path). A version's tags are its lineage and what promotion
compares (the promotion metric, its real-vs-real baseline, coverage, the extractors); every other metric stays
in the run, which the version links to, and :func:`champion` / :func:`model_versions` read it from there (one
source of truth). Versions registered before carry every metric as a ``metric.*`` tag and read the same way.
Style nets get one version per training, aliased at once.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ganops.tracking.runs import evaluated_metrics
from ganops.tracking.store import TrackingError, _already_exists, retry_locked

log = logging.getLogger(__name__)


_META_KEYS = (
    "run_id",
    "dataset_hash",
    "extractor",
    "domain_extractor",
    "export",
    "data_limit",
    "promotion_metric",
)


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

    The lock is a registered model ``<name>.lock`` tagged with its owner: creating one that exists fails
    atomically in the store's database (sqlite or the tracking server's PostgreSQL alike), so exactly one
    process holds it, on any machine that shares the store. One older than ``stale_after`` seconds (its
    holder died mid-promotion) is taken over (:func:`_take_over`: by one process only, and only while it is
    still that dead holder's). The holder deletes it on release, if it is still its own.

    Raises:
        TrackingError: not acquired within ``timeout`` seconds.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    c, lock = MlflowClient(), f"{name}.lock"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout
    while True:
        if _create_marker(
            c, lock, owner, f"ganops: held while a promotion of {name} decides; deleted when done"
        ):
            break
        try:
            held = c.get_registered_model(lock)
            if time.time() - float(held.tags.get("since", "inf")) > stale_after:
                _take_over(c, lock, held.tags.get("owner", ""), stale_after)
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
        _delete_if_owned(c, lock, owner, "release promotion lock")


def _create_marker(c: Any, marker: str, owner: str, description: str) -> bool:
    """Create the registered model ``marker`` tagged with ``owner`` and the time; False if it exists."""
    from mlflow.exceptions import MlflowException

    try:
        retry_locked(lambda: c.create_registered_model(
            marker, tags={"owner": owner, "since": repr(time.time())}, description=description))  # fmt: skip
        return True
    except MlflowException as err:
        if _already_exists(err):
            return False
        if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            # MLflow's own race: the insert failed because the marker existed, and its holder deleted it
            # before MLflow's error path looked it up. It was held a moment ago: not ours; look again.
            return False
        raise


def _delete_if_owned(c: Any, marker: str, owner: str, what: str) -> bool:
    """Delete ``marker`` if ``owner`` still holds it (never one somebody else has taken meanwhile)."""
    from mlflow.exceptions import MlflowException

    try:
        now = retry_locked(lambda: c.get_registered_model(marker))
    except MlflowException:
        return False
    if now.tags.get("owner") != owner:
        log.warning(
            "%s: %s is held by %s now, not by %s: left alone", what, marker, now.tags.get("owner"), owner
        )
        return False
    retry_locked(lambda: c.delete_registered_model(marker), what=what)
    return True


def _take_over(c: Any, lock: str, dead: str, stale_after: float) -> None:
    """Remove ``lock`` if it is still held by ``dead`` (its holder presumed dead), one process at a time.

    Deleting the lock by name alone would let two takers (or a taker that looked earlier) delete a lock that
    a third process has just taken. So a taker first creates ``<lock>.takeover-<dead owner>`` (atomic: one
    wins, the others go back to waiting), checks that the lock is still the dead holder's, deletes it, and
    removes its marker; a marker left by a taker that died is itself taken over when stale.
    """
    import hashlib

    marker = f"{lock}.takeover-{hashlib.sha1(dead.encode()).hexdigest()[:12]}"
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if not _create_marker(c, marker, me, f"ganops: removing the stale lock of {dead}"):
        _remove_stale(c, marker, stale_after)
        return
    try:
        if _delete_if_owned(c, lock, dead, "take over a stale promotion lock"):
            log.warning("took over the stale promotion lock %s held by %s", lock, dead)
    finally:
        _delete_if_owned(c, marker, me, "finish a takeover")


def _remove_stale(c: Any, marker: str, stale_after: float) -> None:
    """Delete ``marker`` when older than ``stale_after`` (its creator died): only if nobody replaced it."""
    from mlflow.exceptions import MlflowException

    try:
        held = c.get_registered_model(marker)
    except MlflowException:
        return
    if time.time() - float(held.tags.get("since", "inf")) > stale_after:
        _delete_if_owned(c, marker, held.tags.get("owner", ""), "remove a stale takeover marker")


def _version_facts(mv: Any) -> dict[str, Any]:
    """What a model version says about it: run, data, extractor and its metrics (floats) — the run's evaluated
    metrics, with the values the version's tags froze at registration taking precedence."""
    facts: dict[str, Any] = {"version": int(mv.version), "run_id": mv.run_id}
    tagged: dict[str, float] = {}
    for k, v in mv.tags.items():
        if k.startswith("metric."):
            tagged[k[len("metric.") :]] = float(v)
        elif k in _META_KEYS:
            facts[k] = v
    return facts | evaluated_metrics(mv.run_id) | tagged


def version_tags(facts: dict[str, Any], metric: str | None) -> dict[str, str]:
    """The tags a new version gets: its lineage, and the values promotion compares (``metric``, its
    real-vs-real baseline, ``coverage`` for ties). Nothing else: the run holds the other metrics."""
    tags = {
        k: str(v) for k, v in facts.items() if k in _META_KEYS and k != "run_id"
    }  # the version has run_id
    if metric is None:
        return tags
    compared = (metric, f"baseline_{metric}", f"baseline_{metric.removeprefix('domain_')}", "coverage")
    numbers = {k: facts[k] for k in compared
               if isinstance(facts.get(k), int | float) and not isinstance(facts.get(k), bool)}  # fmt: skip
    return tags | {"promotion_metric": metric} | {f"metric.{k}": repr(float(v)) for k, v in numbers.items()}


GENERATOR_MODEL_NOTE = (
    "ganops generators (dcgan, msg): each version is the checkpoint folder (generator.pt + config.json) of "
    "one training run, described by its architecture, data, size, steps and the promotion metric beside its "
    "real-vs-real baseline. @champion is what the service serves; @champion-<12 hex of a dataset hash> is "
    "each data line's best."
)
_OLD_GENERATOR_MODEL_NOTE = "ganops DCGAN generators: checkpoint folder (weights + config.json)"


def register_generator(
    run_id: str,
    name: str,
    facts: dict[str, Any],
    artifact_path: str = "checkpoint",
    description: str = "",
    metric: str | None = None,
) -> dict[str, Any]:
    """Register the run's ``checkpoint/`` (or ``checkpoint_best/``) artifact as a version of ``name`` (once).

    The version's source is our checkpoint folder (weights + config JSON, no pickled code); its tags are the
    lineage in ``facts`` (dataset hash, extractors, export, data limit) and, with ``metric``, the values
    promotion compares (:func:`version_tags`).

    Returns:
        The version's facts (as :func:`champion` returns them).
    """
    from mlflow import MlflowClient

    c = MlflowClient()
    _ensure_registered_model(c, name, GENERATOR_MODEL_NOTE)
    if retry_locked(lambda: c.get_registered_model(name)).description == _OLD_GENERATOR_MODEL_NOTE:
        retry_locked(lambda: c.update_registered_model(name, description=GENERATOR_MODEL_NOTE))
    source = f"runs:/{run_id}/{artifact_path}"
    found = retry_locked(lambda: c.search_model_versions(f"{name_filter(name)} and run_id='{run_id}'"))
    existing = [mv for mv in found if mv.name == name and mv.source == source]
    if existing:
        return _version_facts(existing[0])
    tags = version_tags(facts, metric)
    mv = retry_locked(lambda: c.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                                     description=description or None))  # fmt: skip
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


def name_filter(name: str) -> str:
    """A search filter that matches registered model ``name`` whatever quotes it holds (MLflow's filter
    strings have no escape): exact where one kind of quote is free, else a ``LIKE`` with ``_`` for each
    quote, which may match more: callers keep the versions whose ``name`` is ``name``."""
    if "'" not in name:
        return f"name='{name}'"
    if '"' not in name:
        return f'name="{name}"'
    return "name LIKE '" + name.replace("'", "_").replace('"', "_") + "'"


def model_versions(name: str, limit: int = 50) -> list[dict[str, Any]]:
    """The facts of the newest ``limit`` registered versions of ``name`` (newest first; [] if none)."""
    from mlflow import MlflowClient

    mvs = [mv for mv in MlflowClient().search_model_versions(name_filter(name)) if mv.name == name]
    return sorted((_version_facts(mv) for mv in mvs), key=lambda f: -f["version"])[:limit]


# ----------------------------------------------------------------------------- style nets
# A style's fast nets are the versions of one registered model per style, ``ganops-style-<style>``; each
# training registers a version and points the alias at it at once. The alias is the generator's
# (``promote.alias``): the service looks up the generator and every style net under one alias
# (``GANOPS_MODEL_ALIAS``), so a project promoting to another alias serves its style nets too.

STYLE_PREFIX = "ganops-style-"
# The artifact path of a style net's folder in its training run (weights + config.json). Versions
# registered before it had this name point at ``checkpoint``: readers go through the version
# (``models:/<name>/<version>``), never through the path, so both keep loading.
STYLE_NET_ARTIFACT = "style_net"


def style_model_name(style: str) -> str:
    """The registered model holding ``style``'s fast nets: ``ganops-style-<style>``."""
    return STYLE_PREFIX + style


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
