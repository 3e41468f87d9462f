"""Judging generated pictures by their nearest neighbours in a feature space: fidelity and diversity apart
(improved precision and recall), and whether the generator copies its training pictures.

- **precision / recall** (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around its
  points, each ball as wide as the distance to the point's k-th nearest neighbour in its own set.
  Precision = the share of generated samples inside the real manifold (are they realistic?); recall = the
  share of real pictures inside the generated manifold (is all of the data covered?). Blurry or broken
  samples lower precision; a collapsed generator keeps precision and loses recall.
- **copy rate**: a generated sample is a copy when it is nearer to its nearest training picture than half
  the distance from that picture to its own nearest other training picture. Without the half (the rule of
  Alaa et al. 2022's "authenticity"), a new real photo of the same kind counts as a copy about half the
  time (measured on the own-photos set: 39 % of held-out real photos); with it, only near-duplicates do. A
  generator that memorises its few hundred training pictures scores ~1; anything new scores ~0. Read it
  beside ``baseline_copy_rate``, the same check of held-out real pictures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

K_NEAREST = 3  # the paper's k for precision / recall
COPY_FACTOR = 0.5  # a copy: nearer to a training picture than half its own nearest neighbour's distance


def _kth_radius(f: torch.Tensor, k: int) -> torch.Tensor:
    """(N, F) -> (N,): each point's distance to its k-th nearest other point of the same set."""
    d = torch.cdist(f, f)
    d.fill_diagonal_(float("inf"))
    return d.kthvalue(min(k, len(f) - 1), dim=1).values


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """(M,) bool: whether each point lies in any ball (``centres`` (N, F), ``radii`` (N,))."""
    return (torch.cdist(points, centres) <= radii[None, :]).any(1)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = K_NEAREST) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` (M, F) against ``real`` (N, F) features, k-NN manifolds."""
    real, fake = real.double(), fake.double()
    precision = _inside(fake, real, _kth_radius(real, k)).double().mean()
    recall = _inside(real, fake, _kth_radius(fake, k)).double().mean()
    return float(precision), float(recall)


@dataclass(frozen=True)
class Copies:
    """The copy check's outcome."""

    rate: float  # share of samples that are copies
    nearest: torch.Tensor  # (M,) index of each sample's nearest training picture
    distance: torch.Tensor  # (M,) its distance
    threshold: torch.Tensor  # (M,) COPY_FACTOR x that training picture's distance to its nearest other one


def copies(fake: torch.Tensor, train: torch.Tensor) -> Copies:
    """The copy check of ``fake`` (M, F) against the training pictures' features ``train`` (N, F)."""
    fake, train = fake.double(), train.double()
    dist, nearest = torch.cdist(fake, train).min(1)
    own = _kth_radius(train, 1)  # each training picture's nearest other one
    threshold = COPY_FACTOR * own[nearest]
    return Copies(float((dist < threshold).double().mean()), nearest, dist, threshold)
