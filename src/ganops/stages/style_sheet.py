"""Stage ``stylize_sheet``: every photo x style of ``stylize@<style>`` on one labelled contact sheet.

It reads the stylised images and each style's ``models/style/<style>/config.json`` (the extractor and
method, printed in the corner); the drawing is :mod:`ganops.sheet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ganops.artifacts import CONFIG, load_config
from ganops.config import Params
from ganops.images import save_png
from ganops.sheet import SheetStyle, labelled_sheet
from ganops.stages.common import Layout, StageError
from ganops.stylize import StyleError, list_images, load_image, style_files

SIDE = 512  # every picture is loaded at most this long: the sheet's tiles are 192 px


def stylize_sheet(p: Params, at: Layout = Layout()) -> tuple[Path, int, int]:
    """Stage `stylize_sheet`: the labelled contact sheet; returns (sheet path, contents, styles).

    Raises:
        StageError: a photo, style image or stylised result is missing or unreadable (run the style stages).
    """
    sp = p.style
    try:
        files = list_images(at.root / sp.content_dir)
        contents = [(f.stem, load_image(f, SIDE)) for f in files]
        columns = []
        for s, blend in sp.styles.items():
            imgs = [(f.stem, load_image(f, SIDE), w) for f, w in style_files(at.root / sp.style_dir, blend)]
            col = SheetStyle(s, imgs, [load_image(at.stylized / s / f"{f.stem}.png", SIDE) for f in files])
            columns.append(col)
    except StyleError as err:
        raise StageError(f"{err}: run `dvc repro` (or `ganops stylize --style ...`) first") from None
    made: dict[str, dict[str, Any]] = {}  # how each column was made, from its models/style/<name>/config.json
    for s in sp.styles:
        folder = at.style_models / s
        made[s] = load_config(folder) if (folder / CONFIG).is_file() else {}
    extractors = sorted({m.get("extractor", "extractor unknown") for m in made.values()})
    methods = sorted({m.get("method", sp.method) for m in made.values()})
    caption = "\n".join(
        ["rows: photos", "columns: styles", *extractors, " / ".join(methods) + f", {sp.size} px"]
    )
    save_png(labelled_sheet(contents, columns, tile=192, caption=caption), at.sheet)
    return at.sheet, len(contents), len(columns)
