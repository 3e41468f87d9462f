"""`ganops <stage>`: the commands dvc.yaml calls. Each reads params once, calls the library, writes outputs.

Paths are fixed relative to the project root (the cwd, as under DVC): one name per step —
stage ``prepare`` -> ``data/prepared/``; stage ``train_gan`` -> ``models/gan/`` and ``metrics/train_gan*``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ganops.config import Params, ParamsError, load_params

PREPARED = Path("data/prepared")
GAN_OUT = Path("models/gan")
METRICS = Path("metrics")

app = typer.Typer(
    help="ganops: train GANs on your own pictures, reproducibly. Each command is one pipeline stage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = logging.getLogger("ganops")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameters file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a parameter, e.g. -S gan.lr_d=1e-4 (repeatable; validated)."),
]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


def _fail(msg: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _params(path: Path, overrides: list[str] | None) -> Params:
    try:
        return load_params(path, overrides or [])
    except ParamsError as err:
        _fail(str(err))


def _stop_on_signal() -> Callable[[int], bool]:
    """First Ctrl-C / SIGTERM: finish the step, checkpoint, exit. Second Ctrl-C: abort at once."""
    flag = {"stop": False}

    def handler(signum: int, frame: object) -> None:
        if flag["stop"]:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        flag["stop"] = True
        print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda step: flag["stop"]


@app.command()
def prepare(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage `prepare`: read the configured data source into data/prepared/ (tensors, manifest, report)."""
    from ganops.data import DataError, save_prepared
    from ganops.data import prepare as prepare_data

    p = _params(params, set_)
    try:
        d = prepare_data(p.data)
    except DataError as err:
        _fail(str(err))
    man = save_prepared(d, PREPARED)
    typer.echo(
        f"prepared {man['count']} images ({man['channels']}x{man['image_size']}x{man['image_size']}, "
        f"source {man['source']}, {len(man['classes']) or 'no'} classes) -> {PREPARED}/"
    )
    if d.skipped:
        typer.echo(f"skipped {len(d.skipped)} file(s); reasons in {PREPARED / 'report.json'}:")
        for row in d.skipped[:10]:
            typer.echo(f"  {row['file']}: {row['reason']}")
        if len(d.skipped) > 10:
            typer.echo(f"  ... and {len(d.skipped) - 10} more")


def _write_train_metrics(history: list[dict[str, float]], final: dict[str, float]) -> None:
    METRICS.mkdir(exist_ok=True)
    (METRICS / "train_gan.json").write_text(json.dumps(final, indent=2) + "\n")
    with open(METRICS / "train_gan_losses.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s"])
        w.writeheader()
        for row in history:
            w.writerow({**row, "step": int(row["step"])})


@app.command("train-gan")
def train_gan_cmd(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Stage `train_gan`: train the DCGAN on data/prepared/, log to MLflow, export models/gan/final/."""
    from ganops.data import DataError, load_prepared
    from ganops.devices import resolve_device
    from ganops.tracking import TrackingError, start_run
    from ganops.train_gan import load_resumable, settings_for, train_gan

    p = _params(params, set_)
    try:
        images, _, man = load_prepared(PREPARED)
        device = resolve_device(p.base.device)
    except (DataError, RuntimeError) as err:
        _fail(str(err))
    if images.shape[-1] != p.data.image_size:
        _fail(f"{PREPARED} holds {images.shape[-1]}px images but data.image_size is {p.data.image_size}: "
              "run `ganops prepare` (or `dvc repro`) first")  # fmt: skip
    seed, data_hash = p.base.seed, man["content_hash"]
    prior = (
        load_resumable(GAN_OUT / "checkpoint.pt", settings_for(images, p.gan, seed, data_hash))
        if p.gan.resume
        else None
    )
    entry = "dvc" if os.environ.get("DVC_STAGE") else os.environ.get("GANOPS_ENTRY_POINT", "cli")
    log.info("training on %s: %d images, device %s", man["source"], man["count"], device)
    t0 = time.perf_counter()
    try:
        with start_run(
            p,
            entry_point=entry,
            data_hash=data_hash,
            resume_run_id=(prior or {}).get("meta", {}).get("mlflow_run_id"),
        ) as run:
            result = train_gan(
                images, p.gan, GAN_OUT, seed=seed, device=device, data_hash=data_hash,
                meta={"mlflow_run_id": run.run_id}, on_metrics=run.on_metrics, on_sample=run.on_sample,
                should_stop=_stop_on_signal(), progress=progress,
            )  # fmt: skip
            if not result.completed or result.export is None:
                _fail(
                    f"stopped at step {result.step}; checkpoint in {result.checkpoint}: run again to resume",
                    130,
                )
            final = {k: v for k, v in result.history[-1].items() if k != "step"} | {
                "steps": result.step,
                "train_seconds": round(time.perf_counter() - t0, 2),
            }
            _write_train_metrics(result.history, final)
            run.log_metrics({"train_seconds": final["train_seconds"]})
            run.log_artifacts(result.export, "checkpoint")
    except TrackingError as err:
        _fail(str(err))
    typer.echo(f"trained {result.step} steps -> {result.export}/ (MLflow run {run.run_id})")
    typer.echo(f"final sample grid: {result.export / 'samples.png'}")


CLASSIFIER_OUT = Path("models/classifier")


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


@app.command()
def classifier(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Stage `classifier`: train the domain classifier on data/prepared/ -> models/classifier/."""
    from ganops.classifier import save_classifier, train_classifier
    from ganops.data import DataError, load_prepared
    from ganops.devices import resolve_device

    p = _params(params, set_)
    try:
        images, labels, man = load_prepared(PREPARED)
        device = resolve_device(p.base.device)
    except (DataError, RuntimeError) as err:
        _fail(str(err))
    c = train_classifier(images, labels, p.classifier, seed=p.base.seed, data_hash=man["content_hash"],
                         device=device, progress=progress)  # fmt: skip
    save_classifier(c, CLASSIFIER_OUT)
    _write_json(METRICS / "classifier.json", {"extractor": c.extractor, **c.info})
    acc = c.info.get("holdout_accuracy")
    typer.echo(f"{c.extractor} -> {CLASSIFIER_OUT}/" + (f" (held-out accuracy {acc:.3f})" if acc is not None else
               " (unlabelled data: untrained random-feature extractor)"))  # fmt: skip


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage `evaluate`: score models/gan/final/ against the real data -> metrics/evaluate.json + MLflow."""
    from ganops.classifier import load_classifier, to_float
    from ganops.data import DataError, load_prepared
    from ganops.devices import resolve_device
    from ganops.evaluate import EvaluationError, evaluate_samples, generate, inception_fid, summary_line
    from ganops.models.gan import load_generator
    from ganops.tracking import TrackingError, log_to_run, require_run, use_store

    p = _params(params, set_)
    export = GAN_OUT / "final"
    for needed, cmd in (
        (export / "generator.pt", "ganops train-gan"),
        (CLASSIFIER_OUT / "config.json", "ganops classifier"),
    ):
        if not needed.is_file():
            _fail(f"{needed} is missing: run `{cmd}` (or `dvc repro`) first")
    try:
        images, labels, man = load_prepared(PREPARED)
        device = resolve_device(p.base.device)
        use_store()
        gen_config = json.loads((export / "config.json").read_text())
        run_id = require_run(gen_config.get("meta", {}).get("mlflow_run_id"), str(export))
    except (DataError, RuntimeError) as err:
        _fail(str(err))
    clf = load_classifier(CLASSIFIER_OUT, device="cpu")
    if clf.info.get("data_hash") != man["content_hash"]:
        _fail(f"{CLASSIFIER_OUT} was trained on other data: run `ganops classifier` (or `dvc repro`) first")
    if gen_config["settings"]["data_hash"] != man["content_hash"]:
        _fail(
            f"{export} was trained on other data than {PREPARED}: run `ganops train-gan` (or `dvc repro`) first"
        )
    G = load_generator(export, device=device)
    n = p.evaluate.n_samples or len(images) // 2
    fake = generate(G, n, seed=p.base.seed + 1, batch_size=p.evaluate.batch_size, device=device)
    m = evaluate_samples(images, labels, fake, clf, p.evaluate, seed=p.base.seed)
    if p.evaluate.inception:
        try:
            m["inception_fid"] = inception_fid(to_float(images), fake)
        except EvaluationError as err:
            _fail(str(err))
    m |= {"dataset_hash": man["content_hash"], "run_id": run_id}
    _write_json(METRICS / "evaluate.json", m)
    numbers = {k: float(v) for k, v in m.items() if isinstance(v, int | float)}
    tags = {"extractor": m["extractor"], "mode_collapse": m.get("mode_collapse", "n/a")}
    try:
        log_to_run(run_id, numbers, tags)
    except TrackingError as err:
        _fail(str(err))
    typer.echo(summary_line(m))
    if m.get("mode_collapse"):
        typer.echo("warning: mode collapse flagged (coverage below the class count or KL above "
                   f"evaluate.kl_threshold={p.evaluate.kl_threshold})", err=True)  # fmt: skip


@app.command()
def promote(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage `promote`: register the evaluated generator; move the alias if it beats the champion."""
    from ganops.promote import decide
    from ganops.tracking import (
        TrackingError,
        champion,
        log_to_run,
        register_generator,
        require_run,
        set_alias,
        use_store,
    )

    p = _params(params, set_)
    if not (METRICS / "evaluate.json").is_file():
        _fail(f"{METRICS / 'evaluate.json'} is missing: run `ganops evaluate` (or `dvc repro`) first")
    m = json.loads((METRICS / "evaluate.json").read_text())
    name, alias = p.promote.model_name, p.promote.alias
    try:
        use_store()
        run_id = require_run(m.get("run_id"), str(METRICS / "evaluate.json"))
        before = champion(name, alias)
        cand = register_generator(run_id, name, m)
        decision = decide(cand, before, p.promote.metric)
        if decision.promote:
            set_alias(name, alias, cand["version"])
        log_to_run(run_id, {}, {"promote_decision": "promoted" if decision.promote else "kept champion",
                                "promote_reason": decision.reason})  # fmt: skip
    except (TrackingError, ValueError) as err:
        _fail(str(err))
    _write_json(METRICS / "promote.json", decision.to_dict())
    verdict = f"{name} v{cand['version']} is now @{alias}" if decision.promote else f"@{alias} stays " + (
        f"v{before['version']}" if before else "unset")  # fmt: skip
    typer.echo(f"{verdict}: {decision.reason}")


@app.command("champion")
def champion_cmd(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Show the generator that serving loads (promote.model_name@promote.alias); exit 2 when there is none."""
    from ganops.tracking import TrackingError, champion, use_store

    p = _params(params, set_)
    name, alias = p.promote.model_name, p.promote.alias
    try:
        uri = use_store()
        facts = champion(name, alias)
    except TrackingError as err:
        _fail(str(err))
    if facts is None:
        _fail(f"no model {name}@{alias} in {uri}: run the pipeline (`dvc repro` or `make demo`) first")
    numbers = ", ".join(f"{k} {facts[k]:.4g}" for k in ("domain_fid", "coverage", "kl") if k in facts)
    typer.echo(f"{name}@{alias} = v{facts['version']} (run {facts['run_id']}): {numbers}")


STYLE_INPUTS = Path("data/style")
STYLIZED = Path("data/stylized")
STYLE_MODELS = Path("models/style")
SHEET = Path("data/stylized_sheet.png")


@app.command("style-inputs")
def style_inputs_cmd() -> None:
    """Stage `style_inputs`: write the offline default content photos and style textures to data/style/."""
    from ganops.style_inputs import write_defaults

    w = write_defaults(STYLE_INPUTS)
    typer.echo(f"content {', '.join(w['content'])}; styles {', '.join(w['styles'])} -> {STYLE_INPUTS}/")


def _style_files(style_dir: Path, blend: dict[str, float]) -> list[tuple[Path, float]]:
    from ganops.stylize import StyleError, list_images

    files = {p.stem: p for p in list_images(style_dir)}
    missing = [stem for stem in blend if stem not in files]
    if missing:
        raise StyleError(
            f"style image(s) {missing} not in {style_dir}/ (it holds: {sorted(files) or 'nothing'})"
        )
    return [(files[stem], w) for stem, w in blend.items()]


@app.command()
def stylize(
    style: Annotated[str, typer.Option(help="Which entry of style.styles to apply.")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Stage `stylize@<style>`: style every image of style.content_dir -> data/stylized/<style>/ (+ MLflow)."""
    from ganops.checkpoint import atomic_write
    from ganops.models.style import StyleWeightsError, build_vgg
    from ganops.stylize import (
        StyleError,
        fast_stylize,
        gatys,
        list_images,
        load_image,
        save_image,
        train_fast,
    )
    from ganops.tracking import TrackingError, register_folder, style_run

    p = _params(params, set_)
    sp = p.style
    if style not in sp.styles:
        _fail(f"unknown style {style!r}; style.styles defines: {', '.join(sp.styles)}")
    try:
        contents = list_images(sp.content_dir)
        if not contents:
            raise StyleError(f"no images in {sp.content_dir}/")
        styles = [
            (load_image(f, sp.max_side), w) for f, w in _style_files(Path(sp.style_dir), sp.styles[style])
        ]
        content_imgs = [load_image(f, sp.max_side) for f in contents]
        vgg = build_vgg(sp.weights, [sp.content_layer, *sp.style_layers], seed=p.base.seed)
    except (StyleError, StyleWeightsError, ValueError) as err:
        _fail(str(err))
    log.info("feature extractor: %s", vgg.name)  # never hide the offline fallback
    out, models = STYLIZED / style, STYLE_MODELS / style
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    try:
        net = None
        if sp.method == "fast":
            with style_run(p, style=style, content="(training)", extractor=vgg.name) as run:
                net = train_fast(content_imgs, styles, vgg, sp, seed=p.base.seed, progress=progress,
                                 on_metrics=run.on_metrics)  # fmt: skip
                atomic_write(models / "transformer.pt", net.state_dict())
                atomic_write(models / "config.json", json.dumps({"method": "fast", "model": net.cfg.to_dict(),
                             "style": style, "blend": sp.styles[style], "extractor": vgg.name}, indent=2))  # fmt: skip
                run.log_artifacts(models, "checkpoint")
                version = register_folder(run.run_id, "checkpoint", f"ganops-style-{style}", "champion",
                                          {"style": style, "extractor": vgg.name})  # fmt: skip
            typer.echo(f"fast net for {style} -> {models}/ (registered ganops-style-{style} v{version})")
        else:
            atomic_write(models / "config.json", json.dumps({"method": "gatys", "style": style}, indent=2))
        for path, img in zip(contents, content_imgs, strict=True):
            with style_run(p, style=style, content=path.stem, extractor=vgg.name) as run:
                t0 = time.perf_counter()
                if net is not None:
                    result, metrics = fast_stylize(net, img), {}
                else:
                    r = gatys(img, styles, vgg, sp, seed=p.base.seed, progress=progress)
                    result = r.image
                    metrics = {f"final_{k}": v for k, v in r.losses.items()} | {"start_total": r.start_total,
                               "evaluations": float(r.evaluations)}  # fmt: skip
                metrics["seconds"] = time.perf_counter() - t0
                saved = save_image(result, out / f"{path.stem}.png")
                run.log_metrics(metrics)
                run.log_artifact(saved, "stylized")
            typer.echo(f"{style} x {path.name} -> {saved}" + (f" (loss {metrics['start_total']:.3g} -> "
                       f"{metrics['final_total']:.3g})" if "final_total" in metrics else ""))  # fmt: skip
    except TrackingError as err:
        _fail(str(err))


@app.command("stylize-sheet")
def stylize_sheet(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage `stylize_sheet`: one PNG, content images on top and a row per style -> data/stylized_sheet.png."""
    from ganops.stylize import StyleError, contact_sheet, list_images, load_image, save_image

    p = _params(params, set_)
    try:
        contents = list_images(p.style.content_dir)
        imgs = [load_image(f, 512) for f in contents]
        rows = {
            s: [load_image(STYLIZED / s / f"{f.stem}.png", 512) for f in contents] for s in p.style.styles
        }
    except StyleError as err:
        _fail(f"{err}: run `dvc repro` (or `ganops stylize --style ...`) first")
    save_image(contact_sheet(imgs, rows), SHEET)
    typer.echo(f"contact sheet ({len(contents)} contents x {len(rows)} styles) -> {SHEET}")


@app.command()
def summary() -> None:
    """Print where the pipeline's results are and how to look at them."""
    from ganops.tracking import tracking_uri

    grid = GAN_OUT / "final" / "samples.png"
    lines = ["", "ganops results:"]
    if (PREPARED / "manifest.json").is_file():
        man = json.loads((PREPARED / "manifest.json").read_text())
        lines.append(
            f"  data        {PREPARED}/  ({man['count']} images from {man['source']}, hash {man['content_hash'][:12]})"
        )
    if grid.is_file():
        lines.append(f"  samples     {grid}  (grids per step in {GAN_OUT / 'samples'}/)")
        lines.append(f"  generator   {GAN_OUT / 'final'}/  (weights + config.json)")
    if (METRICS / "evaluate.json").is_file():
        from ganops.evaluate import summary_line

        lines.append(
            f"  quality     {METRICS / 'evaluate.json'}  ({summary_line(json.loads((METRICS / 'evaluate.json').read_text()))})"
        )
    if (METRICS / "promote.json").is_file():
        d = json.loads((METRICS / "promote.json").read_text())
        lines.append(
            f"  promotion   {METRICS / 'promote.json'}  ({'promoted' if d['promote'] else 'kept champion'}: {d['reason']})"
        )
    if (METRICS / "train_gan.json").is_file():
        m = json.loads((METRICS / "train_gan.json").read_text())
        lines.append(f"  metrics     {METRICS / 'train_gan.json'}  (loss_d {m['loss_d']:.3f}, loss_g {m['loss_g']:.3f}, "
                     f"{m['steps']} steps in {m['train_seconds']:.0f} s)")  # fmt: skip
    lines += [
        "",
        "look at them:",
        f"  mlflow ui --backend-store-uri {tracking_uri()}     # runs, loss curves, sample grids",
        "  dvc metrics show        # final losses",
        "  dvc plots show          # loss curves as HTML",
        "  dvc exp run -S gan.lr_d=0.0001 && dvc exp show     # a new experiment, compared",
        "",
        "serve the champion:",
        "  make serve              # then open http://127.0.0.1:3000/ui/",
    ]
    typer.echo("\n".join(lines))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
