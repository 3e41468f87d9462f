"""Atomic, self-describing checkpoints.

A checkpoint is a ``torch.save`` dict of tensors, state dicts and plain values only, so it loads with
``torch.load(weights_only=True)`` (no pickled code). The config that built the nets travels inside it as
JSON. Writes go to a temp file in the same folder, are fsync'ed, then renamed over the target: a crash
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

TEMP_SUFFIX = ".tmp"  # atomic_write's temp files: ".<name>.<random>.tmp" beside the target


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
