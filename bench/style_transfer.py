"""Benchmark: ganops' Gatys style transfer vs the PyTorch tutorial's recipe, same run, same weights.

Reference (pytorch.org "Neural Transfer Using PyTorch"): the full VGG19 feature stack run on every
evaluation, losses taken at the same layers, L-BFGS without line search stepped until 300 loss
evaluations, pixels clamped inside the closure. ganops: `ganops.stylize.gatys` with its own schedule
(--scales, --steps evaluations per scale, L-BFGS with strong-Wolfe line search, VGG cut after the deepest layer used).
Both final images are scored with one loss function at full size, so "final loss" compares like with
like. Also: fast-net (TransformerNet) inference time at the same size.

    python bench/style_transfer.py                                # 256 px, reference 300 evaluations
    python bench/style_transfer.py --size 128 --ref-evals 100 --steps 40   # quicker look

Offline machines have no ImageNet VGG19: --weights random (the default here) compares the two recipes on
the same seeded random-weight VGG19; with the weights cached, --weights pretrained.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torchvision.models import VGG19_Weights, vgg19

ROOT = Path(__file__).resolve().parents[1]
from ganops.config import StyleParams  # noqa: E402
from ganops.losses import content_loss, gram, style_loss, tv_loss  # noqa: E402
from ganops.models.style import VGG_LAYERS, TransformerNet, build_vgg  # noqa: E402
from ganops.style_inputs import mosaic  # noqa: E402
from ganops.stylize import fast_stylize, gatys, resize_long  # noqa: E402

LAYERS = {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0, "relu4_1": 1.0, "relu5_1": 1.0}
CONTENT = "relu4_2"


def full_stack(weights: str, seed: int) -> torch.nn.Sequential:
    if weights == "random":
        torch.manual_seed(seed)
        f = vgg19(weights=None).features
    else:
        f = vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features
    for m in f:
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    return f.eval().requires_grad_(False)


def reference(content, style, feats, p: StyleParams, evals: int) -> tuple[torch.Tensor, float]:
    """The tutorial's loop: full stack each evaluation, L-BFGS stepped until ``evals`` evaluations."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    at = {VGG_LAYERS[n]: n for n in [CONTENT, *LAYERS]}

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, h = {}, (x - mean) / std
        for i, m in enumerate(feats):  # every layer, as the tutorial's Sequential does
            h = m(h)
            if i in at:
                out[at[i]] = h
        return out

    with torch.no_grad():
        c_feat = run(content)[CONTENT]
        s = run(style)
        grams = {n: gram(s[n]) for n in LAYERS}
    x = content.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x])
    count = [0]
    t0 = time.perf_counter()
    while count[0] < evals:

        def closure() -> torch.Tensor:
            with torch.no_grad():
                x.clamp_(0, 1)
            opt.zero_grad()
            f = run(x)
            loss = (p.content_weight * content_loss(f[CONTENT], c_feat) + p.style_weight * style_loss(f, grams, LAYERS)
                    + p.tv_weight * tv_loss(x))  # fmt: skip
            loss.backward()
            count[0] += 1
            return loss

        opt.step(closure)
    with torch.no_grad():
        x.clamp_(0, 1)
    return x.detach(), time.perf_counter() - t0


def score(x, content, style, vgg, p: StyleParams) -> float:
    """One loss function for both results, at full size."""
    with torch.no_grad():
        f, c, s = vgg(x), vgg(content)[CONTENT], vgg(style)
        grams = {n: gram(s[n]) for n in LAYERS}
        return float(p.content_weight * content_loss(f[CONTENT], c) + p.style_weight * style_loss(f, grams, LAYERS)
                     + p.tv_weight * tv_loss(x))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--weights", choices=["random", "pretrained"], default="random")
    ap.add_argument("--ref-evals", type=int, default=300)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--steps", type=int, default=110, help="ganops: loss evaluations per scale")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/style_transfer.json")
    a = ap.parse_args()

    from sklearn.datasets import load_sample_images

    content = torch.from_numpy(load_sample_images().images[0] / 255.0).float().permute(2, 0, 1)[None]
    content = resize_long(content, a.size)
    style = torch.from_numpy(mosaic(a.size) / 255.0).float().permute(2, 0, 1)[None]
    p = StyleParams(
        weights=a.weights, size=a.size, content_layer=CONTENT, style_layers=LAYERS, style_weight=1e6
    )
    vgg = build_vgg(a.weights, [CONTENT, *LAYERS])

    ref_img, ref_s = reference(content, style, full_stack(a.weights, 0), p, a.ref_evals)
    t0 = time.perf_counter()
    r = gatys(content, [(style, 1.0)], vgg, p.model_copy(update={"scales": a.scales, "steps": a.steps}))
    ours_s, ours_img, evals = time.perf_counter() - t0, r.image, r.evaluations
    ref_loss, ours_loss = score(ref_img, content, style, vgg, p), score(ours_img, content, style, vgg, p)

    net = TransformerNet().eval()
    fast_stylize(net, content)  # warm-up
    t = time.perf_counter()
    for _ in range(5):
        fast_stylize(net, content)
    fast_s = (time.perf_counter() - t) / 5

    res = {
        "command": "python " + " ".join(sys.argv),
        "weights": vgg.name, "size": list(content.shape[-2:]),
        "reference": {"seconds": ref_s, "evaluations": a.ref_evals, "final_loss": ref_loss},
        "ganops": {"seconds": ours_s, "evaluations": evals, "scales": a.scales, "steps": a.steps,
                   "final_loss": ours_loss},
        "time_ratio": ours_s / ref_s, "loss_ratio": ours_loss / ref_loss,
        "fast_net_seconds_per_image": fast_s,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }  # fmt: skip
    print(json.dumps(res, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
