"""`ganops <stage>`: the commands dvc.yaml calls. Each reads params once and runs one function of
``ganops.stages`` (where the paths and the work live), turning user errors into a message and exit 2.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from ganops import stages
from ganops.config import Params, ParamsError, load_params
from ganops.tracking import RunContext

AT = stages.Layout()  # the project's paths, relative to the cwd (as under DVC)
T = TypeVar("T")

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


@contextmanager
def _stop_on_signal() -> Iterator[Callable[[int], bool]]:
    """First Ctrl-C / SIGTERM: finish the step, checkpoint, exit. Second Ctrl-C: abort at once.

    The previous handlers come back when the command ends (an in-process caller keeps its own).
    """
    flag = {"stop": False}
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        if flag["stop"]:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        flag["stop"] = True
        print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    for sig in before:
        signal.signal(sig, handler)
    try:
        yield lambda step: flag["stop"]
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def _run(fn: Callable[[], T]) -> T:
    """Run a stage; a user-fixable error becomes ``error: <message>`` and exit 2 (Ctrl-C stop: 130)."""
    from ganops.stages import USER_ERRORS, Stopped

    try:
        return fn()
    except Stopped as err:
        _fail(str(err), 130)
    except USER_ERRORS as err:
        _fail(str(err))
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # every write is atomic: what was written before (the last checkpoint too) is intact
        _fail(f"no space left on the device writing {err.filename or 'a file'}: free some space and run the "
              "command again (every file written before is intact; training resumes from its last checkpoint)")  # fmt: skip


Progress = Annotated[bool, typer.Option(help="Show progress bars.")]


def _context() -> RunContext:
    """Who runs this command: DVC tells its stages through their environment (``DVC_STAGE``, and
    ``DVC_EXP_NAME`` in an experiment); read here, at the edge, and passed down as a value."""
    return RunContext(
        entry_point="dvc" if os.environ.get("DVC_STAGE") else "cli",
        dvc_exp_name=os.environ.get("DVC_EXP_NAME") or None,
    )


@app.command()
def prepare(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage `prepare`: read the configured data source into data/prepared/ (tensors, manifest, report)."""
    p = _params(params, set_)
    man, skipped = _run(lambda: stages.prepare(p))
    typer.echo(
        f"prepared {man['count']} images ({man['channels']}x{man['image_size']}x{man['image_size']}, "
        f"source {man['source']}, {len(man['classes']) or 'no'} classes) -> {AT.prepared}/"
    )
    if skipped:
        typer.echo(f"skipped {len(skipped)} file(s); reasons in {AT.prepared / 'report.json'}:")
        for row in skipped[:10]:
            typer.echo(f"  {row['file']}: {row['reason']}")
        if len(skipped) > 10:
            typer.echo(f"  ... and {len(skipped) - 10} more")


@app.command("train-gan")
def train_gan_cmd(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    progress: Progress = True,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1, help="Train data-parallel in N processes on this machine (torchrun); default gan.nproc."
        ),
    ] = None,
) -> None:
    """Stage `train_gan`: train the DCGAN on data/prepared/, log to MLflow, export models/gan/final/.

    With ``--nproc N`` (or ``gan.nproc: N``) it re-runs itself as N ranks through ``torchrun --standalone``;
    under an outer ``torchrun`` (several nodes) it is one rank of the run.
    """
    from ganops import distributed
    from ganops.devices import resolve_device

    p = _params(params, set_)
    n = nproc or p.gan.nproc
    if n > 1 and not distributed.launched():
        _launch_ranks(n, params, set_, progress)
    if distributed.launched():
        place, _ = _run(lambda: distributed.init(resolve_device(p.base.device)))
        if p.gan.nproc != place.world_size:  # the logged params say how many ranks there were
            p = _params(params, [*(set_ or []), f"gan.nproc={place.world_size}"])
        if not place.main:
            logging.getLogger("ganops").setLevel(logging.WARNING)  # rank 0 tells the story
    else:
        place = distributed.Place()
    with _stop_on_signal() as stop:
        result, run_id = _run(
            lambda: stages.train_gan(p, ctx=_context(), progress=progress, should_stop=stop, place=place)
        )
    # Success only: a rank that failed just exits, and torchrun stops the others (a barrier would hang).
    if place.world_size > 1:
        distributed.finish()
    if place.main and result.export is not None:
        typer.echo(f"trained {result.step} steps -> {result.export}/ (MLflow run {run_id})")
        typer.echo(f"final sample grid: {result.export / 'samples.png'}")


def _launch_ranks(n: int, params: Path, set_: list[str] | None, progress: bool) -> NoReturn:
    """Run this command again as ``n`` ranks under ``torchrun --standalone``; exit with its status.

    One thread per rank (``OMP_NUM_THREADS=1`` unless set): the ranks share the cores instead of fighting
    over them. Ctrl-C reaches every rank from the terminal; this process only waits for torchrun.
    """
    import subprocess

    from ganops.distributed import torchrun_argv

    # (not --nproc: torchrun's own parser would take it for an abbreviation of its --nproc-per-node)
    argv = ["train-gan", "--params", str(params), "--progress" if progress else "--no-progress"]
    for item in [*(set_ or []), f"gan.nproc={n}"]:
        argv += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    typer.echo(f"launching {n} training processes: torchrun --standalone --nproc_per_node={n}", err=True)
    proc = subprocess.Popen(torchrun_argv(n, argv), env=env)
    while True:
        try:
            raise typer.Exit(proc.wait())
        except KeyboardInterrupt:
            continue  # the ranks got it too: wait for their checkpoint and exit code


@app.command()
def classifier(
    params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, progress: Progress = True
) -> None:
    """Stage `classifier`: train the domain classifier on data/prepared/ -> models/classifier/."""
    p = _params(params, set_)
    c = _run(lambda: stages.classifier(p, progress=progress))
    acc = c.info.get("holdout_accuracy")
    typer.echo(f"{c.extractor} -> {AT.classifier}/" + (f" (held-out accuracy {acc:.3f})" if acc is not None else
               " (unlabelled data: untrained random-feature extractor)"))  # fmt: skip


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage `evaluate`: score models/gan/final/ against the real data -> metrics/evaluate.json + MLflow."""
    from ganops.evaluate import summary_line

    p = _params(params, set_)
    m = _run(lambda: stages.evaluate(p))
    typer.echo(summary_line(m))
    if m.get("mode_collapse"):
        typer.echo("warning: mode collapse flagged (coverage below the class count or KL above "
                   f"evaluate.kl_threshold={p.evaluate.kl_threshold})", err=True)  # fmt: skip


@app.command()
def promote(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage `promote`: register the evaluated generator; move the alias if it beats the champion."""
    p = _params(params, set_)
    decision, cand, before = _run(lambda: stages.promote(p))
    name, alias = p.promote.model_name, p.promote.alias
    verdict = f"{name} v{cand['version']} is now @{alias}" if decision.promote else f"@{alias} stays " + (
        f"v{before['version']}" if before else "unset")  # fmt: skip
    typer.echo(f"{verdict}: {decision.reason}")


@app.command("champion")
def champion_cmd(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Show the generator that serving loads (promote.model_name@promote.alias); exit 2 when there is none."""
    from ganops.tracking import champion, use_store

    p = _params(params, set_)
    name, alias = p.promote.model_name, p.promote.alias
    uri = _run(use_store)
    facts = _run(lambda: champion(name, alias))
    if facts is None:
        _fail(f"no model {name}@{alias} in {uri}: run the pipeline (`dvc repro` or `make demo`) first")
    numbers = ", ".join(f"{k} {facts[k]:.4g}" for k in ("domain_fid", "coverage", "kl") if k in facts)
    typer.echo(f"{name}@{alias} = v{facts['version']} (run {facts['run_id']}): {numbers}")


@app.command()
def stylize(
    style: Annotated[str, typer.Option(help="Which entry of style.styles to apply.")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    progress: Progress = True,
) -> None:
    """Stage `stylize@<style>`: style every image of style.content_dir -> data/stylized/<style>/ (+ MLflow)."""
    p = _params(params, set_)
    _run(lambda: stages.stylize(p, style, ctx=_context(), progress=progress, echo=typer.echo))


@app.command("stylize-image")
def stylize_image(
    photo: Annotated[Path, typer.Argument(help="The photo to restyle.")],
    painting: Annotated[Path, typer.Argument(help="The painting (any style image) whose style to take.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the result (PNG).")],
    size: Annotated[
        int,
        typer.Option(
            help="Long side of the result in px (the photo's own when smaller); "
            "reached coarse to fine from style.size."
        ),
    ] = stages.style.PRINT_SIDE,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    progress: Progress = True,
) -> None:
    """Style one PHOTO like one PAINTING with the style.* params (Gatys) -> OUT at print size, logged to MLflow."""
    p = _params(params, set_)
    r = _run(lambda: stages.stylize_image(p, photo, painting, out, progress=progress, size=size))
    m = r.metrics
    typer.echo(f"{photo.name} x {painting.name} -> {r.output} (features {r.extractor}, loss {m['start_total']:.3g} -> "
               f"{m['final_total']:.3g}, {m['seconds']:.0f} s; MLflow run {r.run_id})")  # fmt: skip


@app.command("stylize-sheet")
def stylize_sheet(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage `stylize_sheet`: style images on top, photos down the left, labelled -> data/stylized_sheet.png."""
    p = _params(params, set_)
    sheet, n_contents, n_styles = _run(lambda: stages.stylize_sheet(p))
    typer.echo(f"contact sheet ({n_contents} contents x {n_styles} styles) -> {sheet}")


@app.command()
def gc(
    keep: Annotated[int, typer.Option(help="Keep this many newest flow-run workspaces.")] = 20,
    older_than_days: Annotated[
        float | None, typer.Option(help="Only remove workspaces older than this many days.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed.")] = False,
) -> None:
    """Remove old Prefect flow-run workspaces (.ganops/flow-runs/<id>/); never a running one.

    Only these scratch folders: the tracking store, the registry and DVC outputs are never touched.
    """
    from ganops.workspaces import FLOW_RUNS
    from ganops.workspaces import gc as collect

    gone = collect(Path.cwd(), keep=keep, older_than_days=older_than_days, dry_run=dry_run)
    for d in gone:
        typer.echo(f"{'would remove' if dry_run else 'removed'} {d.relative_to(Path.cwd())}")
    typer.echo(f"{len(gone)} flow-run workspace(s) {'to remove' if dry_run else 'removed'} from {FLOW_RUNS}/")


@app.command()
def summary() -> None:
    """Print where the pipeline's results are and how to look at them."""
    from ganops.tracking import tracking_uri

    grid = AT.gan / "final" / "samples.png"
    lines = ["", "ganops results:"]
    if (AT.prepared / "manifest.json").is_file():
        man = json.loads((AT.prepared / "manifest.json").read_text())
        lines.append(
            f"  data        {AT.prepared}/  ({man['count']} images from {man['source']}, hash {man['content_hash'][:12]})"
        )
    if grid.is_file():
        lines.append(f"  samples     {grid}  (grids per step in {AT.gan / 'samples'}/)")
        lines.append(f"  generator   {AT.gan / 'final'}/  (weights + config.json)")
    if (AT.metrics / "evaluate.json").is_file():
        from ganops.evaluate import summary_line

        lines.append(
            f"  quality     {AT.metrics / 'evaluate.json'}  ({summary_line(json.loads((AT.metrics / 'evaluate.json').read_text()))})"
        )
    if (AT.metrics / "promote.json").is_file():
        d = json.loads((AT.metrics / "promote.json").read_text())
        lines.append(
            f"  promotion   {AT.metrics / 'promote.json'}  ({'promoted' if d['promote'] else 'kept champion'}: {d['reason']})"
        )
    if AT.sheet.is_file():
        lines.append(
            "  stylized    data/stylized_sheet.png  (contact sheet; images in data/stylized/<style>/)"
        )
    if (AT.metrics / "train_gan.json").is_file():
        m = json.loads((AT.metrics / "train_gan.json").read_text())
        lines.append(f"  metrics     {AT.metrics / 'train_gan.json'}  (loss_d {m['loss_d']:.3f}, loss_g {m['loss_g']:.3f}, "
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
