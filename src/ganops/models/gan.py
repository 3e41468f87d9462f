"""DCGAN generator and discriminator (Radford et al. 2015), the lesson's family, at any power-of-two size.

G: z (B, Z, 1, 1) -> ConvTranspose/BatchNorm/ReLU blocks doubling H, W from 4x4 -> Tanh (B, C, S, S) in [-1, 1].
D: (B, C, S, S) -> Conv/LeakyReLU(0.2) blocks (BatchNorm after the first) halving to 4x4 -> logits (B,).
D returns logits, not probabilities: BCE-with-logits is the stable form of the lesson's Sigmoid + BCE.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class GANConfig:
    """Constructor arguments of both nets; stored in every checkpoint so inference can rebuild them."""

    image_size: int = 32  # S, a power of two >= 8
    channels: int = 1  # C
    latent_dim: int = 64  # Z
    ngf: int = 32  # generator width (channels before the output layer)
    ndf: int = 32  # discriminator width (channels after the first layer)

    def __post_init__(self) -> None:
        s = self.image_size
        if s < 8 or s & (s - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {s}")

    @property
    def n_blocks(self) -> int:
        """Resolution doublings between 4x4 and S x S (S=32 -> 3, S=64 -> 4)."""
        return int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict:
        return asdict(self)


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.n_blocks
        ch = [cfg.ngf * 2 ** (n - 1 - i) for i in range(n)]  # S=32, ngf=32: [128, 64, 32]
        layers: list[nn.Module] = [
            # (B, Z, 1, 1) -> (B, ch0, 4, 4)
            nn.ConvTranspose2d(cfg.latent_dim, ch[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch[0]),
            nn.ReLU(True),
        ]
        for a, b in zip(ch, ch[1:], strict=False):
            # (B, a, H, W) -> (B, b, 2H, 2W)
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        # (B, ngf, S/2, S/2) -> (B, C, S, S) in [-1, 1]
        layers += [nn.ConvTranspose2d(ch[-1], cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:  # accept (B, Z) as well as (B, Z, 1, 1)
            z = z[:, :, None, None]
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.n_blocks
        ch = [cfg.ndf * 2**i for i in range(n)]  # S=32, ndf=32: [32, 64, 128]
        # (B, C, S, S) -> (B, ndf, S/2, S/2); no BatchNorm on the input layer (DCGAN paper)
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.channels, ch[0], 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
        ]
        for a, b in zip(ch, ch[1:], strict=False):
            # (B, a, H, W) -> (B, b, H/2, W/2)
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        # (B, ch[-1], 4, 4) -> (B, 1, 1, 1)
        layers += [nn.Conv2d(ch[-1], 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()  # (B,) logits


def init_weights(m: nn.Module) -> None:
    """DCGAN init: conv weights ~ N(0, 0.02); BatchNorm gamma ~ N(1, 0.02), beta = 0."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build(cfg: GANConfig) -> tuple[Generator, Discriminator]:
    """Both nets, DCGAN-initialised (draws from torch's global RNG: seed it first)."""
    g, d = Generator(cfg), Discriminator(cfg)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


def load_generator(folder: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Rebuild the generator from an exported folder (``generator.pt`` + ``config.json``), in eval mode."""
    import json

    folder = Path(folder)
    cfg = GANConfig(**json.loads((folder / "config.json").read_text())["model"])
    g = Generator(cfg)
    g.load_state_dict(torch.load(folder / "generator.pt", map_location=device, weights_only=True))
    return g.to(device).eval()
