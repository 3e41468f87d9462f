"""The style-transfer contact sheet a person can read without the params file.

Layout (every cell ``tile`` px wide with a ``LABEL`` px caption strip under it)::

    caption      | style 1      | style 2      ...     top row: the style images (a blend shows its
    (extractor)  | name (+ w's) | name (+ w's)           images side by side, with their weights)
    -------------+--------------+-------------
    photo 1      | result 1,1   | result 1,2           first column: the content photos, named
    photo 2      | result 2,1   | ...

Each row is as high as its tallest image at the cell's width (at most ``tile``): a row of landscape
photos or paintings has no white band above it. Images are (1, 3, H, W) float in [0, 1];
each is scaled to fit its cell (aspect kept, white margins).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image, ImageDraw, ImageFont

from ganops.images import save_png as save_png  # re-exported: the sheet stage writes through it
from ganops.images import to_pil

PAD = 4  # px between cells
LABEL = 18  # px caption strip under each cell
FONT_SIZE = 12


@dataclass
class SheetStyle:
    """One column of the sheet: a named style made of one or more weighted style images."""

    name: str
    images: list[tuple[str, torch.Tensor, float]]  # [(image name, (1, 3, H, W), blend weight)]
    results: list[torch.Tensor] = field(default_factory=list)  # one per content photo, in row order

    @property
    def label(self) -> str:
        return blend_label(self.name, {n: w for n, _, w in self.images})


def blend_label(name: str, blend: dict[str, float]) -> str:
    """``name`` alone for a single image of the same name; else the blend, e.g. ``mix: a 0.7 + b 0.3``."""
    if list(blend) == [name]:
        return name
    return f"{name}: " + " + ".join(f"{n} {w:g}" for n, w in blend.items())


def _fit(img: Image.Image, w: int, h: int) -> Image.Image:
    """``img`` scaled to fit a w x h box (aspect kept), centred horizontally, at the bottom (next to its
    caption), on white."""
    img = img.copy()
    s = min(w / img.width, h / img.height)
    img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS)
    box = Image.new("RGB", (w, h), "white")
    box.paste(img, ((w - img.width) // 2, h - img.height))
    return box


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int) -> None:
    """Draw ``text`` at ``xy``, shortened with an ellipsis to fit ``width`` px."""
    font = ImageFont.load_default(size=FONT_SIZE)
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    draw.text(xy, text, fill=(20, 20, 20), font=font)


def _height(img: torch.Tensor, width: int, tile: int) -> int:
    """Height of (.., H, W) ``img`` scaled to ``width`` px wide, at most ``tile``."""
    return min(tile, max(1, round(width * img.shape[-2] / img.shape[-1])))


def row_heights(
    contents: list[tuple[str, torch.Tensor]], styles: list[SheetStyle], tile: int, caption: str = ""
) -> list[int]:
    """Image height of each row in px, so no row carries a white band: the style images' row as high as
    its tallest image at its width (and the corner caption), then each photo's height at ``tile`` px wide
    (its results have its shape); every row at most ``tile``."""
    lines = len(caption.splitlines()[: tile // (FONT_SIZE + 4)])
    top = [2 + lines * (FONT_SIZE + 4)] + [
        _height(img, tile // len(s.images), tile) for s in styles for _, img, _ in s.images
    ]
    return [min(tile, max(top))] + [_height(img, tile, tile) for _, img in contents]


def cell_origin(row: int, col: int, tile: int, heights: list[int]) -> tuple[int, int]:
    """Top-left (x, y) of the image of cell (row, col); row 0 = style images, col 0 = photos."""
    return PAD + col * (tile + PAD), PAD + sum(h + LABEL + PAD for h in heights[:row])


def labelled_sheet(
    contents: list[tuple[str, torch.Tensor]],
    styles: list[SheetStyle],
    tile: int = 160,
    caption: str = "",
) -> Image.Image:
    """Draw the sheet: style images along the top, content photos down the left, results in between.

    Args:
        contents: [(photo name, (1, 3, H, W))], one row each.
        styles: one column each; ``results`` holds one image per content photo (same order).
        tile: side of each square in px.
        caption: text for the top-left corner (e.g. the feature extractor and method); lines split on "\\n".

    Returns:
        An RGB image of (len(styles) + 1) x (len(contents) + 1) cells (geometry: :func:`cell_origin`).
    """
    for s in styles:
        if len(s.results) != len(contents):
            raise ValueError(f"style {s.name!r} has {len(s.results)} results for {len(contents)} photos")
    heights = row_heights(contents, styles, tile, caption)
    W = PAD + (len(styles) + 1) * (tile + PAD)
    H = PAD + sum(h + LABEL + PAD for h in heights)
    sheet = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(sheet)

    def put(row: int, col: int, img: Image.Image, label: str) -> None:
        x, y = cell_origin(row, col, tile, heights)
        sheet.paste(img, (x, y))
        if label:
            _text(draw, (x + 2, y + heights[row] + 2), label, tile - 4)

    for i, line in enumerate(caption.splitlines()[: tile // (FONT_SIZE + 4)]):
        _text(draw, (PAD + 2, PAD + 2 + i * (FONT_SIZE + 4)), line, tile - 4)
    for c, s in enumerate(styles, start=1):
        k = len(s.images)  # a blend: its images side by side, each in a 1/k-wide strip
        strip = Image.new("RGB", (tile, heights[0]), "white")
        for j, (_, img, _) in enumerate(s.images):
            x0, x1 = j * tile // k, (j + 1) * tile // k
            strip.paste(_fit(to_pil(img), x1 - x0, heights[0]), (x0, 0))
        put(0, c, strip, s.label)
        for r, res in enumerate(s.results, start=1):
            put(r, c, _fit(to_pil(res), tile, heights[r]), "")
    for r, (name, img) in enumerate(contents, start=1):
        put(r, 0, _fit(to_pil(img), tile, heights[r]), name)
    return sheet
