"""Flow `style-transfer`: every content x style pair as its own Prefect task, submitted concurrently.

    prefect deployment run 'style-transfer/local' --param overrides='["style.steps=300"]' --watch

Writes data/stylized/<style>/ and data/stylized_sheet.png in the project, like the DVC stages (and with the
same ganops.stages functions); each pair is an MLflow run tagged with the flow-run id. A task opens its own
MLflow run by id in its own thread, never relying on the (thread-local) active run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from ganops import stages
from ganops.config import Params, load_params

ROOT = Path(os.environ.get("GANOPS_PROJECT_ROOT", Path.cwd())).resolve()
DEFAULT_CONTENT = "data/style/content"


@task(cache_policy=NO_CACHE)
def setup(params: Params, style: str, at: stages.Layout) -> stages.StyleJob:
    return stages.stylize_setup(params, style, at, progress=False, echo=get_run_logger().info)


@task(cache_policy=NO_CACHE, task_run_name="{job.style} x {content.name}")
def stylize_pair(params: Params, job: stages.StyleJob, content: Path, at: stages.Layout) -> dict[str, Any]:
    saved, metrics = stages.stylize_pair(params, job, content, at)
    return {"style": job.style, "content": content.name, "output": str(saved), **metrics}


@task(cache_policy=NO_CACHE)
def sheet(params: Params, at: stages.Layout) -> str:
    return str(stages.stylize_sheet(params, at)[0])


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
def style_transfer_flow(overrides: list[str] | None = None, styles: list[str] | None = None) -> dict:
    """Style every content image with every style (or the listed ``styles``), then draw the contact sheet.

    Args:
        overrides: params.yaml overrides, e.g. ["style.steps=300", "style.method=fast"] (validated first).
        styles: names from style.styles (default: all of them).
    """
    params = load_params(ROOT / "params.yaml", list(overrides or []))  # fails fast with the key's name
    os.environ["GANOPS_ENTRY_POINT"] = "prefect"
    os.environ["GANOPS_FLOW_RUN_ID"] = str(flow_run.get_id() or "local")
    at = stages.Layout(root=ROOT)
    if params.style.content_dir == DEFAULT_CONTENT and not (ROOT / DEFAULT_CONTENT).is_dir():
        stages.style_inputs(at)  # the offline samples, as the DVC stage style_inputs writes them
    names = styles or list(params.style.styles)
    jobs = [setup(params, s, at) for s in names]  # sequential: a fast net trains here
    futures = [stylize_pair.submit(params, job, c, at) for job in jobs for c in job.contents]
    pairs = [f.result() for f in futures]
    path = sheet(params, at) if set(names) == set(params.style.styles) else None
    create_markdown_artifact(
        key="style-transfer-report",
        markdown=report(params, jobs, pairs, path),
        description="the contact sheet's layout: styles across, photos down; each pair's loss and time",
    )
    return {"pairs": len(pairs), "sheet": path}
