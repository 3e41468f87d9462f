"""The spectral artifact score and the spectrum distance: within their noise floor for real pictures, clearly
above it for the periodic patterns an upsampling layer draws, and not fooled by blur."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ganops.classifier import to_float
from ganops.config import DataParams
from ganops.data import prepare
from ganops.spectral import artifact_score, noise_floor, spectral_metrics, spectrum_distance

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "own-photos"


def _halves(x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    h = len(x) // 2
    return x[perm[:h]], x[perm[h : 2 * h]]


def _checkerboard(S: int, period: int, grey_levels: float) -> torch.Tensor:
    """(S, S) +-amplitude squares ``period / 2`` px wide (a period-``period`` grid), amplitude in grey levels."""
    y, x = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return ((y // (period // 2) + x // (period // 2)) % 2 * 2 - 1).float() * grey_levels / 127.5


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return to_float(prepare(DataParams(image_size=32)).images)  # (1797, 1, 32, 32) in [-1, 1]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """The own-photos set at 64 px, centre-cropped (skipped where the shared data is absent)."""
    files = sorted(PHOTOS.glob("*/*.jpg"))
    if not files:
        pytest.skip("own-photos set not available")
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        s = min(im.size)
        im = TF.center_crop(im, [s, s]).resize((64, 64), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(im)).permute(2, 0, 1))
    return to_float(torch.stack(out))


@pytest.mark.parametrize("which", ["digits", "photos"])
def test_real_halves_sit_within_the_floor_and_a_faint_grid_rises_above_it(which, request):
    real = request.getfixturevalue(which)
    a, b = _halves(real)
    floor = noise_floor(real, artifact_score)
    assert artifact_score(b, a) <= floor
    S = real.shape[-1]
    # a checkerboard of period 8 px, 3 grey levels either way (invisible at a glance): well above the floor
    faint = artifact_score((b + _checkerboard(S, 8, 3)).clamp(-1, 1), a)
    assert faint > 1.5 * floor, (faint, floor)
    # a low-resolution grid copied upward (the S/8 map repeated 8x8: what a bad upsampler draws)
    copied = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(b, 8), scale_factor=8)
    assert artifact_score(copied, a) > 2 * floor


@pytest.mark.parametrize("which", ["digits", "photos"])
@pytest.mark.parametrize("sigma", [0.8, 1.5])
def test_blur_moves_the_spectrum_distance_but_not_the_artifact_score(which, sigma, request):
    real = request.getfixturevalue(which)  # an undertrained GAN's blur must not read as a grid
    a, b = _halves(real)
    blurred = TF.gaussian_blur(b, 7, sigma)
    assert artifact_score(blurred, a) <= noise_floor(real, artifact_score)
    assert spectrum_distance(blurred, a) > 10 * noise_floor(real, spectrum_distance)
    assert spectrum_distance(b, a) <= noise_floor(real, spectrum_distance)


def test_spectral_metrics_report_each_score_beside_its_baseline_and_floor(digits):
    a, b = _halves(digits)
    m = spectral_metrics(b[:300], a, b, seed=1)
    assert set(m) == {"artifact_score", "baseline_artifact_score", "artifact_floor", "spectrum_distance",
                      "baseline_spectrum_distance", "spectrum_floor"}  # fmt: skip
    assert m["baseline_artifact_score"] <= m["artifact_floor"]
    assert m["baseline_spectrum_distance"] <= m["spectrum_floor"]
    assert spectral_metrics(b[:300], a, b, seed=1) == m  # deterministic
