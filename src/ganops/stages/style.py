"""The style-transfer stages: ``stylize@<style>`` (setup, then one MLflow run per content x style pair),
``stylize_sheet`` (the labelled contact sheet), and ``ganops stylize-image`` (one photo, one painting).

A style's inputs are validated and loaded by :func:`ganops.stylize.style_inputs`; this module sequences
the work, writes the outputs and logs to MLflow (through :mod:`ganops.tracking`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganops.config import Params
from ganops.stages.common import Layout, StageError, write_json
from ganops.stylize import StyleError
from ganops.tracking import RunContext

log = logging.getLogger(__name__)


@dataclass
class StyleJob:
    """What every pair of one style needs: images, the feature extractor, the fast net if any."""

    style: str
    contents: list[Path]
    styles: list[tuple[Any, float]]  # [(image (1, 3, H, W), blend weight)]
    vgg: Any
    net: Any = None


def _blend(p: Params, style: str) -> dict[str, float]:
    """``style.styles[style]`` ({style file stem: weight}); an unknown style is a StageError."""
    if style not in p.style.styles:
        raise StageError(f"unknown style {style!r}; style.styles defines: {', '.join(p.style.styles)}")
    return p.style.styles[style]


def _save_style_model(folder: Path, config: dict[str, Any], net: Any = None) -> None:
    """Write a style's model folder: the fast net's weights ``transformer.pt`` (if any), then ``config.json``."""
    from ganops.artifacts import save_folder

    save_folder(
        folder, {"transformer.pt": net.state_dict()} if net is not None else {}, config, newline=False
    )


def _load_fast_net(folder: Path) -> Any:
    """The fast net that :func:`_save_style_model` wrote to ``folder``, in eval mode on the CPU."""
    from ganops.models.style import load_style_net

    return load_style_net(folder)


def stylize_setup(p: Params, style: str, at: Layout = Layout(), *, ctx: RunContext = RunContext(),
                  progress: bool = True, echo: Callable[[str], None] = log.info) -> StyleJob:  # fmt: skip
    """Validate and load one style's inputs, clear its outputs, train + register its fast net if asked."""
    from ganops.models.style import build_vgg
    from ganops.stylize import load_contents, style_inputs, train_fast
    from ganops.tracking import register_folder, style_run

    sp = p.style
    blend = _blend(p, style)
    fast = sp.method == "fast"
    contents, styles = style_inputs(sp, blend, at.root, check_contents=not fast)
    imgs = list(load_contents(contents, sp)) if fast else []  # a fast net trains on every photo
    vgg = build_vgg(sp.weights, [sp.content_layer, *sp.style_layers], seed=p.base.seed)
    log.info("feature extractor: %s", vgg.name)  # never hide the offline fallback
    out, models = at.stylized / style, at.style_models / style
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    job = StyleJob(style, contents, styles, vgg)
    if fast:
        with style_run(p, ctx=ctx, style=style, content="(training)", extractor=vgg.name,
                       root=at.tracking) as run:  # fmt: skip
            job.net = train_fast(
                imgs, styles, vgg, sp, seed=p.base.seed, progress=progress, on_metrics=run.on_metrics
            )
            made = {"method": "fast", "model": job.net.cfg.to_dict(), "style": style, "blend": blend,
                    "extractor": vgg.name, "precision": job.net.precision}  # fmt: skip
            _save_style_model(models, made, job.net)
            run.log_artifacts(models, "checkpoint")
            version = register_folder(run.run_id, "checkpoint", f"ganops-style-{style}", "champion",
                                      {"style": style, "extractor": vgg.name})  # fmt: skip
        echo(f"fast net for {style} -> {models}/ (registered ganops-style-{style} v{version})")
    else:
        _save_style_model(models, {"method": "gatys", "style": style, "blend": blend, "extractor": vgg.name})
    return job


def style_job(p: Params, style: str, at: Layout = Layout()) -> StyleJob:
    """The :class:`StyleJob` that :func:`stylize_setup` made for ``style``, rebuilt from params and files
    alone, with no side effect: for a worker in another process (Prefect on Dask), which receives paths and
    params, never tensors or the feature extractor. A fast net is loaded from what setup saved."""
    from ganops.models.style import build_vgg
    from ganops.stylize import style_inputs

    sp = p.style
    contents, styles = style_inputs(sp, _blend(p, style), at.root, check_contents=False)
    vgg = build_vgg(sp.weights, [sp.content_layer, *sp.style_layers], seed=p.base.seed)
    job = StyleJob(style, contents, styles, vgg)
    if sp.method == "fast":
        job.net = _load_fast_net(at.style_models / style)
    return job


def stylize_pair(
    p: Params,
    job: StyleJob,
    content: Path,
    at: Layout = Layout(),
    *,
    ctx: RunContext = RunContext(),
    progress: bool = False,
) -> tuple[Path, dict[str, float]]:
    """One content x style pair in its own MLflow run; returns (output path, metrics)."""
    from ganops.stylize import fast_stylize, gatys, load_image, resize_long, save_image
    from ganops.tracking import style_run

    img = load_image(content, p.style.max_side)
    with style_run(p, ctx=ctx, style=job.style, content=content.stem, extractor=job.vgg.name,
                   root=at.tracking) as run:  # fmt: skip
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if job.net is not None:  # at the working size, as it was trained and as gatys sizes its result
            result = fast_stylize(job.net, resize_long(img, p.style.size))
        else:
            r = gatys(img, job.styles, job.vgg, p.style, seed=p.base.seed, progress=progress)
            result = r.image
            metrics = {f"final_{k}": v for k, v in r.losses.items()}
            metrics |= {"start_total": r.start_total, "evaluations": float(r.evaluations)}
        metrics["seconds"] = time.perf_counter() - t0
        saved = save_image(result, at.stylized / job.style / f"{content.stem}.png")
        run.log_metrics(metrics)
        run.log_artifact(saved, "stylized")
    return saved, metrics


def stylize(
    p: Params,
    style: str,
    at: Layout = Layout(),
    *,
    ctx: RunContext = RunContext(),
    progress: bool = True,
    echo: Callable[[str], None] = log.info,
) -> list[Path]:
    """Stage `stylize@<style>`: every content image, one MLflow run per pair; returns the outputs."""
    job = stylize_setup(p, style, at, ctx=ctx, progress=progress, echo=echo)
    echo(f"{style}: feature extractor {job.vgg.name}, method {p.style.method}")
    written, pairs = [], {}
    for content in job.contents:
        saved, m = stylize_pair(p, job, content, at, ctx=ctx, progress=progress)
        written.append(saved)
        pairs[content.stem] = {k: round(v, 6) for k, v in m.items()}
        loss = f" (loss {m['start_total']:.3g} -> {m['final_total']:.3g})" if "final_total" in m else ""
        echo(f"{style} x {content.name} -> {saved}{loss}")
    write_json(at.metrics / "stylize" / f"{style}.json",
                {"extractor": job.vgg.name, "method": p.style.method, "pairs": pairs})  # fmt: skip
    return written


def stylize_image(
    p: Params,
    photo: Path,
    painting: Path,
    out: Path,
    at: Layout = Layout(),
    *,
    ctx: RunContext = RunContext(),
    progress: bool = True,
) -> tuple[Path, dict[str, float], str, str]:
    """`ganops stylize-image`: one photo in one painting's style (Gatys), one MLflow run like a stage pair.

    Returns:
        (output path, metrics, MLflow run id, feature extractor name).
    """
    from ganops.models.style import build_vgg
    from ganops.stylize import gatys, load_image, save_image
    from ganops.tracking import style_run

    sp = p.style
    if sp.method != "gatys":
        raise StageError("stylize-image optimises one picture (style.method=gatys); a fast net is trained "
                         "per style by `ganops stylize --style NAME -S style.method=fast`")  # fmt: skip
    if out.suffix.lower() != ".png":
        raise StageError(f"{out}: the output is written as PNG; give a file name ending in .png")
    img, style = load_image(photo, sp.max_side), load_image(painting, sp.max_side)  # both before any work
    vgg = build_vgg(sp.weights, [sp.content_layer, *sp.style_layers], seed=p.base.seed)
    log.info("feature extractor: %s", vgg.name)
    with style_run(p, ctx=ctx, style=painting.stem, content=photo.stem, extractor=vgg.name,
                   root=at.tracking) as run:  # fmt: skip
        t0 = time.perf_counter()
        r = gatys(img, [(style, 1.0)], vgg, sp, seed=p.base.seed, progress=progress)
        metrics = {f"final_{k}": v for k, v in r.losses.items()}
        metrics |= {"start_total": r.start_total, "evaluations": float(r.evaluations),
                    "seconds": time.perf_counter() - t0}  # fmt: skip
        saved = save_image(r.image, out)
        run.log_metrics(metrics)
        run.log_artifact(saved, "stylized")
    return saved, metrics, run.run_id, vgg.name


def stylize_sheet(p: Params, at: Layout = Layout()) -> tuple[Path, int, int]:
    """Stage `stylize_sheet`: the labelled contact sheet; returns (sheet path, contents, styles)."""
    from ganops.sheet import SheetStyle, labelled_sheet, save_png
    from ganops.stylize import list_images, load_image, style_files

    sp = p.style
    try:
        files = list_images(at.root / sp.content_dir)
        contents = [(f.stem, load_image(f, 512)) for f in files]
        columns = []
        for s, blend in sp.styles.items():
            imgs = [(f.stem, load_image(f, 512), w) for f, w in style_files(at.root / sp.style_dir, blend)]
            col = SheetStyle(s, imgs, [load_image(at.stylized / s / f"{f.stem}.png", 512) for f in files])
            columns.append(col)
    except StyleError as err:
        raise StageError(f"{err}: run `dvc repro` (or `ganops stylize --style ...`) first") from None
    made = {}  # how each column was made, from the stage's models/style/<name>/config.json
    for s in sp.styles:
        cfg = at.style_models / s / "config.json"
        made[s] = json.loads(cfg.read_text()) if cfg.is_file() else {}
    extractors = sorted({m.get("extractor", "extractor unknown") for m in made.values()})
    methods = sorted({m.get("method", sp.method) for m in made.values()})
    caption = "\n".join(
        ["rows: photos", "columns: styles", *extractors, " / ".join(methods) + f", {sp.size} px"]
    )
    save_png(labelled_sheet(contents, columns, tile=192, caption=caption), at.sheet)
    return at.sheet, len(contents), len(columns)
