"""Stage ``prepare``: the configured image source -> ``data/prepared/`` (dataset, manifest, skipped files)."""

from __future__ import annotations

from typing import Any

from ganops.config import Params
from ganops.data import prepare as prepare_data
from ganops.data import save_prepared
from ganops.stages.common import Layout


def prepare(p: Params, at: Layout = Layout()) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Stage `prepare`; returns (manifest, skipped-file report)."""
    d = prepare_data(p.data)
    return save_prepared(d, at.prepared), d.skipped
