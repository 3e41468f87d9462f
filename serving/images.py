"""Image encoding for answers and checking of uploads (HTTP concerns), on ``ganops.images``; no BentoML.

Everything here is CPU work that the service runs off the event loop (in the batcher's thread or in
BentoML's worker thread), so one slow encode never stalls other requests' I/O.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganops.images import ImageError, open_image, png_bytes
from ganops.images import grid as grid_tensor

# Formats /stylize decodes. No TIFF/PSD/ICO/...: rarely photos, and each extra decoder is attack surface.
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class UploadError(ValueError):
    """An upload the service will not decode; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def png(image: np.ndarray) -> bytes:
    """(H, W, C) uint8 -> PNG bytes (grey for C=1, RGB for C=3): the fast direct encoder of every answer."""
    return png_bytes(image, fast=True)


def grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """(N, S, S, C) -> one (rows*S', cols*S', C) near-square tile image with black padding."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return grid_tensor(x, pad=pad).permute(1, 2, 0).numpy()


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
    decompression bomb (a small file that inflates to gigabytes) is refused in milliseconds. Decoding,
    EXIF rotation and mode conversion are the library's (``ganops.images.open_image``).

    Raises:
        UploadError: not an image of an accepted format (400), a side under ``min_side`` before or after
            the downscale to ``max_side`` (400), more than
            ``max_pixels`` pixels (413), or a file that breaks while decoding (400).
    """

    def check(f: Image.Image) -> None:
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
        # max_pixels=None: PIL's own ceiling still applies (2 x 89 Mpx); ours is checked first, in check()
        return open_image(path, max_side=max_side, max_pixels=None, formats=UPLOAD_FORMATS, check=check)
    except ImageError as err:
        if err.kind == "bomb":
            raise UploadError(f"the image is too large ({err})", 413) from None
        if err.kind == "corrupt":
            raise UploadError(f"the image could not be decoded ({err})") from None
        raise UploadError(f"the upload is not a {'/'.join(UPLOAD_FORMATS)} image ({err})") from None
