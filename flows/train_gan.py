"""Flow `train-gan`: prepare -> classifier -> train_gan -> evaluate -> promote, as Prefect tasks.

    prefect deployment run 'train-gan/local' --param overrides='["gan.steps=500"]' --param data_rev=v1 --watch

Each task calls the ganops.stages function that the DVC stage of the same name runs. A flow run works in
its own workspace (``.ganops/flow-runs/<id>/``, see ganops.workspaces) so the user's working tree, DVC
outputs and other flow runs stay untouched; MLflow logs go to the project's store as usual, tagged with the
flow-run id (passed down as a value, never through the environment). ``data_rev`` reads the DVC-tracked
data folder as it was at that git revision (through DVC's file system, from the local cache) into a fresh
copy on every attempt. A retried task or flow run resumes from the workspace's checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.unfinished import tell_unfinished
from ganops import stages, workspaces
from ganops.config import Params, load_params
from ganops.tracking import RunContext, tracking_uri, use_store

ROOT = Path(os.environ.get("GANOPS_PROJECT_ROOT", Path.cwd())).resolve()


def checkout_data(params: Params, data_rev: str, dst: Path) -> str:
    """Copy ``data.root`` as of git revision ``data_rev`` into ``dst`` through DVC; returns the new root."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(ROOT), rev=data_rev)
    src = params.data.root
    if not fs.exists(src):
        raise stages.StageError(f"{src} does not exist at revision {data_rev!r}")
    fs.get(src, str(workspaces.fresh_copy_target(dst)), recursive=True)
    return str(dst)


def _with_data_root(params: Params, root: str) -> Params:
    """``params`` with ``data.root`` pointing elsewhere (the validated params' copy; nothing re-parsed)."""
    return params.model_copy(update={"data": params.data.model_copy(update={"root": root})})


@task(cache_policy=NO_CACHE)
def prepare(params: Params, at: stages.Layout) -> dict[str, Any]:
    man, skipped = stages.prepare(params, at)
    get_run_logger().info(
        "prepared %d images from %s (%d skipped)", man["count"], man["source"], len(skipped)
    )
    return man


@task(cache_policy=NO_CACHE, retries=1)  # a retry resumes from the task's own checkpoint
def train_gan(params: Params, at: stages.Layout, ctx: RunContext) -> str:
    result, run_id = stages.train_gan(params, at, ctx=ctx, progress=False)
    get_run_logger().info(
        "trained %d steps (resumed from %d), MLflow run %s", result.step, result.resumed_from, run_id
    )
    return run_id


@task(cache_policy=NO_CACHE)
def classifier(params: Params, at: stages.Layout) -> str:
    return stages.classifier(params, at, progress=False).extractor


@task(cache_policy=NO_CACHE)
def evaluate(params: Params, at: stages.Layout) -> dict[str, Any]:
    return stages.evaluate(params, at)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)  # registry writes: a retry means something
def promote(params: Params, at: stages.Layout) -> dict[str, Any]:
    decision, cand, _ = stages.promote(params, at)
    return decision.to_dict() | {"version": cand["version"]}


@flow(name="train-gan", log_prints=True)
def train_gan_flow(
    overrides: list[str] | None = None,
    data_rev: str | None = None,
    experiment: str | None = None,
    keep_runs: int = 20,
) -> dict:
    """Train, evaluate and maybe promote a generator.

    Args:
        overrides: params.yaml overrides, e.g. ["gan.steps=500", "gan.lr_d=1e-4"] (validated first).
        data_rev: git revision whose DVC-tracked ``data.root`` folder to train on (default: the working tree).
        experiment: MLflow experiment name (default: tracking.experiment).
        keep_runs: keep this many newest flow-run workspaces in .ganops/flow-runs/ (older ones are removed
            when a flow run starts; never a running one). Negative: keep all.
    """
    overrides = list(overrides or []) + ([f"tracking.experiment={experiment}"] if experiment else [])
    params = load_params(ROOT / "params.yaml", overrides)  # fails fast with the offending key's name
    run_id = str(flow_run.get_id() or "local")
    ctx = RunContext(entry_point="prefect", flow_run_id=run_id)
    use_store(ROOT)  # create / migrate the tracking store once, before any task writes to it
    with workspaces.hold(workspaces.flow_run_dir(ROOT, run_id)) as work:
        if keep_runs >= 0:
            workspaces.gc(ROOT, keep=keep_runs)
        tell_unfinished(ROOT, get_run_logger())
        if data_rev:
            params = _with_data_root(params, checkout_data(params, data_rev, work / "data-rev"))
        elif params.data.source == "folder" and not Path(params.data.root).is_absolute():
            params = _with_data_root(params, str(ROOT / params.data.root))
        at = stages.Layout(root=work, tracking_root=ROOT)
        man = prepare(params, at)
        classifier(params, at)  # before training: the in-training monitor scores with it
        mlflow_run = train_gan(params, at, ctx)
        metrics = evaluate(params, at)
        decision = promote(params, at)
        _report(man, metrics, decision, mlflow_run, at)
        shutil.rmtree(work / "data-rev", ignore_errors=True)
        workspaces.publish(work, [at.gan / "final" / "generator.pt", at.gan / "final" / "config.json",
                                  at.metrics / "evaluate.json", at.metrics / "promote.json"],
                           {"flow": "train-gan", "flow_run_id": run_id, "mlflow_run_id": mlflow_run})  # fmt: skip
    return {"mlflow_run_id": mlflow_run, "dataset_hash": man["content_hash"], "promoted": decision["promote"],
            "workspace": str(work), "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)}}  # fmt: skip


def _report(man: dict, m: dict, decision: dict, run_id: str, at: stages.Layout) -> None:
    rows = "\n".join(f"| {k} | {m[k]:.4g} |" for k in ("domain_fid", "baseline_fid", "coverage", "kl", "confident_frac")
                     if k in m)  # fmt: skip
    create_markdown_artifact(
        key="train-gan-report",
        markdown=f"""# train-gan
Data: {man["source"]}, {man["count"]} images, hash `{man["content_hash"][:12]}`

| metric | value |
|---|---|
{rows}

**Promotion:** {"promoted" if decision["promote"] else "kept champion"} — {decision["reason"]}

Sample grid: `{at.gan / "final" / "samples.png"}`

MLflow run `{run_id}` in `{tracking_uri(at.tracking)}` (open with `mlflow ui --backend-store-uri ...`, runs/{run_id}).
""",
        description="metrics, promotion decision and where the sample grid is",
    )
