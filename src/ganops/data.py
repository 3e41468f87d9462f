"""Data sources turned into one uint8 image tensor plus labels and a manifest (what stage `prepare` runs).

Sources: ``digits`` (scikit-learn's embedded 8x8 digits, offline), ``mnist`` / ``fashion-mnist`` /
``cifar10`` (torchvision layouts under ``data.root``), and ``folder`` (the user's own pictures).
Every source ends as ``images: (N, C, S, S) uint8`` and ``labels: (N,) int64`` (-1 when unlabelled).
Images are resized so the shorter side is S, then centre-cropped to S x S.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from tqdm import tqdm

from ganops.artifacts import atomic_write, remove_stale_temps
from ganops.config import DataParams
from ganops.images import IMAGE_SUFFIXES, ImageError, open_image


class DataError(RuntimeError):
    """A data source cannot be read; the message says what to put where."""


@dataclass
class Prepared:
    """A prepared dataset held in memory."""

    images: torch.Tensor  # (N, C, S, S) uint8
    labels: torch.Tensor  # (N,) int64, -1 = unlabelled
    classes: list[str]
    source: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"file", "reason"}] (folder source)


# ----------------------------------------------------------------------------- tensor helpers


def fit_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, h, w) uint8 so the shorter side is ``size``, then centre-crop to size x size."""
    if x.shape[-2:] != (size, size):
        x = TF.resize(x, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        x = TF.center_crop(x, [size, size])
    return x.contiguous()


def set_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert (N, C, H, W) uint8 between 1 and 3 channels (luminance as PIL's ``L``: ITU-R 601-2)."""
    c = x.shape[1]
    if c == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------- sources


def load_digits_source(p: DataParams) -> Prepared:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0..16), scaled to ``p.image_size``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]  # (N, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    return Prepared(x, y, [str(i) for i in range(10)], "digits")


_IDX = {
    "mnist": ("MNIST", [str(i) for i in range(10)]),
    "fashion-mnist": (
        "FashionMNIST",
        [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
    ),
}


def _find_idx(raw: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw / name).is_file():
            return raw / name
    return None


def _read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (gzipped or not) with torchvision's reader."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    if path.suffix != ".gz":
        return read_sn3_pascalvincent_tensor(str(path), strict=False)
    # torchvision's reader wants a plain file: gunzip to a scratch copy first.
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / path.stem
        with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return read_sn3_pascalvincent_tensor(str(plain), strict=False)


def load_idx_source(p: DataParams) -> Prepared:
    """MNIST / Fashion-MNIST from ``<root>/<MNIST|FashionMNIST>/raw/`` IDX files, one split only.

    Reads the split's two files directly, so a folder holding only the test split works (torchvision's
    dataset classes insist on all four files). With ``download: true`` torchvision fetches what is missing.
    """
    folder, classes = _IDX[p.source]
    raw = Path(p.root) / folder / "raw"
    prefix = "train" if p.split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    paths = [_find_idx(raw, s) for s in stems]
    if None in paths and p.download:
        import torchvision.datasets as tvd

        cls = tvd.MNIST if p.source == "mnist" else tvd.FashionMNIST
        try:
            cls(p.root, train=p.split == "train", download=True)
        except Exception as err:  # network errors come in many types
            raise DataError(f"{p.source}: download into {raw} failed: {err}") from err
        paths = [_find_idx(raw, s) for s in stems]
    if None in paths:
        missing = ", ".join(f"{s}.gz" for s, found in zip(stems, paths, strict=True) if found is None)
        raise DataError(
            f"{p.source} {p.split} split not found: put {missing} in {raw}/ "
            f"(the original IDX files, gzipped or not), or set data.download: true when online"
        )
    images_path, labels_path = paths
    assert images_path is not None and labels_path is not None
    x = _read_idx(images_path)[:, None]  # (N, 1, 28, 28) uint8
    y = _read_idx(labels_path).long()
    if len(x) != len(y):
        raise DataError(f"{p.source}: {len(x)} images but {len(y)} labels in {raw}")
    return Prepared(x, y, classes, p.source)


def load_cifar10_source(p: DataParams) -> Prepared:
    """CIFAR-10 through torchvision (``<root>/cifar-10-batches-py/``)."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(p.root, train=p.split == "train", download=p.download)
    except RuntimeError as err:
        raise DataError(
            f"cifar10 not found under {p.root}: put cifar-10-python.tar.gz there and extract it "
            f"(giving {Path(p.root) / 'cifar-10-batches-py'}/), or set data.download: true when online ({err})"
        ) from err
    except Exception as err:
        raise DataError(f"cifar10: download into {p.root} failed: {err}") from err
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    return Prepared(x, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes), "cifar10")


def _read_one(path: Path, p: DataParams, channels: int) -> np.ndarray:
    """Decode one file to (S, S, C) uint8, or raise ImageError with the reason it is skipped."""
    # JPEG: let the decoder shrink huge photos on the fly (never below 2x the target).
    img = open_image(path, channels=channels, draft=p.image_size * 2)
    w, h = img.size
    if min(w, h) < p.min_side:
        raise ImageError("small", f"too small ({w}x{h}; data.min_side is {p.min_side})")
    img = ImageOps.fit(img, (p.image_size, p.image_size), Image.Resampling.LANCZOS)
    a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def load_folder_source(p: DataParams) -> Prepared:
    """The user's own images under ``p.root``, recursively; the folder is only read, never written.

    Top-level subfolders become class labels (files directly in the root then get the class of the root
    folder's name); without subfolders the data is unlabelled. Hidden files are ignored; every other file
    that cannot be used is skipped and reported with the reason.
    """
    root = Path(p.root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root} (set data.root to the folder holding your pictures)")
    files = sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts)
    )
    channels = p.channels or 3
    nested = any(len(f.relative_to(root).parts) > 1 for f in files)
    images: list[np.ndarray] = []
    names: list[str] = []
    skipped: list[dict[str, str]] = []
    for f in tqdm(files, desc=f"reading {root}", unit="file", disable=len(files) < 200):
        rel = f.relative_to(root)
        try:
            images.append(_read_one(f, p, channels))
        except ImageError as why:
            skipped.append({"file": rel.as_posix(), "reason": str(why)})
            continue
        names.append((rel.parts[0] if len(rel.parts) > 1 else root.name) if nested else "")
    if not images:
        raise DataError(
            f"no usable images in {root}: {len(files)} files, {len(skipped)} skipped "
            f"(supported: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, S, S)
    classes = sorted(set(names)) if nested else []
    y = torch.tensor([classes.index(n) if nested else -1 for n in names], dtype=torch.int64)
    return Prepared(x, y, classes, "folder", skipped)


_NATIVE_CHANNELS = {"digits": 1, "mnist": 1, "fashion-mnist": 1, "cifar10": 3, "folder": 3}


def prepare(p: DataParams) -> Prepared:
    """Load ``p.source`` and bring it to ``p.image_size`` and ``p.channels`` (pure: writes nothing).

    Raises:
        DataError: the source is missing or holds no usable image.
    """
    loaders = {
        "digits": load_digits_source,
        "mnist": load_idx_source,
        "fashion-mnist": load_idx_source,
        "cifar10": load_cifar10_source,
        "folder": load_folder_source,
    }
    d = loaders[p.source](p)
    if p.limit:
        d.images, d.labels = d.images[: p.limit], d.labels[: p.limit]
    d.images = set_channels(fit_square(d.images, p.image_size), p.channels or _NATIVE_CHANNELS[p.source])
    return d


# ----------------------------------------------------------------------------- on disk


def content_hash(images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> str:
    """sha256 of the prepared pixels, labels and class names: the dataset's identity in MLflow."""
    h = hashlib.sha256()
    h.update(json.dumps([list(images.shape), classes]).encode())
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def manifest(d: Prepared) -> dict[str, Any]:
    """What a prepared dataset is: source, count, size, channels, per-class counts, content hash."""
    counts = Counter(d.labels.tolist())
    per_class = {c: counts.get(i, 0) for i, c in enumerate(d.classes)}
    return {
        "source": d.source,
        "count": int(d.images.shape[0]),
        "image_size": int(d.images.shape[-1]),
        "channels": int(d.images.shape[1]),
        "classes": d.classes,
        "per_class": per_class,
        "unlabelled": counts.get(-1, 0),
        "skipped": len(d.skipped),
        "content_hash": content_hash(d.images, d.labels, d.classes),
    }


def save_prepared(d: Prepared, out: str | Path) -> dict[str, Any]:
    """Write ``dataset.pt``, ``manifest.json`` and ``report.json`` (skipped files) under ``out``.

    ``dataset.pt`` carries its own manifest and is written in one atomic rename, so pixels and content
    hash always travel together; ``manifest.json`` and ``report.json`` are readable copies written after it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    man = manifest(d)
    man_json = json.dumps(man, indent=2) + "\n"
    blob = {"images": d.images, "labels": d.labels, "classes": d.classes, "manifest_json": man_json}
    atomic_write(out / "dataset.pt", blob)
    atomic_write(out / "report.json", json.dumps({"skipped": d.skipped}, indent=2) + "\n")
    atomic_write(out / "manifest.json", man_json)
    return man


def load_prepared(out: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Read what :func:`save_prepared` wrote: ``(images uint8 (N,C,S,S), labels (N,), manifest)``."""
    out = Path(out)
    if not (out / "dataset.pt").is_file():
        raise DataError(f"no prepared data in {out}: run `ganops prepare` (or `dvc repro prepare`) first")
    try:
        blob = torch.load(out / "dataset.pt", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, bad pickle, EOF...
        raise DataError(f"{out / 'dataset.pt'} is damaged ({type(err).__name__}): run `ganops prepare` (or "
                        "`dvc checkout data/prepared`) to write it again") from None  # fmt: skip
    if "manifest_json" in blob:  # the manifest that was written with these pixels (see save_prepared)
        man = json.loads(blob["manifest_json"])
    else:  # written before dataset.pt carried its manifest
        man = json.loads((out / "manifest.json").read_text())
    images, labels = blob["images"], blob["labels"]
    if "classes" in blob and content_hash(images, labels, blob["classes"]) != man["content_hash"]:
        raise DataError(f"{out / 'dataset.pt'} is damaged (its pixels no longer match its content hash): run "
                        "`ganops prepare` (or `dvc checkout data/prepared`) to write it again")  # fmt: skip
    return images, labels, man
