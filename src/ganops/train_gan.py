"""The GAN training loop, one straight function (:func:`train`), and its setup.

Each step: (1) update D on a real batch and a generated batch (``d_steps`` times; skipped while D's loss is
under ``d_skip_below``); (2) update G through a frozen D. Losses: the lesson's BCE (non-saturating for G)
or hinge, with an optional lazy R1 penalty on reals. DiffAugment, when on, shows D every image — real or
generated, in both phases — through the same differentiable augmentation policy. An exponential moving
average of G's weights (``ema_decay``) is what sample grids, the monitor, the exports and so evaluation,
promotion and serving see. A non-finite loss rolls everything back to the last checkpoint and lowers both
learning rates. Every ``monitor_every`` steps a ``monitor`` callback scores G (coverage, KL, domain FID):
the scores are reported and the best-scoring G is exported to ``best/`` besides the last in ``final/``.
On labelled data the pair can be class-conditional (``conditional``): every real image goes to D with its
class, every generated one with the class G was asked for (drawn from its noise, in the data's proportions).

What stays fixed through a run (params, where it writes, where it runs, what built the nets, the grids'
noise) is one :class:`TrainRun`; the loop reports through one :class:`Hooks` (``on_metrics``, ``on_sample``,
``monitor``), stops when ``should_stop`` says so, and knows nothing about MLflow. What each phase computes
(adversarial loss, lazy R1, DiffAugment, D frozen for G) is :class:`ganops.losses.GanLoss`; what a step
changes, and its snapshot / restore / save / load, is :class:`ganops.train_state.TrainState`; exports are
weights + config folders (:func:`ganops.artifacts.save_folder`). The caller opens the checkpoint to resume
(:meth:`TrainRun.resumable`) and hands it over; resuming reproduces an uninterrupted run exactly on CPU:
data order is a function of (seed, step), noise and augmentation come from saved RNG states.

Data-parallel (``world_size > 1``, the process group joined by the caller; see ganops.distributed): G and
D are each wrapped in DistributedDataParallel, so gradients are averaged over the ranks and every rank keeps
identical weights. Rank r trains on its own slice of each global batch of ``batch_size * world_size`` images
(epoch order is one permutation of (seed, epoch), as DistributedSampler + set_epoch would give, but a pure
function, so resuming needs no sampler state) and on its own slice of one global noise draw; BatchNorm
statistics are averaged over the ranks every step. With no batch statistics in G (``g_norm: none``) or D
(spectral norm on, mbstd off) and no augmentation, W ranks of batch B compute exactly what one process of
batch W*B computes. Only rank 0 reports, monitors, writes grids, checkpoints and exports.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ganops import distributed
from ganops.artifacts import atomic_write, remove_stale_temps, save_folder
from ganops.config import GanParams
from ganops.distributed import Place
from ganops.images import grid_png
from ganops.losses import DPhase, GanLoss
from ganops.models.gan import BaseGenerator, GANConfig, build, ema_update, seeded_noise
from ganops.models.progressive import Growth, growth_for, schedule_warning
from ganops.promote import resolve_metric
from ganops.train_state import TrainingDiverged, TrainState, settings_for

log = logging.getLogger(__name__)

MetricsFn = Callable[[int, dict[str, float]], None]
SampleFn = Callable[[int, Path], None]
StopFn = Callable[[int], bool]
MonitorFn = Callable[[nn.Module], dict[str, Any]]  # G (eval mode) -> {"domain_fid": .., "kl": .., ...}
StepFn = Callable[[int, nn.Module, nn.Module], None]


@dataclass(frozen=True)
class Hooks:
    """How the loop talks to its caller; every one optional. Only rank 0 reports, monitors and samples."""

    on_metrics: MetricsFn | None = (
        None  # (step, {loss_d, loss_g, d_real, d_fake, img_per_s, d_skipped}) every
    )
    # log_every steps; monitor_* scores every monitor_every steps; nan_rollbacks and lowered lrs on a rollback
    on_sample: SampleFn | None = None  # (step, png path) after each sample grid is written
    should_stop: StopFn | None = None  # polled after every step: True -> checkpoint and return early
    monitor: MonitorFn | None = None  # scores a generator (eval mode) every monitor_every steps
    after_step: StepFn | None = (
        None  # (step, G, D) after every step (extensions; tests inject faults with it)
    )


@dataclass(frozen=True)
class TrainRun:
    """What stays fixed through a run: the params, where it writes and runs, what built the nets, the grids'
    fixed noise. Build it with :meth:`create`."""

    p: GanParams
    out: Path  # models/gan: checkpoint.pt, samples/step_*.png, final/, best/
    settings: dict[str, Any]  # what shapes the weights: a checkpoint resumes only under the same
    cfg: GANConfig
    seed: int
    device: torch.device
    place: Place  # rank and world size (only rank 0 writes); world_size > 1 needs a process group
    steps_per_epoch: int
    fixed_z: torch.Tensor  # (grid_samples, Z, 1, 1): the same z every grid, comparable across steps and runs
    fixed_y: (
        torch.Tensor | None
    )  # (grid_samples,) conditional: image i asks for class i mod K (a column each)
    progress: bool = True  # a progress bar (rank 0)

    @staticmethod
    def create(
        images: torch.Tensor,
        p: GanParams,
        out: str | Path,
        *,
        labels: torch.Tensor | None = None,
        seed: int = 0,
        data_hash: str = "",
        device: str | torch.device = "cpu",
        place: Place = Place(),
        progress: bool = True,
    ) -> TrainRun:
        """The run for ``images`` (N, C, S, S) uint8 and their ``labels`` (N,) (-1 = unlabelled; whether the
        GAN is class-conditional on them is ``p.conditional``'s call), seeded by ``seed``.

        Raises:
            ValueError: the batch does not fit the data, labels do not match the images, ``conditional:
                true`` on unlabelled data, or ``place`` names a process group that does not exist.
        """
        device = torch.device(device)
        settings = settings_for(images, p, seed, data_hash, labels, place.world_size)
        cfg = GANConfig.from_dict(settings["model"])
        spe = _steps_per_epoch(images, labels, p.batch_size, place.world_size)
        n = p.grid_samples
        y = torch.arange(n, device=device) % cfg.n_classes if cfg.n_classes else None
        z = seeded_noise(n, cfg.latent_dim, seed + 1).to(device)
        if place.main and (note := schedule_warning(cfg, p.steps, p.grow_fade_steps, p.grow_stable_steps)):
            log.warning(note)
        return TrainRun(p, Path(out), settings, cfg, seed, device, place, spe, z, y, progress)

    @property
    def ddp(self) -> bool:
        return self.place.world_size > 1

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    def resumable(self) -> dict[str, Any] | None:
        """The checkpoint's state to resume from: rank 0 reads it when ``p.resume`` and it was built under
        these settings; None otherwise (the loop then starts fresh; under DDP it broadcasts rank 0's)."""
        if not (self.p.resume and self.place.main):
            return None
        return TrainState.load(self.checkpoint, self.settings, self.device)


@dataclass
class TrainResult:
    """What a (possibly resumed or stopped) training run ended with."""

    step: int  # steps done in total
    completed: bool  # False when should_stop ended it early
    resumed_from: int  # 0 for a fresh start
    checkpoint: Path  # out/checkpoint.pt: full training state
    export: (
        Path | None
    )  # out/final/: generator.pt (EMA when on) + discriminator.pt + config.json + samples.png
    history: list[dict[str, float]] = field(default_factory=list)  # one row per log_every steps
    monitor: list[dict[str, Any]] = field(default_factory=list)  # one row per monitor_every steps
    best: Path | None = None  # out/best/: the export that scored best on p.best_metric (monitor on)
    counters: dict[str, int] = field(default_factory=dict)  # d_skipped, nan_rollbacks


def _steps_per_epoch(images: torch.Tensor, labels: torch.Tensor | None, B: int, world_size: int) -> int:
    """Steps per pass over ``images`` (N, C, S, S) in global batches of B x world_size; checks the inputs."""
    N = len(images)
    steps_per_epoch = N // (B * world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"gan.batch_size {B} x {world_size} process(es) exceeds the {N} images: lower it")
    if labels is not None and len(labels) != N:
        raise ValueError(f"{N} images but {len(labels)} labels")
    if world_size > 1 and distributed.world_size() != world_size:
        raise ValueError(f"world_size {world_size} needs a torch.distributed process group of that size: "
                         "launch under torchrun (`ganops train-gan --nproc N`)")  # fmt: skip
    return steps_per_epoch


# ----------------------------------------------------------------------------- setup


class _GToScales(nn.Module):
    """``G.pyramid`` (G's image at every scale) as a module's forward, so DistributedDataParallel can wrap
    it (DDP hooks ``forward``)."""

    def __init__(self, G: BaseGenerator):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.G.pyramid(z, labels)


def _init_state(run: TrainRun) -> tuple[TrainState, nn.Module, nn.Module]:
    """Fresh nets (seeded: the same init on every rank), optimisers and RNG streams.

    Returns:
        The state, and the forwards whose gradients must be averaged over the ranks: G's to every scale
        (in D's phase, kept for G's) and D's in D's phase; DDP-wrapped under DDP, else plain.
    """
    p, device, seed = run.p, run.device, run.seed
    torch.manual_seed(seed)  # the same init on every rank (DDP also broadcasts rank 0's weights)
    G, D = build(run.cfg)
    # channels_last: oneDNN's convolutions run ~1.2x faster in NHWC on CPU (bench/train_throughput.py),
    # and cuDNN's tensor-core kernels want NHWC too.
    G = G.to(device).to(memory_format=torch.channels_last)
    D = D.to(device).to(memory_format=torch.channels_last)
    # Every rank keeps an EMA G: it is updated from G's (identical) weights, so it stays identical too.
    G_ema = copy.deepcopy(G).requires_grad_(False).eval() if p.ema_decay > 0 else None
    # batch statistics over all ranks under DDP on CUDA (SyncBatchNorm refuses CPU tensors)
    if run.ddp and device.type == "cuda":
        G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
    G_fwd, D_fwd = _forwards(run, G, D)
    opt_g = torch.optim.Adam(G.parameters(), lr=p.lr_g, betas=(p.beta1, p.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=p.lr_d, betas=(p.beta1, p.beta2))
    # Every rank draws the global batch's noise from the same stream and keeps its own slice: per-rank
    # noise, and the same z one process would use. Augmentation: rank 0's stream is the one-process one.
    noise = torch.Generator().manual_seed(seed + 2)
    aug_rng = torch.Generator().manual_seed(seed + 3 + 1_000_003 * run.place.rank)
    # torch's global stream after init (fastgan's training noise, its D's crop): one per rank; rank 0's is
    # the one-process stream. The other families draw nothing from it while training.
    if run.place.rank > 0:
        torch.manual_seed(seed + 4 + 1_000_003 * run.place.rank)
    return TrainState(G, D, G_ema, opt_g, opt_d, noise, aug_rng), G_fwd, D_fwd


class _Phase(nn.Module):
    """``fwd``'s forward with only ``parts`` registered: what DDP wraps for a growing family, so the modules a
    phase leaves unused (levels not yet grown, a faded-out path) are not expected to get gradient."""

    def __init__(self, fwd: nn.Module, parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self._fwd = (fwd,)  # a tuple: not registered, so its other parameters stay outside DDP

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fwd[0](*args, **kwargs)


def _forwards(run: TrainRun, G: BaseGenerator, D: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The forwards whose gradients must be averaged over the ranks: G's to every scale (in D's phase, kept
    for G's) and D's in D's phase. DDP-wrapped under DDP, else plain; a growing family's wrap only the
    modules of its current phase (``G.active()``), so the loop builds them again when that set changes."""
    G_fwd: nn.Module = _GToScales(G)
    D_fwd: nn.Module = D
    if not run.ddp:
        return G_fwd, D_fwd
    if hasattr(G, "active"):
        G_fwd, D_fwd = _Phase(G_fwd, G.active()), _Phase(D, D.active())  # type: ignore[operator]
    ids = [run.device.index] if run.device.type == "cuda" else None
    # forward_sync_buffers=False (was broadcast_buffers): D runs twice per step (real, fake) and a buffer
    # broadcast between the two forwards breaks autograd (pytorch#22095); spectral norm's u too.
    # BatchNorm statistics are averaged explicitly once per step instead (distributed.average_buffers_).
    return (DDP(G_fwd, device_ids=ids, forward_sync_buffers=False),
            DDP(D_fwd, device_ids=ids, forward_sync_buffers=False))  # fmt: skip


Phase = tuple[int, bool]  # a growing pair's (level, fading): the modules a phase uses


def _grow(st: TrainState, run: TrainRun, loss: GanLoss, phase: Phase) -> tuple[Growth | None, Phase]:
    """Set a growing pair to the growth of the step about to be taken (G, its EMA and D alike); under DDP
    wrap the new phase's modules when they changed. Returns the growth (None: the family does not grow)
    and the phase the wrappers are built for."""
    growth = growth_for(run.cfg, run.p.grow_fade_steps, run.p.grow_stable_steps, st.step)
    if growth is None:
        return None, phase
    for net in (st.G, st.G_ema, st.D):
        if net is not None:
            net.set_growth(growth)  # type: ignore[operator]
    now = (growth.level, growth.fading)
    if run.ddp and now != phase:
        loss.G_fwd, loss.D_fwd = _forwards(run, st.G, st.D)
    return growth, now


def _resume(st: TrainState, run: TrainRun, prior: dict[str, Any] | None) -> int:
    """Continue from ``prior`` (rank 0's :meth:`TrainRun.resumable`), else start fresh.

    Rank 0 first deletes half-written files of a killed run, and on a fresh start the grids and exports of
    an earlier one (they would mislead). Under DDP rank 0's state goes to every rank (other nodes need no
    shared disk). Returns the step resumed from (0: fresh).
    """
    main = run.place.main
    if main:  # half-written files of a killed run (their atomic renames never happened)
        remove_stale_temps(run.out)
    state = prior if main else None
    if run.ddp:
        state = distributed.broadcast_object(state)
        if state is not None:
            rank = run.place.rank
            state = {**state, "rng_aug": state["rng_aug_ranks"][rank]}
            if "rng_torch_ranks" in state:  # checkpoints of 2026-12-05 on: each rank's global stream
                state["rng_torch"] = state["rng_torch_ranks"][rank]
    if state is not None:
        st.restore(state)
        log.info("resuming from %s at step %d", run.checkpoint, st.step)
    if st.step == 0 and main:
        for old in (run.out / "samples", run.out / "final", run.out / "best"):
            shutil.rmtree(old, ignore_errors=True)
    st.last_good = copy.deepcopy(st.snapshot())  # what a non-finite loss rolls back to
    return st.step


def _save(st: TrainState, run: TrainRun) -> None:
    st.save(run.checkpoint, run.settings, rank=run.place.rank, ddp=run.ddp)


def _rollback(st: TrainState, p: GanParams, on_metrics: MetricsFn | None, main: bool, bar: tqdm) -> None:
    """After a non-finite loss: back to the last checkpoint's state, both learning rates lowered, the
    progress bar back to its step.

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
    st.restore(st.last_good)
    st.counters["nan_rollbacks"] = n_rollbacks
    for opt in (st.opt_g, st.opt_d):
        for group in opt.param_groups:
            group["lr"] *= p.nan_lr_factor
    lrs = {"lr_g": st.opt_g.param_groups[0]["lr"], "lr_d": st.opt_d.param_groups[0]["lr"]}
    log.warning("non-finite loss at step %d: rolled back to step %d, learning rates now %s",
                bad_step, st.step, lrs)  # fmt: skip
    if on_metrics and main:
        on_metrics(st.step, {"nan_rollbacks": float(n_rollbacks), **lrs})
    bar.reset(total=p.steps)
    bar.update(st.step)


# ----------------------------------------------------------------------------- what the loop writes


def _writes_at(step: int, p: GanParams) -> bool:
    """Whether anything is written from the weights after ``step`` (so they must be finite)."""
    return (
        step % p.checkpoint_every == 0
        or step == p.steps
        or bool(p.monitor_every and step % p.monitor_every == 0)
    )


def _epoch_perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    # A pure function of (seed, epoch): data order needs no state in the checkpoint.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def downscaled(x: torch.Tensor, scales: list[int]) -> list[torch.Tensor]:
    """(B, C, S, S) -> [x at each side in ``scales``] by average pooling (what MSG's D sees of real data)."""
    S = x.shape[-1]
    return [x if s == S else F.avg_pool2d(x, S // s) for s in scales]


def sample_grid(st: TrainState, run: TrainRun) -> Path:
    """Write ``samples/step_<step>.png``: the fixed noise through the sampler G, as serving will see it."""
    g = st.sampler
    g.eval()  # what serving will see: BatchNorm on running statistics
    with torch.no_grad():
        x = g(run.fixed_z, run.fixed_y).float().cpu()  # (grid_samples, C, S, S) in [-1, 1]
    st.G.train()
    return atomic_write(run.out / "samples" / f"step_{st.step:06d}.png", grid_png(x, run.cfg.n_classes))


def write_export(st: TrainState, run: TrainRun, folder: Path, extra: dict[str, Any]) -> Path:
    """Write an export folder: generator.pt (the sampler G), generator_raw.pt (EMA on), discriminator.pt,
    samples.png and config.json (the model, the settings, the step and ``extra``)."""
    grid = sample_grid(st, run).read_bytes()
    config = {"model": run.cfg.to_dict(), "settings": run.settings, "step": st.step,
              "ema": st.G_ema is not None, **extra}  # fmt: skip
    weights = {"generator.pt": st.sampler.state_dict()}
    if st.G_ema is not None:  # the raw weights too, for comparison; serving loads generator.pt
        weights["generator_raw.pt"] = st.G.state_dict()
    weights["discriminator.pt"] = st.D.state_dict()
    return save_folder(folder, weights, config, files={"samples.png": grid})


def _monitor(st: TrainState, run: TrainRun, hooks: Hooks) -> None:
    """Score the sampler G with ``hooks.monitor``, report the scores, export it to ``best/`` when best."""
    if hooks.monitor is None:
        return
    g = st.sampler
    g.eval()
    m = hooks.monitor(g)
    st.G.train()
    st.monitored.append({"step": st.step, **m})
    if hooks.on_metrics:
        hooks.on_metrics(
            st.step, {f"monitor_{k}": float(v) for k, v in m.items() if isinstance(v, int | float)}
        )
    if m.get("mode_collapse"):
        log.warning("step %d: possible mode collapse (coverage %s, KL %.3f)", st.step, m.get("coverage"),
                    m.get("kl", math.nan))  # fmt: skip
    metric = resolve_metric(
        run.p.best_metric, "vgg19" if "vgg_kid" in m else "domain"
    )  # auto: the headline's
    value = float(m[metric])
    if value < st.best["value"]:
        st.best.update(value=value, step=st.step)
        write_export(st, run, run.out / "best", {"monitor": m, "best_metric": metric})


def _report(st: TrainState, row: dict[str, float], bar: tqdm, on_metrics: MetricsFn | None) -> None:
    st.history.append(row)
    grow = {"px": f"{row['resolution']:.0f}@{row['fade_alpha']:.2f}"} if "resolution" in row else {}
    bar.set_postfix(loss_d=f"{row['loss_d']:.3f}", loss_g=f"{row['loss_g']:.3f}", Dx=f"{row['d_real']:.2f}",
                    DGz=f"{row['d_fake']:.2f}", img_s=f"{row['img_per_s']:.0f}", **grow)  # fmt: skip
    if on_metrics:
        on_metrics(st.step, {k: v for k, v in row.items() if k != "step"})


def _row(
    st: TrainState, losses: torch.Tensor, d: DPhase, img_per_s: float, growth: Growth | None
) -> dict[str, float]:
    return (
        {
            "step": float(st.step),
            "loss_d": losses[0].item(),  # over the global batch
            "loss_g": losses[1].item(),
            # this rank's batch (rank 0 reports):
            "d_real": torch.sigmoid(d.real_logits).mean().item(),  # sigmoid D(x), -> 0.5 at equilibrium
            "d_fake": torch.sigmoid(d.fake_logits).mean().item(),  # sigmoid D(G(z)) before D's update
            "img_per_s": img_per_s,
            "d_skipped": float(st.counters["d_skipped"]),
        }
        | ({"d_reconstruction": d.reconstruction.item()} if d.reconstruction is not None else {})
        | (
            growth.metrics() if growth is not None else {}  # progressive: resolution and fade alpha
        )
    )


def _sample_and_save(st: TrainState, run: TrainRun, hooks: Hooks) -> None:
    """After a finite step: the monitor, the sample grid and the checkpoint, each at its interval."""
    p, step, main = run.p, st.step, run.place.main
    if main and p.monitor_every and (step % p.monitor_every == 0 or step == p.steps):
        _monitor(st, run, hooks)
    if main and (step % p.sample_every == 0 or step == p.steps):
        grid = sample_grid(st, run)
        if hooks.on_sample:
            hooks.on_sample(step, grid)
    if step % p.checkpoint_every == 0 or step == p.steps:
        _save(st, run)


# ----------------------------------------------------------------------------- the loop


def train(
    run: TrainRun,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    hooks: Hooks = Hooks(),
    prior: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a GAN on ``images`` (N, C, S, S) uint8 and write checkpoints, grids and exports under ``run.out``.

    Args:
        run: the run (:meth:`TrainRun.create` on these images and labels).
        images, labels: the prepared dataset (kept whole on the run's device) and its (N,) classes.
        hooks: reporting, monitoring and stopping.
        prior: the state to resume from (rank 0: :meth:`TrainRun.resumable`); None starts fresh.
    Raises:
        TrainingDiverged: losses were non-finite again after ``p.nan_max_rollbacks`` rollbacks.
    """
    p, cfg, device, ddp, main = run.p, run.cfg, run.device, run.ddp, run.place.main
    rank, W, N, B = run.place.rank, run.place.world_size, len(images), p.batch_size
    st, G_fwd, D_fwd = _init_state(run)
    G, D = st.G, st.D
    loss = GanLoss(G_fwd, D_fwd, D, loss=p.loss, r1_gamma=p.r1_gamma, r1_every=p.r1_every,
                   policy=tuple(p.diffaugment), aug_rng=st.aug_rng, amp=p.amp, device_type=device.type)  # fmt: skip
    data = images.to(device)
    classes = labels.to(device) if cfg.n_classes and labels is not None else None
    resumed_from = _resume(st, run, prior)
    bar = tqdm(total=p.steps, initial=st.step, unit="step", desc="train_gan", mininterval=1.0,
               disable=not (run.progress and main))  # fmt: skip
    perm, perm_epoch, completed = torch.empty(0, dtype=torch.long), -1, True
    t0, t_images = time.perf_counter(), 0
    phase = (0, False)  # what _init_state's wrappers were built for
    while st.step < p.steps:
        growth, phase = _grow(st, run, loss, phase)  # progressive only: (level, alpha) of this step
        epoch, i = divmod(st.step, run.steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = _epoch_perm(N, run.seed, epoch).to(device), epoch
        idx = perm[(i * W + rank) * B :][:B]  # this rank's slice of the global batch
        real = data[idx].float().div_(127.5).sub_(1.0)  # (B, C, S, S) in [-1, 1]
        reals = downscaled(real.contiguous(memory_format=torch.channels_last), cfg.scales)  # [(B, C, s, s)]
        y_real = classes[idx] if classes is not None else None  # (B,) conditional only

        # ---------------------------------------------------------------- (1) update D
        # d_steps times, each on fresh noise; skipped while D's loss is under d_skip_below (D is winning:
        # let G catch up, the lesson's advice), all ranks agreeing on the loss averaged over them.
        skipped = 0
        for k in range(p.d_steps):
            z = torch.randn(B * W, p.latent_dim, 1, 1, generator=st.noise)  # the global batch's
            z = z[rank * B : (rank + 1) * B].to(device)  # (B, Z, 1, 1): this rank's slice
            y_fake = G.labels_for(z) if cfg.n_classes else None  # (B,): the classes G is asked for
            d = loss.d_phase(
                reals, y_real, z, y_fake, n=st.step * p.d_steps + k, keep_graph=k == p.d_steps - 1
            )
            if p.d_skip_below > 0 and distributed.mean_over_ranks(d.loss, ddp) < p.d_skip_below:
                skipped += 1
                continue
            st.opt_d.zero_grad(set_to_none=True)
            d.total.backward()
            st.opt_d.step()
        st.counters["d_skipped"] += skipped

        # ---------------------------------------------------------------- (2) update G
        # On the last D step's generated batch [(B, C, s, s)], through the just-updated D, frozen.
        st.opt_g.zero_grad(set_to_none=True)
        loss_g = loss.g_phase(d.fakes, y_fake)
        st.opt_g.step()
        if ddp:  # before the EMA copies them: every rank's BatchNorm statistics the same
            distributed.average_buffers_(G, D)
        if st.G_ema is not None:  # warm-up: a short average early on, while G changes fast
            ema_update(st.G_ema, G, min(p.ema_decay, (1 + st.step) / (10 + st.step)))
        st.step += 1
        t_images += B * W
        if hooks.after_step:
            hooks.after_step(st.step, G, D)

        # ---------------------------------------------------------------- non-finite -> roll back
        # Losses every step (one sync; under DDP averaged over the ranks, so all agree on rolling back);
        # the weights too (identical on every rank) before anything is written from them.
        losses = torch.stack([d.loss.detach(), loss_g.detach()]).float()
        if ddp:
            distributed.all_sum_(losses).div_(W)
        if not (
            bool(torch.isfinite(losses).all()) and (not _writes_at(st.step, p) or distributed.finite(G, D))
        ):
            _rollback(st, p, hooks.on_metrics, main, bar)
            perm_epoch = -1  # the data order of the step rolled back to
            continue
        bar.update(1)

        # ---------------------------------------------------------------- report, sample, checkpoint
        if st.step % p.log_every == 0 or st.step == p.steps:
            dt, t0 = time.perf_counter() - t0, time.perf_counter()
            row, t_images = _row(st, losses, d, t_images / dt if dt > 0 else 0.0, growth), 0
            if main:
                _report(st, row, bar, hooks.on_metrics)
        _sample_and_save(st, run, hooks)
        if hooks.should_stop and st.step < p.steps and distributed.any_rank(hooks.should_stop(st.step), ddp):
            _save(st, run)
            completed = False
            break
    bar.close()
    return _finish(st, run, completed, resumed_from)


def _finish(st: TrainState, run: TrainRun, completed: bool, resumed_from: int) -> TrainResult:
    """The final export (rank 0, a completed run) and what the run ended with."""
    final = None
    if completed and resumed_from == run.p.steps:  # nothing was left to train: make sure the outputs exist
        _save(st, run)
    if completed and run.place.main:
        final = write_export(
            st, run, run.out / "final", {"counters": st.counters, "world_size": run.place.world_size}
        )
    best = run.out / "best" if (run.out / "best" / "config.json").is_file() else None
    return TrainResult(st.step, completed, resumed_from, run.checkpoint, final, st.history, st.monitored,
                       best, dict(st.counters))  # fmt: skip


def fit(
    images: torch.Tensor, p: GanParams, out: str | Path, *, labels: torch.Tensor | None = None,
    hooks: Hooks = Hooks(), **run: Any,
) -> TrainResult:  # fmt: skip
    """Create the run, resume its checkpoint when compatible, train: :func:`train` for scripts, benchmarks
    and notebooks (the stage does the same in three steps, because the checkpoint tells it which MLflow run
    continues). ``run``: :meth:`TrainRun.create`'s keywords (seed, data_hash, device, place, progress)."""
    tr = TrainRun.create(images, p, out, labels=labels, **run)
    return train(tr, images, labels, hooks=hooks, prior=tr.resumable())
