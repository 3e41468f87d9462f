"""How good is a generator, in numbers that mean something offline (what stage `evaluate` reports).

With the domain classifier (see ``classifier.py``), on N generated samples:
- **coverage**: classes receiving at least ``coverage_min_frac`` of the samples (out of K);
- **kl**: KL(generated || real) between predicted-class histograms (0 = same class balance; a generator
  collapsed onto one of 10 balanced classes scores log 10 ~ 2.3);
- **mean_confidence** and **confident_frac** (share of samples with max softmax >= 0.9);
- **label_agreement** (class-conditional generators): share of samples the classifier puts in the class G
  was asked for;
- **domain_fid / domain_kid**: FID and KID (torchmetrics) in the classifier's feature space.
Every number comes with the real-vs-real **baseline** (two disjoint halves of the real data, same sample
count), so "FID 4.1" can be read against "real data scores 1.2". Unlabelled data gets FID/KID only, in a
seeded random-CNN feature space, named in ``extractor``.
Optionally (``inception: true``) the standard Inception FID, if the InceptionV3 weights are cached.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ganops.classifier import CONFIDENT, Classifier, to_float
from ganops.config import EvaluateParams
from ganops.models.classifier import FeatureExtractor
from ganops.models.gan import BaseGenerator, seeded_noise
from ganops.models.style import VGGEmbedding
from ganops.neighbours import Copies, copies, precision_recall
from ganops.spectral import artifact_from_spectra, log_spectrum, spectral_metrics

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's InceptionV3 (FID standard)


class EvaluationError(RuntimeError):
    """Evaluation cannot run as configured (e.g. Inception weights required but absent)."""


@torch.no_grad()
def generate(
    G: BaseGenerator, n: int, *, seed: int, batch_size: int = 256, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """``n`` samples from ``G`` in eval mode: (n, C, S, S) float in [-1, 1], on the CPU. Seeded noise."""
    G.eval()
    return torch.cat(
        [G(c.to(device)).float().cpu() for c in seeded_noise(n, G.cfg.latent_dim, seed).split(batch_size)]
    )


def asked_classes(G: BaseGenerator, n: int, *, seed: int, n_classes: int) -> torch.Tensor | None:
    """The classes a conditional G draws for ``generate(G, n, seed=seed)``'s samples, (n,).

    None unless G is conditional over exactly ``n_classes`` classes (the classifier's: no agreement to
    measure with classes it does not know).
    """
    return G.labels_for(seeded_noise(n, G.cfg.latent_dim, seed)) if G.cfg.n_classes == n_classes > 0 else None


def _agreement(probs: torch.Tensor, asked: torch.Tensor) -> float:
    """Share of samples whose predicted class (argmax of ``probs`` (M, K)) is the one asked for (M,)."""
    return float((probs.argmax(1) == asked.to(probs.device)).double().mean())


@torch.no_grad()
def _probs(net: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([net(c).softmax(1) for c in x.split(batch_size)])


def class_stats(probs: torch.Tensor, real_hist: torch.Tensor, min_frac: float) -> dict[str, float]:
    """Coverage, KL(gen || real), confidence from softmax ``probs`` (N, K) and the real class histogram (K,)."""
    K = probs.shape[1]
    hist = torch.bincount(probs.argmax(1), minlength=K).double() / len(probs)
    real = real_hist.double() / real_hist.sum()
    nz = hist > 0
    kl = float((hist[nz] * (hist[nz] / real[nz].clamp_min(1e-12)).log()).sum())
    conf = probs.max(1).values
    return {
        "coverage": int((hist >= min_frac).sum()),
        "kl": kl,
        "mean_confidence": float(conf.mean()),
        "confident_frac": float((conf >= CONFIDENT).double().mean()),
    }


VISIBLE_GRID = 0.2  # log10: where the summary says GRID (a +-3-grey-level 8-px checkerboard on photos: 0.25)
WEAK_ACCURACY = 0.5  # a classifier right on fewer held-out real pictures than this cannot judge coverage
WEAK_CONFIDENT = 0.5  # ... nor one confident about fewer real pictures than this


def classifier_verdict(clf: Classifier, baseline_confident_frac: float) -> str:
    """ "" when the domain classifier can judge class coverage, else why not (it then drives no verdict)."""
    if not clf.trained:
        return "unlabelled data: no classes to cover"
    acc = clf.info.get("holdout_accuracy")
    if acc is not None and acc < WEAK_ACCURACY:
        return f"too weak to judge: held-out accuracy {acc:.2f}"
    if baseline_confident_frac < WEAK_CONFIDENT:
        return f"too weak to judge: confident about {100 * baseline_confident_frac:.0f}% of real pictures"
    return ""


def collapsed(stats: dict[str, Any], real: dict[str, Any], p: EvaluateParams) -> bool:
    """Mode collapse, judged against what the real pictures themselves score with the same classifier: fewer
    classes covered than real pictures cover, or a class histogram's KL over ``p.kl_threshold`` beyond theirs."""
    return bool(stats["coverage"] < real["coverage"] or stats["kl"] > p.kl_threshold + real["kl"])


def frechet_distance(extractor: torch.nn.Module, keep_real: bool = False) -> FrechetInceptionDistance:
    """The one Fréchet distance (torchmetrics' FID) in ``extractor``'s feature space, for the evaluate stage
    and the training monitor alike. ``keep_real``: ``reset()`` keeps the real statistics (update them once)."""
    return FrechetInceptionDistance(feature=extractor, reset_real_features=not keep_real)


def fid_kid(
    extractor: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    kid_subset: int,
    batch_size: int,
    seed: int = 0,
) -> dict[str, float]:
    """FID and KID (mean, std) between two image sets, both (N, C, S, S) float in [-1, 1].

    KID averages over random subsets, which torchmetrics draws from torch's global generator: they are drawn
    here from ``seed`` (the global generator is left as it was), so the same inputs give the same KID."""
    fid = frechet_distance(extractor)
    with warnings.catch_warnings():  # "KID keeps all features in memory": intended, sample sets are small
        warnings.simplefilter("ignore", UserWarning)
        size = min(kid_subset, len(real), len(fake))
        kid = KernelInceptionDistance(feature=extractor, subsets=50, subset_size=size)
    for metric in (fid, kid):
        for c in real.split(batch_size):
            metric.update(c, real=True)
        for c in fake.split(batch_size):
            metric.update(c, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


def headline(p: EvaluateParams, channels: int) -> str:
    """The feature space of the headline numbers: ``p.extractor``, with ``auto`` = ``domain`` for 1-channel
    pictures (the digit sets: their classifier knows them) and ``vgg19`` for colour pictures."""
    if p.extractor != "auto":
        return p.extractor
    return "vgg19" if channels == 3 else "domain"


class _Given(torch.nn.Module):
    """Features computed beforehand, handed to torchmetrics' FID / KID as if extracted (identity)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f


@torch.no_grad()
def _features(extractor: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([extractor(c) for c in x.split(batch_size)]).float()


def feature_metrics(extractor: torch.nn.Module, ref: torch.Tensor, other: torch.Tensor, fake: torch.Tensor,
                    p: EvaluateParams, seed: int, prefix: str = "") -> tuple[dict[str, float], Copies]:  # fmt: skip
    """In one feature space (each picture through ``extractor`` once): precision / recall of ``fake`` against
    ``ref``, the copy rate against all real pictures, with ``prefix`` FID / KID too (``<prefix>fid``, ...),
    each beside the real-vs-real value (``other`` in place of ``fake``); and the copy check for the sheet."""
    f_ref, f_other, f_fake = (_features(extractor, x, p.batch_size) for x in (ref, other, fake))
    precision, recall = precision_recall(f_ref, f_fake)
    base_p, base_r = precision_recall(f_ref, f_other)
    found = copies(f_fake, torch.cat([f_ref, f_other]))
    m = {"precision": precision, "recall": recall, "baseline_precision": base_p, "baseline_recall": base_r,
         "copy_rate": found.rate, "baseline_copy_rate": copies(f_other, f_ref).rate}  # fmt: skip
    if prefix:
        given = _Given(f_ref.shape[1])
        gen = fid_kid(given, f_ref, f_fake, p.kid_subset_size, p.batch_size, seed)
        base = fid_kid(given, f_ref, f_other, p.kid_subset_size, p.batch_size, seed)
        m |= {f"{prefix}fid": gen["fid"], f"{prefix}kid": gen["kid"], f"{prefix}kid_std": gen["kid_std"],
              f"baseline_{prefix}fid": base["fid"], f"baseline_{prefix}kid": base["kid"]}  # fmt: skip
    return m, found


def evaluate_samples(
    real: torch.Tensor,
    labels: torch.Tensor,
    fake: torch.Tensor,
    clf: Classifier,
    p: EvaluateParams,
    *,
    seed: int = 0,
    fake_labels: torch.Tensor | None = None,
    embedding: VGGEmbedding | None = None,
) -> tuple[dict[str, Any], Copies]:
    """Score ``fake`` against the prepared real data, every number beside its real-vs-real baseline.

    Args:
        real: (N, C, S, S) uint8 prepared images; labels: (N,) (-1 = unlabelled).
        fake: (M, C, S, S) float in [-1, 1], M >= 2.
        clf: the domain classifier (or random-feature extractor) for this data.
        p: the ``evaluate`` params group.
        seed: splits the real data into the two baseline halves, and draws the KID subsets.
        fake_labels: (M,) the classes a conditional generator was asked for (-> label_agreement).
        embedding: the VGG19 features (headline ``vgg19``): vgg_fid / vgg_kid, and the space of precision,
            recall and the copy check (else the classifier's features).

    Returns:
        Flat metrics (domain_fid, domain_kid, baseline_*; vgg_fid, vgg_kid; precision, recall, copy_rate;
        artifact_score, spectrum_distance with their floors; coverage, n_classes, kl, confidence and
        mode_collapse when the classifier can judge; sample counts; ``extractor``, the headline space's
        name), and the copy check (each sample's nearest real picture, for the sheet).
    """
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    half = len(real) // 2
    ref, other = to_float(real[perm[:half]]), to_float(real[perm[half : 2 * half]])
    ext = FeatureExtractor(clf.net)
    gen = fid_kid(ext, ref, fake, p.kid_subset_size, p.batch_size, seed)
    base = fid_kid(ext, ref, other, p.kid_subset_size, p.batch_size, seed)
    m: dict[str, Any] = {
        "extractor": embedding.name if embedding is not None else clf.extractor,
        "domain_extractor": clf.extractor,
        "n_generated": int(len(fake)),
        "n_real_reference": int(half),
        "domain_fid": gen["fid"],
        "domain_kid": gen["kid"],
        "domain_kid_std": gen["kid_std"],
        "baseline_fid": base["fid"],
        "baseline_kid": base["kid"],
    }
    if embedding is not None:
        feats, found = feature_metrics(embedding, ref, other, fake, p, seed, prefix="vgg_")
    else:  # the classifier's features (their FID / KID are the domain ones above)
        feats, found = feature_metrics(ext, ref, other, fake, p, seed)
    m |= feats | spectral_metrics(fake, ref, other, seed=seed)
    if clf.trained:
        m |= _class_metrics(clf, labels, other, fake, p, fake_labels)
    return m, found


def _class_metrics(clf: Classifier, labels: torch.Tensor, other: torch.Tensor, fake: torch.Tensor,
                   p: EvaluateParams, fake_labels: torch.Tensor | None) -> dict[str, Any]:  # fmt: skip
    """Coverage, KL and confidence of ``fake`` and of the real half ``other``; the mode-collapse verdict
    when the classifier can judge (``classifier_verdict``)."""
    K = clf.net.cfg.n_classes
    real_hist = torch.bincount(labels[labels >= 0], minlength=K)
    probs = _probs(clf.net, fake, p.batch_size)  # (M, K)
    g = class_stats(probs, real_hist, p.coverage_min_frac)
    b = class_stats(_probs(clf.net, other, p.batch_size), real_hist, p.coverage_min_frac)
    m: dict[str, Any] = g | {"n_classes": K, "baseline_coverage": b["coverage"], "baseline_kl": b["kl"],
                             "baseline_mean_confidence": b["mean_confidence"],
                             "baseline_confident_frac": b["confident_frac"]}  # fmt: skip
    weak = classifier_verdict(clf, b["confident_frac"])
    if weak:
        m["classifier_note"] = weak
    else:
        m["mode_collapse"] = collapsed(g, b, p)
    if fake_labels is not None:
        m["label_agreement"] = _agreement(probs, fake_labels)
    return m


class Monitor:
    """A cheap quality check to run during training: ``n`` samples, scored like ``evaluate`` does.

    Real statistics (class histogram and the real pictures' own class stats, feature mean/covariance,
    spectrum, VGG features) are computed once; each call generates ``n`` samples with fixed noise and
    returns domain_fid (in the classifier's feature space; with few samples it reads higher than the evaluate
    stage's, compare it only with itself), artifact_score (against all real pictures), vgg_kid with an
    ``embedding``, and on labelled data coverage, kl, confident_frac, mode_collapse (only when the classifier
    can judge) and, for a class-conditional G over the same classes, label_agreement.
    """

    def __init__(self, real: torch.Tensor, labels: torch.Tensor, clf: Classifier, p: EvaluateParams, *,
                 n: int = 500, seed: int = 0, device: str | torch.device = "cpu",
                 embedding: VGGEmbedding | None = None):  # fmt: skip
        self.clf, self.p, self.n, self.seed, self.device = clf, p, n, seed, device
        # the evaluate stage's FID: real features summed once, fake ones afresh at every call
        self.fid = frechet_distance(FeatureExtractor(clf.net), keep_real=True)
        with torch.no_grad():
            for c in real.split(p.batch_size):
                self.fid.update(to_float(c), real=True)
        self.L_real = log_spectrum(to_float(real))
        self.embedding, self.kid = embedding, None
        if embedding is not None:
            with warnings.catch_warnings():  # "KID keeps all features in memory": intended
                warnings.simplefilter("ignore", UserWarning)
                size = min(p.kid_subset_size, len(real), n)
                self.kid = KernelInceptionDistance(feature=embedding, subsets=50, subset_size=size,
                                                   reset_real_features=False)  # fmt: skip
            for c in real.split(p.batch_size):
                self.kid.update(to_float(c), real=True)
        K = clf.net.cfg.n_classes
        self.real_hist = torch.bincount(labels[labels >= 0], minlength=K) if clf.trained else None
        self.real_stats: dict[str, Any] = {}
        if self.real_hist is not None:
            self.real_stats = class_stats(_probs(clf.net, to_float(real), p.batch_size), self.real_hist,
                                          p.coverage_min_frac)  # fmt: skip
            self.weak = classifier_verdict(clf, self.real_stats["confident_frac"])

    @torch.no_grad()
    def __call__(self, G: torch.nn.Module) -> dict[str, Any]:
        fake = generate(G, self.n, seed=self.seed, batch_size=self.p.batch_size, device=self.device)  # type: ignore[arg-type]
        self.fid.reset()
        for c in fake.split(self.p.batch_size):
            self.fid.update(c, real=False)
        m: dict[str, Any] = {"domain_fid": float(self.fid.compute())}
        m["artifact_score"] = artifact_from_spectra(log_spectrum(fake), self.L_real)
        if self.kid is not None:
            self.kid.reset()
            for c in fake.split(self.p.batch_size):
                self.kid.update(c, real=False)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                m["vgg_kid"] = float(self.kid.compute()[0])
        if self.real_hist is not None:
            probs = _probs(self.clf.net, fake, self.p.batch_size)  # (n, K)
            m |= class_stats(probs, self.real_hist, self.p.coverage_min_frac)
            if not self.weak:
                m["mode_collapse"] = collapsed(m, self.real_stats, self.p)
            asked = asked_classes(G, self.n, seed=self.seed, n_classes=len(self.real_hist))  # type: ignore[arg-type]
            if asked is not None:
                m["label_agreement"] = _agreement(probs, asked)
        return m


def inception_weights_path() -> Path:
    """Where torch.hub keeps the InceptionV3 FID weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    home = Path(
        os.environ.get("TORCH_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    )
    return home / "hub" / "checkpoints" / INCEPTION_FILE


def inception_fid(real: torch.Tensor, fake: torch.Tensor, batch_size: int = 64) -> float:
    """Standard FID (InceptionV3 pool3, torch-fidelity weights) between float [-1, 1] image sets.

    Raises:
        EvaluationError: the weights file is not in the TORCH_HOME cache (never downloaded here).
    """
    path = inception_weights_path()
    if not path.is_file():
        raise EvaluationError(
            f"evaluate.inception is true but the InceptionV3 weights are not cached: place {INCEPTION_FILE} "
            f"at {path} (it is what torchmetrics/torch-fidelity download when online), or set evaluate.inception: false"
        )
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path), normalize=True)

    def rgb01(x: torch.Tensor) -> torch.Tensor:  # (B, C, S, S) [-1, 1] -> (B, 3, S, S) [0, 1]
        x = (x + 1) / 2
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    for c in real.split(batch_size):
        fid.update(rgb01(c), real=True)
    for c in fake.split(batch_size):
        fid.update(rgb01(c), real=False)
    return float(fid.compute())


def summary_line(m: dict[str, Any]) -> str:
    """One human line: the headline numbers against their baselines."""
    if "vgg_kid" in m:
        parts = [f"VGG KID {m['vgg_kid']:.4f} (real vs real {m['baseline_vgg_kid']:.4f})",
                 f"VGG FID {m['vgg_fid']:.1f} ({m['baseline_vgg_fid']:.1f})"]  # fmt: skip
    else:
        parts = [f"domain FID {m['domain_fid']:.2f} (real vs real {m['baseline_fid']:.2f})"]
    if "coverage" in m:
        parts.append(f"coverage {m['coverage']}/{m['n_classes']}")
        parts.append(f"KL {m['kl']:.3f}")
        real = f" (real {100 * m['baseline_confident_frac']:.0f}%)" if "baseline_confident_frac" in m else ""
        parts.append(f"confident {100 * m['confident_frac']:.0f}%{real}")
        if "label_agreement" in m:
            parts.append(f"class as asked {100 * m['label_agreement']:.0f}%")
        if m.get("mode_collapse"):
            parts.append("MODE COLLAPSE")
        if m.get("classifier_note"):
            parts.append(f"classifier {m['classifier_note']}")
    if "artifact_score" in m:  # GRID: above the noise floor and a visible peak (1.6x its surroundings)
        grid = " GRID" if m["artifact_score"] > max(m["artifact_floor"], VISIBLE_GRID) else ""
        parts.append(f"artifacts {m['artifact_score']:.2f} (floor {m['artifact_floor']:.2f}){grid}")
    if "precision" in m:
        parts.append(f"precision {m['precision']:.2f} / recall {m['recall']:.2f}")
        parts.append(f"copies {100 * m['copy_rate']:.0f}% (real {100 * m['baseline_copy_rate']:.0f}%)")
    parts.append(f"{m['n_generated']} samples, extractor {m['extractor']}")
    return ", ".join(parts) if not math.isnan(m["domain_fid"]) else "evaluation produced NaN"
