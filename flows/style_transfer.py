"""Flow `style-transfer`: every content x style pair as its own Prefect task, submitted concurrently.

    prefect deployment run 'style-transfer/local' --param overrides='["style.steps=300"]' --watch
    prefect deployment run 'style-transfer/local' --param dask_workers=2 --watch   # pairs on a Dask LocalCluster

Uses the same ganops.stages functions as the DVC stages, but works in its own workspace
(``.ganops/flow-runs/<id>/``: ``data/stylized/<style>/``, ``data/stylized_sheet.png``), so two flow runs and
a ``dvc repro`` at the same time never write the same file, and the project's DVC outputs are untouched.
Every image is written atomically; ``DONE.json``, written last, lists the results with their checksums.
Each pair is an MLflow run tagged with its own flow-run id (passed as a value). A task opens its own MLflow
run by id in its own thread, never relying on the (thread-local) active run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.unfinished import tell_unfinished
from ganops import stages, workspaces
from ganops.config import Params, load_params
from ganops.tracking import RunContext, use_store

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner

ROOT = Path(os.environ.get("GANOPS_PROJECT_ROOT", Path.cwd())).resolve()


@task(cache_policy=NO_CACHE)
def setup(params: Params, style: str, at: stages.Layout, ctx: RunContext) -> stages.StyleJob:
    return stages.stylize_setup(params, style, at, ctx=ctx, progress=False, echo=get_run_logger().info)


@task(cache_policy=NO_CACHE, task_run_name="{job.style} x {content.name}")
def stylize_pair(
    params: Params, job: stages.StyleJob, content: Path, at: stages.Layout, ctx: RunContext
) -> dict[str, Any]:
    r = stages.stylize_pair(params, job, content, at, ctx=ctx)
    return {"style": job.style, "content": content.name, "output": str(r.output), **r.metrics}


@task(cache_policy=NO_CACHE, task_run_name="{style} x {content.name}")
def stylize_pair_in_worker(
    params: Params, style: str, content: Path, at: stages.Layout, ctx: RunContext
) -> dict[str, Any]:
    """:func:`stylize_pair` for a Dask worker: takes and returns paths and plain values only; the feature
    extractor (and a fast net, from what setup saved) are rebuilt here from the params."""
    from distributed import get_worker

    get_run_logger().info("%s x %s on Dask worker %s", style, content.name, get_worker().address)
    job = stages.style_job(params, style, at)
    r = stages.stylize_pair(params, job, content, at, ctx=ctx)
    return {"style": style, "content": content.name, "output": str(r.output), **r.metrics}


@flow(name="style-transfer-pairs")
def pairs_on_dask(
    params: Params, pairs: list[tuple[str, Path]], at: stages.Layout, ctx: RunContext
) -> list[dict[str, Any]]:
    """The pairs fanned out on the task runner given by ``with_options`` (a DaskTaskRunner)."""
    futures = [stylize_pair_in_worker.submit(params, style, content, at, ctx) for style, content in pairs]
    return [f.result() for f in futures]


def dask_runner(workers: int, address: str | None) -> DaskTaskRunner:
    """A DaskTaskRunner on the scheduler at ``address``, or on a LocalCluster of ``workers`` processes
    (one thread each: every pair already uses torch's threads)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "dashboard_address": None})  # fmt: skip


@task(cache_policy=NO_CACHE)
def sheet(params: Params, at: stages.Layout) -> str:
    return str(stages.stylize_sheet(params, at)[0])


def _inputs(params: Params, overrides: list[str], at: stages.Layout) -> Params:
    """Snapshot the photos and style images into the workspace (``inputs/``) and point the params at the
    copies: a ``dvc repro`` or a user changing the project's folders meanwhile cannot change what it reads.
    ``style.fast_train_dir`` is not copied (a corpus may be huge): the params point at it in place."""
    fixed = list(overrides)
    for key in ("content_dir", "style_dir"):
        rel = getattr(params.style, key)
        src = Path(rel) if Path(rel).is_absolute() else ROOT / rel
        if not src.is_dir():
            raise stages.StageError(f"style.{key}: {rel} is not a folder")
        dst = at.root / "inputs" / key
        if src != dst:
            shutil.copytree(src, workspaces.fresh_copy_target(dst))
        fixed.append(f"style.{key}={dst}")
    # a fast net's training corpus is read in place (it may be COCO-sized): the workspace points at it
    corpus = Path(params.style.fast_train_dir)
    fixed.append(f"style.fast_train_dir={corpus if corpus.is_absolute() else ROOT / corpus}")
    return load_params(ROOT / "params.yaml", fixed)


def report(params: Params, jobs: list[stages.StyleJob], pairs: list[dict], sheet_path: str | None) -> str:
    """Markdown laid out like the contact sheet: one column per style (with its blend weights), one row
    per photo, each cell the pair's final loss and seconds; the feature extractor named."""
    from ganops.sheet import blend_label

    by = {(r["style"], r["content"]): r for r in pairs}
    contents = sorted({r["content"] for r in pairs})
    heads = [blend_label(j.style, params.style.styles[j.style]) for j in jobs]
    lines = ["| photo \\ style | " + " | ".join(heads) + " |", "|---" * (len(jobs) + 1) + "|"]
    for c in contents:
        cells = [by.get((j.style, c), {}) for j in jobs]
        lines.append(f"| {c} | " + " | ".join(
            f"loss {r.get('final_total', float('nan')):.4g}, {r.get('seconds', float('nan')):.1f} s" for r in cells) + " |")  # fmt: skip
    extractors = ", ".join(sorted({j.vgg.name for j in jobs}))
    return (f"# style-transfer\n\nFeature extractor: `{extractors}`; method `{params.style.method}`, "
            f"{params.style.size} px.\n\n" + "\n".join(lines) +
            f"\n\nContact sheet (same layout, with the images): `{sheet_path or 'not drawn (a subset of styles ran)'}`\n")  # fmt: skip


@flow(name="style-transfer", log_prints=True)
def style_transfer_flow(
    overrides: list[str] | None = None,
    styles: list[str] | None = None,
    keep_runs: int = 20,
    dask_workers: int = 0,
    dask_address: str | None = None,
) -> dict:
    """Style every content image with every style (or the listed ``styles``), then draw the contact sheet.

    Args:
        overrides: params.yaml overrides, e.g. ["style.steps=300", "style.method=fast"] (validated first).
        styles: names from style.styles (default: all of them).
        keep_runs: keep this many newest flow-run workspaces in .ganops/flow-runs/ (negative: all).
        dask_workers: > 0: fan the pairs out on a Dask LocalCluster of this many worker processes
            (prefect-dask's DaskTaskRunner, in a subflow `style-transfer-pairs`); 0: threads in this process.
        dask_address: fan the pairs out on the Dask scheduler at this address (e.g. tcp://host:8786) instead;
            its workers need this project's environment, the same paths and PREFECT_API_URL.
    """
    if dask_workers < 0:
        raise ValueError(f"dask_workers must be >= 0, got {dask_workers}")
    if dask_workers and dask_address:
        raise ValueError("give dask_workers (a LocalCluster) or dask_address (a scheduler), not both")
    overrides = list(overrides or [])
    params = load_params(ROOT / "params.yaml", overrides)  # fails fast with the key's name
    run_id = str(flow_run.get_id() or "local")
    ctx = RunContext(entry_point="prefect", flow_run_id=run_id)
    use_store(ROOT)  # create / migrate the tracking store once, before the pairs fan out
    with workspaces.hold(workspaces.flow_run_dir(ROOT, run_id)) as work:
        if keep_runs >= 0:
            workspaces.gc(ROOT, keep=keep_runs)
        tell_unfinished(ROOT, get_run_logger())
        at = stages.Layout(root=work, tracking_root=ROOT)
        params = _inputs(params, overrides, at)
        names = styles or list(params.style.styles)
        jobs = [setup(params, s, at, ctx) for s in names]  # sequential: a fast net trains here
        if dask_workers or dask_address:  # paths and params cross processes, never tensors or the VGG
            todo = [(job.style, c) for job in jobs for c in job.contents]
            runner = dask_runner(dask_workers, dask_address)
            pairs = pairs_on_dask.with_options(task_runner=runner)(params, todo, at, ctx)
        else:
            futures = [stylize_pair.submit(params, job, c, at, ctx) for job in jobs for c in job.contents]
            pairs = [f.result() for f in futures]
        path = sheet(params, at) if set(names) == set(params.style.styles) else None
        outputs = [Path(r["output"]) for r in pairs] + ([Path(path)] if path else [])
        workspaces.publish(work, outputs, {"flow": "style-transfer", "flow_run_id": run_id})
    create_markdown_artifact(
        key="style-transfer-report",
        markdown=report(params, jobs, pairs, path) + f"\nWorkspace: `{work}`\n",
        description="the contact sheet's layout: styles across, photos down; each pair's loss and time",
    )
    return {"pairs": len(pairs), "sheet": path, "workspace": str(work)}
