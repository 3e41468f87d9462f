import numpy as np
import pytest
import torch

from ganops.sheet import LABEL, PAD, SheetStyle, cell_origin, labelled_sheet, row_heights


def solid(rgb: tuple[float, float, float], h: int = 20, w: int = 30) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, h, w).clone()


RED, GREEN, BLUE, YELLOW = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)


def mean_rgb(a: np.ndarray, row: int, col: int, tile: int, hs: list[int], frac: float = 0.5) -> np.ndarray:
    """Mean colour of the central ``frac`` of the bottom rows of cell (row, col)'s image."""
    x, y = cell_origin(row, col, tile, hs)
    m = round(tile * (1 - frac) / 2)
    return a[y + hs[row] - 12 : y + hs[row] - 2, x + m : x + tile - m].reshape(-1, 3).mean(0)


def ink(a: np.ndarray, row: int, col: int, tile: int, hs: list[int]) -> int:
    """Dark pixels in cell (row, col)'s caption strip (text)."""
    x, y = cell_origin(row, col, tile, hs)
    return int((a[y + hs[row] : y + hs[row] + LABEL, x : x + tile].max(-1) < 100).sum())


def test_styles_on_top_photos_on_the_left_results_between_all_named():
    tile = 64
    contents = [("china", solid(GREEN)), ("flower", solid(GREEN, 40, 20))]
    single = SheetStyle("starry_night", [("starry_night", solid(RED), 1.0)], [solid(BLUE)] * 2)
    blend = SheetStyle("mix", [("a", solid(RED), 0.7), ("b", solid(YELLOW), 0.3)], [solid(BLUE)] * 2)
    img = labelled_sheet(contents, [single, blend], tile=tile, caption="vgg19-caffe-q8\ngatys")
    a = np.asarray(img).astype(float)
    # rows as high as their tallest image at the cell's width: the 20x30 paintings (43 px; the blend's
    # half-width strips 21 px), the 20x30 landscape photo (43 px, no white band above it), the portrait
    # photo a tile high
    hs = row_heights(contents, [single, blend], tile, "vgg19-caffe-q8\ngatys")
    assert hs == [43, 43, tile]
    # 3 columns (photos + 2 styles) x 3 rows (styles + 2 photos), each with a caption strip under it
    assert img.size == (PAD + 3 * (tile + PAD), PAD + 3 * (LABEL + PAD) + 43 + 43 + tile)
    assert np.allclose(mean_rgb(a, 0, 1, tile, hs), [255, 0, 0], atol=2)  # the style image, top row
    assert np.allclose(mean_rgb(a, 1, 0, tile, hs), [0, 255, 0], atol=2)  # the photo, first column
    x, y = cell_origin(1, 0, tile, hs)
    assert np.allclose(a[y + 1 : y + 42, x + 1 : x + tile - 1], [0, 255, 0], atol=2)  # filling its cell
    assert np.allclose(mean_rgb(a, 2, 0, tile, hs, 0.2), [0, 255, 0], atol=2)  # a portrait photo, centred
    for r in (1, 2):
        for c in (1, 2):
            assert np.allclose(mean_rgb(a, r, c, tile, hs), [0, 0, 255], atol=2)  # results in between
    # the blend shows both its images side by side, left half red, right half yellow
    x, y = cell_origin(0, 2, tile, hs)
    assert np.allclose(a[y + hs[0] - 5, x + tile // 4], [255, 0, 0], atol=2)
    assert np.allclose(a[y + hs[0] - 5, x + 3 * tile // 4], [255, 255, 0], atol=2)
    assert all(ink(a, 0, c, tile, hs) > 20 for c in (1, 2))  # style names
    assert all(ink(a, r, 0, tile, hs) > 20 for r in (1, 2))  # photo names
    assert ink(a, 1, 1, tile, hs) == 0  # results carry no caption
    assert (a[PAD : PAD + hs[0], PAD : PAD + tile].max(-1) < 100).sum() > 20  # the corner caption


def test_the_top_row_is_as_tall_as_a_portrait_painting_or_the_caption_needs():
    photo = [("p", solid(GREEN))]
    portrait = SheetStyle("s", [("s", solid(RED, 40, 20), 1.0)], [solid(BLUE)])
    landscape = SheetStyle("l", [("l", solid(RED, 10, 40), 1.0)], [solid(BLUE)])
    assert row_heights(photo, [portrait, landscape], 64)[0] == 64  # the portrait needs the whole tile
    assert row_heights(photo, [landscape], 64)[0] == 16  # 10x40 at 64 px wide
    assert row_heights(photo, [landscape], 64, "a\nb\nc")[0] == 2 + 3 * 16  # three caption lines


def test_blend_label_names_the_weights():
    assert SheetStyle("starry_night", [("starry_night", solid(RED), 1.0)]).label == "starry_night"
    mix = SheetStyle("mix", [("starry_night", solid(RED), 0.7), ("the_scream", solid(RED), 0.3)])
    assert mix.label == "mix: starry_night 0.7 + the_scream 0.3"


def test_missing_results_are_an_error():
    with pytest.raises(ValueError, match="style 'a' has 1 results for 2 photos"):
        labelled_sheet([("p", solid(RED))] * 2, [SheetStyle("a", [("a", solid(RED), 1.0)], [solid(RED)])])
