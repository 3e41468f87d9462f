"""Stage ``evaluate``: score the trained generator against the real data -> ``metrics/evaluate.json``, the
"generated | nearest real" sheet ``metrics/evaluate_nearest.png``, and the training's MLflow run (metrics,
the sheet as artifact ``evaluate/evaluate_nearest.png``)."""

from __future__ import annotations

from typing import Any

import torch

from ganops.artifacts import atomic_write, load_config
from ganops.classifier import to_float
from ganops.config import Params
from ganops.devices import resolve_device
from ganops.evaluate import asked_classes, evaluate_samples, generate, inception_fid
from ganops.images import grid_png
from ganops.models.gan import load_generator
from ganops.neighbours import Copies
from ganops.promote import baseline_of, resolve_metric
from ganops.stages.common import (
    Layout,
    StageError,
    classifier_for,
    embedding_for,
    prepared_data,
    read_run_file,
    write_json,
)
from ganops.tracking import (
    EVALUATED_TAG,
    git_commit,
    log_artifact_to_run,
    log_dataset,
    log_to_run,
    require_run,
    set_note_section,
    use_store,
)


def evaluate(p: Params, at: Layout = Layout()) -> dict[str, Any]:
    """Stage `evaluate`; returns the metrics (also metrics/evaluate.json and the training run)."""
    export = at.gan / p.evaluate.export
    if not (export / "generator.pt").is_file():
        monitor = " with gan.monitor_every > 0" if p.evaluate.export == "best" else ""
        raise StageError(
            f"{export / 'generator.pt'} is missing: run `ganops train-gan{monitor}` (or `dvc repro`) first"
        )
    images, labels, man = prepared_data(at, p)
    device = resolve_device(p.base.device)
    use_store(at.tracking)
    gen_config = load_config(export)
    run_id = require_run(_training_run(at, gen_config), str(export))
    clf = classifier_for(at, man["content_hash"])
    if gen_config["settings"]["data_hash"] != man["content_hash"]:
        raise StageError(
            f"{export} was trained on other data than {at.prepared}: run `ganops train-gan` first"
        )
    G = load_generator(export, device=device)
    n = p.evaluate.n_samples or len(images) // 2
    fake = generate(G, n, seed=p.base.seed + 1, batch_size=p.evaluate.batch_size, device=device)
    asked = asked_classes(G, n, seed=p.base.seed + 1, n_classes=clf.net.cfg.n_classes)
    embedding = embedding_for(p, images.shape[1])
    m, found = evaluate_samples(images, labels, fake, clf, p.evaluate, seed=p.base.seed, fake_labels=asked,
                                embedding=embedding)  # fmt: skip
    if p.evaluate.inception:
        m["inception_fid"] = inception_fid(to_float(images), fake)
    m |= {"dataset_hash": man["content_hash"], "run_id": run_id, "export": p.evaluate.export,
          "step": gen_config.get("step"), "ema": gen_config.get("ema", False)}  # fmt: skip
    write_json(at.metrics / "evaluate.json", m)
    sheet = atomic_write(at.metrics / "evaluate_nearest.png", nearest_sheet(fake, to_float(images), found))
    numbers = {k: float(v) for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    tags = {
        "extractor": m["extractor"],
        "mode_collapse": m.get("mode_collapse", "n/a"),
        EVALUATED_TAG: ",".join(sorted(numbers)),
    }  # what a registered version reads from this run
    log_to_run(run_id, numbers, tags)
    log_artifact_to_run(run_id, sheet, "evaluate")
    log_dataset(run_id, p, man["content_hash"], context="evaluation", rev=git_commit(at.tracking))
    set_note_section(
        run_id,
        "Evaluated: ",
        _scores_line(m, resolve_metric("auto", "vgg19" if "vgg_kid" in m else "domain")),
    )
    return m


def _scores_line(m: dict[str, Any], metric: str) -> str:
    """The headline scores beside their real-vs-real baselines, for the run's description."""
    parts = []
    for key in dict.fromkeys([metric, "artifact_score", "coverage", "kl", "copy_rate"]):
        if isinstance(m.get(key), int | float):
            base = baseline_of(m, key)
            parts.append(f"{key} {m[key]:.4g}" + (f" (real-vs-real {base:.4g})" if base is not None else ""))
    return f"{'; '.join(parts)} ({m['export']} export, step {m.get('step')})"


def nearest_sheet(fake: torch.Tensor, real: torch.Tensor, found: Copies, pairs: int = 12) -> bytes:
    """PNG of "generated | nearest real" pairs side by side, the samples nearest to a training picture
    (relative to that picture's own nearest neighbour) first: where copies would show."""
    order = (found.distance / found.threshold.clamp_min(1e-12)).argsort()[:pairs]
    x = torch.stack([t for i in order.tolist() for t in (fake[i], real[found.nearest[i]])])
    return grid_png(x, n_classes=2)


def _training_run(at: Layout, gen_config: dict[str, Any]) -> str | None:
    """The MLflow run whose exports models/gan holds: ``run.json``'s once that run finished (exports written
    before ``run.json`` existed name theirs in ``meta``, the legacy place)."""
    facts = read_run_file(at)
    if not facts:
        return gen_config.get("meta", {}).get("mlflow_run_id")
    if "step" not in facts:
        raise StageError(f"{at.gan} holds MLflow run {facts['mlflow_run_id']}'s training, which did not finish: "
                         "run `ganops train-gan` (or `dvc repro`) to finish it first")  # fmt: skip
    return str(facts["mlflow_run_id"])
