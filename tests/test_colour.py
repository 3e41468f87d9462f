import pytest
import torch

from ganops.colour import chroma, colour_distance, to_lab


def test_lab_of_known_colours():
    px = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).T[
        :, :, None
    ]  # (3, 4, 1)
    lab = to_lab(px)[:, :, 0].T
    assert lab[0].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.01)  # white
    assert lab[1].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=0.01)  # black
    assert lab[2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.05)  # sRGB red (standard tables)
    assert lab[3, 0] == pytest.approx(53.39, abs=0.05) and abs(lab[3, 1]) < 0.01  # mid grey: neutral
    with pytest.raises(ValueError, match="3 colour channels"):
        to_lab(torch.zeros(1, 1, 4, 4))


def _picture(seed: int = 0, size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g) ** 2  # saturated, uneven colours


def test_same_colours_in_any_arrangement_are_at_distance_zero():
    x = _picture()
    shuffled = x.flatten(2)[:, :, torch.randperm(48 * 48)].reshape(x.shape)
    assert colour_distance(x, x) == 0.0
    assert colour_distance(x, shuffled) == pytest.approx(0.0, abs=1e-9)  # colours, not layout
    assert colour_distance(x, torch.flip(x, [-1]), seed=3) == pytest.approx(0.0, abs=1e-9)


def test_different_and_paler_pictures_are_farther_the_more_they_differ():
    x = _picture()
    grey = x.mean(1, keepdim=True).expand_as(x)
    pale = [0.7 * x + 0.3 * grey, 0.4 * x + 0.6 * grey]  # washed out, then more so
    d = [colour_distance(x, p) for p in pale]
    assert 0 < d[0] < d[1] < colour_distance(x, grey)
    assert chroma(x) > chroma(pale[0]) > chroma(pale[1]) > chroma(grey) and chroma(grey) < 1e-6 + 0.5
    # whitened (paler towards white) is far too; other sizes compare as well (distributions, not pixels)
    assert colour_distance(x, 0.5 * x + 0.5) > 5
    small = torch.nn.functional.interpolate(x, size=(24, 24), mode="nearest")
    assert colour_distance(x, small) < 0.5 * colour_distance(x, pale[0])  # a sample of the same pixels
    assert colour_distance(x, _picture(1)) < colour_distance(x, pale[1])  # same palette, other pixels
