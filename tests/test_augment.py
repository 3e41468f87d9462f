import pytest
import torch

from ganops.augment import diff_augment, parse_policy

POLICY = "color,translation,cutout"


def test_policy_parsing():
    assert parse_policy(" color, cutout ") == ("color", "cutout")
    assert parse_policy("") == ()
    with pytest.raises(ValueError, match="flip"):
        parse_policy("color,flip")


def test_empty_policy_is_the_identity():
    x = torch.randn(4, 1, 8, 8)
    assert diff_augment(x, "") is x


@pytest.mark.parametrize("op", ["color", "translation", "cutout"])
def test_each_op_is_differentiable_and_changes_the_batch(op):
    x = torch.rand(16, 3, 16, 16, requires_grad=True)
    y = diff_augment(x, op, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(y, x)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_shifts_content_and_fills_with_zeros():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0  # one bright pixel in the middle
    y = diff_augment(x, "translation", torch.Generator().manual_seed(1))
    where = y.flatten(1).argmax(1)
    assert y.sum().item() == pytest.approx(64.0)  # moved, never duplicated or blurred
    dy, dx = where // 16 - 8, where % 16 - 8
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and (dx != 0).any() and (dy != 0).any()


def test_cutout_zeroes_a_quarter_of_the_image():
    y = diff_augment(torch.ones(32, 1, 16, 16), "cutout", torch.Generator().manual_seed(2))
    zeroed = (y == 0).flatten(1).float().mean(1)  # an 8x8 square, clipped at the border
    assert zeroed.max() == pytest.approx(0.25) and zeroed.min() > 0


def test_draws_come_only_from_the_given_generator():
    # Equal generator state -> equal draws (what makes a resumed run augment exactly as an uninterrupted one).
    real, fake = torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    a = diff_augment(torch.cat([real, fake]), POLICY, torch.Generator().manual_seed(9))
    assert a.shape == (16, 3, 16, 16)
    g1, g2 = torch.Generator(), torch.Generator()
    g1.set_state(state)
    g2.set_state(state)
    same = torch.rand(8, 3, 16, 16)
    assert torch.equal(diff_augment(same, POLICY, g1), diff_augment(same, POLICY, g2))


def test_pyramid_scales_get_the_same_transform():
    # MSG: the 8px image is the 16px one pooled; after translation + cutout it must still be (up to rounding)
    x16 = torch.rand(8, 1, 16, 16)
    x8 = torch.nn.functional.avg_pool2d(x16, 2)
    y8, y16 = diff_augment([x8, x16], "translation,cutout", torch.Generator().manual_seed(4))
    other = diff_augment(x8, "translation,cutout", torch.Generator().manual_seed(5))  # an independent draw
    pooled = torch.nn.functional.avg_pool2d(y16, 2)
    assert (pooled - y8).abs().mean() < 0.4 * (pooled - other).abs().mean()
