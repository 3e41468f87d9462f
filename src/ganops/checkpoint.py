"""Old home of the atomic writes and checkpoints, now :mod:`ganops.artifacts`; kept so existing imports work.

New code imports from ``ganops.artifacts``.
"""

from ganops.artifacts import (
    TEMP_SUFFIX,
    atomic_write,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)

__all__ = ["TEMP_SUFFIX", "atomic_write", "load_checkpoint", "remove_stale_temps", "save_checkpoint"]
