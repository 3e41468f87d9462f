"""The GAN stages: ``prepare`` -> ``train_gan`` (with ``classifier`` for its monitor) -> ``evaluate`` ->
``promote``. Each reads its inputs under a :class:`~ganops.stages.common.Layout`, calls the library, writes
its outputs and logs to MLflow (through :mod:`ganops.tracking`).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from ganops.config import Params
from ganops.distributed import Place
from ganops.stages.common import Layout, StageError, Stopped, prepared_data, write_json
from ganops.tracking import RunContext

log = logging.getLogger(__name__)


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
    images, labels, man = prepared_data(at, p)
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
        final = _write_train_metrics(p, at, result, round(time.perf_counter() - t0, 2))
        run.log_metrics({"train_seconds": final["train_seconds"], "resumed_from_step": result.resumed_from})
        run.log_artifacts(result.export, "checkpoint")
        if result.best is not None:
            run.log_artifacts(result.best, "checkpoint_best")
    return result, run.run_id


def _write_train_metrics(p: Params, at: Layout, result: Any, seconds: float) -> dict[str, Any]:
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
        best = json.loads((result.best / "config.json").read_text()) if result.best else {}
        final |= {"best_step": best.get("step", 0), "best_metric": p.gan.best_metric}
    write_json(at.metrics / "train_gan.json", final)
    with open(at.metrics / "train_gan_losses.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result.history[0]))
        w.writeheader()
        for row in result.history:
            w.writerow({**row, "step": int(row["step"])})
    return final


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

    images, labels, man = prepared_data(at, p)
    c = train_classifier(images, labels, p.classifier, seed=p.base.seed, data_hash=man["content_hash"],
                         device=resolve_device(p.base.device), progress=progress)  # fmt: skip
    save_classifier(c, at.classifier)
    write_json(at.metrics / "classifier.json", {"extractor": c.extractor, **c.info})
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
    images, labels, man = prepared_data(at, p)
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
    write_json(at.metrics / "evaluate.json", m)
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
    write_json(at.metrics / "promote.json", decision.to_dict())
    return decision, cand, before
