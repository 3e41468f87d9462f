"""What a person sees as "a grid over the picture", in numbers: periodic peaks in the images' power spectrum.

Upsampling layers that copy a small feature map upward draw a pattern that repeats every P pixels (P = 2,
4, 8, 16: the S/P map copied to S); in the 2-D power spectrum that is a set of sharp peaks at multiples of
S/P cycles per image (Durall et al. 2020, "Watch your up-convolution"; Frank et al. 2020). Natural pictures
have a smooth spectrum there. Two measures, both against the real images and so both 0 for a perfect copy:

- :func:`artifact_score`, the periodic peaks only. For a set of images, ``L`` is the mean log10 power
  spectrum (grey levels, each image's mean removed, a Hann window against edge leakage). A frequency's
  *peak excess* is ``L(f)`` minus its background, the median of ``L`` over all frequencies at the same
  radius ``|f|`` (a blur, or any isotropic change, moves a whole ring alike; a grid lights a few cells of
  it). The score is the mean, over the top tenth of the grid frequencies ``f = (a, b) * S/16`` (every
  period 16, 8, 4, 2 px lands on that grid), of ``max(0, excess_fake(f) - max(0, excess_real(f)))``: how
  many decades (log10) the generated pictures' peaks stand out, less the peak the real pictures have at
  the same place (a real texture's or JPEG's 8-px blocks are not counted against the generator; the real
  pictures' dips, such as the nulls of an upscaled set, are not counted for it). 0.4 = a peak 2.5x above
  its ring. Where the generated pictures have under a tenth of the real power all around a frequency (a
  heavy blur), the background is taken as that tenth, so leakage and noise are no peak.
- :func:`spectrum_distance`, the whole shape: the mean absolute log10 difference between the azimuthally
  averaged power spectra (radii 1 .. S/2). Blur (too little high-frequency power, what an undertrained GAN
  shows) moves it as well as a grid does; the artifact score is not moved by blur.

Each comes with its real-vs-real value and a noise floor (:func:`noise_floor`: mean + 3 sigma over random
splits of the real images into two halves), the level a score must exceed to mean anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

GRID = 16  # the longest period looked for, in px: frequencies on multiples of S/GRID cover P = 16, 8, 4, 2
VISIBLE = -1.0  # log10: a peak must rise above a tenth of the real pictures' power at its frequency
TOP = 0.1  # the share of grid frequencies with the largest excess that the score averages
_EPS = 1e-12


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) in [-1, 1] -> (N, S, S) luminance, each image's mean removed."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        g = (x * w).sum(1)
    else:
        g = x.mean(1)
    return g - g.mean((-2, -1), keepdim=True)


def log_spectrum(x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, C, S, S) in [-1, 1] -> (S, S) mean log10 power spectrum, zero frequency at the centre."""
    S = x.shape[-1]
    win = torch.hann_window(S, periodic=False, dtype=torch.float64)
    win2 = win[:, None] * win[None, :]
    total = torch.zeros(S, S, dtype=torch.float64)
    for c in x.split(batch_size):
        g = _grey(c.double().cpu()) * win2
        total += torch.fft.fft2(g).abs().square().sum(0)
    power = total / len(x)
    return torch.fft.fftshift(power).add(_EPS).log10()


def _radii(S: int) -> torch.Tensor:
    """(S, S) integer distance of each cell of a centred spectrum from the zero frequency."""
    d = torch.arange(S) - S // 2
    return torch.sqrt(d[:, None].double() ** 2 + d[None, :].double() ** 2).round().long()


def _radial_median(L: torch.Tensor) -> torch.Tensor:
    """(S, S) centred log spectrum -> (S, S): each cell's background, the median of ``L`` over all cells at
    the same distance from the zero frequency. A blur, a colour or contrast change, anything isotropic,
    moves a whole ring alike (no peak); a grid puts a few bright cells on a ring, which its median ignores."""
    r = _radii(L.shape[-1]).reshape(-1)
    flat = L.reshape(-1)
    out = torch.empty_like(flat)
    for k in r.unique():
        ring = r == k
        out[ring] = flat[ring].median()
    return out.reshape(L.shape)


def _grid_cells(S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (centred spectrum) of the frequencies (a, b) * S/GRID, zero frequency left out."""
    step = max(1, S // GRID)
    k = torch.arange(-(S // 2) // step * step, S // 2, step)
    u, v = torch.meshgrid(k, k, indexing="ij")
    keep = (u != 0) | (v != 0)
    return u[keep] + S // 2, v[keep] + S // 2


def peak_excess(L_fake: torch.Tensor, L_real: torch.Tensor) -> torch.Tensor:
    """Centred log spectra (S, S) -> (K,) how far (log10) the generated pictures' spectrum peaks at each grid
    frequency above its ring's background, less the real pictures' own peak there (if any)."""
    bg_real = _radial_median(L_real)
    # where the generated pictures have almost nothing around a frequency (a heavy blur: under a tenth of
    # the real power), their log spectrum is leakage and noise; a peak counts from a tenth of the real power
    bg_fake = torch.maximum(_radial_median(L_fake), bg_real + VISIBLE)
    real_peak = (L_real - bg_real).clamp_min(0)  # a real texture's or JPEG's own peak excuses the same one
    rows, cols = _grid_cells(L_fake.shape[-1])
    return ((L_fake - bg_fake) - real_peak)[rows, cols]


def artifact_score(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Periodic peaks of ``fake`` above those of ``real`` (both (N, C, S, S) in [-1, 1]); 0 = none."""
    return artifact_from_spectra(log_spectrum(fake), log_spectrum(real))


def artifact_from_spectra(L_fake: torch.Tensor, L_real: torch.Tensor) -> float:
    excess = peak_excess(L_fake, L_real).clamp_min(0)
    k = max(1, math.ceil(TOP * len(excess)))
    return float(excess.topk(k).values.mean())


def radial_profile(L: torch.Tensor) -> torch.Tensor:
    """(S, S) centred log10 spectrum -> (S/2,) log10 of the mean power at each integer radius 1 .. S/2."""
    S = L.shape[-1]
    r = _radii(S)
    power = torch.pow(10.0, L)
    keep = (r >= 1) & (r <= S // 2)
    sums = torch.zeros(S // 2 + 1, dtype=torch.float64).index_add_(0, r[keep], power[keep])
    counts = torch.zeros(S // 2 + 1, dtype=torch.float64).index_add_(0, r[keep], torch.ones_like(power[keep]))
    return (sums[1:] / counts[1:]).add(_EPS).log10()


def spectrum_distance(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean |log10| gap between the azimuthally averaged power spectra of ``fake`` and ``real``."""
    return distance_from_spectra(log_spectrum(fake), log_spectrum(real))


def distance_from_spectra(L_fake: torch.Tensor, L_real: torch.Tensor) -> float:
    return float((radial_profile(L_fake) - radial_profile(L_real)).abs().mean())


def noise_floor(
    real: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], float],
    *,
    splits: int = 5,
    seed: int = 0,
) -> float:
    """Mean + 3 sigma of ``score(half A, half B)`` over ``splits`` random halvings of ``real``: what the score
    reads between two sets of the same pictures, so a value above it is a real difference."""
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(splits):
        perm = torch.randperm(len(real), generator=g)
        h = len(real) // 2
        values.append(score(real[perm[:h]], real[perm[h : 2 * h]]))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean() + 3 * t.std(unbiased=True)) if splits > 1 else float(t.mean())


def spectral_metrics(
    fake: torch.Tensor, ref: torch.Tensor, other: torch.Tensor, *, seed: int = 0
) -> dict[str, float]:
    """The artifact score and spectrum distance of ``fake`` against ``ref``, each beside its real-vs-real
    baseline (``other`` against ``ref``) and its noise floor over splits of both real halves.

    Args:
        fake: (M, C, S, S) generated images in [-1, 1].
        ref, other: two disjoint halves of the real images, same layout.
        seed: the floor's random splits.
    """
    L_ref = log_spectrum(ref)
    L_fake, L_other = log_spectrum(fake), log_spectrum(other)
    real = torch.cat([ref, other])
    return {
        "artifact_score": artifact_from_spectra(L_fake, L_ref),
        "baseline_artifact_score": artifact_from_spectra(L_other, L_ref),
        "artifact_floor": noise_floor(real, artifact_score, seed=seed),
        "spectrum_distance": distance_from_spectra(L_fake, L_ref),
        "baseline_spectrum_distance": distance_from_spectra(L_other, L_ref),
        "spectrum_floor": noise_floor(real, spectrum_distance, seed=seed),
    }
