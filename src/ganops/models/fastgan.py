"""FastGAN (Liu et al. 2021, "Towards faster and stabilized GAN training for high-fidelity few-shot image
synthesis"): a generator for a few hundred pictures, and a discriminator that must also reconstruct them.

G: z (B, Z, 1, 1) -> ConvTranspose 4x4 -> BN -> GLU (B, c4, 4, 4), then one up block per doubling, each
nearest x2 -> conv 3x3 -> BN -> GLU (every other block, from 8x8 on, with a second conv and noise injection
whose weight starts at 0), to a conv 3x3 + Tanh (B, C, S, S). Skip-layer excitation (SLE) lets a small
resolution gate a large one's channels: pooled to 4x4 -> conv 4x4 -> Swish -> conv 1x1 -> sigmoid, one
weight per channel; pairs (r, 16r) as in the paper (4 -> 64, 8 -> 128, 16 -> 256), and (4, S) below 64 px.
Every conv is spectrally normalised (in G too, as the paper's code).

D: conv 3x3 at S, then down blocks to 8x8, each the average of (conv 4x4 s2 -> BN -> LReLU -> conv 3x3 ->
BN -> LReLU) and (avg-pool -> conv 1x1 -> BN -> LReLU); a conv 1x1 -> BN -> LReLU -> conv 4x4 head whose
5x5 map is averaged to one logit per image. Self-supervision: on real images D's 8x8 features are decoded
back to the whole picture and a random quarter of its 16x16 features to that quarter (at up to 32 px), and
the reconstruction error (L1 here; the paper uses LPIPS, which needs downloaded weights) joins D's loss.
``D(x, reconstruct=True)`` returns ``(logits, reconstruction loss)``: the one thing the training loop asks
of a self-supervised D (``D.self_supervised``).

Sized for a CPU by default: G's channels are ``ngf * 16 / side`` (ngf 32: 128 at 4x4 ... 8 at 64x64), D's
``ndf * 32 / side`` (ndf 32: 16 at 64x64 ... 128 at 8x8), at least 8; a GPU takes wider nets (ngf, ndf 64+).
Unconditional (``gan.conditional: auto`` leaves it so on class folders). Its noise is drawn from torch's
global generator in training (seeded, one stream per rank under DDP, each saved in every checkpoint:
resuming is exact); in eval mode each noise layer adds a fixed map drawn at build time, so the exported
G(z) is a pure function of z.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganops.models.gan import BaseGenerator, GANConfig, MinibatchStd, antialiased

_sn = nn.utils.parametrizations.spectral_norm


def conv(a: int, b: int, k: int, s: int = 1, p: int = 0, bias: bool = False) -> nn.Module:
    """A spectrally normalised conv."""
    return _sn(nn.Conv2d(a, b, k, s, p, bias=bias))


def g_width(cfg: GANConfig, side: int) -> int:
    """G's channels at ``side`` x ``side``."""
    return max(cfg.ngf * 16 // side, 8)


def d_width(cfg: GANConfig, side: int) -> int:
    """D's channels at ``side`` x ``side``."""
    return max(cfg.ndf * 32 // side, 8)


class NoiseInjection(nn.Module):
    """``x + w * noise``, one learned weight starting at 0; noise (B, 1, H, W) ~ N(0, 1) in training, a fixed
    map (drawn when the net is built, kept in its state) in eval mode."""

    fixed: torch.Tensor

    def __init__(self, side: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.register_buffer("fixed", torch.randn(1, 1, side, side))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        if self.training:
            # torch's global stream, drawn on the CPU so that a run draws the same noise on any device
            noise = torch.randn(B, 1, H, W, dtype=x.dtype).to(x.device)
        else:
            noise = self.fixed.to(x.dtype).expand(B, 1, H, W)
        return x + self.weight * noise


def up_block(a: int, b: int, side: int, comp: bool) -> nn.Sequential:
    """(B, a, side/2, side/2) -> (B, b, side, side): nearest x2, conv 3x3, BN, GLU (``comp``: twice, with
    noise injection)."""
    layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest"), conv(a, 2 * b, 3, 1, 1)]
    if comp:
        layers.append(NoiseInjection(side))
    layers += [nn.BatchNorm2d(2 * b), nn.GLU(1)]
    if comp:
        layers += [conv(b, 2 * b, 3, 1, 1), NoiseInjection(side), nn.BatchNorm2d(2 * b), nn.GLU(1)]
    return nn.Sequential(*layers)


class SkipExcitation(nn.Module):
    """Skip-layer excitation: ``small`` (B, a, h, w) gates ``big`` (B, b, H, W) channel by channel, with
    weights in (0, 1): big * sigmoid(conv1x1(swish(conv4x4(pool4(small)))))."""

    def __init__(self, a: int, b: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), conv(a, b, 4), nn.SiLU(), conv(b, b, 1), nn.Sigmoid()
        )

    def forward(self, small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        return big * self.gate(small)  # (B, b, 1, 1) broadcast over (B, b, H, W)


def sle_pairs(S: int) -> list[tuple[int, int]]:
    """(small side, big side) of each skip-layer excitation for an S px generator."""
    pairs = [(r, 16 * r) for r in (4, 8, 16) if 16 * r <= S]
    return pairs or ([(4, S)] if S >= 16 else [])


class FastGenerator(BaseGenerator):
    """FastGAN's generator, unconditional: z (B, Z) or (B, Z, 1, 1) -> (B, C, S, S) in [-1, 1]."""

    def __init__(self, cfg: GANConfig):
        super().__init__(cfg)
        S, w = cfg.image_size, lambda side: g_width(cfg, side)
        # (B, Z, 1, 1) -> (B, w4, 4, 4)
        self.init = nn.Sequential(
            _sn(nn.ConvTranspose2d(cfg.latent_dim, 2 * w(4), 4, 1, 0, bias=False)), nn.BatchNorm2d(2 * w(4)),
            nn.GLU(1),
        )  # fmt: skip
        sides = [4 * 2**i for i in range(1, cfg.n_blocks + 1)]  # [8, 16, ..., S]
        # (B, w(s/2), s/2, s/2) -> (B, w(s), s, s); 8, 32, 128: with noise and a second conv
        self.ups = nn.ModuleDict(
            {str(s): up_block(w(s // 2), w(s), s, comp=int(math.log2(s)) % 2 == 1) for s in sides}
        )
        self.sle = nn.ModuleDict({f"{a}_{b}": SkipExcitation(w(a), w(b)) for a, b in sle_pairs(S)})
        self.gated_by = {b: a for a, b in sle_pairs(S)}  # big side -> the small side that gates it
        # (B, w(S), S, S) -> (B, C, S, S)
        self.to_img = nn.Sequential(conv(w(S), cfg.channels, 3, 1, 1, bias=True), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.init(self._input(z, labels))  # (B, w4, 4, 4)
        feats = {4: h}
        for key, block in self.ups.items():
            s = int(key)
            h = block(h)  # (B, w(s), s, s)
            if s in self.gated_by:  # skip-layer excitation: the small map gates this one's channels
                a = self.gated_by[s]
                h = self.sle[f"{a}_{s}"](feats[a], h)
            feats[s] = h
        return self.to_img(h)


class DownBlock(nn.Module):
    """(B, a, H, W) -> (B, b, H/2, W/2), the mean of a strided-conv path and an average-pool path."""

    def __init__(self, a: int, b: int, antialias: bool = False):
        super().__init__()
        self.main = nn.Sequential(
            *antialiased(conv(a, b, 4, 2, 1), a, antialias), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True),
            conv(b, b, 3, 1, 1), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True),
        )  # fmt: skip
        self.direct = nn.Sequential(
            nn.AvgPool2d(2), conv(a, b, 1), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.direct(x)) / 2


def decoder(a: int, ups: int, channels: int) -> nn.Sequential:
    """(B, a, h, w) -> (B, channels, h * 2^ups, w * 2^ups) in [-1, 1]: nearest x2 + conv 3x3 + BN + GLU blocks,
    halving the width, then conv 3x3 + Tanh (the paper's simple decoder)."""
    layers: list[nn.Module] = []
    for _ in range(ups):
        b = max(a // 2, 8)
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(a, 2 * b, 3, 1, 1), nn.BatchNorm2d(2 * b),
                   nn.GLU(1)]  # fmt: skip
        a = b
    return nn.Sequential(*layers, conv(a, channels, 3, 1, 1, bias=True), nn.Tanh())


class FastDiscriminator(nn.Module):
    """FastGAN's self-supervised discriminator: images (B, C, S, S) -> logits (B,) [, reconstruction loss]."""

    self_supervised = True

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        S, w = cfg.image_size, lambda side: d_width(cfg, side)
        self.from_img = nn.Sequential(conv(cfg.channels, w(S), 3, 1, 1), nn.LeakyReLU(0.2, True))
        sides = [S // 2**i for i in range(1, int(math.log2(S // 8)) + 1)]  # [S/2, ..., 8]
        # (B, w(2s), 2s, 2s) -> (B, w(s), s, s)
        self.downs = nn.ModuleDict({str(s): DownBlock(w(2 * s), w(s), cfg.d_antialias) for s in sides})
        self.mbstd = MinibatchStd() if cfg.mbstd else None
        n = w(8) + int(cfg.mbstd)
        # (B, w8 [+1], 8, 8) -> (B, 1, 5, 5)
        self.head = nn.Sequential(
            conv(n, w(8), 1), nn.BatchNorm2d(w(8)), nn.LeakyReLU(0.2, True), conv(w(8), 1, 4)
        )
        self.rec_side = min(S, 32)  # what the decoders draw: the whole picture, and a quarter, at this side
        self.dec_all = decoder(w(8), int(math.log2(self.rec_side // 8)), cfg.channels)
        self.dec_part = decoder(w(16), int(math.log2(self.rec_side // 8)), cfg.channels)

    def forward(
        self,
        x: torch.Tensor | list[torch.Tensor],
        labels: torch.Tensor | None = None,
        *,
        reconstruct: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) for images (B, C, S, S) (or ``[images]``); ``reconstruct``: also the L1 error of
        decoding the whole image from the 8x8 features and a random quarter from the 16x16 ones, ()."""
        if labels is not None:
            raise ValueError("fastgan's D is unconditional: it takes no class labels")
        img = x[-1] if isinstance(x, list | tuple) else x
        h = self.from_img(img)  # (B, w(S), S, S)
        feats = {self.cfg.image_size: h}
        for key, block in self.downs.items():
            h = block(h)  # (B, w(s), s, s)
            feats[int(key)] = h
        out = self.mbstd(h) if self.mbstd is not None else h
        logits = self.head(out).mean((1, 2, 3))  # (B, 1, 5, 5) -> (B,)
        if not reconstruct:
            return logits
        r = self.rec_side
        whole = F.interpolate(img, size=(r, r), mode="area")  # (B, C, r, r)
        rec = F.l1_loss(self.dec_all(feats[8]), whole)
        q = int(torch.randint(4, ()))  # which quarter: global RNG (checkpointed)
        i, j = divmod(q, 2)
        f16, half = feats[16], img.shape[-1] // 2
        part = f16[:, :, i * 8 : i * 8 + 8, j * 8 : j * 8 + 8]  # (B, w16, 8, 8): a quarter of 16x16
        target = img[:, :, i * half : (i + 1) * half, j * half : (j + 1) * half]  # (B, C, S/2, S/2)
        target = F.interpolate(target, size=(r, r), mode="area" if half >= r else "nearest")
        return logits, rec + F.l1_loss(self.dec_part(part), target)
