"""What every stage shares: where it reads and writes (:class:`Layout`), the errors a user can fix, and
the small I/O helpers (metrics JSON, the prepared data checked against the params).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ganops.config import Params, ParamsError
from ganops.data import DataError
from ganops.devices import DeviceError
from ganops.evaluate import EvaluationError
from ganops.models.style import StyleWeightsError
from ganops.stylize import StyleError
from ganops.tracking import TrackingError


class StageError(RuntimeError):
    """A stage's inputs are missing or stale; the message names what to run."""


class Stopped(RuntimeError):
    """Training was stopped on request after writing a checkpoint."""


USER_ERRORS = (
    StageError,
    ParamsError,
    DataError,
    TrackingError,
    EvaluationError,
    StyleError,
    StyleWeightsError,
    DeviceError,
)


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, under the project root."""

    root: Path = Path(".")
    tracking_root: Path | None = None  # where mlflow.db lives by default (the project, even for a workspace)

    @property
    def tracking(self) -> Path:
        """``tracking_root``; else DVC's ``DVC_ROOT`` (queued experiments run in a temporary copy of the
        project, and must log to the project's store), else ``root``."""
        return Path(self.tracking_root or os.environ.get("DVC_ROOT") or self.root).resolve()

    @property
    def prepared(self) -> Path:
        return self.root / "data/prepared"

    @property
    def gan(self) -> Path:
        return self.root / "models/gan"

    @property
    def classifier(self) -> Path:
        return self.root / "models/classifier"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def stylized(self) -> Path:
        return self.root / "data/stylized"

    @property
    def style_models(self) -> Path:
        return self.root / "models/style"

    @property
    def sheet(self) -> Path:
        return self.root / "data/stylized_sheet.png"


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def prepared_data(at: Layout, p: Params):  # noqa: ANN202 - (images, labels, manifest)
    from ganops.data import load_prepared

    images, labels, man = load_prepared(at.prepared)
    if images.shape[-1] != p.data.image_size:
        raise StageError(f"{at.prepared} holds {images.shape[-1]}px images but data.image_size is "
                         f"{p.data.image_size}: run `ganops prepare` (or `dvc repro`) first")  # fmt: skip
    return images, labels, man
