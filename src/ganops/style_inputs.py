"""Stage `style_inputs`: the offline default content photos for style transfer, written to data/style/content/.

The two photos that ship inside scikit-learn (``china.jpg``, ``flower.jpg``). The default style images are
public-domain paintings kept in git under ``data/paintings/`` (sources in its README). Your own photos go
in any folder named by ``style.content_dir`` instead (track it with ``dvc add``).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from ganops.checkpoint import atomic_write


def write_defaults(out: str | Path, max_side: int = 512) -> dict[str, list[str]]:
    """Write scikit-learn's sample photos as ``content/*.png`` under ``out``; returns the file names."""
    from sklearn.datasets import load_sample_images

    out = Path(out)
    written: dict[str, list[str]] = {"content": []}
    sample = load_sample_images()
    for path, arr in zip(sample.filenames, sample.images, strict=True):
        img = Image.fromarray(arr)
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        name = Path(path).stem + ".png"
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        atomic_write(out / "content" / name, buf.getvalue())
        written["content"].append(name)
    return written
