"""The domain classifier behind ganops' offline quality metrics.

A small CNN trained on the prepared real data. Its penultimate activations are the feature space for
"domain FID/KID" (the Inception-FID recipe with a feature extractor that knows the domain and works
offline); its softmax gives class coverage, the class-histogram KL and confidence of generated samples.

(B, C, S, S) in [-1, 1] -> conv 3x3 (w) -> pool -> conv 3x3 (2w) -> pool -> conv 3x3 (4w) -> global avg
-> Linear + ReLU (F features) -> Linear (K logits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ClassifierConfig:
    """Constructor arguments, stored beside the weights."""

    channels: int = 1  # C
    n_classes: int = 10  # K (0 for an untrained random-feature extractor on unlabelled data)
    width: int = 32  # w
    features: int = 64  # F, the dimension FID/KID are computed in

    def to_dict(self) -> dict:
        return asdict(self)


class DomainClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.body = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(True),  # (B, w, S, S)
            nn.MaxPool2d(2),  # (B, w, S/2, S/2)
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(True),  # (B, 2w, S/2, S/2)
            nn.MaxPool2d(2),  # (B, 2w, S/4, S/4)
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(True),  # (B, 4w, S/4, S/4)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w); size-agnostic
            nn.Linear(4 * w, cfg.features), nn.ReLU(True),  # (B, F): the feature space
        )  # fmt: skip
        self.head = nn.Linear(cfg.features, max(cfg.n_classes, 1))  # (B, K)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [-1, 1] -> (B, F) penultimate features."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FeatureExtractor(nn.Module):
    """Adapter for torchmetrics FID/KID: images in, (B, F) features out, with ``num_features`` set."""

    def __init__(self, net: DomainClassifier):
        super().__init__()
        self.net = net.eval()
        self.num_features = net.cfg.features

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:  # torchmetrics probes with uint8 dummies
            x = x.float() / 127.5 - 1
        return self.net.features(x)
