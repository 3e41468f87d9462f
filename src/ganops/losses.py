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
