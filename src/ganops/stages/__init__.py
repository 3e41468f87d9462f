"""The pipeline's stages as functions: read inputs, call the library, write outputs, log to MLflow.

One function per DVC stage, shared by the `ganops` CLI (what dvc.yaml calls) and the Prefect flows, so
there is one implementation of each step. Paths hang off a project ``root`` (the cwd under DVC): stage
``prepare`` -> ``data/prepared/``, ``train_gan`` -> ``models/gan/`` + ``metrics/train_gan*``, ...
Failures a user can fix raise :data:`USER_ERRORS`; their messages say what to do.

- :mod:`~ganops.stages.common`: :class:`Layout`, the errors, shared I/O helpers.
- one module per GAN stage, named for it: :mod:`~ganops.stages.prepare`, :mod:`~ganops.stages.classifier`,
  :mod:`~ganops.stages.train_gan`, :mod:`~ganops.stages.evaluate`, :mod:`~ganops.stages.promote`.
- :mod:`~ganops.stages.style`: ``stylize`` (setup, a fast net's training, a run per pair), ``stylize_image``;
  :mod:`~ganops.stages.style_sheet`: ``stylize_sheet``.

Callers use ``from ganops import stages; stages.train_gan(...)``. A call made inside a submodule looks its
names up there: a test that monkeypatches one (rather than a caller's ``stages.<name>``) patches it in the
submodule.
"""

from ganops.stages.classifier import classifier
from ganops.stages.common import USER_ERRORS, Layout, StageError, Stopped
from ganops.stages.evaluate import evaluate
from ganops.stages.prepare import prepare
from ganops.stages.promote import promote
from ganops.stages.style import (
    StyleJob,
    style_job,
    stylize,
    stylize_image,
    stylize_pair,
    stylize_setup,
)
from ganops.stages.style_sheet import stylize_sheet
from ganops.stages.train_gan import train_gan

__all__ = [
    "USER_ERRORS",
    "Layout",
    "StageError",
    "Stopped",
    "StyleJob",
    "classifier",
    "evaluate",
    "prepare",
    "promote",
    "style_job",
    "stylize",
    "stylize_image",
    "stylize_pair",
    "stylize_setup",
    "stylize_sheet",
    "train_gan",
]
