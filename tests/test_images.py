import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from ganops.images import ImageError, grid, grid_columns, grid_png, open_image, png_bytes


@pytest.mark.parametrize(
    "n,k,cols", [(64, 0, 8), (64, 2, 8), (64, 10, 10), (6, 2, 2), (64, 3, 9), (64, 40, 8)]
)
def test_grid_columns_near_square_and_class_aligned(n, k, cols):
    assert grid_columns(n, k) == cols


def test_two_class_grid_is_near_square():
    # 64 samples of a 2-class conditional G: was 2 columns x 32 rows (134 x 2114 px)
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    w, h = Image.open(io.BytesIO(grid_png(x, n_classes=2))).size
    assert max(w, h) / min(w, h) <= 2 and (w, h) == (2 + 8 * 18, 2 + 8 * 18)


@pytest.mark.parametrize("c", [1, 3])
def test_grid_png_matches_torchvision_save_image(c):
    x = torch.rand(30, c, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    buf = io.BytesIO()
    save_image(make_grid(x, nrow=6, normalize=True, value_range=(-1, 1)), buf, "png")
    assert grid_png(x) == buf.getvalue()  # 30 samples, no classes: ceil(sqrt(30)) = 6 columns


def test_grid_keeps_channels_and_borders_a_lone_image():
    x = torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)
    g = grid(x)
    assert g.shape == (1, 8, 8) and g[0, 0].sum() == 0 and g[0, 2:6, 2:6].eq(255).all()


@pytest.mark.parametrize("c", [1, 3])
def test_fast_and_pil_png_decode_to_the_same_pixels(c):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, c), dtype=np.uint8)
    for b in (png_bytes(a), png_bytes(a, fast=True)):
        back = np.asarray(Image.open(io.BytesIO(b)))
        assert np.array_equal(back.reshape(a.shape), a)


def test_open_image_modes_exif_and_errors(tmp_path):
    Image.new("RGBA", (20, 10), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert open_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)  # alpha over white
    assert open_image(tmp_path / "clear.png", channels=1).mode == "L"
    im = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotated 90 degrees
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert open_image(tmp_path / "rot.jpg").size == (20, 40)
    assert open_image(tmp_path / "rot.jpg", max_side=10).size == (5, 10)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    for name, kind, kw in (("empty.png", "empty", {}), ("text.png", "unidentified", {}),
                           ("nope.png", "missing", {}), ("big.png", "bomb", {"max_pixels": 999})):  # fmt: skip
        with pytest.raises(ImageError) as e:
            open_image(tmp_path / name, **kw)
        assert e.value.kind == kind
