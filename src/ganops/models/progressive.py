"""Progressive growing (ProGAN: Karras et al. 2018, "Progressive growing of GANs for improved quality,
stability, and variation"): a generator and a discriminator that start at 4x4 and grow to ``image_size``.

Levels 0..L (L = ``cfg.n_blocks``): level l works at r_l = 4 * 2**l px. Training starts at level 0 for
``grow_stable_steps``; each further level first fades in over ``grow_fade_steps`` (alpha 0 -> 1), then
trains alone for ``grow_stable_steps``. :func:`growth_at` turns a step into its :class:`Growth`, so the
phase is a pure function of the step and resuming anywhere, mid-fade included, is exact.

G: z [+ class] (B, Z [+K]) -> linear -> (B, c0, 4, 4) -> LReLU -> PixelNorm -> conv 3x3 -> LReLU -> PixelNorm;
then per level l the block nearest x2 -> (conv 3x3 -> LReLU -> PixelNorm) x 2 to (B, c_l, r_l, r_l), and a 1x1
"to-image" conv per level. At level l with fade alpha, the image is
``tanh((1 - alpha) * up(to_img[l-1](h_{l-1})) + alpha * to_img[l](h_l))``, then nearest-upsampled to S x S:
``G(z)`` is always (B, C, S, S), so grids, the monitor, exports and serving need nothing new; before the
last level an image shows r_l px as (S / r_l)-px squares.

D mirrors it: a 1x1 "from-image" conv per level, blocks (conv 3x3 -> BN -> LReLU) x 2 -> average pool, and at 4x4
minibatch-stddev (``mbstd``) -> conv 3x3 -> LReLU -> conv 4x4 -> one logit (+ the class projection of a
conditional pair). D takes S x S images and average-pools them to r_l (exactly undoing G's nearest
upsampling); during a fade it blends its input the way G blends its output,
``(1 - alpha) * up(down(x)) + alpha * x``, real and generated alike, and its two from-image paths the same
way. ``spectral_norm`` normalises every D conv (and drops D's BatchNorm, as in DCGAN's D).

Not ProGAN's: BatchNorm in D's blocks (DCGAN's; ProGAN's D has none, and without it G collapsed to one
picture here within a few hundred steps), He-initialised weights with Adam instead of the equalised
learning rate, and widths sized for a CPU (G ``ngf * 2**(L-1-l)``, D ``ndf * 2**(L-1-l)``, at least 8, as DCGAN's). The growth state
(level, alpha) is a buffer of each net, so every checkpoint and export carries it: an export taken before
the last level keeps drawing at the resolution it had reached, the blocks not yet grown unused.

Under DDP the loop wraps only the modules a phase uses (:meth:`ProGenerator.active` /
:meth:`ProDiscriminator.active`), rebuilt when the set changes, so no parameter goes without gradient and
``find_unused_parameters`` stays off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ganops.models.gan import BaseGenerator, GANConfig, MinibatchStd, _checked


@dataclass(frozen=True)
class Growth:
    """Where a progressive run is: its level (resolution 4 * 2**level) and fade-in weight alpha."""

    level: int
    alpha: float = 1.0  # < 1 while the level fades in

    @property
    def resolution(self) -> int:
        return 4 * 2**self.level

    @property
    def fading(self) -> bool:
        return self.level > 0 and self.alpha < 1.0

    def metrics(self) -> dict[str, float]:
        """What the loop reports (MLflow, the progress bar)."""
        return {"resolution": float(self.resolution), "fade_alpha": float(self.alpha)}


def growth_at(step: int, fade: int, stable: int, n_blocks: int) -> Growth:
    """The growth for training step ``step`` (0-based: the step about to be taken).

    Level 0 for ``stable`` steps, then for each level 1..``n_blocks`` ``fade`` steps of alpha = t / fade
    (0 at the first) and ``stable`` steps at alpha 1; the last level stays.
    """
    t = step - stable
    if t < 0:
        return Growth(0)
    grown, u = divmod(t, fade + stable)
    if grown >= n_blocks:
        return Growth(n_blocks)
    return Growth(grown + 1, u / fade if u < fade else 1.0)


def grown_by(fade: int, stable: int, n_blocks: int) -> int:
    """Steps until the last level has faded in and trained its stable phase."""
    return stable + n_blocks * (fade + stable)


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit mean square (ProGAN's normalisation in G)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


def width(base: int, n_blocks: int, level: int) -> int:
    """Channels at ``level``: DCGAN's widths (base * 2**(L-1-level)), at least 8."""
    return max(8, base * 2**n_blocks // 2 ** (level + 1))


def he_init(m: nn.Module) -> None:
    """He-normal weights for LReLU(0.2) (ProGAN's scale, without its runtime rescaling), biases 0; the
    class projection small, as DCGAN's."""
    if isinstance(m, nn.Conv2d | nn.Linear):
        nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, 0.0, 0.02)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class _Grows:
    """The growth buffer both nets share: (level, alpha), in every state dict."""

    growth_state: torch.Tensor

    def _init_growth(self) -> None:
        self.register_buffer("growth_state", torch.tensor([0.0, 1.0]))  # type: ignore[attr-defined]

    @property
    def growth(self) -> Growth:
        level, alpha = self.growth_state.tolist()
        return Growth(int(level), float(alpha))

    def set_growth(self, g: Growth) -> None:
        """Work at ``g`` from the next forward on."""
        if not 0 <= g.level <= self.cfg.n_blocks:  # type: ignore[attr-defined]
            raise ValueError(f"level {g.level} outside 0..{self.cfg.n_blocks}")  # type: ignore[attr-defined]
        self.growth_state.copy_(torch.tensor([float(g.level), float(g.alpha)]))


class ProGenerator(_Grows, BaseGenerator):
    def __init__(self, cfg: GANConfig):
        super().__init__(cfg)
        L = cfg.n_blocks
        ch = [width(cfg.ngf, L, level) for level in range(L + 1)]  # S=64, ngf=32: [256, 128, 64, 32, 16]
        act = lambda: nn.LeakyReLU(0.2, True)  # noqa: E731
        self.start = nn.Sequential(  # (B, Z [+K], 1, 1) -> (B, c0, 4, 4)
            nn.Flatten(), nn.Linear(cfg.latent_dim + cfg.n_classes, ch[0] * 16), nn.Unflatten(1, (ch[0], 4, 4)),
            act(), PixelNorm(), nn.Conv2d(ch[0], ch[0], 3, 1, 1), act(), PixelNorm(),
        )  # fmt: skip
        self.blocks = nn.ModuleList(  # blocks[l-1]: (B, c_{l-1}, r/2, r/2) -> (B, c_l, r, r)
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                          nn.Conv2d(a, b, 3, 1, 1), act(), PixelNorm(), nn.Conv2d(b, b, 3, 1, 1), act(), PixelNorm())
            for a, b in zip(ch, ch[1:], strict=False)
        )  # fmt: skip
        self.to_img = nn.ModuleList(
            nn.Conv2d(c, cfg.channels, 1) for c in ch
        )  # (B, c_l, r, r) -> (B, C, r, r)
        self._init_growth()

    weight_init = staticmethod(he_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, Z) or (B, Z, 1, 1) -> images (B, C, S, S) in [-1, 1], drawn at the current resolution."""
        g = self.growth
        h = self.start(self._input(z, labels))  # (B, c0, 4, 4)
        for block in self.blocks[: max(g.level - 1, 0)]:
            h = block(h)  # (B, c_{l-1}, r_{l-1}, r_{l-1})
        if g.level == 0:
            x = self.to_img[0](h)  # (B, C, 4, 4)
        else:
            new = self.blocks[g.level - 1](h)  # (B, c_l, r_l, r_l)
            x = self.to_img[g.level](new)
            if g.fading:  # the new level fades in over the old one, upsampled
                x = torch.lerp(_up(self.to_img[g.level - 1](h)), x, g.alpha)
        x = torch.tanh(x)  # (B, C, r_l, r_l)
        S = self.cfg.image_size
        return x if x.shape[-1] == S else F.interpolate(x, size=(S, S), mode="nearest")

    def active(self) -> list[nn.Module]:
        """The modules the current growth uses (what a per-phase DDP wrapper registers)."""
        g = self.growth
        return [self.start, *self.blocks[: g.level], self.to_img[g.level]] + (
            [self.to_img[g.level - 1]] if g.fading else []
        )


class ProDiscriminator(_Grows, nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        L = cfg.n_blocks
        ch = [width(cfg.ndf, L, level) for level in range(L + 1)]  # S=64, ndf=32: [256, 128, 64, 32, 16]
        sn = nn.utils.parametrizations.spectral_norm if cfg.spectral_norm else (lambda m: m)
        act = lambda: nn.LeakyReLU(0.2, True)  # noqa: E731
        self.from_img = nn.ModuleList(  # (B, C, r_l, r_l) -> (B, c_l, r_l, r_l)
            nn.Sequential(sn(nn.Conv2d(cfg.channels, c, 1)), act()) for c in ch
        )

        # BatchNorm after each block conv, as DCGAN's D has (dropped with spectral norm, as there): without
        # batch statistics this D let G collapse to one picture within a few hundred steps (BENCHMARKS.md)
        def norm(c: int) -> list[nn.Module]:
            return [] if cfg.spectral_norm else [nn.BatchNorm2d(c)]

        self.blocks = nn.ModuleList(  # blocks[l-1]: (B, c_l, r, r) -> (B, c_{l-1}, r/2, r/2)
            nn.Sequential(sn(nn.Conv2d(b, b, 3, 1, 1)), *norm(b), act(), sn(nn.Conv2d(b, a, 3, 1, 1)), *norm(a), act(),
                          nn.AvgPool2d(2))
            for a, b in zip(ch, ch[1:], strict=False)
        )  # fmt: skip
        self.mbstd = MinibatchStd() if cfg.mbstd else None
        self.final = nn.Sequential(
            sn(nn.Conv2d(ch[0] + int(cfg.mbstd), ch[0], 3, 1, 1)), act()
        )  # (B, c0, 4, 4)
        self.out = sn(nn.Conv2d(ch[0], 1, 4))  # (B, c0, 4, 4) -> (B, 1, 1, 1)
        self.embed = sn(nn.Embedding(cfg.n_classes, ch[0])) if cfg.n_classes else None
        self._init_growth()

    weight_init = staticmethod(he_init)

    def forward(
        self, x: torch.Tensor | list[torch.Tensor], labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B,) for images (B, C, S, S) (or ``[images]``: one scale), judged at the current resolution."""
        if (labels is None) != (self.embed is None):
            raise ValueError("a conditional D needs class labels; an unconditional one takes none")
        if isinstance(x, list | tuple):
            if len(x) != 1:
                raise ValueError(f"D expects 1 scale [{self.cfg.image_size}], got {len(x)}")
            x = x[0]
        g = self.growth
        S, r = x.shape[-1], g.resolution
        x = x if r == S else F.avg_pool2d(x, S // r)  # (B, C, r, r): undoes G's nearest upsampling exactly
        if g.fading:
            x = torch.lerp(_up(F.avg_pool2d(x, 2)), x, g.alpha)  # fades in as G's output does
        h = self.from_img[g.level](x)  # (B, c_l, r, r)
        if g.level > 0:
            h = self.blocks[g.level - 1](h)  # (B, c_{l-1}, r/2, r/2)
            if g.fading:
                h = torch.lerp(self.from_img[g.level - 1](F.avg_pool2d(x, 2)), h, g.alpha)
            for block in reversed(self.blocks[: g.level - 1]):
                h = block(h)  # halves, down to (B, c0, 4, 4)
        if self.mbstd is not None:
            h = self.mbstd(h)  # (B, c0 + 1, 4, 4)
        h = self.final(h)  # (B, c0, 4, 4)
        logits = self.out(h).flatten()  # (B,)
        if self.embed is not None and labels is not None:  # projection: + <embed(y), sum over 4x4 of h>
            y = _checked(labels.to(h.device), self.cfg.n_classes)
            logits = logits + (self.embed(y) * h.sum((2, 3))).sum(1)
        return logits

    def active(self) -> list[nn.Module]:
        """The modules the current growth uses (what a per-phase DDP wrapper registers)."""
        g = self.growth
        extra = [m for m in (self.embed,) if m is not None]
        return [self.from_img[g.level], *self.blocks[: g.level], self.final, self.out, *extra] + (
            [self.from_img[g.level - 1]] if g.fading else []
        )


def growth_for(cfg: GANConfig, fade: int, stable: int, step: int) -> Growth | None:
    """The growth of training step ``step`` for a progressive pair; None for the families that do not grow
    (the one thing the training loop asks about growing)."""
    if cfg.arch != "progressive":
        return None
    return growth_at(step, fade, stable, cfg.n_blocks)


def schedule_warning(cfg: GANConfig, steps: int, fade: int, stable: int) -> str | None:
    """What a user should know when ``steps`` ends before the last level is grown; None when it does not."""
    need = grown_by(fade, stable, cfg.n_blocks)
    if cfg.arch != "progressive" or steps >= need:
        return None
    g = growth_at(steps - 1, fade, stable, cfg.n_blocks)
    return (f"gan.steps {steps} ends before progressive growing reaches {cfg.image_size} px ({need} steps with "
            f"grow_fade_steps {fade}, grow_stable_steps {stable}): the export draws at {g.resolution} px"
            + (f" (fading in, alpha {g.alpha:.2f})" if g.fading else "") + f", shown as {cfg.image_size} px")  # fmt: skip
