"""Image encoding for answers and checking of uploads: plain PIL / numpy, no BentoML.

Everything here is CPU work that the service runs off the event loop (in the batcher's thread or in
BentoML's worker thread), so one slow encode never stalls other requests' I/O.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Formats /stylize decodes. No TIFF/PSD/ICO/...: rarely photos, and each extra decoder is attack surface.
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class UploadError(ValueError):
    """An upload the service will not decode; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def png(image: np.ndarray) -> bytes:
    """(H, W, C) uint8 -> PNG bytes (grey for C=1, RGB for C=3), written directly with zlib.

    A PNG is a signature, an IHDR chunk, the rows (each behind a filter byte, 0 = none) deflated in IDAT,
    and IEND. For the small images a generator draws, PIL's save() spends ~10x longer in its Python
    plugin machinery than zlib spends compressing, so this is the encoder of every generated image.
    """
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


def grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """(N, S, S, C) -> one (rows*S', cols*S', C) tile image with black padding."""
    n, s, _, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (s + pad) + pad, cols * (s + pad) + pad, c), np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        out[pad + r * (s + pad) : pad + r * (s + pad) + s, pad + q * (s + pad) : pad + q * (s + pad) + s] = im
    return out


def png_list_json(images: np.ndarray, seed: int) -> bytes:
    """(N, S, S, C) uint8 -> the JSON body ``{"seed", "images": [base64 PNG, ...]}``."""
    pngs = [base64.b64encode(png(im)).decode() for im in images]
    return json.dumps({"seed": seed, "images": pngs}).encode()


def npy(images: np.ndarray) -> bytes:
    """(N, S, S, C) uint8 -> ``.npy`` bytes (``numpy.load(io.BytesIO(body))`` reads them back)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(images), allow_pickle=False)
    return buf.getvalue()


def open_upload(path: Path, *, max_pixels: int, min_side: int, max_side: int) -> Image.Image:
    """The uploaded photo as RGB, at most ``max_side`` on its long side; checked before it is decoded.

    PIL reads only the header on ``open``: the pixel count and the sides are checked there, so a
    decompression bomb (a small file that inflates to gigabytes) is refused in milliseconds.

    Raises:
        UploadError: not an image of an accepted format (400), a side under ``min_side`` before or after
            the downscale to ``max_side`` (400), more than
            ``max_pixels`` pixels (413), or a file that breaks while decoding (400).
    """
    try:
        f = Image.open(path, formats=UPLOAD_FORMATS)
    except Image.DecompressionBombError as err:  # PIL's own ceiling (2 x 89 Mpx), over ours anyway
        raise UploadError(f"the image is too large ({err})", 413) from None
    except Exception as err:  # noqa: BLE001 - any failure to parse a client's file is the client's 400
        raise UploadError(f"the upload is not a {'/'.join(UPLOAD_FORMATS)} image ({err})") from None
    with f:
        w, h = f.size
        if w * h > max_pixels:
            raise UploadError(
                f"the image is {w}x{h} = {w * h} pixels, over GANOPS_MAX_PIXELS={max_pixels}", 413
            )
        if min(w, h) < min_side:
            raise UploadError(f"the image is {w}x{h}: both sides must be at least {min_side} pixels")
        if min(w, h) * min(1.0, max_side / max(w, h)) < min_side:  # the short side after the downscale
            raise UploadError(f"the image is {w}x{h}: too elongated (at most {max_side} px long, the short side "
                              f"would drop under {min_side} px)")  # fmt: skip
        try:
            f.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale straight away
            f.load()
            img = ImageOps.exif_transpose(f).convert("RGB")
        except Exception as err:  # noqa: BLE001 - truncated data, bad EXIF, odd modes: all the client's file
            raise UploadError(f"the image could not be decoded ({err})") from None
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # never a huge tensor
    return img
