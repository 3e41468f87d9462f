"""Stage `style_inputs`: the offline default images for style transfer, written under data/style/.

Content: the two photos that ship inside scikit-learn (``china.jpg``, ``flower.jpg``). Styles: two
textures generated here, deterministically — ``waves`` (coloured interference bands) and ``mosaic``
(Voronoi tiles with dark grout). Your own images go in any folder named by ``style.content_dir`` /
``style.style_dir`` instead (track it with ``dvc add``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ganops.checkpoint import atomic_write


def waves(size: int = 256) -> np.ndarray:
    """Interference of three sine waves mapped to a blue/orange palette: (size, size, 3) uint8."""
    y, x = np.mgrid[0:size, 0:size] / size * 2 * np.pi
    v = np.sin(3 * x + 2 * y) + np.sin(5 * y - x) + np.sin(4 * np.hypot(x - 3, y - 3))
    t = (v - v.min()) / (v.max() - v.min())  # [0, 1]
    a, b, c = np.array([20, 40, 140]), np.array([250, 170, 40]), np.array([240, 240, 220])
    rgb = np.where(t[..., None] < 0.5, a + (b - a) * (2 * t[..., None]), b + (c - b) * (2 * t[..., None] - 1))
    return rgb.clip(0, 255).astype(np.uint8)


def mosaic(size: int = 256, cells: int = 60, seed: int = 0) -> np.ndarray:
    """Voronoi tiles in saturated colours with dark borders: (size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, size, (cells, 2))
    colours = rng.integers(40, 256, (cells, 3))
    y, x = np.mgrid[0:size, 0:size]
    d = np.hypot(x[..., None] - pts[:, 0], y[..., None] - pts[:, 1])  # (size, size, cells)
    order = np.sort(d, axis=-1)
    img = colours[d.argmin(-1)].astype(np.float64)
    img[(order[..., 1] - order[..., 0]) < 2.0] = 25  # grout between tiles
    return img.astype(np.uint8)


def write_defaults(out: str | Path, max_side: int = 512) -> dict[str, list[str]]:
    """Write ``content/`` and ``styles/`` PNGs under ``out``; returns the file names written."""
    from sklearn.datasets import load_sample_images

    out = Path(out)
    written: dict[str, list[str]] = {"content": [], "styles": []}
    sample = load_sample_images()
    for path, arr in zip(sample.filenames, sample.images, strict=True):
        img = Image.fromarray(arr)
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        name = Path(path).stem + ".png"
        atomic_write(out / "content" / name, _png(img))
        written["content"].append(name)
    for name, arr in (("waves.png", waves()), ("mosaic.png", mosaic())):
        atomic_write(out / "styles" / name, _png(Image.fromarray(arr)))
        written["styles"].append(name)
    return written


def _png(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
