import math

import pytest
import torch

from ganops.losses import (
    D_LOSSES,
    G_LOSSES,
    d_loss_bce,
    d_loss_hinge,
    g_loss_hinge,
    g_loss_nonsaturating,
    r1_penalty,
)


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


def test_hinge_losses_known_values():
    # D right by a margin: no D loss; inside the margin: linear
    assert d_loss_hinge(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert d_loss_hinge(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(2.0)
    assert g_loss_hinge(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)
    assert set(D_LOSSES) == set(G_LOSSES) == {"bce", "hinge"}


def test_r1_is_the_squared_input_gradient():
    # D(x) = sum(w * x) has input gradient w everywhere: R1 = ||w||^2 for every sample
    w = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]], requires_grad=True)  # D's weight
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    logits = (x * w).flatten(1).sum(1)
    r1 = r1_penalty(logits, [x])
    assert r1.item() == pytest.approx(6.0)
    r1.backward()  # create_graph: the penalty itself trains D's weights
    assert torch.allclose(w.grad, 2 * w.detach())
