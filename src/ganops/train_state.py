"""The GAN training run's identity and mutable state: settings, nets, snapshot/restore, resume, checkpoint,
NaN rollback.

What shapes the weights (:func:`training_settings`) decides whether a checkpoint may be resumed. What the
loop changes step by step (nets, optimisers, RNG streams, step, history, counters) lives in one
:class:`TrainState`; :func:`snapshot` turns it into the checkpoint's dict and :func:`restore` back, which
is what resuming and rolling back after a non-finite loss both do. Only rank 0 writes files.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganops import distributed
from ganops.artifacts import load_checkpoint, remove_stale_temps, save_checkpoint
from ganops.config import GanParams
from ganops.models.gan import Discriminator, GANConfig, Generator, build

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
_MODEL_KEYS = {"latent_dim", "ngf", "ndf", "arch", "spectral_norm", "g_norm", "mbstd"}


class TrainingDiverged(RuntimeError):
    """Losses stayed non-finite after ``nan_max_rollbacks`` rollbacks."""


def training_settings(
    p: GanParams, cfg: GANConfig, seed: int, data_hash: str, world_size: int = 1
) -> dict[str, Any]:
    """Everything that shapes the weights; a checkpoint resumes only under identical settings.

    ``steps`` and the reporting intervals are left out, so a finished run can be extended. The world size
    is in (it sets the global batch and the data each rank sees), but only when above 1, so one-process
    checkpoints written before data-parallel training existed still resume.
    """
    opts = {k: v for k, v in p.model_dump().items() if k not in _NOT_SETTINGS | _MODEL_KEYS}
    if not p.amp:  # left out when off, like the world size: older checkpoints never had the key
        del opts["amp"]
    ws = {"world_size": world_size} if world_size > 1 else {}
    return {"model": cfg.to_dict(), **opts, "seed": seed, "data_hash": data_hash, **ws}


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
    cfg = GANConfig(image_size=S, channels=C, class_counts=class_counts_for(labels, p.conditional),
                    **{k: getattr(p, k) for k in sorted(_MODEL_KEYS)})  # fmt: skip
    return training_settings(p, cfg, seed, data_hash, world_size)


def load_resumable(
    ckpt_path: Path, settings: dict[str, Any], device: str | torch.device = "cpu"
) -> dict[str, Any] | None:
    """The checkpoint's state if it exists and was built under ``settings``, else None (logged)."""
    if not ckpt_path.is_file():
        return None
    state, conf = load_checkpoint(ckpt_path, map_location=device)
    if conf.get("settings") != settings:
        log.warning("%s was built with other settings: starting fresh", ckpt_path)
        return None
    return state


# ----------------------------------------------------------------------------- the state


@dataclass
class TrainState:
    """Everything a step changes, and so everything a checkpoint holds (plus what rollback returns to)."""

    G: Generator
    D: Discriminator
    G_ema: Generator | None  # never trained directly, always in eval mode; what every consumer of G sees
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise: torch.Generator  # training noise, on CPU: the global batch's z, every rank the same stream
    aug_rng: torch.Generator  # DiffAugment's draws: one stream per rank
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one row per log_every steps
    monitored: list[dict[str, Any]] = field(default_factory=list)  # one row per monitor_every steps
    counters: dict[str, int] = field(default_factory=lambda: {"d_skipped": 0, "nan_rollbacks": 0})
    best: dict[str, Any] = field(default_factory=lambda: {"value": math.inf, "step": 0})
    meta: dict[str, str] = field(default_factory=dict)  # small facts kept in the checkpoint
    last_good: dict[str, Any] = field(default_factory=dict)  # the last checkpoint's snapshot

    @property
    def sampler(self) -> Generator:
        """The G that grids, the monitor and the exports use: the EMA one when on."""
        return self.G_ema if self.G_ema is not None else self.G


class _Pyramid(nn.Module):
    """``G.pyramid`` as a module's forward, so DistributedDataParallel can wrap it (DDP hooks ``forward``)."""

    def __init__(self, G: Generator):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.G.pyramid(z, labels)


def init_state(
    cfg: GANConfig, p: GanParams, *, seed: int, rank: int, device: torch.device, ddp: bool
) -> tuple[TrainState, nn.Module, nn.Module]:
    """Fresh nets (seeded: the same init on every rank), optimisers and RNG streams.

    Returns:
        The state, and the forwards whose gradients must be averaged over the ranks: G's to every scale
        (in D's phase, kept for G's) and D's in D's phase; DDP-wrapped when ``ddp``, else plain.
    """
    torch.manual_seed(seed)  # the same init on every rank (DDP also broadcasts rank 0's weights)
    G, D = build(cfg)
    # channels_last: oneDNN's convolutions run ~1.2x faster in NHWC on CPU (bench/train_throughput.py),
    # and cuDNN's tensor-core kernels want NHWC too.
    G = G.to(device).to(memory_format=torch.channels_last)
    D = D.to(device).to(memory_format=torch.channels_last)
    # Every rank keeps an EMA G: it is updated from G's (identical) weights, so it stays identical too.
    G_ema = copy.deepcopy(G).requires_grad_(False).eval() if p.ema_decay > 0 else None
    G_fwd: nn.Module = _Pyramid(G)
    D_fwd: nn.Module = D
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if device.type == "cuda":  # batch statistics over all ranks; SyncBatchNorm refuses CPU tensors
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
            D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
            G_fwd = _Pyramid(G)
        ids = [device.index] if device.type == "cuda" else None
        # forward_sync_buffers=False (was broadcast_buffers): D runs twice per step (real, fake) and a buffer
        # broadcast between the two forwards breaks autograd (pytorch#22095); spectral norm's u too.
        # BatchNorm statistics are averaged explicitly once per step instead (distributed.average_buffers_).
        G_fwd = DDP(G_fwd, device_ids=ids, forward_sync_buffers=False)
        D_fwd = DDP(D, device_ids=ids, forward_sync_buffers=False)
    opt_g = torch.optim.Adam(G.parameters(), lr=p.lr_g, betas=(p.beta1, p.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=p.lr_d, betas=(p.beta1, p.beta2))
    # Every rank draws the global batch's noise from the same stream and keeps its own slice: per-rank
    # noise, and the same z one process would use. Augmentation: rank 0's stream is the one-process one.
    noise = torch.Generator().manual_seed(seed + 2)
    aug_rng = torch.Generator().manual_seed(seed + 3 + 1_000_003 * rank)
    return TrainState(G, D, G_ema, opt_g, opt_d, noise, aug_rng), G_fwd, D_fwd


def snapshot(st: TrainState) -> dict[str, Any]:
    """The state as a checkpoint dict (references, not copies: deep-copy what must outlive the next step)."""
    return {
        "G": st.G.state_dict(),
        "D": st.D.state_dict(),
        "G_ema": st.G_ema.state_dict() if st.G_ema is not None else None,
        "opt_g": st.opt_g.state_dict(),
        "opt_d": st.opt_d.state_dict(),
        "step": st.step,
        "rng_torch": torch.get_rng_state(),
        "rng_noise": st.noise.get_state(),
        "rng_aug": st.aug_rng.get_state(),
        "history": st.history,
        "monitor": st.monitored,
        "counters": st.counters,
        "best": st.best,
        "meta": st.meta,
    }


def restore(st: TrainState, state: dict[str, Any]) -> None:
    """Load a :func:`snapshot` (or a checkpoint's state) into ``st``; ``meta`` and ``last_good`` stay."""
    # A copy: optimizers adopt the tensors they are given, so restoring `last_good` itself would let the
    # next steps' in-place Adam updates poison it, and a second rollback would restore NaNs.
    state = copy.deepcopy(state)
    st.G.load_state_dict(state["G"])
    st.D.load_state_dict(state["D"])
    if st.G_ema is not None:
        st.G_ema.load_state_dict(state["G_ema"])
    st.opt_g.load_state_dict(state["opt_g"])
    st.opt_d.load_state_dict(state["opt_d"])
    torch.set_rng_state(state["rng_torch"])
    st.noise.set_state(state["rng_noise"])
    st.aug_rng.set_state(state["rng_aug"])
    st.history[:] = state["history"]
    st.monitored[:] = state["monitor"]
    st.counters.update(state["counters"])
    st.best.update(state["best"])
    st.step = int(state["step"])


def resume(
    st: TrainState,
    out: Path,
    settings: dict[str, Any],
    *,
    resume: bool,
    meta: dict[str, str] | None,
    device: torch.device,
    rank: int,
    ddp: bool,
) -> int:
    """Continue from ``out/checkpoint.pt`` when it was built under ``settings``, else start fresh.

    Rank 0 first deletes half-written files of a killed run, and on a fresh start the grids and exports of
    an earlier one (they would mislead). Under DDP rank 0's checkpoint goes to every rank (other nodes need
    no shared disk). ``meta`` is added to the checkpoint's own. Returns the step resumed from (0: fresh).
    """
    main = rank == 0
    ckpt_path = out / "checkpoint.pt"
    if main:  # half-written files of a killed run (their atomic renames never happened)
        remove_stale_temps(out)
    state = load_resumable(ckpt_path, settings, device) if resume and main else None
    if ddp:
        state = distributed.broadcast_object(state)
        if state is not None:
            state = {**state, "rng_aug": state["rng_aug_ranks"][rank]}
    if state is not None:
        restore(st, state)
        meta = {**state["meta"], **(meta or {})}
        log.info("resuming from %s at step %d", ckpt_path, st.step)
    st.meta = dict(meta or {})
    if st.step == 0 and main:
        for old in (out / "samples", out / "final", out / "best"):
            shutil.rmtree(old, ignore_errors=True)
    st.last_good = copy.deepcopy(snapshot(st))  # what a non-finite loss rolls back to
    return st.step


def checkpoint(st: TrainState, out: Path, settings: dict[str, Any], *, rank: int, ddp: bool) -> None:
    """Make the present state the rollback target and write it to ``out/checkpoint.pt`` (rank 0).

    Call it on every rank at the same step: under DDP it gathers every rank's augmentation RNG.
    """
    st.last_good = copy.deepcopy(snapshot(st))
    saved = st.last_good
    if ddp:
        saved = {**st.last_good, "rng_aug_ranks": distributed.gather_objects(st.aug_rng.get_state())}
    if rank == 0:
        save_checkpoint(out / "checkpoint.pt", saved, {"settings": settings})


def rollback(
    st: TrainState, p: GanParams, on_metrics: Callable[[int, dict[str, float]], None] | None, main: bool
) -> None:
    """After a non-finite loss: back to the last checkpoint's state, both learning rates lowered.

    Raises:
        TrainingDiverged: ``p.nan_max_rollbacks`` rollbacks were done already.
    """
    if st.counters["nan_rollbacks"] >= p.nan_max_rollbacks:
        raise TrainingDiverged(
            f"non-finite loss at step {st.step} after {st.counters['nan_rollbacks']} rollback(s): lower "
            f"gan.lr_g / gan.lr_d, or turn on gan.spectral_norm / gan.r1_gamma"
        )
    n_rollbacks = st.counters["nan_rollbacks"] + 1
    bad_step = st.step
    restore(st, st.last_good)
    st.counters["nan_rollbacks"] = n_rollbacks
    for opt in (st.opt_g, st.opt_d):
        for group in opt.param_groups:
            group["lr"] *= p.nan_lr_factor
    lrs = {"lr_g": st.opt_g.param_groups[0]["lr"], "lr_d": st.opt_d.param_groups[0]["lr"]}
    log.warning("non-finite loss at step %d: rolled back to step %d, learning rates now %s",
                bad_step, st.step, lrs)  # fmt: skip
    if on_metrics and main:
        on_metrics(st.step, {"nan_rollbacks": float(n_rollbacks), **lrs})


def finite(*nets: nn.Module) -> bool:
    """Every parameter of every net finite."""
    return all(bool(torch.isfinite(t).all()) for net in nets for t in net.parameters())


def mean_over_ranks(x: torch.Tensor, ddp: bool) -> float:
    """A scalar averaged over the ranks (itself when not data-parallel)."""
    v = x.detach().float().reshape(1).clone()
    if ddp:
        distributed.all_sum_(v).div_(distributed.world_size())
    return v.item()


def any_rank(flag: bool, ddp: bool) -> bool:
    """True when ``flag`` is true on any rank (a stop request reaches one rank, all must stop together)."""
    if not ddp:
        return flag
    return bool(distributed.all_sum_(torch.tensor([float(flag)])).item() > 0)
