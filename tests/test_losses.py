import math

import pytest
import torch

from ganops.losses import d_loss_bce, g_loss_nonsaturating


def test_d_loss_known_values():
    zero = torch.zeros(4)
    # D undecided (p = 0.5 everywhere): -log 0.5 for real + -log 0.5 for fake
    assert d_loss_bce(zero, zero).item() == pytest.approx(2 * math.log(2))
    # confident and right: near zero; confident and wrong: large
    assert d_loss_bce(torch.full((4,), 20.0), torch.full((4,), -20.0)).item() < 1e-6
    assert d_loss_bce(torch.full((4,), -20.0), torch.full((4,), 20.0)).item() > 39


def test_g_loss_is_non_saturating():
    # D(G(z)) -> 0: the loss grows (about -logit), with a gradient that does not vanish
    logits = torch.full((3,), -10.0, requires_grad=True)
    loss = g_loss_nonsaturating(logits)
    loss.backward()
    assert loss.item() == pytest.approx(10.0, rel=1e-3)
    assert logits.grad.abs().min() > 0.3  # d/dlogit of -log sigmoid = sigmoid - 1 ~ -1, /3 for the mean
