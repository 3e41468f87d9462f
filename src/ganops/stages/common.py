"""What every stage shares: where it reads and writes (:class:`Layout`), the errors a user can fix, and
the small I/O helpers (metrics JSON, the prepared data checked against the params).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ganops.artifacts import DamagedFileError, atomic_write
from ganops.classifier import Classifier, load_classifier
from ganops.config import Params, ParamsError
from ganops.data import DataError, load_prepared
from ganops.devices import DeviceError
from ganops.evaluate import EvaluationError, headline
from ganops.models.style import StyleWeightsError, VGGEmbedding, build_embedding
from ganops.stylize import StyleError
from ganops.tracking import TrackingError


class StageError(RuntimeError):
    """A stage's inputs are missing or stale; the message names what to run."""


class Stopped(RuntimeError):
    """Training was stopped on request after writing a checkpoint."""


USER_ERRORS = (
    StageError,
    DamagedFileError,
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
    def run_file(self) -> Path:
        return self.gan / "run.json"

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


def write_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def prepared_data(at: Layout, p: Params) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(images (N, C, S, S) uint8, labels (N,), manifest) of ``data/prepared``, checked against the params."""
    images, labels, man = load_prepared(at.prepared)
    if images.shape[-1] != p.data.image_size:
        raise StageError(f"{at.prepared} holds {images.shape[-1]}px images but data.image_size is "
                         f"{p.data.image_size}: run `ganops prepare` (or `dvc repro`) first")  # fmt: skip
    return images, labels, man


def classifier_for(at: Layout, data_hash: str) -> Classifier:
    """The saved domain classifier, if it was trained on the data with ``data_hash``."""
    if not (at.classifier / "config.json").is_file():
        raise StageError(f"{at.classifier} is missing: run `ganops classifier` (or `dvc repro`) first")
    clf = load_classifier(at.classifier)
    if clf.info.get("data_hash") != data_hash:
        raise StageError(
            f"{at.classifier} was trained on other data: run `ganops classifier` (or `dvc repro`) first"
        )
    return clf


def embedding_for(p: Params, channels: int) -> VGGEmbedding | None:
    """The VGG19 features (``style.weights``' VGG19) when they are the headline space, else None."""
    if headline(p.evaluate, channels) != "vgg19":
        return None
    return build_embedding(p.style.weights, p.evaluate.vgg_size, seed=p.base.seed)


# ----------------------------------------------------------------------------- the training run's MLflow id
# `train_gan` owns its MLflow run: it writes the run's id to models/gan/run.json when the run opens, and the
# step it reached when training finished (the exports in models/gan are then that run's). `evaluate` reads
# it from there; the loop and its checkpoints never carry it.


def write_run_file(at: Layout, run_id: str, step: int | None = None) -> None:
    """``models/gan/run.json``: the MLflow run training logs to; ``step`` once it finished."""
    facts: dict[str, Any] = {"mlflow_run_id": run_id} | ({"step": step} if step is not None else {})
    atomic_write(at.run_file, json.dumps(facts, indent=2) + "\n")


def read_run_file(at: Layout) -> dict[str, Any]:
    """What :func:`write_run_file` wrote ({} when there is none: a workspace trained before it existed)."""
    return json.loads(at.run_file.read_text()) if at.run_file.is_file() else {}
