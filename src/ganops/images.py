"""Images in and out: the one loader (EXIF, modes, size limits), PNG encoding, sample grids, suffixes.

Used by ``data`` (the folder source), ``stylize`` (photos and paintings), ``sheet`` and the training loop
(sample grids), and ``serving`` (uploads and answers). Pixels come in as PIL images in ``L`` or ``RGB``
mode; tensors are (B, C, H, W) float in [0, 1] (or [-1, 1] for generator samples, as named).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.utils import make_grid

from ganops.artifacts import atomic_write

# The file types read from a folder (data's folder source, stylize's photos and paintings).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
# Transparent pixels are composited over this colour so RGBA / LA / palette images convert the same way
# every time (white: the usual background of icons, product shots and scans).
BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """A file that cannot be used as an image. ``kind``: missing | empty | unidentified | bomb | corrupt.

    The message is the reason alone (no file name): callers add the name, or map ``kind`` to an answer.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------- loading


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Deterministic conversion of any PIL mode to ``L`` (1 channel) or ``RGB`` (3)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (and 32-bit integer) grey: map 0..65535 onto 0..255.
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def open_image(
    path: str | Path,
    *,
    channels: int = 3,
    max_side: int | None = None,
    draft: int | None = None,
    max_pixels: int | None = Image.MAX_IMAGE_PIXELS,
    formats: tuple[str, ...] | None = None,
    check: Callable[[Image.Image], None] | None = None,
) -> Image.Image:
    """Decode an image file: first frame, EXIF-rotated, in mode ``L`` or ``RGB``, at most ``max_side`` long.

    The size is read from the header before any pixel is decoded, so a decompression bomb (a small file
    that inflates to gigabytes) is refused at once.

    Args:
        path: the file.
        channels: 1 (``L``) or 3 (``RGB``); alpha is composited over white (``BACKGROUND``).
        max_side: downscale (LANCZOS, aspect kept) so the longer side is at most this; None = keep.
        draft: JPEG only: let the decoder shrink on the fly towards this side (default ``max_side``).
        max_pixels: refuse headers over this many pixels (default PIL's decompression-bomb warning level).
        formats: the PIL formats to accept (default all).
        check: called with the opened, not yet decoded, image (header only); may raise its own errors.

    Raises:
        ImageError: missing, empty, unrecognised, too large, or corrupt/truncated file (``kind`` says which).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError("empty", "empty file (0 bytes)")
    except FileNotFoundError:
        raise ImageError("missing", "no such file") from None
    bomb = ImageError("bomb", "too large to decode safely (decompression-bomb limit)")
    with warnings.catch_warnings():
        # PIL warns above MAX_IMAGE_PIXELS and errors at twice that: the limit is max_pixels, checked below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            f = Image.open(path, formats=formats)
        except UnidentifiedImageError:
            raise ImageError("unidentified", "not an image (unrecognised format)") from None
        except Image.DecompressionBombError:
            raise bomb from None
        except Exception as err:  # noqa: BLE001 - any failure to parse a file is the file's fault
            raise ImageError("corrupt", f"corrupt or truncated image ({err})") from None
        with f:
            w, h = f.size
            if max_pixels is not None and w * h > max_pixels:
                raise bomb
            if check is not None:
                check(f)
            try:
                f.seek(0)  # animated GIF / WebP / multi-page TIFF: the first frame
                side = draft or max_side
                if side:
                    f.draft("RGB", (side, side))  # JPEG: decode big photos at reduced size directly
                f.load()  # decode now, so truncated files fail here
                img = to_mode(ImageOps.exif_transpose(f), channels)
            except Image.DecompressionBombError:
                raise bomb from None
            except Exception as err:  # noqa: BLE001 - truncated data, bad EXIF, odd modes: all the file's
                raise ImageError("corrupt", f"corrupt or truncated image ({err})") from None
    if max_side is not None and max(img.size) > max_side:  # never a huge tensor from a huge photo
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def list_images(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """Image files (by ``IMAGE_SUFFIXES``) in ``folder`` (and its subfolders if ``recursive``), sorted;
    hidden files and folders ignored."""
    root = Path(folder)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


# ----------------------------------------------------------------------------- tensors <-> pixels


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An ``RGB`` PIL image -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) float in [0, 1] -> (H, W, C) uint8, rounded to nearest."""
    x = x[0] if x.dim() == 4 else x
    return (x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def to_pil(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) float in [0, 1] -> an ``RGB`` PIL image."""
    return Image.fromarray(to_uint8(x))


# ----------------------------------------------------------------------------- PNG


def png_bytes(image: np.ndarray | Image.Image, *, fast: bool = False) -> bytes:
    """An (H, W, C) uint8 array (C = 1, 3 or 4) or a PIL image -> PNG bytes.

    ``fast``: the service's encoder: rows unfiltered, deflated at level 1, written directly with zlib.
    For the small images a generator draws, PIL's save() spends ~10x longer in its Python plugin
    machinery than zlib spends compressing. Files on disk use PIL (smaller files).
    """
    if isinstance(image, Image.Image):
        pil = image
    elif fast:
        return _png_direct(image)
    else:
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray | Image.Image, path: str | Path) -> Path:
    """Write ``image`` (see :func:`png_bytes`) as PNG, atomically."""
    return atomic_write(path, png_bytes(image))


def save_image(x: torch.Tensor, path: str | Path) -> Path:
    """(1, 3, H, W) in [0, 1] -> PNG (written atomically)."""
    return save_png(to_uint8(x), path)


def _png_direct(image: np.ndarray) -> bytes:
    # A PNG is a signature, an IHDR chunk, the rows (each behind a filter byte, 0 = none) deflated in
    # IDAT, and IEND.
    h, w, c = image.shape
    rows = np.zeros((h, 1 + w * c), np.uint8)  # filter byte 0 in column 0
    rows[:, 1:] = image.reshape(h, w * c)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2, 4: 6}[c], 0, 0, 0)  # 8 bit, grey / RGB / RGBA
    return b"".join(
        (_PNG_SIGNATURE, _chunk(b"IHDR", ihdr), _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)), _IEND)
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = _chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- grids


def grid_columns(n: int, n_classes: int = 0) -> int:
    """Columns of a near-square grid of ``n`` samples; with classes, a multiple of ``n_classes``.

    Class-conditional samples are drawn with labels ``arange(n) % n_classes``, so a multiple of the class
    count keeps each class in its own columns. The multiple is the one whose columns : rows ratio is
    nearest 1 (2 classes, 64 samples: 8 x 8; 10 classes: 10 x 7). When even ``n_classes`` columns would
    be over twice as wide as tall (many classes, few samples), the plain square layout wins.
    """
    square = math.ceil(math.sqrt(n))
    if n_classes <= 0 or n <= 1:
        return square

    def skew(cols: int) -> float:  # |log(cols / rows)|: 0 for a square
        return abs(math.log(cols / math.ceil(n / cols)))

    cols = min(range(n_classes, max(n, n_classes) + 1, n_classes), key=skew)
    return cols if skew(cols) <= math.log(2) else square


def grid(
    x: torch.Tensor, cols: int = 0, *, pad: int = 2, value_range: tuple[float, float] | None = None
) -> torch.Tensor:
    """(N, C, S, S) -> one (C, H, W) tile image with black ``pad`` px gaps (torchvision's ``make_grid``).

    ``cols`` images per row (0: ``ceil(sqrt(N))``); ``value_range``: scale that range onto [0, 1] first.
    """
    g = make_grid(
        x, nrow=cols or math.ceil(math.sqrt(len(x))), padding=pad,
        normalize=value_range is not None, value_range=value_range,
    )  # fmt: skip
    if len(x) == 1:  # make_grid returns a lone image without its border: add it
        g = F.pad(g, (pad, pad, pad, pad))
    return g[: x.shape[1]]  # make_grid turns 1 channel into 3: keep the input's


def grid_png(x: torch.Tensor, n_classes: int = 0) -> bytes:
    """Generator samples (N, C, S, S) in [-1, 1] -> PNG (RGB) of a near-square grid (:func:`grid_columns`)."""
    g = grid(x, grid_columns(len(x), n_classes), value_range=(-1, 1))
    # torchvision's save_image conversion (x255 + 0.5, truncated), RGB even for grey samples
    a = g.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).expand(3, -1, -1).permute(1, 2, 0)
    return png_bytes(np.ascontiguousarray(a.numpy()))
