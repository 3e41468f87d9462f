"""Benchmark: the GAN stabilisers one by one against the plain DCGAN, at a fixed number of steps, same run.

Every variant trains the demo's nets (latent 64, ngf = ndf = 32, batch 64) for the same number of steps on the
same prepared data and is scored by the evaluate stage's code (domain classifier trained once per dataset):
domain FID (with the real-vs-real baseline), class coverage, KL of the class histogram, share of confident
samples, and the wall time of training. Variants are params overrides on top of the plain DCGAN
(``config.PLAIN_DCGAN``), except ``default``, which is params.yaml's gan group.

    python bench/gan_ablation.py                                      # digits, every variant
    python bench/gan_ablation.py --source mnist --root <dir holding MNIST/raw>   # the MNIST test split
    python bench/gan_ablation.py --limit 200 --variants baseline,diffaugment,default   # small data
    python bench/gan_ablation.py --variants baseline,default --also-classifier outlier_weight=0.5 ...
        # every generator also scored by a second yardstick (classifier params overridden): also_* columns
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ganops.classifier import train_classifier
from ganops.config import PLAIN_DCGAN, ClassifierParams, DataParams, EvaluateParams, GanParams, load_params
from ganops.data import prepare
from ganops.evaluate import asked_classes, evaluate_samples, generate
from ganops.models.gan import load_generator
from ganops.train_gan import fit

DEMO = {"latent_dim": 64, "ngf": 32, "ndf": 32, "batch_size": 64}
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},  # the lesson's DCGAN: BCE, BatchNorm D, one D step per G step, raw G
    "ttur": {"lr_g": 1e-4, "lr_d": 4e-4},
    "d_skip": {"d_skip_below": 0.5},
    "d_steps2": {"d_steps": 2},
    "mbstd": {"mbstd": True},
    "diffaugment": {"diffaugment": ["color", "translation", "cutout"]},
    "spectral_norm": {"spectral_norm": True},
    "hinge": {"loss": "hinge"},
    "r1": {"r1_gamma": 1.0},
    "msg": {"arch": "msg"},
    "ema": {"ema_decay": 0.999},
    "conditional": {"conditional": True},  # class-conditional G and projection D
    "default": {},  # params.yaml's gan group
    "default_diffaugment": {"diffaugment": ["color", "translation", "cutout"]},  # on top of params.yaml's
    "default_unconditional": {"conditional": False},  # params.yaml's, without the classes
}


def run_variant(name: str, p: GanParams, train: tuple[torch.Tensor, torch.Tensor], images: torch.Tensor,
                labels: torch.Tensor, clf: Any, seed: int, also: Any = None) -> dict[str, Any]:  # fmt: skip
    """Train on ``train`` (images, labels), score against ``images``/``labels`` (the whole dataset).

    ``also``: a second classifier; its scores of the same samples are added as ``also_*``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = fit(train[0], p, tmp, labels=train[1], seed=seed, progress=False)
        seconds = time.perf_counter() - t0
        G = load_generator(Path(tmp) / "final")
        n = len(images) // 2
        fake = generate(G, n, seed=seed + 1)
        asked = asked_classes(G, n, seed=seed + 1, n_classes=clf.net.cfg.n_classes)
        m, _ = evaluate_samples(images, labels, fake, clf, EvaluateParams(), seed=seed, fake_labels=asked)
        m2 = (
            evaluate_samples(images, labels, fake, also, EvaluateParams(), seed=seed, fake_labels=asked)[0]
            if also
            else {}
        )
    keep = ("domain_fid", "baseline_fid", "coverage", "n_classes", "kl", "confident_frac", "mean_confidence",
            "baseline_confident_frac", "label_agreement")  # fmt: skip
    row = {"variant": name, **{k: m[k] for k in keep if k in m}, "train_seconds": round(seconds, 1)}
    row |= {f"also_{k}": m2[k] for k in keep if k in m2}
    row |= {"d_skipped": r.counters.get("d_skipped", 0), "nan_rollbacks": r.counters.get("nan_rollbacks", 0)}
    return row


def time_variants(
    params: dict[str, GanParams], images: torch.Tensor, labels: torch.Tensor, steps: int, rounds: int
) -> dict[str, float]:
    """Median seconds per training step of each variant; rounds interleave the variants (machine noise)."""
    per: dict[str, list[float]] = {name: [] for name in params}
    for _ in range(rounds):
        for name, p in params.items():
            p = p.model_copy(update={"steps": steps, "sample_every": 10**6, "checkpoint_every": 10**6,
                                     "monitor_every": 0})  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                fit(images, p, tmp, labels=labels, progress=False)
                per[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(v) for name, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="digits", choices=["digits", "mnist", "fashion-mnist"])
    ap.add_argument("--root", default="data/raw", help="folder holding MNIST/raw (mnist, fashion-mnist)")
    ap.add_argument("--split", default="train", choices=["train", "test"])
    ap.add_argument("--limit", type=int, default=0, help="keep this many images (0 = all)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32, help="image side in px")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="where `default` comes from")
    ap.add_argument("--set", action="append", default=[], help="extra gan.key=value for every variant")
    ap.add_argument(
        "--also-classifier",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="score every generator with a second classifier too, these classifier params changed",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--time-steps", type=int, default=100, help="steps per timing round (0 = no timing pass)")
    ap.add_argument("--time-rounds", type=int, default=3)
    ap.add_argument(
        "--timing-only", action="store_true", help="only the timing pass (quality is deterministic)"
    )
    a = ap.parse_args()
    names = [v for v in a.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    src = a.root if a.source != "digits" else "data/raw"
    if a.source != "digits" and not (Path(src) / "MNIST" / "raw").is_dir() and a.source == "mnist":
        print(f"skipped: no MNIST/raw under {src}", flush=True)
        return
    # Scored against the whole dataset (classifier and FID reference) even when training on --limit images.
    d = prepare(DataParams(source=a.source, root=src, split=a.split, image_size=a.size))
    images, labels = d.images, d.labels
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(a.seed))[: a.limit or None]
    train_images, train_labels = (images[keep], labels[keep]) if a.limit else (images, labels)
    print(f"{a.source}: {len(images)} images, training on {len(train_images)}", flush=True)
    clf = (
        None
        if a.timing_only
        else train_classifier(images, labels, ClassifierParams(), seed=a.seed, progress=False)
    )
    also = None
    if a.also_classifier and not a.timing_only:
        cp = {
            k.removeprefix("classifier."): yaml.safe_load(v)
            for k, v in (kv.split("=", 1) for kv in a.also_classifier)
        }
        also = train_classifier(images, labels, ClassifierParams(**cp), seed=a.seed, progress=False)
    extra = {}
    for kv in a.set:
        k, v = kv.removeprefix("gan.").split("=", 1)
        extra[k] = yaml.safe_load(v)
    default = load_params(a.params).gan.model_dump()
    params = {}
    for name in names:
        over = (
            {**default, **VARIANTS[name]}
            if name.startswith("default")
            else {**PLAIN_DCGAN, **DEMO, **VARIANTS[name]}
        )
        params[name] = GanParams(**{**over, **extra, "steps": a.steps, "sample_every": a.steps,
                                    "checkpoint_every": a.steps, "log_every": 50, "monitor_every": 0,
                                    "resume": False})  # fmt: skip
    rows = []
    for name, p in params.items():
        if a.timing_only:
            break
        row = run_variant(name, p, (train_images, train_labels), images, labels, clf, a.seed, also)
        rows.append(row)
        print(json.dumps(row), flush=True)
    timing = (
        time_variants(params, train_images, train_labels, a.time_steps, a.time_rounds) if a.time_steps else {}
    )
    ref = timing.get("baseline")
    for name, sec in timing.items():
        print(
            f"{name}: {1000 * sec:.1f} ms/step" + (f" ({sec / ref:.2f}x baseline)" if ref else ""), flush=True
        )
    result = {
        "command": "python " + " ".join(sys.argv),
        "dataset": {
            "source": a.source,
            "split": a.split,
            "images": len(images),
            "trained_on": len(train_images),
        },
        "steps": a.steps,
        "image_size": a.size,
        "classifier": clf.info if clf else None,
        "also_classifier": {"params": a.also_classifier, **also.info} if also else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "ms_per_step": {k: round(1000 * v, 2) for k, v in timing.items()},
        "time_vs_baseline": {k: round(v / ref, 3) for k, v in timing.items()} if ref else {},
    }
    suffix = f"_{a.limit}" if a.limit else ""
    out = a.out or Path(
        f"bench/results/gan_ablation_{a.source}{suffix}{'_timing' if a.timing_only else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
