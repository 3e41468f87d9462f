"""Private workspaces of flow runs: ``.ganops/flow-runs/<flow-run id>/``.

A Prefect flow run works in its own folder so that concurrent flow runs, a ``dvc repro`` and the user's
working tree never share an output file. A run holds an exclusive lock on its folder while it works
(``hold``); it marks its results complete by writing ``DONE.json`` last (``publish``), so a reader never
takes a half-finished folder for a result. ``gc`` removes old workspaces (never one that is held) — the
only thing in ganops that deletes them, and only when asked (``ganops gc``) or through a flow's
``keep_runs`` retention.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ganops.artifacts import atomic_write

FLOW_RUNS = Path(".ganops") / "flow-runs"
DONE = "DONE.json"
_LOCK = ".lock"


def flow_run_dir(root: Path, flow_run_id: str) -> Path:
    """The workspace of one flow run under the project ``root``."""
    if not flow_run_id or "/" in flow_run_id or flow_run_id.startswith("."):
        raise ValueError(f"not a flow-run id: {flow_run_id!r}")
    return root / FLOW_RUNS / flow_run_id


@contextmanager
def hold(work: Path) -> Iterator[Path]:
    """Create ``work`` and hold its lock while the body runs (``gc`` skips held workspaces)."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / _LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield work
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def held(work: Path) -> bool:
    """Whether a running flow holds ``work`` (opening the lock read-only leaves the folder's mtime alone)."""
    try:
        with open(work / _LOCK) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except OSError:  # no lock file: never held
        return False


def unfinished(root: Path) -> list[Path]:
    """Workspaces whose flow run ended before it finished (killed with its worker, cancelled, crashed): no
    ``DONE.json`` and no longer held (the kernel drops a dead process's lock). Oldest first."""
    base = root / FLOW_RUNS
    if not base.is_dir() or base.is_symlink():
        return []
    found = [d for d in base.iterdir() if d.is_dir() and not d.is_symlink() and (d / _LOCK).exists()
             and not (d / DONE).exists() and not held(d)]  # fmt: skip
    return sorted(found, key=lambda d: d.stat().st_mtime)


def publish(work: Path, outputs: list[Path], facts: dict) -> Path:
    """Write ``DONE.json`` (every output with its size and sha256, plus ``facts``) last and atomically."""
    rows = []
    for f in outputs:
        data = f.read_bytes()
        rows.append({"path": f.relative_to(work).as_posix(), "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    return atomic_write(work / DONE, json.dumps({**facts, "outputs": rows}, indent=2) + "\n")


def gc(
    root: Path, *, keep: int = 20, older_than_days: float | None = None, dry_run: bool = False
) -> list[Path]:
    """Remove flow-run workspaces beyond the ``keep`` newest (and, if given, only those older than
    ``older_than_days``); never one held by a running flow. Returns what was (or would be) removed.

    Never follows a symlink out of the folder: a link among the workspaces is not a workspace (left alone),
    and a link inside one is removed as a link, its target untouched."""
    base = root / FLOW_RUNS
    if not base.is_dir() or base.is_symlink():
        return []
    runs = [d for d in base.iterdir() if d.is_dir() and not d.is_symlink()]
    runs.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    gone = []
    for d in runs[max(keep, 0) :]:
        if cutoff is not None and d.stat().st_mtime > cutoff:
            continue
        if held(d):
            continue
        gone.append(d)
        if not dry_run:
            shutil.rmtree(d, ignore_errors=True)
    return gone


def fresh_copy_target(path: Path) -> Path:
    """``path`` emptied for a copy (a retried flow run must not copy into the last attempt's leftovers)."""
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else os.unlink(path)
    return path
