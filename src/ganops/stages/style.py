"""Stage ``stylize@<style>``: one style's setup (checks, a fast net's training), then every content photo in
its own MLflow run; and ``ganops stylize-image``, the same pair for one photo and one painting.

The work of a style is described by a :class:`StyleJob` (its photos, its style images, the feature
extractor, the fast net if any), built from params and files alone, without side effects: in this process
by :func:`stylize_setup`, in a Dask worker by :func:`style_job`. The pictures' maths is
:mod:`ganops.stylize`; this module sequences it, writes the outputs and logs to MLflow (through
:mod:`ganops.tracking`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ganops.artifacts import save_folder
from ganops.colour import chroma, colour_distance
from ganops.config import Params
from ganops.images import save_image
from ganops.models.style import TransformerNet, VGGFeatures, build_vgg, load_style_net
from ganops.stages.common import Layout, StageError, write_json
from ganops.stylize import (
    PhotoCorpus,
    fast_stylize,
    gatys,
    list_images,
    load_image,
    print_ladder,
    resize_long,
    style_inputs,
    train_fast,
)
from ganops.tracking import STYLE_NET_ARTIFACT, RunContext, register_folder, style_model_name, style_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StyleJob:
    """What every pair of one style needs. Plain values and the nets: a worker in another process rebuilds
    it from params and paths (:func:`style_job`) rather than receiving it.

    Attributes:
        style: the output name (an entry of ``style.styles``; for ``stylize-image``, the painting's stem).
        contents: the content photos, sorted.
        styles: [(style image (1, 3, H, W) in [0, 1], blend weight)].
        vgg: the frozen feature extractor holding ``style.content_layer`` and ``style.style_layers``.
        net: the style's fast net (``style.method: fast``); None: each pair is optimised (Gatys).
    """

    style: str
    contents: list[Path]
    styles: list[tuple[torch.Tensor, float]]
    vgg: VGGFeatures
    net: TransformerNet | None = None


@dataclass(frozen=True)
class StyledPair:
    """What one pair made: the PNG, its metrics, the MLflow run that holds both, the extractor used."""

    output: Path
    metrics: dict[str, float]  # gatys: final_<term>, start_total, evaluations; both methods: seconds
    run_id: str
    extractor: str


def _blend(p: Params, style: str) -> dict[str, float]:
    """``style.styles[style]`` ({style file stem: weight}); an unknown style is a StageError."""
    if style not in p.style.styles:
        raise StageError(f"unknown style {style!r}; style.styles defines: {', '.join(p.style.styles)}")
    return p.style.styles[style]


def _extractor(p: Params) -> VGGFeatures:
    """The VGG19 feature slices the style params name (``style.weights``, the content and style layers)."""
    sp = p.style
    return build_vgg(sp.weights, [sp.content_layer, *sp.style_layers], seed=p.base.seed)


def _new_job(p: Params, style: str, at: Layout, *, check_contents: bool) -> StyleJob:
    """``style``'s job without a fast net: inputs validated and loaded (see ``style_inputs``), VGG built."""
    contents, styles = style_inputs(p.style, _blend(p, style), at.root, check_contents=check_contents)
    return StyleJob(style, contents, styles, _extractor(p))


def style_job(p: Params, style: str, at: Layout = Layout()) -> StyleJob:
    """The :class:`StyleJob` that :func:`stylize_setup` made for ``style``, rebuilt from params and files
    alone, with no side effect: for a worker in another process (Prefect on Dask), which receives paths and
    params, never tensors or the feature extractor. A fast net is loaded from the folder setup saved."""
    job = _new_job(p, style, at, check_contents=False)  # setup checked every photo
    if p.style.method == "fast":
        return replace(job, net=load_style_net(at.style_models / style))
    return job


def _save_style_model(folder: Path, config: dict[str, Any], net: TransformerNet | None = None) -> None:
    """Write a style's model folder: the fast net's weights ``transformer.pt`` (if any), then ``config.json``
    (what :func:`ganops.models.style.load_style_net` reads back, and the sheet's corner)."""
    weights = {"transformer.pt": net.state_dict()} if net is not None else {}
    save_folder(folder, weights, config, newline=False)


def train_style_net(
    p: Params,
    job: StyleJob,
    photos: Sequence[torch.Tensor],
    at: Layout = Layout(),
    *,
    ctx: RunContext = RunContext(),
    progress: bool = True,
    echo: Callable[[str], None] = log.info,
) -> TransformerNet:
    """Train ``job.style``'s fast net in its own MLflow run, save it to ``models/style/<style>/``, log that
    folder and register it as a new version of ``ganops-style-<style>``, aliased ``promote.alias`` at once.

    Args:
        job: the style's job (its style images and feature extractor; ``net`` unused).
        photos: the training photos (a :class:`PhotoCorpus` of ``style.fast_train_dir``, or in-memory photos
            (1, 3, H, W) in [0, 1]); each step draws from all of them.

    Returns:
        The trained net, in eval mode.
    """
    style, vgg, folder = job.style, job.vgg, at.style_models / job.style
    name = style_model_name(style)
    with style_run(p, ctx=ctx, style=style, content="(training)", extractor=vgg.name,
                   root=at.tracking) as run:  # fmt: skip
        net = train_fast(
            photos, job.styles, vgg, p.style, seed=p.base.seed, progress=progress, on_metrics=run.on_metrics
        )
        made = {"method": "fast", "model": net.cfg.to_dict(), "style": style, "blend": _blend(p, style),
                "extractor": vgg.name, "precision": net.precision, "size": p.style.size,
                "trained_on": {"folder": p.style.fast_train_dir, "photos": len(photos)}}  # fmt: skip
        _save_style_model(folder, made, net)
        run.log_artifacts(folder, STYLE_NET_ARTIFACT)
        version = register_folder(run.run_id, STYLE_NET_ARTIFACT, name, p.promote.alias,
                                  {"style": style, "extractor": vgg.name})  # fmt: skip
    echo(f"fast net for {style} -> {folder}/ (registered {name} v{version})")
    return net


def stylize_setup(p: Params, style: str, at: Layout = Layout(), *, ctx: RunContext = RunContext(),
                  progress: bool = True, echo: Callable[[str], None] = log.info) -> StyleJob:  # fmt: skip
    """Check and load one style's inputs, clear its outputs, then write its model folder: a fast net trained
    by :func:`train_style_net` (``style.method: fast``), or the config alone (Gatys).

    Every input is read before anything is cleared: a bad photo or style image (StyleError) or an unknown
    style (StageError) leaves the previous outputs in place.

    Returns:
        The job every pair of the style runs (with its fast net, if any).
    """
    job = _new_job(p, style, at, check_contents=True)
    corpus = training_corpus(p, at) if p.style.method == "fast" else None  # listed now, read while it trains
    log.info("feature extractor: %s", job.vgg.name)  # never hide the offline fallback
    shutil.rmtree(at.stylized / style, ignore_errors=True)
    shutil.rmtree(at.style_models / style, ignore_errors=True)
    if corpus is None:  # Gatys: the config alone
        made = {"method": "gatys", "style": style, "blend": _blend(p, style), "extractor": job.vgg.name}
        _save_style_model(at.style_models / style, made)
        return job
    return replace(job, net=train_style_net(p, job, corpus, at, ctx=ctx, progress=progress, echo=echo))


def training_corpus(p: Params, at: Layout = Layout()) -> PhotoCorpus:
    """``style.fast_train_dir`` as a streamed corpus at the working size (relative to the project root),
    its subfolders included (a photo library sorted into albums, or class folders).

    Raises:
        StageError: the folder does not exist; StyleError: it holds no image.
    """
    folder = at.root / p.style.fast_train_dir
    if not folder.is_dir():
        raise StageError(f"style.fast_train_dir: {p.style.fast_train_dir}: no such folder")
    return PhotoCorpus(list_images(folder, recursive=True), p.style.size, p.style.max_side)


def stylize_pair(
    p: Params,
    job: StyleJob,
    content: Path,
    at: Layout = Layout(),
    *,
    out: Path | None = None,
    ctx: RunContext = RunContext(),
    progress: bool = False,
    ladder: list[tuple[int, int]] | None = None,
) -> StyledPair:
    """One content x style pair in its own MLflow run: the fast net's forward pass, or Gatys's optimisation.

    Args:
        content: the photo (one of ``job.contents`` in the stage).
        out: where the PNG goes; default ``data/stylized/<style>/<photo stem>.png`` under ``at``.
        ladder: Gatys's scales and evaluations (:func:`ganops.stylize.gatys`); default from ``style.*``.
    """
    img = load_image(content, p.style.max_side)
    out = out or at.stylized / job.style / f"{content.stem}.png"
    with style_run(p, ctx=ctx, style=job.style, content=content.stem, extractor=job.vgg.name,
                   root=at.tracking) as run:  # fmt: skip
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if job.net is not None:  # at the working size, as it was trained and as gatys sizes its result
            result = fast_stylize(job.net, resize_long(img, p.style.size))
        else:
            r = gatys(img, job.styles, job.vgg, p.style, seed=p.base.seed, progress=progress, ladder=ladder)
            result = r.image
            metrics = {f"final_{k}": v for k, v in r.losses.items()}
            metrics |= {"start_total": r.start_total, "evaluations": float(r.evaluations)}
        metrics["seconds"] = time.perf_counter() - t0
        metrics |= colour_metrics(result, img, job.styles)
        saved = save_image(result, out)
        run.log_metrics(metrics)
        run.log_artifact(saved, "stylized")
    return StyledPair(saved, metrics, run.run_id, job.vgg.name)


def colour_metrics(
    result: torch.Tensor, photo: torch.Tensor, styles: list[tuple[torch.Tensor, float]]
) -> dict[str, float]:
    """How the result's colours compare with the paintings' (and the photo's): ``colour_distance`` (Lab
    sliced Wasserstein to the paintings, weighted as blended), ``colour_distance_photo``, and the mean
    chroma of the result, the paintings and the photo (a pale result has a low ``chroma``)."""
    total = sum(w for _, w in styles)
    return {
        "colour_distance": sum(w * colour_distance(result, s) for s, w in styles) / total,
        "colour_distance_photo": colour_distance(result, photo),
        "chroma": chroma(result),
        "style_chroma": sum(w * chroma(s) for s, w in styles) / total,
        "photo_chroma": chroma(photo),
    }


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
        r = stylize_pair(p, job, content, at, ctx=ctx, progress=progress)
        m = r.metrics
        written.append(r.output)
        pairs[content.stem] = {k: round(v, 6) for k, v in m.items()}
        loss = f" (loss {m['start_total']:.3g} -> {m['final_total']:.3g})" if "final_total" in m else ""
        echo(f"{style} x {content.name} -> {r.output}{loss}")
    write_json(at.metrics / "stylize" / f"{style}.json",
               {"extractor": job.vgg.name, "method": p.style.method, "pairs": pairs})  # fmt: skip
    return written


PRINT_SIDE = 512  # `stylize-image`'s default long side (--size): a print, not the stages' thumbnail
REFINE_STEPS = 10  # loss evaluations at least at each scale above style.size (each costs (side / size)^2)


def stylize_image(
    p: Params,
    photo: Path,
    painting: Path,
    out: Path,
    at: Layout = Layout(),
    *,
    ctx: RunContext = RunContext(),
    progress: bool = True,
    size: int = PRINT_SIDE,
) -> StyledPair:
    """`ganops stylize-image`: one photo in one painting's style (Gatys): the stage's pair, for a job of one
    photo whose style is the painting (named by its file stem), written to ``out``.

    The result's long side is the photo's own, up to ``size`` (and ``style.max_side``, the input cap),
    reached coarse to fine from ``style.size`` (:func:`ganops.stylize.print_ladder`): ``style.steps`` loss
    evaluations there, :data:`REFINE_STEPS` (at least; ``style.steps`` / 4 when larger) at each doubling.
    """
    sp = p.style
    if size < 16:
        raise StageError(f"--size {size}: the long side must be at least 16 px")
    if sp.method != "gatys":
        raise StageError("stylize-image optimises one picture (style.method=gatys); a fast net is trained "
                         "per style by `ganops stylize --style NAME -S style.method=fast`")  # fmt: skip
    if out.suffix.lower() != ".png":
        raise StageError(f"{out}: the output is written as PNG; give a file name ending in .png")
    img = load_image(photo, sp.max_side)  # both images load before any work (the pair reads the photo again)
    job = StyleJob(painting.stem, [photo], [(load_image(painting, sp.max_side), 1.0)], _extractor(p))
    log.info("feature extractor: %s", job.vgg.name)
    target = min(size, max(img.shape[-2:]))
    ladder = print_ladder(min(sp.size, target), target, sp.steps, max(REFINE_STEPS, sp.steps // 4))
    return stylize_pair(p, job, photo, at, out=out, ctx=ctx, progress=progress, ladder=ladder)
