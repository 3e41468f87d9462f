"""Precision / recall and the copy check on the extremes they must tell apart."""

import torch

from ganops.neighbours import copies, precision_recall


def _clusters(n: int, seed: int, centres: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(centres), (n,), generator=g)
    return centres[pick] + 0.3 * torch.randn(n, centres.shape[1], generator=g)


CENTRES = 5 * torch.randn(8, 16, generator=torch.Generator().manual_seed(0))


def test_same_distribution_scores_high_precision_and_recall():
    real, fake = _clusters(400, 1, CENTRES), _clusters(400, 2, CENTRES)
    p, r = precision_recall(real, fake)
    assert p > 0.75 and r > 0.75  # k = 3 balls in 16 dimensions: same-distribution sets score ~0.8


def test_noise_has_no_precision_and_a_collapsed_generator_no_recall():
    real = _clusters(400, 1, CENTRES)
    noise = 20 * torch.randn(400, 16, generator=torch.Generator().manual_seed(3))
    assert precision_recall(real, noise)[0] < 0.05
    collapsed = _clusters(400, 4, CENTRES[:1])  # every sample from one of 8 modes: realistic, not diverse
    p, r = precision_recall(real, collapsed)
    assert p > 0.75 and r < 0.3


def test_copy_rate_is_one_for_training_pictures_and_zero_for_new_ones():
    train = _clusters(300, 1, CENTRES)
    copied = copies(train[:50] + 1e-4, train)
    assert copied.rate == 1.0 and torch.equal(copied.nearest, torch.arange(50))
    assert copies(20 * torch.randn(50, 16, generator=torch.Generator().manual_seed(5)), train).rate == 0.0
    fresh = copies(_clusters(200, 6, CENTRES), train)  # new samples of the same distribution: few copies
    assert fresh.rate < 0.6
