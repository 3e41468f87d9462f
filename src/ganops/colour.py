"""How close a picture's colours are to another's: CIE Lab, a sliced Wasserstein distance, chroma.

Style transfer should carry the painting's palette; a pale result has the painting's strokes and the wrong
colours, which the content and style losses (VGG features) barely see. :func:`colour_distance` compares two
pictures' pixel colours as distributions, whatever their sizes and layouts: both converted to CIE Lab (L* 0-100,
a* b* about -100..100, so a distance of 1 is about a just-noticeable difference), projected onto ``n_proj``
fixed random directions, and the 1-D Wasserstein distances of the projections (sorted values, compared
quantile by quantile) averaged. :func:`chroma` is the mean C* = sqrt(a*^2 + b*^2): how saturated a picture
is (washed-out pictures have low chroma), to read beside it.
"""

from __future__ import annotations

import torch

# sRGB (D65) -> XYZ, and the D65 white point
_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float64,
)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB (..., 3, H, W) in [0, 1] -> CIE Lab (..., 3, H, W), float64."""
    if x.shape[-3] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {tuple(x.shape)}")
    c = x.double().clamp(0, 1)
    lin = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)  # undo the sRGB curve
    xyz = torch.einsum("ij,...jhw->...ihw", _RGB_TO_XYZ, lin) / _WHITE[:, None, None]
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp(min=eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], -3)


def _pixels(x: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> (m, 3) Lab pixels, at most ``n`` drawn without replacement."""
    lab = to_lab(x.reshape(-1, *x.shape[-3:])[0]).flatten(1).T  # (H*W, 3)
    if len(lab) > n:
        lab = lab[torch.randperm(len(lab), generator=g)[:n]]
    return lab


def colour_distance(a: torch.Tensor, b: torch.Tensor, n_proj: int = 64, n_pixels: int = 16_384,
                    seed: int = 0) -> float:  # fmt: skip
    """Sliced Wasserstein distance between the Lab colours of pictures ``a`` and ``b`` ((1, 3, H, W) or
    (3, H, W) in [0, 1], any sizes): 0 for the same colours in any arrangement; in Lab units."""
    g = torch.Generator().manual_seed(seed)
    pa, pb = _pixels(a, n_pixels, g), _pixels(b, n_pixels, g)
    dirs = torch.randn(3, n_proj, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)  # (3, P) unit directions
    qa, qb = (pa @ dirs).sort(0).values, (pb @ dirs).sort(0).values  # (m, P) sorted projections
    q = torch.linspace(0, 1, max(len(qa), len(qb)), dtype=torch.float64)  # compare at common quantiles
    return float((_quantiles(qa, q) - _quantiles(qb, q)).abs().mean())


def _quantiles(sorted_vals: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of sorted columns (m, P) at quantiles ``q`` (k,) -> (k, P)."""
    m = len(sorted_vals)
    pos = q * (m - 1)
    lo = pos.floor().long().clamp(max=m - 1)
    hi = (lo + 1).clamp(max=m - 1)
    w = (pos - lo.double())[:, None]
    return sorted_vals[lo] * (1 - w) + sorted_vals[hi] * w


def chroma(x: torch.Tensor) -> float:
    """Mean Lab chroma C* of a picture ((1, 3, H, W) or (3, H, W) in [0, 1]): ~0 for greys."""
    lab = to_lab(x.reshape(-1, *x.shape[-3:])[0])
    return float(lab[1:].pow(2).sum(0).sqrt().mean())
