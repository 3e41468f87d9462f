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


def _gan_loss(r1_gamma=1.0, r1_every=2):
    from ganops.losses import GanLoss
    from ganops.models.gan import GANConfig, build
    from ganops.train_gan import _GToScales

    torch.manual_seed(0)
    G, D = build(GANConfig(image_size=8, channels=1, latent_dim=4, ngf=4, ndf=4))
    loss = GanLoss(_GToScales(G), D, D, loss="hinge", r1_gamma=r1_gamma, r1_every=r1_every, policy=(),
                   aug_rng=torch.Generator().manual_seed(0), amp=False, device_type="cpu")  # fmt: skip
    return G, D, loss


def test_gan_loss_d_phase_adds_lazy_r1_only_when_due():
    # a large gamma: a fresh D's input gradients are small (R1 ~ 1e-4 here), and the penalty must stand well
    # above float32's rounding of total - loss (~2e-7 next to a loss of ~2)
    gamma, every = 50.0, 3
    G, D, loss = _gan_loss(r1_gamma=gamma, r1_every=every)
    reals, z = [torch.rand(4, 1, 8, 8) * 2 - 1], torch.randn(4, 4, 1, 1)
    due = loss.d_phase(reals, None, z, None, n=6, keep_graph=True)
    # R1 from its definition, by hand: gamma / 2 * E_x ||grad_x D(x)||^2 at the real batch, times r1_every
    # (lazy regularisation: applied every r1_every D steps, scaled up to match). D is in train mode, as in
    # the phase: BatchNorm normalises with the real batch's statistics (its running ones do not count).
    x = reals[0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(D([x]).sum(), x)  # (B, 1, 8, 8): row i is grad_x_i of the summed logits
    expected = gamma / 2 * every * grad.pow(2).sum((1, 2, 3)).mean()
    assert expected.item() > 1e-3
    assert (due.total - due.loss).item() == pytest.approx(expected.item(), rel=1e-3)
    assert due.real_logits.shape == (4,) and due.fakes[0].shape == (4, 1, 8, 8) and due.fakes[0].requires_grad
    skipped = loss.d_phase(reals, None, z, None, n=7, keep_graph=False)  # 7 % r1_every != 0: not due
    assert skipped.total is skipped.loss and not skipped.fakes[0].requires_grad


def test_gan_loss_g_phase_trains_g_through_a_frozen_d():
    G, D, loss = _gan_loss()
    d = loss.d_phase([torch.zeros(4, 1, 8, 8)], None, torch.randn(4, 4, 1, 1), None, n=1, keep_graph=True)
    loss.g_phase(d.fakes, None)
    assert all(p.grad is None for p in D.parameters())  # D frozen in G's phase
    assert all(p.requires_grad for p in D.parameters())  # ... and trainable again after it
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
