"""The only package that talks to MLflow: the store, runs, and the model registry.

- :mod:`~ganops.tracking.store`: tracking URI, reachability check, one-time store creation, retried writes.
- :mod:`~ganops.tracking.runs`: who started a run (RunContext), training / style runs, logging into them.
- :mod:`~ganops.tracking.registry`: registered versions, the promotion lock, the champion alias, downloads.

Callers import from ``ganops.tracking``; a test that monkeypatches a name must patch it in the submodule
that looks it up (e.g. ``ganops.tracking.runs.use_store``), not here.
"""

from ganops.tracking.registry import (
    STYLE_NET_ARTIFACT,
    STYLE_PREFIX,
    aliased_with_prefix,
    champion,
    download_champion,
    download_version,
    model_versions,
    register_folder,
    register_generator,
    registered_with_prefix,
    registry_lock,
    set_alias,
    style_model_name,
)
from ganops.tracking.runs import (
    EVALUATED_TAG,
    RunContext,
    RunLogger,
    end_abandoned_run,
    git_commit,
    log_artifact_to_run,
    log_dataset,
    log_to_run,
    require_run,
    run_params,
    run_summary,
    set_note_section,
    start_run,
    style_run,
    training_run_name,
)
from ganops.tracking.store import (
    TrackingError,
    check_reachable,
    prepare_store,
    project_root,
    retry_locked,
    tracking_uri,
    use_store,
)

__all__ = [
    "STYLE_NET_ARTIFACT",
    "STYLE_PREFIX",
    "RunContext",
    "RunLogger",
    "TrackingError",
    "aliased_with_prefix",
    "champion",
    "check_reachable",
    "download_champion",
    "download_version",
    "end_abandoned_run",
    "git_commit",
    "log_artifact_to_run",
    "log_dataset",
    "log_to_run",
    "model_versions",
    "prepare_store",
    "project_root",
    "register_folder",
    "register_generator",
    "registered_with_prefix",
    "registry_lock",
    "EVALUATED_TAG",
    "require_run",
    "retry_locked",
    "run_params",
    "run_summary",
    "set_alias",
    "set_note_section",
    "start_run",
    "style_model_name",
    "style_run",
    "tracking_uri",
    "training_run_name",
    "use_store",
]
