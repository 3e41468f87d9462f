"""The pipeline's stages as functions: read inputs, call the library, write outputs, log to MLflow.

One function per DVC stage, shared by the `ganops` CLI (what dvc.yaml calls) and, later, the Prefect
flows, so there is one implementation of each step. Paths hang off a project ``root`` (the cwd under DVC):
stage ``prepare`` -> ``data/prepared/``, ``train_gan`` -> ``models/gan/`` + ``metrics/train_gan*``, ...
Failures a user can fix raise :data:`USER_ERRORS`; their messages say what to do.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganops.config import Params, ParamsError
from ganops.data import DataError
from ganops.devices import DeviceError
from ganops.distributed import Place
from ganops.evaluate import EvaluationError
from ganops.models.style import StyleWeightsError
from ganops.stylize import StyleError
from ganops.tracking import RunContext, TrackingError

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage's inputs are missing or stale; the message names what to run."""


class Stopped(RuntimeError):
    """Training was stopped on request after writing a checkpoint."""


USER_ERRORS = (
    StageError,
    ParamsError,
    DataError,
    TrackingError,
    EvaluationError,
    StyleError,
    StyleWeightsError,
    DeviceError,
)


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, under the project root."""

    root: Path = Path(".")
    tracking_root: Path | None = None  # where mlflow.db lives by default (the project, even for a workspace)

    @property
    def tracking(self) -> Path:
        """``tracking_root``; else DVC's ``DVC_ROOT`` (queued experiments run in a temporary copy of the
        project, and must log to the project's store), else ``root``."""
        return Path(self.tracking_root or os.environ.get("DVC_ROOT") or self.root).resolve()

    @property
    def prepared(self) -> Path:
        return self.root / "data/prepared"

    @property
    def gan(self) -> Path:
        return self.root / "models/gan"

    @property
    def classifier(self) -> Path:
        return self.root / "models/classifier"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def stylized(self) -> Path:
        return self.root / "data/stylized"

    @property
    def style_models(self) -> Path:
        return self.root / "models/style"

    @property
    def sheet(self) -> Path:
        return self.root / "data/stylized_sheet.png"


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _prepared(at: Layout, p: Params):  # noqa: ANN202 - (images, labels, manifest)
    from ganops.data import load_prepared

    images, labels, man = load_prepared(at.prepared)
    if images.shape[-1] != p.data.image_size:
        raise StageError(f"{at.prepared} holds {images.shape[-1]}px images but data.image_size is "
                         f"{p.data.image_size}: run `ganops prepare` (or `dvc repro`) first")  # fmt: skip
    return images, labels, man


# ----------------------------------------------------------------------------- GAN stages


def prepare(p: Params, at: Layout = Layout()) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Stage `prepare`; returns (manifest, skipped-file report)."""
    from ganops.data import prepare as prepare_data
    from ganops.data import save_prepared

    d = prepare_data(p.data)
    return save_prepared(d, at.prepared), d.skipped


def train_gan(
    p: Params,
    at: Layout = Layout(),
    *,
    ctx: RunContext = RunContext(),
    progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
    place: Place = Place(),
) -> tuple[Any, str]:
    """Stage `train_gan` (resumes a compatible checkpoint); returns (TrainResult, MLflow run id).

    Resuming the checkpoint of a run that never finished continues that MLflow run; going on from a finished
    one (more steps, another experiment) opens a new run tagged ``resumed_from`` (see tracking.start_run).

    Data-parallel (``place.world_size > 1``, the process group joined by the caller): every rank calls this;
    rank 0 alone opens the MLflow run (tagged ``world_size`` and ``ddp_backend``), runs the monitor and writes
    the checkpoint, exports and metrics; other ranks return (result, "").

    Raises:
        Stopped: ``should_stop`` ended training early (a checkpoint was written).
    """
    from ganops.devices import resolve_device
    from ganops.tracking import log_to_run, start_run
    from ganops.train_gan import load_resumable, settings_for
    from ganops.train_gan import train_gan as train

    if p.gan.nproc > 1 and place.world_size == 1:
        raise StageError(f"gan.nproc is {p.gan.nproc} but this is one process: run `ganops train-gan` (it "
                         "launches the ranks through torchrun), or set gan.nproc: 1")  # fmt: skip
    images, labels, man = _prepared(at, p)
    device = resolve_device(p.base.device)
    if device.type == "cuda" and place.world_size > 1:  # one GPU per rank on each node
        device = type(device)("cuda", place.local_rank)
    seed, data_hash = p.base.seed, man["content_hash"]
    try:
        settings = settings_for(images, p.gan, seed, data_hash, labels, place.world_size)
    except ValueError as err:  # e.g. gan.conditional: true on unlabelled pictures
        raise StageError(str(err)) from None
    main = place.main
    prior = load_resumable(at.gan / "checkpoint.pt", settings) if p.gan.resume and main else None
    monitor = _monitor(p, at, images, labels, data_hash, device) if p.gan.monitor_every and main else None
    if main:
        log.info("training on %s: %d images, device %s, %d process(es)", man["source"], man["count"], device,
                 place.world_size)  # fmt: skip
    t0 = time.perf_counter()
    resume_id = (prior or {}).get("meta", {}).get("mlflow_run_id")
    opened = (
        start_run(p, ctx=ctx, data_hash=data_hash, resume_run_id=resume_id, root=at.tracking)
        if main
        else nullcontext(None)
    )
    with opened as run:
        if run is not None:
            log_to_run(
                run.run_id, {}, {"world_size": place.world_size, "ddp_backend": place.backend or "none"}
            )
        result = train(
            images, p.gan, at.gan, labels=labels, seed=seed, device=device, data_hash=data_hash,
            meta={"mlflow_run_id": run.run_id} if run else None,
            on_metrics=run.on_metrics if run else None, on_sample=run.on_sample if run else None,
            should_stop=should_stop, monitor=monitor, progress=progress, rank=place.rank,
            world_size=place.world_size,
        )  # fmt: skip
        if not result.completed:
            raise Stopped(
                f"stopped at step {result.step}; checkpoint in {result.checkpoint}: run again to resume"
            )
        if run is None or result.export is None:  # a rank other than 0: rank 0 writes the rest
            return result, ""
        final: dict[str, Any] = {k: v for k, v in result.history[-1].items() if k != "step"}
        final |= {
            "steps": result.step,
            "train_seconds": round(time.perf_counter() - t0, 2),
            **result.counters,
        }
        if result.monitor:
            last = result.monitor[-1]
            final |= {
                f"monitor_{k}": v for k, v in last.items() if k != "step" and isinstance(v, int | float)
            }
            best = json.loads((result.best / "config.json").read_text()) if result.best else {}
            final |= {"best_step": best.get("step", 0), "best_metric": p.gan.best_metric}
        _write_json(at.metrics / "train_gan.json", final)
        with open(at.metrics / "train_gan_losses.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(result.history[0]))
            w.writeheader()
            for row in result.history:
                w.writerow({**row, "step": int(row["step"])})
        run.log_metrics({"train_seconds": final["train_seconds"], "resumed_from_step": result.resumed_from})
        run.log_artifacts(result.export, "checkpoint")
        if result.best is not None:
            run.log_artifacts(result.best, "checkpoint_best")
    return result, run.run_id


def _classifier_for(at: Layout, data_hash: str) -> Any:
    """The saved domain classifier, if it was trained on the data with ``data_hash``."""
    from ganops.classifier import load_classifier

    clf = load_classifier(at.classifier)
    if clf.info.get("data_hash") != data_hash:
        raise StageError(
            f"{at.classifier} was trained on other data: run `ganops classifier` (or `dvc repro`) first"
        )
    return clf


def _monitor(p: Params, at: Layout, images: Any, labels: Any, data_hash: str, device: Any) -> Any:
    """The in-training quality monitor, on the domain classifier of this data."""
    from ganops.evaluate import Monitor

    if not (at.classifier / "config.json").is_file():
        raise StageError("gan.monitor_every needs the domain classifier: run `ganops classifier` first "
                         "(dvc repro runs it before train_gan), or set gan.monitor_every: 0")  # fmt: skip
    clf = _classifier_for(at, data_hash)
    return Monitor(
        images, labels, clf, p.evaluate, n=p.gan.monitor_samples, seed=p.base.seed + 7, device=device
    )


def classifier(p: Params, at: Layout = Layout(), *, progress: bool = True) -> Any:
    """Stage `classifier`; returns the Classifier (also saved, with metrics/classifier.json)."""
    from ganops.classifier import save_classifier, train_classifier
    from ganops.devices import resolve_device

    images, labels, man = _prepared(at, p)
    c = train_classifier(images, labels, p.classifier, seed=p.base.seed, data_hash=man["content_hash"],
                         device=resolve_device(p.base.device), progress=progress)  # fmt: skip
    save_classifier(c, at.classifier)
    _write_json(at.metrics / "classifier.json", {"extractor": c.extractor, **c.info})
    return c


def evaluate(p: Params, at: Layout = Layout()) -> dict[str, Any]:
    """Stage `evaluate`; returns the metrics (also metrics/evaluate.json and the training run)."""
    from ganops.classifier import to_float
    from ganops.devices import resolve_device
    from ganops.evaluate import asked_classes, evaluate_samples, generate, inception_fid
    from ganops.models.gan import load_generator
    from ganops.tracking import log_to_run, require_run, use_store

    export = at.gan / p.evaluate.export
    for needed, cmd in (
        (
            export / "generator.pt",
            "ganops train-gan" + (" with gan.monitor_every > 0" if p.evaluate.export == "best" else ""),
        ),
        (at.classifier / "config.json", "ganops classifier"),
    ):
        if not needed.is_file():
            raise StageError(f"{needed} is missing: run `{cmd}` (or `dvc repro`) first")
    images, labels, man = _prepared(at, p)
    device = resolve_device(p.base.device)
    use_store(at.tracking)
    gen_config = json.loads((export / "config.json").read_text())
    run_id = require_run(gen_config.get("meta", {}).get("mlflow_run_id"), str(export))
    clf = _classifier_for(at, man["content_hash"])
    if gen_config["settings"]["data_hash"] != man["content_hash"]:
        raise StageError(
            f"{export} was trained on other data than {at.prepared}: run `ganops train-gan` first"
        )
    G = load_generator(export, device=device)
    n = p.evaluate.n_samples or len(images) // 2
    fake = generate(G, n, seed=p.base.seed + 1, batch_size=p.evaluate.batch_size, device=device)
    asked = asked_classes(G, n, seed=p.base.seed + 1, n_classes=clf.net.cfg.n_classes)
    m = evaluate_samples(images, labels, fake, clf, p.evaluate, seed=p.base.seed, fake_labels=asked)
    if p.evaluate.inception:
        m["inception_fid"] = inception_fid(to_float(images), fake)
    m |= {"dataset_hash": man["content_hash"], "run_id": run_id, "export": p.evaluate.export,
          "step": gen_config.get("step"), "ema": gen_config.get("ema", False)}  # fmt: skip
    _write_json(at.metrics / "evaluate.json", m)
    numbers = {k: float(v) for k, v in m.items() if isinstance(v, int | float)}
    log_to_run(run_id, numbers, {"extractor": m["extractor"], "mode_collapse": m.get("mode_collapse", "n/a")})
    return m


def promote(p: Params, at: Layout = Layout()) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """Stage `promote`; returns (Decision, candidate facts, champion facts before the decision).

    Compare-and-set: registering, reading the champion, deciding and moving the alias all happen while
    this process holds the registry's promotion lock (tracking.registry_lock), so two concurrent promotions
    are serialised and the second one decides against whatever the first one left as champion.
    """
    from ganops.promote import decide
    from ganops.tracking import (
        champion,
        log_to_run,
        register_generator,
        registry_lock,
        require_run,
        run_params,
        set_alias,
        use_store,
    )

    path = at.metrics / "evaluate.json"
    if not path.is_file():
        raise StageError(f"{path} is missing: run `ganops evaluate` (or `dvc repro`) first")
    m = json.loads(path.read_text())
    name, alias = p.promote.model_name, p.promote.alias
    use_store(at.tracking)
    run_id = require_run(m.get("run_id"), str(path))
    # what the candidate was trained on, from its own run (not from today's params)
    facts = m | {"data_limit": int(run_params(run_id).get("data.limit", "0"))}
    with registry_lock(name):
        cand = register_generator(
            run_id, name, facts, "checkpoint_best" if m.get("export") == "best" else "checkpoint"
        )
        before = champion(name, alias)
        try:
            decision = decide(cand, before, p.promote.metric, dry_run=p.promote.dry_run)
        except ValueError as err:
            raise StageError(str(err)) from None
        if decision.promote:
            set_alias(name, alias, cand["version"])
    log_to_run(run_id, {}, {"promote_decision": "promoted" if decision.promote else "kept champion",
                            "promote_reason": decision.reason})  # fmt: skip
    _write_json(at.metrics / "promote.json", decision.to_dict())
    return decision, cand, before


# ----------------------------------------------------------------------------- style stages


def _style_files(style_dir: Path, blend: dict[str, float]) -> list[tuple[Path, float]]:
    from ganops.stylize import list_images

    files = {f.stem: f for f in list_images(style_dir)}
    missing = [stem for stem in blend if stem not in files]
    if missing:
        raise StyleError(
            f"style image(s) {missing} not in {style_dir}/ (it holds: {sorted(files) or 'nothing'})"
        )
    return [(files[stem], w) for stem, w in blend.items()]


@dataclass
class StyleJob:
    """What every pair of one style needs: images, the feature extractor, the fast net if any."""

    style: str
    contents: list[Path]
    styles: list[tuple[Any, float]]  # [(image (1, 3, H, W), blend weight)]
    vgg: Any
    net: Any = None


def stylize_setup(p: Params, style: str, at: Layout = Layout(), *, ctx: RunContext = RunContext(),
                  progress: bool = True, echo: Callable[[str], None] = log.info) -> StyleJob:  # fmt: skip
    """Validate and load one style's inputs, clear its outputs, train + register its fast net if asked."""
    from ganops.checkpoint import atomic_write
    from ganops.models.style import build_vgg
    from ganops.stylize import list_images, load_image, train_fast
    from ganops.tracking import register_folder, style_run

    sp = p.style
    if style not in sp.styles:
        raise StageError(f"unknown style {style!r}; style.styles defines: {', '.join(sp.styles)}")
    contents = list_images(at.root / sp.content_dir)
    if not contents:
        raise StyleError(f"no images in {sp.content_dir}/")
    for f in contents:  # every photo must load before any work starts
        load_image(f, sp.max_side)
    styles = [
        (load_image(f, sp.max_side), w) for f, w in _style_files(at.root / sp.style_dir, sp.styles[style])
    ]
    vgg = build_vgg(sp.weights, [sp.content_layer, *sp.style_layers], seed=p.base.seed)
    log.info("feature extractor: %s", vgg.name)  # never hide the offline fallback
    out, models = at.stylized / style, at.style_models / style
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    job = StyleJob(style, contents, styles, vgg)
    if sp.method == "fast":
        imgs = [load_image(f, sp.max_side) for f in contents]
        with style_run(p, ctx=ctx, style=style, content="(training)", extractor=vgg.name,
                       root=at.tracking) as run:  # fmt: skip
            job.net = train_fast(
                imgs, styles, vgg, sp, seed=p.base.seed, progress=progress, on_metrics=run.on_metrics
            )
            atomic_write(models / "transformer.pt", job.net.state_dict())
            atomic_write(models / "config.json", json.dumps({"method": "fast", "model": job.net.cfg.to_dict(),
                         "style": style, "blend": sp.styles[style], "extractor": vgg.name,
                         "precision": job.net.precision}, indent=2))  # fmt: skip
            run.log_artifacts(models, "checkpoint")
            version = register_folder(run.run_id, "checkpoint", f"ganops-style-{style}", "champion",
                                      {"style": style, "extractor": vgg.name})  # fmt: skip
        echo(f"fast net for {style} -> {models}/ (registered ganops-style-{style} v{version})")
    else:
        atomic_write(models / "config.json", json.dumps({"method": "gatys", "style": style, "blend": sp.styles[style],
                     "extractor": vgg.name}, indent=2))  # fmt: skip
    return job


def style_job(p: Params, style: str, at: Layout = Layout()) -> StyleJob:
    """The :class:`StyleJob` that :func:`stylize_setup` made for ``style``, rebuilt from params and files
    alone, with no side effect: for a worker in another process (Prefect on Dask), which receives paths and
    params, never tensors or the feature extractor. A fast net is loaded from what setup saved."""
    import torch

    from ganops.models.style import TransformerConfig, TransformerNet, build_vgg
    from ganops.stylize import list_images, load_image

    sp = p.style
    if style not in sp.styles:
        raise StageError(f"unknown style {style!r}; style.styles defines: {', '.join(sp.styles)}")
    contents = list_images(at.root / sp.content_dir)
    styles = [
        (load_image(f, sp.max_side), w) for f, w in _style_files(at.root / sp.style_dir, sp.styles[style])
    ]
    vgg = build_vgg(sp.weights, [sp.content_layer, *sp.style_layers], seed=p.base.seed)
    job = StyleJob(style, contents, styles, vgg)
    if sp.method == "fast":
        models = at.style_models / style
        cfg = json.loads((models / "config.json").read_text())
        net = TransformerNet(TransformerConfig(**cfg["model"]))
        net.load_state_dict(torch.load(models / "transformer.pt", map_location="cpu", weights_only=True))
        net.precision = cfg.get("precision", "fp32")
        job.net = net.eval()
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
    from ganops.stylize import fast_stylize, gatys, load_image, save_image
    from ganops.tracking import style_run

    img = load_image(content, p.style.max_side)
    with style_run(p, ctx=ctx, style=job.style, content=content.stem, extractor=job.vgg.name,
                   root=at.tracking) as run:  # fmt: skip
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if job.net is not None:
            result = fast_stylize(job.net, img)
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
    _write_json(at.metrics / "stylize" / f"{style}.json",
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
    from ganops.stylize import list_images, load_image

    sp = p.style
    try:
        files = list_images(at.root / sp.content_dir)
        contents = [(f.stem, load_image(f, 512)) for f in files]
        columns = []
        for s, blend in sp.styles.items():
            imgs = [(f.stem, load_image(f, 512), w) for f, w in _style_files(at.root / sp.style_dir, blend)]
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
