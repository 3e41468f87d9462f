"""Benchmark: GANs on a real folder of photos, judged the way a person would (VGG19 KID / FID against
real-vs-real, the spectral artifact score against its noise floor, spectrum distance, copy rate,
precision / recall), each architecture for the same CPU minutes and seed.

The folder is the own-photos set (396 photos, `ants/`, `bees/`: two class folders, so the conditional pair
is on, as for a user's sorted folder), prepared as `data.source: folder` does at ``--size`` px. Every
variant is params.yaml's gan group plus the README's own-pictures advice (DiffAugment colour, translation,
cutout) and its own overrides; it trains until ``--minutes`` of wall time have passed (checked after each
step), then its EMA generator is scored by the evaluate stage's code on as many samples as half the data
(the real-vs-real halves). Grids and "generated | nearest real" sheets go to ``bench/results/own_photos/``;
the sheets show the photos themselves, which may not ship, so git ignores them (look at them locally).

    python bench/own_photos.py --root ../shared/data/own-photos --minutes 10              # dcgan, msg at 64 px
    python bench/own_photos.py --root ... --variants dcgan --minutes 30 --size 128 --tag 128
    python bench/own_photos.py --root ... --variants dcgan_resize,dcgan_resize_color --tag 64_resize
    python bench/own_photos.py --root ... --variants progressive --tag 64_progressive
    python bench/own_photos.py --root ... --variants auto --size 128 --minutes 20 --tag 128
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ganops.classifier import train_classifier
from ganops.config import ClassifierParams, DataParams, EvaluateParams, GanParams
from ganops.data import prepare
from ganops.evaluate import asked_classes, evaluate_samples, generate
from ganops.models.gan import load_generator
from ganops.models.style import build_embedding
from ganops.stages.evaluate import nearest_sheet
from ganops.train_gan import Hooks, fit

OWN_PICTURES = {"diffaugment": ["color", "translation", "cutout"]}  # the README's advice for own pictures
VARIANTS: dict[str, dict[str, Any]] = {
    "dcgan": {"arch": "dcgan"},
    "msg": {"arch": "msg"},
    "dcgan_resize": {"arch": "dcgan", "upsample": "resize"},
    "msg_resize": {"arch": "msg", "upsample": "resize"},
    # the augmentation suspected of drawing the grid (issue 22): resize without translation / cutout
    "dcgan_resize_color": {"arch": "dcgan", "upsample": "resize", "diffaugment": ["color"]},
    # FastGAN with its paper's augmentation (colour + translation); unconditional (auto turns it off)
    "fastgan": {"arch": "fastgan", "diffaugment": ["color", "translation"]},
    "fastgan_color": {"arch": "fastgan", "diffaugment": ["color"]},
    # D anti-aliased (a [1,3,3,1] blur before each strided conv): the suspect the issue names for the texture
    "fastgan_aa": {"arch": "fastgan", "diffaugment": ["color", "translation"], "d_antialias": True},
    # ProGAN's growing pair, grown to 64 px by step 675 (4 -> 8 -> 16 -> 32 -> 64), then at 64 px; conditional
    "progressive": {
        "arch": "progressive",
        "diffaugment": ["color", "translation"],
        "grow_fade_steps": 75,
        "grow_stable_steps": 75,
    },
    # what `gan.arch: auto` trains at >= 64 px (fastgan), with the augmentation the README recommends for it
    "auto": {"arch": "auto", "diffaugment": ["color", "translation"]},
}
OUT = Path(__file__).resolve().parent / "results"


def run_variant(name: str, p: GanParams, images: torch.Tensor, labels: torch.Tensor, clf: Any, emb: Any,
                minutes: float, seed: int, figures: Path) -> dict[str, Any]:  # fmt: skip
    """Train ``name`` for ``minutes`` of wall time, score it; returns its row."""
    t0 = time.perf_counter()
    stop = lambda step: time.perf_counter() - t0 > 60 * minutes  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        r = fit(images, p, tmp, labels=labels, seed=seed, progress=False, hooks=Hooks(should_stop=stop))
        seconds = time.perf_counter() - t0
        # stopped early: the checkpoint holds the state; one more call with steps = the step reached exports it
        if not r.completed:
            r = fit(
                images, p.model_copy(update={"steps": r.step}), tmp, labels=labels, seed=seed, progress=False
            )
        G = load_generator(r.export)
        n = len(images) // 2
        fake = generate(G, n, seed=seed + 1)
        asked = asked_classes(G, n, seed=seed + 1, n_classes=clf.net.cfg.n_classes)
        t1 = time.perf_counter()
        m, found = evaluate_samples(images, labels, fake, clf, EvaluateParams(), seed=seed, fake_labels=asked,
                                    embedding=emb)  # fmt: skip
        eval_s = time.perf_counter() - t1
        (figures / f"{name}.png").write_bytes((r.export / "samples.png").read_bytes())
        real = images.float() / 127.5 - 1
        (figures / f"{name}_nearest.png").write_bytes(nearest_sheet(fake, real, found))
    imgs = r.step * p.batch_size
    keep = ("vgg_kid", "baseline_vgg_kid", "vgg_fid", "baseline_vgg_fid", "artifact_score", "baseline_artifact_score",
            "artifact_floor", "spectrum_distance", "baseline_spectrum_distance", "spectrum_floor", "copy_rate",
            "baseline_copy_rate", "precision", "recall", "baseline_precision", "baseline_recall", "domain_fid",
            "baseline_fid", "coverage", "baseline_coverage", "classifier_note")  # fmt: skip
    row = {"variant": name, "arch": G.cfg.arch, "steps": r.step, "train_seconds": round(seconds, 1), "img_per_s": round(imgs / seconds, 1),
           "eval_seconds": round(eval_s, 1)} | {k: m[k] for k in keep if k in m}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the photo folder (class subfolders)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training minutes per variant")
    ap.add_argument("--variants", default="dcgan,msg")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="64")
    a = ap.parse_args()
    d = prepare(DataParams(source="folder", root=a.root, image_size=a.size))
    clf = train_classifier(d.images, d.labels, ClassifierParams(), seed=a.seed, progress=False)
    emb = build_embedding("caffe-q8", EvaluateParams().vgg_size, seed=a.seed)
    figures = OUT / "own_photos"
    figures.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.variants.split(","):
        p = GanParams(**(GanParams().model_dump() | OWN_PICTURES | VARIANTS[name] | {"steps": 1_000_000}))
        p = p.model_copy(update={"monitor_every": 0, "checkpoint_every": 50, "sample_every": 10_000})
        rows.append(
            run_variant(f"{name}_{a.tag}", p, d.images, d.labels, clf, emb, a.minutes, a.seed, figures)
        )
    out = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "data": {"root": Path(a.root).name, "count": len(d.images), "size": a.size, "classes": d.classes},
        "classifier_holdout_accuracy": clf.info.get("holdout_accuracy"),
        "minutes_per_variant": a.minutes,
        "rows": rows,
    }
    (OUT / f"own_photos_{a.tag}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
