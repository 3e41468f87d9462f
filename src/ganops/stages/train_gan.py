"""Stage ``train_gan``: the GAN on ``data/prepared`` -> ``models/gan/`` (checkpoint, grids, ``final/``,
``best/``, ``run.json``), ``metrics/train_gan.json`` and the loss curves, in one MLflow run.

The stage opens the checkpoint to resume once (it decides which MLflow run continues) and hands it to the
loop (:func:`ganops.train_gan.train`); it owns the MLflow run and writes its id to ``models/gan/run.json``.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from ganops.artifacts import load_config
from ganops.config import Params
from ganops.devices import resolve_device
from ganops.distributed import Place
from ganops.evaluate import Monitor
from ganops.stages.common import (
    Layout,
    StageError,
    Stopped,
    classifier_for,
    embedding_for,
    prepared_data,
    read_run_file,
    write_json,
    write_run_file,
)
from ganops.tracking import RunContext, log_to_run, start_run
from ganops.train_gan import Hooks, TrainResult, TrainRun, train

log = logging.getLogger(__name__)


def train_gan(
    p: Params,
    at: Layout = Layout(),
    *,
    ctx: RunContext = RunContext(),
    progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
    place: Place = Place(),
) -> tuple[TrainResult, str]:
    """Stage `train_gan` (resumes a compatible checkpoint); returns (TrainResult, MLflow run id).

    Resuming the checkpoint of a run that never finished continues that MLflow run; going on from a finished
    one (more steps, another experiment) opens a new run tagged ``resumed_from`` (see tracking.start_run).

    Data-parallel (``place.world_size > 1``, the process group joined by the caller): every rank calls this;
    rank 0 alone opens the MLflow run (tagged ``world_size`` and ``ddp_backend``), runs the monitor and writes
    the checkpoint, exports and metrics; other ranks return (result, "").

    Raises:
        Stopped: ``should_stop`` ended training early (a checkpoint was written).
    """
    if p.gan.nproc > 1 and place.world_size == 1:
        raise StageError(f"gan.nproc is {p.gan.nproc} but this is one process: run `ganops train-gan` (it "
                         "launches the ranks through torchrun), or set gan.nproc: 1")  # fmt: skip
    images, labels, man = prepared_data(at, p)
    device = resolve_device(p.base.device)
    if device.type == "cuda" and place.world_size > 1:  # one GPU per rank on each node
        device = torch.device("cuda", place.local_rank)
    data_hash = man["content_hash"]
    try:
        tr = TrainRun.create(images, p.gan, at.gan, labels=labels, seed=p.base.seed, data_hash=data_hash,
                             device=device, place=place, progress=progress)  # fmt: skip
    except ValueError as err:  # e.g. gan.conditional: true on unlabelled pictures, a batch over the data
        raise StageError(str(err)) from None
    prior = tr.resumable()  # read once, here: it decides which MLflow run continues
    monitor = (
        _monitor(p, at, images, labels, data_hash, device) if p.gan.monitor_every and place.main else None
    )
    if place.main:
        log.info("training on %s: %d images, device %s, %d process(es)", man["source"], man["count"], device,
                 place.world_size)  # fmt: skip
    t0 = time.perf_counter()
    opened = (
        start_run(
            p, ctx=ctx, data_hash=data_hash, resume_run_id=_run_to_continue(at, prior), root=at.tracking
        )
        if place.main
        else nullcontext(None)
    )
    with opened as run:
        if run is not None:
            write_run_file(at, run.run_id)
            log_to_run(
                run.run_id, {}, {"world_size": place.world_size, "ddp_backend": place.backend or "none"}
            )
        hooks = Hooks(on_metrics=run.on_metrics if run else None, on_sample=run.on_sample if run else None,
                      should_stop=should_stop, monitor=monitor)  # fmt: skip
        result = train(tr, images, labels, hooks=hooks, prior=prior)
        if not result.completed:
            raise Stopped(
                f"stopped at step {result.step}; checkpoint in {result.checkpoint}: run again to resume"
            )
        if run is None or result.export is None:  # a rank other than 0: rank 0 writes the rest
            return result, ""
        final = _write_train_metrics(p, at, result, round(time.perf_counter() - t0, 2))
        run.log_metrics({"train_seconds": final["train_seconds"], "resumed_from_step": result.resumed_from})
        run.log_artifacts(result.export, "checkpoint")
        if result.best is not None:
            run.log_artifacts(result.best, "checkpoint_best")
        write_run_file(at, run.run_id, result.step)  # finished: the exports are this run's
    return result, run.run_id


def _run_to_continue(at: Layout, prior: dict[str, Any] | None) -> str | None:
    """The MLflow run of the checkpoint training resumes from (None on a fresh start). Workspaces trained
    before ``run.json`` existed kept it in the checkpoint (legacy: its ``meta``)."""
    if prior is None:
        return None
    return read_run_file(at).get("mlflow_run_id") or prior.get("meta", {}).get("mlflow_run_id")


def _write_train_metrics(p: Params, at: Layout, result: TrainResult, seconds: float) -> dict[str, Any]:
    """``metrics/train_gan.json`` (the last logged losses, counters, last monitor result, best export) and
    ``metrics/train_gan_losses.csv`` (every logged step); returns what the JSON holds."""
    final: dict[str, Any] = {k: v for k, v in result.history[-1].items() if k != "step"}
    final |= {
        "steps": result.step,
        "train_seconds": seconds,
        **result.counters,
    }
    if result.monitor:
        last = result.monitor[-1]
        final |= {f"monitor_{k}": v for k, v in last.items() if k != "step" and isinstance(v, int | float)}
        best = load_config(result.best) if result.best else {}
        final |= {"best_step": best.get("step", 0), "best_metric": best.get("best_metric", p.gan.best_metric)}
    write_json(at.metrics / "train_gan.json", final)
    with open(at.metrics / "train_gan_losses.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result.history[0]))
        w.writeheader()
        for row in result.history:
            w.writerow({**row, "step": int(row["step"])})
    return final


def _monitor(
    p: Params, at: Layout, images: torch.Tensor, labels: torch.Tensor, data_hash: str, device: torch.device
) -> Monitor:
    """The in-training quality monitor, on the domain classifier of this data."""
    if not (at.classifier / "config.json").is_file():
        raise StageError("gan.monitor_every needs the domain classifier: run `ganops classifier` first "
                         "(dvc repro runs it before train_gan), or set gan.monitor_every: 0")  # fmt: skip
    clf = classifier_for(at, data_hash)
    return Monitor(images, labels, clf, p.evaluate, n=p.gan.monitor_samples, seed=p.base.seed + 7, device=device,
                   embedding=embedding_for(p, images.shape[1]))  # fmt: skip
