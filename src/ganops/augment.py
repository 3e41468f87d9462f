"""DiffAugment (Zhao et al. 2020): differentiable augmentation for GANs trained on little data.

D sees every image — real or generated, in D's update and in G's — through the same random augmentation
policy, so it cannot memorise the few real pictures, while G's gradients flow back through the (differentiable)
transforms. Ops: ``color`` (brightness, saturation, contrast), ``translation`` (shift by up to 1/8 of the side,
zero fill) and ``cutout`` (zero a square of half the side). A policy is a comma-separated list of them.

Works on one batch (B, C, H, W) or on a pyramid of the same batch at several scales (MSG-GAN): every scale of
a sample gets the same draw, expressed as fractions of the side. Randomness comes from a ``torch.Generator``
on the CPU, so a resumed run continues the same augmentation sequence.
"""

from __future__ import annotations

from typing import overload

import torch
import torch.nn.functional as F

OPS = ("color", "translation", "cutout")
TRANSLATION = 0.125  # max shift, as a fraction of the side
CUTOUT = 0.5  # cutout square side, as a fraction of the image side


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ("color", "translation"); an unknown op is a ValueError naming it."""
    ops = tuple(op.strip() for op in policy.split(",") if op.strip())
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise ValueError(f"unknown DiffAugment op(s) {bad}; choose from {', '.join(OPS)}")
    return ops


Policy = str | tuple[str, ...]


@overload
def diff_augment(
    x: torch.Tensor, policy: Policy, generator: torch.Generator | None = None
) -> torch.Tensor: ...
@overload
def diff_augment(
    x: list[torch.Tensor], policy: Policy, generator: torch.Generator | None = None
) -> list[torch.Tensor]: ...
def diff_augment(
    x: torch.Tensor | list[torch.Tensor], policy: Policy, generator: torch.Generator | None = None
) -> torch.Tensor | list[torch.Tensor]:
    """Apply ``policy`` to images in [-1, 1]: (B, C, H, W), or a list of such at several H, W (same B).

    The identity when ``policy`` is empty. Differentiable with respect to ``x``.
    """
    ops = parse_policy(policy) if isinstance(policy, str) else policy
    xs = list(x) if isinstance(x, list) else [x]
    if not ops:
        return x
    B, dev = xs[0].shape[0], xs[0].device

    def draw(*shape: int) -> torch.Tensor:  # U[0, 1) on the CPU generator, then to the device
        return torch.rand(*shape, generator=generator).to(dev)

    for op in ops:
        if op == "color":
            brightness = draw(B, 1, 1, 1) - 0.5  # +-0.5 (images in [-1, 1]: a quarter of the range)
            saturation = draw(B, 1, 1, 1) * 2  # x0..2 around the per-pixel channel mean
            contrast = draw(B, 1, 1, 1) + 0.5  # x0.5..1.5 around the image mean
            out = []
            for t in xs:
                t = t + brightness
                m = t.mean(1, keepdim=True)
                t = (t - m) * saturation + m
                m = t.mean([1, 2, 3], keepdim=True)
                out.append((t - m) * contrast + m)
            xs = out
        elif op == "translation":
            shift = (draw(B, 2) * 2 - 1) * TRANSLATION  # (B, 2) fraction of the side, in [-1/8, 1/8]
            xs = [_translate(t, shift) for t in xs]
        elif op == "cutout":
            centre = draw(B, 2)  # (B, 2) fraction of the side
            xs = [_cutout(t, centre) for t in xs]
    return xs if isinstance(x, list) else xs[0]


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each image by ``shift`` (B, 2) = (dx, dy) fractions of its side, rounded to whole pixels; zero fill."""
    B, C, H, W = x.shape
    dx = (shift[:, 0] * W).round().long()  # (B,)
    dy = (shift[:, 1] * H).round().long()
    # Gather with index arithmetic (as the reference implementation): pad by the max shift, then pick windows.
    ph, pw = int(TRANSLATION * H) + 1, int(TRANSLATION * W) + 1  # more than any shift
    ys = torch.arange(H, device=x.device)[None, :] - dy[:, None] + ph  # (B, H) rows in the padded image
    xs = torch.arange(W, device=x.device)[None, :] - dx[:, None] + pw  # (B, W)
    padded = F.pad(x, [pw, pw, ph, ph])  # (B, C, H + 2ph, W + 2pw), zeros around
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Zero a square of side CUTOUT * side around ``centre`` (B, 2) (fractions of the side) in each image."""
    B, C, H, W = x.shape
    gy = (torch.arange(H, device=x.device, dtype=x.dtype) + 0.5) / H  # pixel centres as fractions
    gx = (torch.arange(W, device=x.device, dtype=x.dtype) + 0.5) / W
    half = CUTOUT / 2
    inside_y = (gy[None, :] - centre[:, 1:2]).abs() < half  # (B, H)
    inside_x = (gx[None, :] - centre[:, 0:1]).abs() < half  # (B, W)
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)
