"""Adversarial losses and the loss object of a GAN step; content, style and TV losses of style transfer.

The loss functions are pure functions of logits or features. :class:`GanLoss` owns the two phases of a GAN
step as stylegan2-ada's ``training/loss.py`` does: it runs the nets, applies DiffAugment and lazy R1, and
freezes D for G's phase; the training loop keeps the optimisers, the data and the order of things. No
optimisers, files or tracking here.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ganops.augment import diff_augment


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


@dataclass
class DPhase:
    """What D's phase computed, for the loop to step on (or skip) and to report."""

    loss: torch.Tensor  # the adversarial D loss, ()
    total: torch.Tensor  # what D trains on: loss (+ lazy R1 when due), ()
    real_logits: torch.Tensor  # D(x), (B,)
    fake_logits: torch.Tensor  # D(G(z)), (B,)
    fakes: list[torch.Tensor]  # G(z) at every scale [(B, C, s, s)], for G's phase
    reconstruction: torch.Tensor | None = (
        None  # a self-supervised D's error decoding the reals, () (in total)
    )


class GanLoss:
    """The D and G phases of a GAN step: adversarial loss, lazy R1, DiffAugment, D frozen for G's phase.

    Args:
        G_fwd: G's forward to every scale, ``(z, y) -> [(B, C, s, s)]`` (DDP-wrapped when data-parallel).
        D_fwd: D's forward in D's phase (DDP-wrapped when data-parallel: its gradients are averaged).
        D: the raw D, called in G's phase: frozen there, and a DDP forward whose parameters get no
            gradient would leave its reducer waiting.
        loss: "bce" or "hinge".
        r1_gamma: R1 weight (0 = off); r1_every: lazy regularisation interval in D steps.
        policy: DiffAugment ops (() = off), drawn from ``aug_rng`` (checkpointed by the loop).
        amp: bf16 autocast of the forward passes on ``device_type``.
    """

    def __init__(
        self,
        G_fwd: nn.Module,
        D_fwd: nn.Module,
        D: nn.Module,
        *,
        loss: str,
        r1_gamma: float,
        r1_every: int,
        policy: tuple[str, ...],
        aug_rng: torch.Generator,
        amp: bool,
        device_type: str,
    ) -> None:
        self.G_fwd, self.D_fwd, self.D = G_fwd, D_fwd, D
        self.d_loss, self.g_loss = D_LOSSES[loss], G_LOSSES[loss]
        self.r1_gamma, self.r1_every = r1_gamma, r1_every
        self.policy, self.aug_rng = policy, aug_rng
        self.amp_on, self.device_type = amp, device_type

    def amp(self) -> torch.autocast:
        """gan.amp: the nets' forward passes in bfloat16 (tensor cores on CUDA; slower on most CPUs); losses,
        optimiser state and weights stay float32. A fresh context each use (autocast keeps enter state)."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp_on)

    def d_phase(
        self,
        reals: list[torch.Tensor],
        y_real: torch.Tensor | None,
        z: torch.Tensor,
        y_fake: torch.Tensor | None,
        *,
        n: int,
        keep_graph: bool,
    ) -> DPhase:
        """D's loss on a real batch and a generated one; backward and step are the loop's.

        BCE: maximise log D(x) + log(1 - D(G(z))); hinge: push D(x) above 1 and D(G(z)) below -1. Real and
        generated batches go through the same DiffAugment policy (identity when off). Conditional: D judges
        each image with its class (real: the label; fake: the class G was asked for).

        Args:
            reals: [(B, C, s, s)] in [-1, 1], the real batch at every scale D sees.
            y_real, y_fake: (B,) classes (conditional), else None.
            z: (B, Z, 1, 1) noise.
            n: D steps done before this one in the run (decides whether lazy R1 is due).
            keep_graph: keep G's graph in ``fakes`` (the last D step of a G step; earlier ones are only
                ever used detached).
        """
        with nullcontext() if keep_graph else torch.no_grad(), self.amp():
            fakes = [f.float() for f in self.G_fwd(z, y_fake)]  # [(B, C, s, s)]
        r1 = self.r1_gamma > 0 and n % self.r1_every == 0
        real_in = diff_augment(reals, self.policy, self.aug_rng)
        if r1:  # R1 needs the gradient with respect to D's (augmented) real input
            real_in = [t.detach().requires_grad_(True) for t in real_in]
        rec = None
        with self.amp():
            if getattr(self.D, "self_supervised", False):  # fastgan: D also decodes the reals it judges
                real_logits, rec = self.D_fwd(real_in, y_real, reconstruct=True)
                real_logits, rec = real_logits.float(), rec.float()  # (B,), ()
            else:
                real_logits = self.D_fwd(real_in, y_real).float()  # (B,)
        fake_in = diff_augment([f.detach() for f in fakes], self.policy, self.aug_rng)  # D's step, not G's
        with self.amp():
            fake_logits = self.D_fwd(fake_in, y_fake).float()  # (B,)
        loss = self.d_loss(real_logits, fake_logits)
        total = loss if rec is None else loss + rec
        if r1:  # lazy regularisation: every r1_every D steps, scaled up to match
            total = total + self.r1_gamma / 2 * self.r1_every * r1_penalty(real_logits, real_in)
        return DPhase(loss, total, real_logits, fake_logits, fakes, rec)

    def g_phase(self, fakes: list[torch.Tensor], y_fake: torch.Tensor | None) -> torch.Tensor:
        """G's loss through D, backpropagated into G's gradients; returns the loss, ().

        BCE: maximise log D(G(z)) (non-saturating); hinge: maximise D(G(z)). D's weights are frozen, so
        its backward computes input gradients only.
        """
        self.D.requires_grad_(False)
        fake_in = diff_augment(fakes, self.policy, self.aug_rng)
        with self.amp():
            loss = self.g_loss(self.D(fake_in, y_fake).float())
        loss.backward()
        self.D.requires_grad_(True)
        return loss


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
