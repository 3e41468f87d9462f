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


def d_loss_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss (Lim & Ye 2017; SN-GAN, BigGAN): mean relu(1 - D(x)) + mean relu(1 + D(G(z)))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_loss_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss: -mean D(G(z))."""
    return -fake_logits.mean()


D_LOSSES = {"bce": d_loss_bce, "hinge": d_loss_hinge}
G_LOSSES = {"bce": g_loss_nonsaturating, "hinge": g_loss_hinge}


def r1_penalty(real_logits: torch.Tensor, real_inputs: list[torch.Tensor]) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean over the batch of ||grad_x D(x)||^2 at real x (all scales summed).

    ``real_inputs`` must have ``requires_grad`` and be what produced ``real_logits``; the graph is kept
    (create_graph) so the penalty trains D. Multiply by gamma / 2 at the call site.
    """
    grads = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0).mean()


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
