"""Artifacts on disk: atomic writes, weights + config folders, and the training state.

Every trained net is saved as a self-describing folder: one or more ``torch.save``'d state dicts plus a
``config.json`` holding the constructor arguments that rebuild the net (and any facts worth keeping), so
loading needs no pickled code (``torch.load(weights_only=True)``). The GAN exports (``models/gan/final/``,
``best/``), the domain classifier, the style nets, the registry's artifacts and serving all read and write
this one layout through :func:`save_folder` / :func:`load_folder`.

The training state (``checkpoint.pt``) is one ``torch.save`` dict of tensors, state dicts and plain values,
with the JSON config that built it inside (:func:`save_checkpoint` / :func:`load_checkpoint`).

Every write goes to a temp file in the same folder, is fsync'ed, then renamed over the target: a crash
mid-write leaves the previous file intact. A folder's ``config.json`` is written last, so a folder with
one is complete.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

TEMP_SUFFIX = ".tmp"  # atomic_write's temp files: ".<name>.<random>.tmp" beside the target
CONFIG = "config.json"  # a folder's description, written last


def remove_stale_temps(folder: str | Path) -> int:
    """Delete the temp files a killed writer left under ``folder`` (only :func:`atomic_write`'s own);
    returns how many. Call it only where no other process is writing."""
    n = 0
    for f in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if f.is_file():
            f.unlink(missing_ok=True)
            n += 1
    return n


def atomic_write(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` (``str``/``bytes`` as is, anything else through ``torch.save``) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, str):
        data = obj.encode()
    elif isinstance(obj, bytes):
        data = obj
    else:
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------- weights + config folders


def save_folder(
    folder: str | Path,
    weights: Mapping[str, Any],
    config: dict[str, Any],
    *,
    files: Mapping[str, bytes] | None = None,
    newline: bool = True,
) -> Path:
    """Write a self-describing folder: every state dict in ``weights``, any extra ``files``, then config.json.

    Args:
        folder: the target folder (created when missing).
        weights: file name -> state dict, e.g. ``{"generator.pt": G.state_dict()}``; written in this order.
        config: JSON-serialisable constructor arguments (``"model"``) and facts; ``config.json`` with indent 2.
        files: file name -> raw bytes (e.g. ``samples.png``), written after the weights.
        newline: end config.json with a newline (False: the style folders' layout, which has none).

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    for name, state in weights.items():
        atomic_write(folder / name, state)
    for name, data in (files or {}).items():
        atomic_write(folder / name, data)
    atomic_write(folder / CONFIG, json.dumps(config, indent=2) + ("\n" if newline else ""))
    return folder


def load_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a folder written by :func:`save_folder`."""
    return json.loads((Path(folder) / CONFIG).read_text())


def load_folder(
    folder: str | Path, weights: str, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read back a folder written by :func:`save_folder`: ``(state dict of folder/weights, config)``.

    Args:
        folder: the folder.
        weights: the weights file to load (e.g. ``"generator.pt"``); loaded weights-only.
        map_location: where the tensors go.
    """
    config = load_config(folder)
    state = torch.load(Path(folder) / weights, map_location=map_location, weights_only=True)
    return state, config


# ----------------------------------------------------------------------------- training state


def save_checkpoint(path: str | Path, state: dict[str, Any], config: dict[str, Any]) -> Path:
    """Save a training state plus the JSON config that built it, atomically.

    Args:
        path: target file (``.../checkpoint.pt``).
        state: tensors, state dicts and plain values.
        config: JSON-serialisable constructor arguments / settings.
    """
    return atomic_write(path, {**state, "config_json": json.dumps(config, sort_keys=True)})


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict]:
    """Load a checkpoint written by :func:`save_checkpoint`: ``(state, config)``, weights-only."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    config = json.loads(blob.pop("config_json"))
    return blob, config
