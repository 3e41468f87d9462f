"""Adversarial losses. Pure functions of logits: no nets, no optimisers, no I/O."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of the lesson: real labelled 1, generated labelled 0 (BCE on logits).

    Args:
        real_logits: D(x), shape (B,).
        fake_logits: D(G(z)) with G detached, shape (B,).
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss: make D call fakes real (target 1) — the non-saturating form, -log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ----------------------------------------------------------------------------- style transfer


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix of features (B, C, H, W) -> (B, C, C), normalised by C*H*W (size-independent)."""
    B, C, H, W = f.shape
    f = f.reshape(B, C, H * W)
    return f @ f.transpose(1, 2) / (C * H * W)


def content_loss(feat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of feature maps."""
    return F.mse_loss(feat, target)


def style_loss(
    feats: dict[str, torch.Tensor], target_grams: dict[str, torch.Tensor], weights: dict[str, float]
) -> torch.Tensor:
    """Weighted sum over layers of the squared Gram-matrix difference (Gatys et al.)."""
    total = feats[next(iter(weights))].new_zeros(())
    for name, w in weights.items():
        G = gram(feats[name])
        total = total + w * F.mse_loss(G, target_grams[name].expand_as(G), reduction="sum") / G.shape[0]
    return total


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Total variation (mean absolute difference of neighbouring pixels): a smoothness prior."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
