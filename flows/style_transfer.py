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
    rows = "\n".join(
        f"| {r['style']} | {r['content']} | {r.get('final_total', float('nan')):.4g} | {r['seconds']:.1f} | `{r['output']}` |"
        for r in pairs
    )
    create_markdown_artifact(
        key="style-transfer-report",
        markdown=f"# style-transfer\n\n| style | content | final loss | seconds | output |\n|---|---|---|---|---|\n{rows}\n\n"
        f"Contact sheet: `{path or 'not drawn (a subset of styles ran)'}`\n",
        description="every pair's loss, time and output; the contact sheet",
    )
    return {"pairs": len(pairs), "sheet": path}
