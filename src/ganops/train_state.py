"""The GAN training run's identity and its mutable state.

What shapes the weights (:func:`settings_for`) decides whether a checkpoint may be resumed. What the loop
changes step by step (nets, optimisers, RNG streams, step, history, counters) lives in one
:class:`TrainState`: :meth:`TrainState.snapshot` turns it into the checkpoint's dict and
:meth:`TrainState.restore` back (what resuming and rolling back after a non-finite loss both do);
:meth:`TrainState.save` and :meth:`TrainState.load` put that dict on disk. Building the nets and running the
loop is :mod:`ganops.train_gan`.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganops import distributed
from ganops.artifacts import DamagedFileError, load_checkpoint, previous, save_checkpoint
from ganops.config import GanParams, resolve_arch
from ganops.models.gan import BaseGenerator, GANConfig

log = logging.getLogger(__name__)

# GanParams keys that do not shape the weights: changing them never invalidates a checkpoint. (`conditional`
# does, but through its outcome, the model's class counts: "auto" and true on labelled data are one setting.)
_NOT_SETTINGS = {
    "steps",
    "sample_every",
    "checkpoint_every",
    "log_every",
    "grid_samples",
    "resume",
    "monitor_every",
    "monitor_samples",
    "best_metric",
    "nan_max_rollbacks",
    "nan_lr_factor",
    "conditional",
    "nproc",
}  # fmt: skip  (nproc: what shapes the weights is the world size, added below)
_GROW_KEYS = {"grow_fade_steps", "grow_stable_steps"}
_MODEL_KEYS = {
    "latent_dim",
    "ngf",
    "ndf",
    "arch",
    "spectral_norm",
    "g_norm",
    "upsample",
    "d_antialias",
    "mbstd",
}
# Settings added after the first checkpoints, at the value that reproduces a checkpoint without the key (the
# model's own options: models.gan.LEGACY). One rule: a key an older checkpoint lacks takes its legacy value.
LEGACY: dict[str, Any] = {"amp": False, "world_size": 1}


class TrainingDiverged(RuntimeError):
    """Losses stayed non-finite after ``nan_max_rollbacks`` rollbacks."""


def training_settings(
    p: GanParams, cfg: GANConfig, seed: int, data_hash: str, world_size: int = 1
) -> dict[str, Any]:
    """Everything that shapes the weights; a checkpoint resumes only under identical settings.

    ``steps`` and the reporting intervals are left out, so a finished run can be extended. The world size
    is in: it sets the global batch and the data each rank sees.
    """
    opts = {k: v for k, v in p.model_dump().items() if k not in _NOT_SETTINGS | _MODEL_KEYS}
    if cfg.arch != "progressive":  # the growth schedule shapes only a progressive run's weights
        opts = {k: v for k, v in opts.items() if k not in _GROW_KEYS}
    return {"model": cfg.to_dict(), **opts, "seed": seed, "data_hash": data_hash, "world_size": world_size}


def with_legacy(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as read from a checkpoint, with what an older one lacks at its legacy value."""
    return {**LEGACY, **settings, "model": GANConfig.from_dict(settings["model"]).to_dict()}


def class_counts_for(labels: torch.Tensor | None, conditional: bool | str) -> tuple[int, ...]:
    """Images per class when the GAN is to be class-conditional, else ().

    ``conditional``: True needs labelled data (every image labelled, >= 2 classes); "auto" conditions
    exactly when the data is labelled; False never.
    """
    counts: tuple[int, ...] = ()
    if labels is not None and len(labels) > 0 and bool((labels >= 0).all()):
        counts = tuple(torch.bincount(labels).tolist())
    if len(counts) < 2:
        counts = ()
    if conditional is True and not counts:
        raise ValueError(
            "gan.conditional: true needs labelled data (two classes or more, every image labelled; a folder "
            "source labels images by their subfolder): use `auto` or `false` for unlabelled pictures"
        )
    return counts if conditional else ()


def settings_for(
    images: torch.Tensor,
    p: GanParams,
    seed: int,
    data_hash: str,
    labels: torch.Tensor | None = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """:func:`training_settings` for a dataset of this shape (and these labels), on ``world_size`` ranks."""
    _, C, S, _ = images.shape
    arch = resolve_arch(
        p.arch, S, p.conditional
    )  # params.yaml's `auto` is resolved already; a bare GanParams
    if arch == "fastgan" and p.conditional is True:
        raise ValueError(
            "gan.arch: fastgan is unconditional: set gan.conditional to auto (off for fastgan) or false"
        )
    conditional = False if arch == "fastgan" else p.conditional
    model = {k: getattr(p, k) for k in sorted(_MODEL_KEYS)} | {"arch": arch}
    cfg = GANConfig(image_size=S, channels=C, class_counts=class_counts_for(labels, conditional), **model)
    return training_settings(p, cfg, seed, data_hash, world_size)


@dataclass
class TrainState:
    """Everything a step changes, and so everything a checkpoint holds (plus what rollback returns to)."""

    G: BaseGenerator
    D: nn.Module
    G_ema: BaseGenerator | None  # never trained directly, always in eval mode; what every consumer of G sees
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise: torch.Generator  # training noise, on CPU: the global batch's z, every rank the same stream
    aug_rng: torch.Generator  # DiffAugment's draws: one stream per rank
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one row per log_every steps
    monitored: list[dict[str, Any]] = field(default_factory=list)  # one row per monitor_every steps
    counters: dict[str, int] = field(default_factory=lambda: {"d_skipped": 0, "nan_rollbacks": 0})
    best: dict[str, Any] = field(default_factory=lambda: {"value": math.inf, "step": 0})
    last_good: dict[str, Any] = field(default_factory=dict)  # the last checkpoint's snapshot

    @property
    def sampler(self) -> BaseGenerator:
        """The G that grids, the monitor and the exports use: the EMA one when on."""
        return self.G_ema if self.G_ema is not None else self.G

    def snapshot(self) -> dict[str, Any]:
        """The state as a checkpoint dict (references, not copies: deep-copy what must outlive a step)."""
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step": self.step,
            "rng_torch": torch.get_rng_state(),
            "rng_noise": self.noise.get_state(),
            "rng_aug": self.aug_rng.get_state(),
            "history": self.history,
            "monitor": self.monitored,
            "counters": self.counters,
            "best": self.best,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (or a checkpoint's state) into this state; ``last_good`` stays."""
        # A copy: optimizers adopt the tensors they are given, so restoring `last_good` itself would let the
        # next steps' in-place Adam updates poison it, and a second rollback would restore NaNs.
        state = copy.deepcopy(state)
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["rng_torch"])
        self.noise.set_state(state["rng_noise"])
        self.aug_rng.set_state(state["rng_aug"])
        self.history[:] = state["history"]
        self.monitored[:] = state["monitor"]
        self.counters.update(state["counters"])
        self.best.update(state["best"])
        self.step = int(state["step"])

    def save(self, path: Path, settings: dict[str, Any], *, rank: int, ddp: bool) -> None:
        """Make the present state the rollback target and write it to ``path`` (rank 0 writes).

        Call it on every rank at the same step: under DDP it gathers every rank's augmentation RNG.
        """
        self.last_good = copy.deepcopy(self.snapshot())
        saved = self.last_good
        if ddp:
            # each rank's own streams: augmentation, and torch's global one (fastgan's training noise)
            saved = {**self.last_good, "rng_aug_ranks": distributed.gather_objects(self.aug_rng.get_state()),
                     "rng_torch_ranks": distributed.gather_objects(torch.get_rng_state())}  # fmt: skip
        if rank == 0:
            save_checkpoint(path, saved, {"settings": settings})

    @staticmethod
    def load(
        path: Path, settings: dict[str, Any], device: str | torch.device = "cpu"
    ) -> dict[str, Any] | None:
        """The checkpoint's state if ``path`` exists and was built under ``settings``, else None (logged).

        A damaged ``path`` (truncated, bit-flipped) falls back to the checkpoint before it
        (:func:`ganops.artifacts.previous`, one interval older), with a warning. An older checkpoint's
        settings are read with their legacy values (:func:`with_legacy`).

        Raises:
            DamagedFileError: both the checkpoint and the one before it are damaged.
        """
        try:
            found = _read(path, device)
        except DamagedFileError as err:
            try:
                found = _read(previous(path), device)
            except DamagedFileError as err2:
                raise DamagedFileError(f"{err}; the previous checkpoint too ({err2}); delete both to train "
                                       "afresh") from None  # fmt: skip
            if found is None:
                raise
            log.warning("%s; resuming from the checkpoint before it, %s (step %d)", err, previous(path),
                        found[0]["step"])  # fmt: skip
        if found is None:
            return None
        state, conf = found
        if with_legacy(conf.get("settings", {"model": {}})) != settings:
            log.warning("%s was built with other settings: starting fresh", path)
            return None
        return state


def _read(path: Path, device: str | torch.device) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(state, config) of the checkpoint at ``path``; None when there is none."""
    if not path.is_file():
        return None
    return load_checkpoint(path, map_location=device)
