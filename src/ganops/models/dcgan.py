"""DCGAN generator and discriminator (Radford et al. 2015), the lesson's family, at any power-of-two size.

G: z (B, Z, 1, 1) -> ConvTranspose/BatchNorm/ReLU blocks doubling H, W from 4x4 -> Tanh (B, C, S, S) in [-1, 1].
D: (B, C, S, S) -> Conv/LeakyReLU(0.2) blocks (BatchNorm after the first) halving to 4x4 -> logits (B,).
D returns logits, not probabilities: BCE-with-logits is the stable form of the lesson's Sigmoid + BCE.

Options (all stored in :class:`GANConfig`, so a checkpoint rebuilds the nets that made it):
- ``spectral_norm``: every D conv spectrally normalised (Miyato et al. 2018); D's BatchNorm is dropped then.
- ``mbstd``: a minibatch standard-deviation channel before D's last conv (Karras et al. 2018): D sees how
  varied a batch is, so a collapsed G is easy to tell from real data.
- ``arch="msg"``: multi-scale gradients (MSG-GAN, Karnewar & Wang 2020): G also emits an image at every
  intermediate resolution (1x1 conv "to-image" heads), D takes the whole pyramid, concatenating each scale
  to its features at that resolution, so gradients reach every G block directly. ``G(z)`` still returns the
  full-resolution image only (what serving uses); ``G.pyramid(z)`` returns all scales, coarse to fine.
- ``d_antialias``: a [1,3,3,1] blur before each of D's strided convs (StyleGAN2's anti-aliasing).
- ``upsample``: how G doubles a resolution. ``transposed`` (DCGAN's stride-2 4x4 transposed conv) or
  ``resize`` (nearest x2, then a 3x3 conv: no uneven overlap, so no checkerboard by construction; Odena et
  al. 2016); with ``resize`` the 1x1 -> 4x4 start is a linear layer, so G has no transposed conv at all.
- ``class_counts`` (labelled data): G takes the class one-hot beside z, D adds a projection term
  (models/gan.py says how a class is drawn from z).
"""

from __future__ import annotations

import torch
from torch import nn

from ganops.models.gan import BaseGenerator, GANConfig, MinibatchStd, antialiased


class Generator(BaseGenerator):
    """DCGAN's generator (and msg's, with a to-image head per resolution)."""

    def __init__(self, cfg: GANConfig):
        super().__init__(cfg)
        n = cfg.n_blocks
        ch = [cfg.ngf * 2 ** (n - 1 - i) for i in range(n)]  # S=32, ngf=32: [128, 64, 32]
        # g_norm "none": no batch statistics, so each image depends on its own z only — what makes a
        # data-parallel run on CPU (no SyncBatchNorm there) the same maths as one process on the whole batch.
        # The Identity keeps the layer indices (pyramid() slices self.main in blocks of three).
        bn = cfg.g_norm == "batch"

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if bn else nn.Identity()

        layers: list[nn.Module] = [
            # (B, Z [+K], 1, 1) -> (B, ch0, 4, 4); conditional: the class one-hot joins z
            _start(cfg.latent_dim + cfg.n_classes, ch[0], not bn, cfg.upsample),
            norm(ch[0]),
            nn.ReLU(True),
        ]
        for a, b in zip(ch, ch[1:], strict=False):
            # (B, a, H, W) -> (B, b, 2H, 2W)
            layers += [_up(a, b, not bn, cfg.upsample), norm(b), nn.ReLU(True)]
        # (B, ngf, S/2, S/2) -> (B, C, S, S) in [-1, 1]
        layers += [_up(ch[-1], cfg.channels, False, cfg.upsample), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        # msg: a to-image head after every block but the last: (B, ch_i, 4*2^i, 4*2^i) -> (B, C, same)
        self.heads = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, cfg.channels, 1), nn.Tanh()) for c in ch] if cfg.arch == "msg" else []
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, Z) or (B, Z, 1, 1) -> images (B, C, S, S); conditional: classes (B,) or drawn from z."""
        return self.main(self._input(z, labels))

    def pyramid(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Images at every scale of ``cfg.scales``, coarse to fine; ``[G(z)]`` for dcgan."""
        if not self.heads:
            return super().pyramid(z, labels)
        h = self._input(z, labels)
        out = []
        for i, head in enumerate(self.heads):  # self.main is [ConvT, BN, ReLU] per block, then [ConvT, Tanh]
            h = self.main[3 * i : 3 * i + 3](h)  # (B, ch_i, 4*2^i, 4*2^i)
            out.append(head(h))  # (B, C, 4*2^i, 4*2^i)
        out.append(self.main[-2:](h))  # (B, C, S, S)
        return out


def _start(z: int, c: int, bias: bool, upsample: str) -> nn.Module:
    """(B, z, 1, 1) -> (B, c, 4, 4): a 4x4 transposed conv, or for ``resize`` the same map as a linear layer."""
    if upsample == "transposed":
        return nn.ConvTranspose2d(z, c, 4, 1, 0, bias=bias)
    return nn.Sequential(nn.Flatten(), nn.Linear(z, c * 16, bias=bias), nn.Unflatten(1, (c, 4, 4)))


def _up(a: int, b: int, bias: bool, upsample: str) -> nn.Module:
    """(B, a, H, W) -> (B, b, 2H, 2W): a stride-2 4x4 transposed conv, or nearest x2 and a 3x3 conv."""
    if upsample == "transposed":
        return nn.ConvTranspose2d(a, b, 4, 2, 1, bias=bias)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, 1, 1, bias=bias))


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.n_blocks
        ch = [cfg.ndf * 2**i for i in range(n)]  # S=32, ndf=32: [32, 64, 128]
        sn = nn.utils.parametrizations.spectral_norm if cfg.spectral_norm else (lambda m: m)
        bias = cfg.spectral_norm  # with BatchNorm a conv bias is redundant (DCGAN); without it, it is not
        extra = cfg.channels if cfg.arch == "msg" else 0  # msg: the image at each scale joins the features
        # (B, C, S, S) -> (B, ndf, S/2, S/2); no BatchNorm on the input layer (DCGAN paper)
        aa = cfg.d_antialias  # a blur before every strided conv
        blocks: list[nn.Module] = [
            nn.Sequential(*antialiased(sn(nn.Conv2d(cfg.channels, ch[0], 4, 2, 1, bias=bias)), cfg.channels, aa),
                          nn.LeakyReLU(0.2, True))
        ]  # fmt: skip
        for a, b in zip(ch, ch[1:], strict=False):
            # (B, a [+C], H, W) -> (B, b, H/2, W/2)
            norm: list[nn.Module] = [] if cfg.spectral_norm else [nn.BatchNorm2d(b)]
            conv = sn(nn.Conv2d(a + extra, b, 4, 2, 1, bias=bias))
            blocks.append(nn.Sequential(*antialiased(conv, a + extra, aa), *norm, nn.LeakyReLU(0.2, True)))
        self.blocks = nn.ModuleList(blocks)
        self.mbstd = MinibatchStd() if cfg.mbstd else None
        # (B, ch[-1] [+C] [+1], 4, 4) -> (B, 1, 1, 1)
        n_feat = ch[-1] + extra + int(cfg.mbstd)
        self.out = sn(nn.Conv2d(n_feat, 1, 4, 1, 0, bias=bias))
        # conditional: one vector per class, dotted with the summed last features (projection D)
        self.embed = sn(nn.Embedding(cfg.n_classes, n_feat)) if cfg.n_classes else None

    def forward(
        self, x: torch.Tensor | list[torch.Tensor], labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B,) for images (B, C, S, S), or for msg the pyramid [(B, C, 4, 4), ..., (B, C, S, S)].

        A conditional D needs the class of every image, ``labels`` (B,).
        """
        if (labels is None) != (self.embed is None):
            raise ValueError("a conditional D needs class labels; an unconditional one takes none")
        xs = list(x) if isinstance(x, list | tuple) else [x]
        if len(xs) != len(self.cfg.scales):
            raise ValueError(f"D expects {len(self.cfg.scales)} scale(s) {self.cfg.scales}, got {len(xs)}")
        msg = len(xs) > 1
        h = self.blocks[0](xs[-1])  # (B, ndf, S/2, S/2)
        for i, block in enumerate(self.blocks[1:]):
            if msg:  # join the image of this resolution: (B, a, H, W) -> (B, a + C, H, W)
                h = torch.cat([h, xs[-2 - i]], 1)
            h = block(h)  # (B, b, H/2, W/2)
        if msg:
            h = torch.cat([h, xs[0]], 1)  # (B, ch[-1] + C, 4, 4)
        if self.mbstd is not None:
            h = self.mbstd(h)  # (B, ... + 1, 4, 4)
        logits = self.out(h).flatten()  # (B,)
        if self.embed is not None and labels is not None:
            # projection: + <embed(y), sum over 4x4 of h>, (B, F) . (B, F) -> (B,)
            logits = logits + (self.embed(labels.to(h.device).long()) * h.sum((2, 3))).sum(1)
        return logits
