"""What every GAN family shares, and the one builder that reads the config.

:class:`GANConfig` (the constructor arguments every checkpoint and export stores, with :data:`LEGACY` values
for keys older ones lack), :class:`BaseGenerator` (the class a conditional G draws from z, its input, its
scales), the noise rules (:func:`seeded_noise`, :func:`noise_for_class`), minibatch-stddev, DCGAN's init,
the EMA update, and :func:`build` / :func:`generator_for` / :func:`discriminator_for` /
:func:`load_generator`, which pick the family's module by ``cfg.arch``: ``dcgan`` and ``msg``
(models/dcgan.py), ``fastgan`` (models/fastgan.py), ``progressive`` (models/progressive.py).

- ``class_counts`` (labelled data): class-conditional nets (cGAN). G takes a class as a one-hot vector beside
  z; D adds a projection term <embed(y), h> to its logit (Miyato & Koyama 2018), so it judges "a real 7",
  not just "a real digit". Without an explicit class, G draws one from z itself (the normal CDF of z[0]
  mapped through the data's class frequencies), so ``G(z)`` stays a pure function of z and serving, the
  registry and the metrics need nothing new.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GANConfig:
    """Constructor arguments of both nets; stored in every checkpoint so inference can rebuild them."""

    image_size: int = 32  # S, a power of two >= 8
    channels: int = 1  # C
    latent_dim: int = 64  # Z
    ngf: int = 32  # generator width (channels before the output layer)
    ndf: int = 32  # discriminator width (channels after the first layer)
    arch: str = "dcgan"  # dcgan | msg (multi-scale gradients) | fastgan | progressive (their modules)
    spectral_norm: bool = False  # spectral normalisation on every D conv (and no BatchNorm in D)
    mbstd: bool = False  # minibatch standard-deviation channel before D's last conv
    class_counts: tuple[int, ...] = ()  # images per class of a class-conditional pair (() = unconditional)
    g_norm: str = "batch"  # batch: BatchNorm in G (DCGAN) | none: no normalisation, every sample on its own
    upsample: str = "transposed"  # transposed: stride-2 ConvTranspose (DCGAN) | resize: nearest x2 + conv 3x3
    d_antialias: bool = False  # a [1,3,3,1] blur before each of D's strided convs (dcgan, msg, fastgan)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_counts", tuple(int(c) for c in self.class_counts))  # JSON gives lists
        if self.class_counts and (len(self.class_counts) < 2 or min(self.class_counts) < 0
                                  or sum(self.class_counts) == 0):  # fmt: skip
            raise ValueError(f"class_counts needs >= 2 classes with images, got {self.class_counts}")
        s = self.image_size
        if s < 8 or s & (s - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {s}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.arch == "fastgan" and (self.class_counts or s < 16):
            raise ValueError("fastgan is unconditional (no class_counts) and needs image_size >= 16")
        if self.g_norm not in ("batch", "none"):
            raise ValueError(f"g_norm must be batch or none, got {self.g_norm!r}")
        if self.upsample not in ("transposed", "resize"):
            raise ValueError(f"upsample must be transposed or resize, got {self.upsample!r}")

    @property
    def scales(self) -> list[int]:
        """Image sides the nets exchange: [S] for dcgan, [4, 8, ..., S] for msg."""
        if self.arch == "msg":
            return [4 * 2**i for i in range(self.n_blocks + 1)]
        return [self.image_size]

    @property
    def n_classes(self) -> int:
        """K, the classes of a conditional pair; 0 when unconditional."""
        return len(self.class_counts)

    @property
    def n_blocks(self) -> int:
        """Resolution doublings between 4x4 and S x S (S=32 -> 3, S=64 -> 4)."""
        return int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict:
        """JSON-ready (a list for class_counts), every field: a dict read back from a checkpoint compares
        equal once :meth:`from_dict` has filled in what an older one lacks."""
        return {**asdict(self), "class_counts": list(self.class_counts)}

    @classmethod
    def from_dict(cls, d: dict) -> GANConfig:
        """The config a checkpoint or export stored. A key it lacks (written before that option existed)
        takes its :data:`LEGACY` value, the one that rebuilds the nets that version had."""
        return cls(**{**LEGACY, **d})


ARCHS = ("dcgan", "msg", "fastgan", "progressive")  # the families models/ builds (config's `auto` picks one)

# Options added after the first registered versions, at the value that reproduces a version without the key.
# New options go here with their legacy value, so every older checkpoint, export and registered version
# still loads, serves and resumes (their settings compare equal).
LEGACY: dict[str, object] = {"g_norm": "batch", "upsample": "transposed", "d_antialias": False}


class BaseGenerator(nn.Module):
    """What every generator family shares: its config, the class it draws from z, its input, its scales.

    ``G(z)`` maps noise (B, Z) or (B, Z, 1, 1) to images (B, C, S, S) in [-1, 1]; ``G.pyramid(z)`` gives the
    images at every scale of ``cfg.scales`` (only msg has more than one).
    """

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        self._cdf = class_cdf(cfg.class_counts or (1,))

    def labels_for(self, z: torch.Tensor) -> torch.Tensor:
        """The class G draws for each noise vector: z[0]'s normal CDF through the class frequencies, (B,).

        z ~ N(0, I) gives classes in the training data's proportions; the same z always gives the same class.
        """
        u = torch.special.ndtr(z.flatten(1)[:, 0].float())  # (B,) uniform in (0, 1)
        cdf = self._cdf.float().to(z.device)
        return torch.searchsorted(cdf, u.contiguous(), right=True).clamp_(max=len(cdf) - 1)

    def _input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """(B, Z) or (B, Z, 1, 1) [+ classes (B,)] -> (B, Z [+K], 1, 1)."""
        if z.dim() == 2:  # accept (B, Z) as well as (B, Z, 1, 1)
            z = z[:, :, None, None]
        K = self.cfg.n_classes
        if not K:
            if labels is not None:
                raise ValueError("this generator is unconditional: it takes no class labels")
            return z
        if labels is None:
            y = self.labels_for(z)
        else:
            if len(labels) != len(z):
                raise ValueError(f"{len(z)} noise vectors but {len(labels)} class labels")
            y = _checked(labels, K).to(z.device)
        onehot = F.one_hot(y.long(), K).to(z.dtype)[:, :, None, None]  # (B, K, 1, 1)
        return torch.cat([z, onehot], 1)

    def pyramid(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Images at every scale of ``cfg.scales``, coarse to fine: ``[G(z)]`` for one scale."""
        return [self(z, labels)]


def _checked(labels: torch.Tensor, K: int) -> torch.Tensor:
    """``labels`` as int64, or a ValueError if one lies outside 0..K-1."""
    y = labels.long()
    if len(y) and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"class labels must lie in 0..{K - 1}")
    return y


def class_cdf(class_counts: Sequence[int]) -> torch.Tensor:
    """(K,) float64: the class frequencies, cumulated (the last entry is 1)."""
    counts = torch.tensor(list(class_counts), dtype=torch.float64)
    return counts.cumsum(0) / counts.sum()


def seeded_noise(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    """(n, Z, 1, 1) standard normal noise drawn on the CPU from ``seed`` alone: the one rule that turns a
    seed into G's input, for the training grids' fixed noise, evaluation and serving (same seed -> same
    images everywhere)."""
    return torch.randn(n, latent_dim, 1, 1, generator=torch.Generator().manual_seed(seed))


def noise_for_class(z: torch.Tensor, labels: torch.Tensor, class_counts: Sequence[int]) -> torch.Tensor:
    """``z`` (B, Z) with z[:, 0] moved so that a conditional G draws class ``labels`` (B,) from it.

    z[0]'s normal CDF u is squeezed into the class's interval of the CDF: z[0] stays distributed as it is
    for that class, the rest of z is untouched (same seed, other class -> the same "style"), and no
    randomness is added, so the result is as reproducible as z. What serving uses for a requested class.

    Raises:
        ValueError: the generator is unconditional (no ``class_counts``), or a label is out of range.
    """
    if not class_counts:
        raise ValueError("this generator is unconditional: it takes no class")
    y = _checked(labels, len(class_counts))
    cdf = class_cdf(class_counts)
    hi = cdf[y]  # (B,)
    lo = torch.where(y > 0, cdf[(y - 1).clamp(min=0)], torch.zeros_like(hi))
    u = lo + torch.special.ndtr(z[:, 0].double()) * (hi - lo)
    # keep clear of the interval's ends, where float32 rounding could tip z[0] into a neighbour class
    margin = (hi - lo) * 1e-4
    u = torch.minimum(torch.maximum(u, lo + margin), hi - margin)
    out = z.clone()
    out[:, 0] = torch.special.ndtri(u).to(z.dtype)
    return out


class Blur(nn.Module):
    """A [1, 3, 3, 1] x [1, 3, 3, 1] low-pass, depthwise, same size out (B, C, H, W) -> (B, C, H, W): put before
    a strided conv (StyleGAN2's anti-aliasing), so that D cannot alias away frequencies G hides energy at."""

    kernel: torch.Tensor

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = torch.outer(k, k) / 64  # (4, 4), sums to 1
        self.register_buffer("kernel", k.expand(channels, 1, 4, 4).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 2, 1, 2)), self.kernel.to(x.dtype), groups=x.shape[1])


def antialiased(conv: nn.Module, channels: int, on: bool) -> list[nn.Module]:
    """``[Blur, conv]`` when ``on``, else ``[conv]``: a strided conv with or without its blur in front."""
    return [Blur(channels), conv] if on else [conv]


class MinibatchStd(nn.Module):
    """Append one channel: the standard deviation of each feature over a group of samples, averaged.

    (B, F, H, W) -> (B, F + 1, H, W). Groups of up to ``group`` samples (B must divide evenly, else the whole
    batch is one group) make the statistic comparable across batch sizes.
    """

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, F_, H, W = x.shape
        g = self.group if B % self.group == 0 else B
        y = x.reshape(g, B // g, F_, H, W)  # (g, B/g, F, H, W): statistics over the group axis
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean([1, 2, 3])  # (B/g,)
        y = y.reshape(1, B // g, 1, 1, 1).expand(g, -1, 1, H, W).reshape(B, 1, H, W)
        return torch.cat([x, y], 1)


def init_weights(m: nn.Module) -> None:
    """DCGAN init: conv (and linear) weights ~ N(0, 0.02), biases 0; BatchNorm gamma ~ N(1, 0.02), beta = 0."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):  # the projection starts as small as the convs
        nn.init.normal_(m.weight, 0.0, 0.02)


def build(cfg: GANConfig) -> tuple[BaseGenerator, nn.Module]:
    """Both nets of ``cfg.arch``, DCGAN-initialised (draws from torch's global RNG: seed it first)."""
    g, d = generator_for(cfg), discriminator_for(cfg)
    g.apply(getattr(g, "weight_init", init_weights))  # a family may bring its own (progressive: He)
    d.apply(getattr(d, "weight_init", init_weights))
    return g, d


def generator_for(cfg: GANConfig) -> BaseGenerator:
    """The generator of ``cfg.arch`` (uninitialised: :func:`build` initialises)."""
    if cfg.arch == "fastgan":
        from ganops.models.fastgan import FastGenerator

        return FastGenerator(cfg)
    if cfg.arch == "progressive":
        from ganops.models.progressive import ProGenerator

        return ProGenerator(cfg)
    from ganops.models.dcgan import Generator

    return Generator(cfg)


def discriminator_for(cfg: GANConfig) -> nn.Module:
    """The discriminator of ``cfg.arch``."""
    if cfg.arch == "fastgan":
        from ganops.models.fastgan import FastDiscriminator

        return FastDiscriminator(cfg)
    if cfg.arch == "progressive":
        from ganops.models.progressive import ProDiscriminator

        return ProDiscriminator(cfg)
    from ganops.models.dcgan import Discriminator

    return Discriminator(cfg)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers (BatchNorm statistics) copied."""
    for e, m in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(m.detach(), 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(mb)


def load_generator(folder: str | Path, device: str | torch.device = "cpu") -> BaseGenerator:
    """Rebuild the generator from an exported folder (``generator.pt`` + ``config.json``), in eval mode."""
    from ganops.artifacts import load_folder

    state, config = load_folder(folder, "generator.pt", map_location=device)
    g = generator_for(GANConfig.from_dict(config["model"]))
    g.load_state_dict(state)
    return g.to(device).eval()
