"""Artifacts on disk: atomic writes, weights + config folders, and the training state.

Every trained net is saved as a self-describing folder: one or more ``torch.save``'d state dicts plus a
``config.json`` holding the constructor arguments that rebuild the net (and any facts worth keeping), so
loading needs no pickled code (``torch.load(weights_only=True)``). The GAN exports (``models/gan/final/``,
``best/``), the domain classifier, the style nets, the registry's artifacts and serving all read and write
this one layout through :func:`save_folder` / :func:`load_folder`.

The training state (``checkpoint.pt``) is one ``torch.save`` dict of tensors, state dicts and plain values,
with the JSON config that built it inside (:func:`save_checkpoint` / :func:`load_checkpoint`).

Every write goes to a temp file in the same folder, is fsync'ed, then renamed over the target: a crash
mid-write, a full disk or a failing rename leaves the previous file intact and no temp file behind. A
folder's ``config.json`` is written last, so a folder with one is complete.

Damage is detected, never loaded: a folder's ``config.json`` records the sha256 of every file written with
it, and a checkpoint carries the sha256 of its own payload; a truncated or bit-flipped file (or one that no
longer unpickles) raises :class:`DamagedFileError`, naming the file. ``save_checkpoint`` keeps the previous
checkpoint beside the new one (``<name>.prev.pt``), so a damaged latest checkpoint costs one interval.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


class DamagedFileError(RuntimeError):
    """A file on disk is truncated, corrupt or not what wrote it; the message names it and what to do."""


TEMP_SUFFIX = ".tmp"  # atomic_write's temp files: ".<name>.<random>.tmp" beside the target
CONFIG = "config.json"  # a folder's description, written last
SUMS = "sha256"  # config.json's record of the files written with it: {file name: sha256}


def remove_stale_temps(folder: str | Path) -> int:
    """Delete the temp files a killed writer left under ``folder`` (only :func:`atomic_write`'s own);
    returns how many. Call it only where no other process is writing."""
    n = 0
    for f in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if f.is_file():
            f.unlink(missing_ok=True)
            n += 1
    return n


def atomic_write(path: str | Path, obj: Any, *, keep_previous: Path | None = None) -> Path:
    """Write ``obj`` (``str``/``bytes`` as is, anything else through ``torch.save``) to ``path`` atomically.

    ``keep_previous``: once the new file is complete on disk, the old ``path`` (if any) is kept there
    first (a hard link, so ``path`` itself never goes missing: a kill between the two steps leaves both).
    Whatever fails (the write: a full disk; a rename), the temp file is removed and the previous file stays
    where it was.
    """
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
        if keep_previous is not None and path.exists():
            _keep_copy(path, keep_previous)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a failed write says no file name: say which one it was
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _keep_copy(path: Path, keep: Path) -> None:
    """Make ``keep`` the file ``path`` is now (a hard link; a copy where links are not allowed), atomically,
    leaving ``path`` in place."""
    fd, tmp = tempfile.mkstemp(dir=keep.parent, prefix=f".{keep.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    os.unlink(tmp)  # a free name for the link
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copy2(path, tmp)
        os.replace(tmp, keep)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    sums = {}
    for name, state in weights.items():
        sums[name] = _sha256(atomic_write(folder / name, state))
    for name, data in (files or {}).items():
        sums[name] = _sha256(atomic_write(folder / name, data))
    config = {**config, SUMS: sums}
    atomic_write(folder / CONFIG, json.dumps(config, indent=2) + ("\n" if newline else ""))
    return folder


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _damaged(path: Path, why: str) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged ({why}): restore it (`dvc checkout`, or the MLflow run's "
                            "artifact) or run the step that writes it again")  # fmt: skip


def _torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` weights-only; a file that does not load is a :class:`DamagedFileError` naming it."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated zip, bad pickle, EOF...: all one thing to the user
        raise _damaged(
            path, f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        ) from None


def load_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a folder written by :func:`save_folder` (damaged JSON is a DamagedFileError)."""
    path = Path(folder) / CONFIG
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(path, f"not valid JSON: {err}") from None


def verify_folder(folder: str | Path, names: list[str] | None = None) -> dict[str, Any]:
    """Check ``names`` (default: every file ``config.json`` records) against their recorded sha256; returns
    the config. Folders written before the sums were recorded pass unchecked."""
    config = load_config(folder)
    sums = config.get(SUMS, {})
    for name in names if names is not None else list(sums):
        if name in sums and _sha256(Path(folder) / name) != sums[name]:
            raise _damaged(Path(folder) / name, "its sha256 is not the one recorded in config.json")
    return config


def load_folder(
    folder: str | Path, weights: str, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read back a folder written by :func:`save_folder`: ``(state dict of folder/weights, config)``.

    Args:
        folder: the folder.
        weights: the weights file to load (e.g. ``"generator.pt"``); loaded weights-only.
        map_location: where the tensors go.
    """
    config = verify_folder(folder, [weights])
    return _torch_load(Path(folder) / weights, map_location), config


# ----------------------------------------------------------------------------- training state


def previous(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint before ``path``: ``<stem>.prev<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | Path, state: dict[str, Any], config: dict[str, Any]) -> Path:
    """Save a training state plus the JSON config that built it, atomically, with the sha256 of the payload
    (so damage is found on load); the checkpoint it replaces is kept as :func:`previous`.

    Args:
        path: target file (``.../checkpoint.pt``).
        state: tensors, state dicts and plain values.
        config: JSON-serialisable constructor arguments / settings.
    """
    buf = io.BytesIO()
    torch.save({**state, "config_json": json.dumps(config, sort_keys=True)}, buf)
    payload = buf.getvalue()
    blob = {"payload": payload, "sha256": hashlib.sha256(payload).hexdigest()}
    return atomic_write(path, blob, keep_previous=previous(path))


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict]:
    """Load a checkpoint written by :func:`save_checkpoint`: ``(state, config)``, weights-only.

    Raises:
        DamagedFileError: the file does not load, or its payload's sha256 is not the recorded one.
    """
    path = Path(path)
    blob = _torch_load(path)
    if "payload" in blob:  # written with its checksum (older checkpoints are the payload itself)
        if hashlib.sha256(blob["payload"]).hexdigest() != blob.get("sha256"):
            raise _damaged(path, "its payload's sha256 is not the recorded one")
        try:
            blob = torch.load(io.BytesIO(blob["payload"]), map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise _damaged(path, f"{type(err).__name__}") from None
    elif map_location != "cpu":
        blob = torch.load(path, map_location=map_location, weights_only=True)
    config = json.loads(blob.pop("config_json"))
    return blob, config
