"""The domain classifier that `evaluate` measures generators with: training, saving, loading.

Labelled data (two classes or more): a small CNN trained on the prepared real images, with a held-out
accuracy so its numbers can be trusted, and two checks of what its confidence means: the share of held-out
real images and the share of synthetic non-images (noise, blobs, shuffled pixels) it is confident (>= 0.9)
about. A plain CNN is often sure that noise is a digit; ``outlier_weight`` > 0 trains it towards a uniform
softmax on such non-images (outlier exposure, Hendrycks et al. 2019), best with more epochs and
``lr_schedule: cosine`` (BENCHMARKS.md). Unlabelled data: no training — a seeded random-weight CNN of the
same shape serves as a documented, offline feature extractor (random-feature FID: coarser than a trained
extractor, but deterministic and comparable between runs on the same data). Its name is logged with
every number computed from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganops.artifacts import load_folder, save_folder
from ganops.config import ClassifierParams
from ganops.models.classifier import ClassifierConfig, DomainClassifier


@dataclass
class Classifier:
    net: DomainClassifier  # eval mode
    extractor: str  # "domain-classifier" or "random-cnn-seed<N>"
    trained: bool
    info: dict[str, Any]  # accuracy, counts, data hash


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, S, S) -> float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


CONFIDENT = 0.9  # the confidence threshold behind confident_frac, here and in evaluate


def outliers(real: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Synthetic non-images like ``real`` (B, C, S, S) in [-1, 1]: 3 x max(1, B // 8) of them, on the CPU.

    Uniform noise; smooth blobs (noise at 4 or 8 px, upscaled bilinearly); real images with their pixels
    shuffled (the right intensities, no shape).
    """
    B, C, S, _ = real.shape
    k = max(1, B // 8)
    noise = torch.rand(k, C, S, S, generator=g) * 2 - 1
    side = min(S, 4 * 2 ** int(torch.randint(0, 2, (1,), generator=g)))
    blobs = F.interpolate(torch.rand(k, C, side, side, generator=g), size=S, mode="bilinear") * 2 - 1
    flat = real[:k].detach().cpu().flatten(1)  # (k, C*S*S)
    shuffled = flat[:, torch.randperm(flat.shape[1], generator=g)].view(-1, C, S, S)
    return torch.cat([noise, blobs, shuffled])


@torch.no_grad()
def confident_share(net: DomainClassifier, x: torch.Tensor, batch_size: int = 512) -> float:
    """Share of ``x`` (float in [-1, 1]) the net classifies with max softmax >= CONFIDENT."""
    dev = next(net.parameters()).device
    conf = torch.cat([net(c.to(dev)).softmax(1).max(1).values.cpu() for c in x.split(batch_size)])
    return float((conf >= CONFIDENT).double().mean())


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    p: ClassifierParams,
    *,
    seed: int = 0,
    data_hash: str = "",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Classifier:
    """Train on ``images`` (N, C, S, S) uint8 with ``labels`` (N,) (-1 = unlabelled).

    Returns:
        The classifier in eval mode; a random-feature extractor when the data has fewer than two classes.
    """
    torch.manual_seed(seed)
    n_classes = int(labels.max().item()) + 1 if (labels >= 0).all() else 0
    cfg = ClassifierConfig(channels=images.shape[1], n_classes=n_classes if n_classes >= 2 else 0,
                           width=p.width, features=p.features)  # fmt: skip
    net = DomainClassifier(cfg).to(device)
    info: dict[str, Any] = {"data_hash": data_hash, "n_images": int(images.shape[0])}
    if cfg.n_classes == 0:
        return Classifier(net.eval(), f"random-cnn-seed{seed}", False, info)

    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_hold = int(len(images) * p.holdout)
    hold, train = perm[:n_hold], perm[n_hold:]
    opt = torch.optim.Adam(net.parameters(), lr=p.lr)
    steps = max(1, len(train) // p.batch_size)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs * steps)
        if p.lr_schedule == "cosine"
        else None
    )
    odd = torch.Generator().manual_seed(seed + 99)  # the outliers' draws
    bar = tqdm(total=p.epochs * steps, desc="classifier", unit="step", disable=not progress, mininterval=1.0)
    for epoch in range(p.epochs):
        order = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1 + epoch))]
        net.train()
        for i in range(steps):
            idx = order[i * p.batch_size : (i + 1) * p.batch_size]
            x = to_float(images[idx]).to(device)  # (B, C, S, S)
            # light augmentation (1-px shifts) so the classifier judges shapes, not exact pixels
            x = torch.roll(x, shifts=tuple(torch.randint(-1, 2, (2,)).tolist()), dims=(2, 3))
            y = labels[idx].to(device)
            if p.outlier_weight > 0:  # one forward pass for both, so BatchNorm's statistics cover both
                o = outliers(x, odd).to(device)  # (O, C, S, S)
                logits = net(torch.cat([x, o]))  # (B + O, K)
                # cross-entropy against the uniform distribution: -mean_k log softmax_k
                loss = F.cross_entropy(logits[: len(x)], y)
                loss = loss - p.outlier_weight * logits[len(x) :].log_softmax(1).mean()
            else:
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    net.eval()
    if n_hold:
        with torch.no_grad():
            pred = torch.cat([net(to_float(images[c]).to(device)).argmax(1).cpu() for c in hold.split(512)])
        info["holdout_accuracy"] = float((pred == labels[hold]).float().mean())
        info["n_holdout"] = n_hold
        info["holdout_confident_frac"] = confident_share(net, to_float(images[hold]))
    # the yardstick's own check: how often is it sure that noise is one of its classes? (should be ~0)
    g = torch.Generator().manual_seed(seed + 98)
    info["noise_confident_frac"] = confident_share(net, outliers(to_float(images[:512]), g))
    info["outlier_weight"] = p.outlier_weight
    return Classifier(net, "domain-classifier", True, info)


def save_classifier(c: Classifier, out: str | Path) -> None:
    """Write ``classifier.pt`` (weights) and ``config.json`` (constructor args, extractor name, info)."""
    config = {"model": c.net.cfg.to_dict(), "extractor": c.extractor, "trained": c.trained, "info": c.info}
    save_folder(out, {"classifier.pt": c.net.state_dict()}, config)


def load_classifier(out: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Rebuild what :func:`save_classifier` wrote, in eval mode."""
    state, config = load_folder(out, "classifier.pt", map_location=device)
    net = DomainClassifier(ClassifierConfig(**config["model"]))
    net.load_state_dict(state)
    return Classifier(net.to(device).eval(), config["extractor"], config["trained"], config["info"])
