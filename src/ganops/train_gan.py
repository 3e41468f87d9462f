"""Stage `train_gan`: the GAN training loop, one straight function.

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

The loop reports through callbacks (``on_metrics``, ``on_sample``) and stops when ``should_stop`` says so;
it knows nothing about MLflow. What each phase computes (adversarial loss, lazy R1, DiffAugment, D frozen
for G) is :class:`ganops.losses.GanLoss`; the mutable state and resume, checkpoint and rollback are in
:mod:`ganops.train_state`; exports are weights + config folders (:func:`ganops.artifacts.save_folder`). Resuming from ``checkpoint.pt`` reproduces an uninterrupted run exactly on
CPU: data order is a function of (seed, step), noise and augmentation come from saved RNG states.

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

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ganops import distributed
from ganops.artifacts import atomic_write, save_folder
from ganops.config import GanParams
from ganops.images import grid_png
from ganops.losses import DPhase, GanLoss
from ganops.models.gan import GANConfig, ema_update
from ganops.train_state import (  # noqa: F401  (load_resumable, settings_for: this module's API too)
    TrainingDiverged,
    TrainState,
    any_rank,
    checkpoint,
    class_counts_for,
    finite,
    init_state,
    load_resumable,
    mean_over_ranks,
    resume,
    rollback,
    settings_for,
    training_settings,
)

log = logging.getLogger(__name__)

MetricsFn = Callable[[int, dict[str, float]], None]
SampleFn = Callable[[int, Path], None]
StopFn = Callable[[int], bool]
MonitorFn = Callable[[nn.Module], dict[str, Any]]  # G (eval mode) -> {"domain_fid": .., "kl": .., ...}
StepFn = Callable[[int, nn.Module, nn.Module], None]


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


@dataclass(frozen=True)
class _Run:
    """What stays fixed through a run: where it writes, what built the nets, the grids' fixed noise."""

    out: Path
    cfg: GANConfig
    settings: dict[str, Any]
    fixed_z: torch.Tensor  # (grid_samples, Z, 1, 1): the same z every grid, comparable across steps and runs
    fixed_y: (
        torch.Tensor | None
    )  # (grid_samples,) conditional: image i asks for class i mod K (a column each)

    @staticmethod
    def start(
        out: Path, cfg: GANConfig, settings: dict[str, Any], n: int, seed: int, device: torch.device
    ) -> _Run:
        z = torch.randn(n, cfg.latent_dim, 1, 1, generator=torch.Generator().manual_seed(seed + 1))
        y = torch.arange(n, device=device) % cfg.n_classes if cfg.n_classes else None
        return _Run(out, cfg, settings, z.to(device), y)


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


def _grid_png(x: torch.Tensor, n_classes: int = 0) -> bytes:
    """(N, C, S, S) in [-1, 1] -> PNG of a near-square grid, classes in columns (``images.grid_png``)."""
    return grid_png(x, n_classes)


def pyramid(x: torch.Tensor, scales: list[int]) -> list[torch.Tensor]:
    """(B, C, S, S) -> [x at each side in ``scales``] by average pooling (what MSG's D sees of real data)."""
    S = x.shape[-1]
    return [x if s == S else F.avg_pool2d(x, S // s) for s in scales]


def sample_grid(st: TrainState, run: _Run) -> Path:
    """Write ``samples/step_<step>.png``: the fixed noise through the sampler G, as serving will see it."""
    g = st.sampler
    g.eval()  # what serving will see: BatchNorm on running statistics
    with torch.no_grad():
        x = g(run.fixed_z, run.fixed_y).float().cpu()  # (grid_samples, C, S, S) in [-1, 1]
    st.G.train()
    return atomic_write(run.out / "samples" / f"step_{st.step:06d}.png", _grid_png(x, run.cfg.n_classes))


def export(st: TrainState, run: _Run, folder: Path, extra: dict[str, Any]) -> Path:
    """Write an export folder: generator.pt (the sampler G), generator_raw.pt (EMA on), discriminator.pt,
    samples.png and config.json (the model, the settings, the step, ``meta`` and ``extra``)."""
    grid = sample_grid(st, run).read_bytes()
    config = {"model": run.cfg.to_dict(), "settings": run.settings, "step": st.step, "meta": st.meta,
              "ema": st.G_ema is not None, **extra}  # fmt: skip
    weights = {"generator.pt": st.sampler.state_dict()}
    if st.G_ema is not None:  # the raw weights too, for comparison; serving loads generator.pt
        weights["generator_raw.pt"] = st.G.state_dict()
    weights["discriminator.pt"] = st.D.state_dict()
    return save_folder(folder, weights, config, files={"samples.png": grid})


def run_monitor(
    st: TrainState, run: _Run, p: GanParams, monitor: MonitorFn | None, on_metrics: MetricsFn | None
) -> None:
    """Score the sampler G with ``monitor``, report the scores, export it to ``best/`` when it is the best."""
    if monitor is None:
        return
    g = st.sampler
    g.eval()
    m = monitor(g)
    st.G.train()
    st.monitored.append({"step": st.step, **m})
    if on_metrics:
        on_metrics(st.step, {f"monitor_{k}": float(v) for k, v in m.items() if isinstance(v, int | float)})
    if m.get("mode_collapse"):
        log.warning("step %d: possible mode collapse (coverage %s, KL %.3f)", st.step, m.get("coverage"),
                    m.get("kl", math.nan))  # fmt: skip
    value = float(m[p.best_metric])
    if value < st.best["value"]:
        st.best.update(value=value, step=st.step)
        export(st, run, run.out / "best", {"monitor": m, "best_metric": p.best_metric})


def _row(st: TrainState, losses: torch.Tensor, d: DPhase, img_per_s: float) -> dict[str, float]:
    return {
        "step": float(st.step),
        "loss_d": losses[0].item(),  # over the global batch
        "loss_g": losses[1].item(),
        # this rank's batch (rank 0 reports):
        "d_real": torch.sigmoid(d.real_logits).mean().item(),  # sigmoid D(x), -> 0.5 at equilibrium
        "d_fake": torch.sigmoid(d.fake_logits).mean().item(),  # sigmoid D(G(z)) before D's update
        "img_per_s": img_per_s,
        "d_skipped": float(st.counters["d_skipped"]),
    }


def _report(st: TrainState, row: dict[str, float], bar: tqdm, on_metrics: MetricsFn | None) -> None:
    st.history.append(row)
    bar.set_postfix(
        loss_d=f"{row['loss_d']:.3f}",
        loss_g=f"{row['loss_g']:.3f}",
        Dx=f"{row['d_real']:.2f}",
        DGz=f"{row['d_fake']:.2f}",
        img_s=f"{row['img_per_s']:.0f}",
    )
    if on_metrics:
        on_metrics(st.step, {k: v for k, v in row.items() if k != "step"})


def train_gan(
    images: torch.Tensor,
    p: GanParams,
    out: str | Path,
    *,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    data_hash: str = "",
    meta: dict[str, str] | None = None,
    on_metrics: MetricsFn | None = None,
    on_sample: SampleFn | None = None,
    should_stop: StopFn | None = None,
    monitor: MonitorFn | None = None,
    after_step: StepFn | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> TrainResult:
    """Train a GAN on ``images`` and write checkpoints, sample grids and the exports under ``out``.

    Args:
        images: (N, C, S, S) uint8, the prepared dataset (kept whole on ``device``).
        p: the ``gan`` params group.
        out: output folder (``models/gan``): checkpoint.pt, samples/step_*.png, final/, best/.
        labels: (N,) int64 class of every image (-1 = unlabelled); ``p.conditional`` decides whether the
            GAN is class-conditional on them.
        seed: seeds init, data order, noise and augmentation.
        device: where to train.
        data_hash: the prepared data's content hash, stored with the checkpoint.
        meta: small str->str facts stored in the checkpoint (e.g. the MLflow run id), returned on resume.
        on_metrics: called every ``p.log_every`` steps with loss_d, loss_g, d_real, d_fake, img_per_s,
            d_skipped; with ``monitor_*`` scores every ``p.monitor_every`` steps; on every rollback.
        on_sample: called with (step, png path) after each sample grid is written.
        should_stop: polled after every step; True -> checkpoint and return early.
        monitor: scores a generator (eval mode); called every ``p.monitor_every`` steps (0 = never).
        after_step: called with (step, G, D) after every step (extensions; tests inject faults with it).
        rank, world_size: this process's place in a data-parallel run (only rank 0 writes); with
            ``world_size > 1`` the default process group must be initialised (torch.distributed).
        progress: show a progress bar.

    Raises:
        TrainingDiverged: losses were non-finite again after ``p.nan_max_rollbacks`` rollbacks.
    """
    out = Path(out)
    device = torch.device(device)
    main, ddp = rank == 0, world_size > 1
    N, B = len(images), p.batch_size
    steps_per_epoch = _steps_per_epoch(images, labels, B, world_size)
    settings = settings_for(images, p, seed, data_hash, labels, world_size)
    cfg = GANConfig(**settings["model"])
    conditional = cfg.n_classes > 0
    st, G_fwd, D_fwd = init_state(cfg, p, seed=seed, rank=rank, device=device, ddp=ddp)
    G, D = st.G, st.D
    loss = GanLoss(G_fwd, D_fwd, D, loss=p.loss, r1_gamma=p.r1_gamma, r1_every=p.r1_every,
                   policy=tuple(p.diffaugment), aug_rng=st.aug_rng, amp=p.amp, device_type=device.type)  # fmt: skip
    run = _Run.start(out, cfg, settings, p.grid_samples, seed, device)
    data = images.to(device)
    classes = labels.to(device) if conditional and labels is not None else None
    resumed_from = resume(st, out, settings, resume=p.resume, meta=meta, device=device, rank=rank, ddp=ddp)

    bar = tqdm(total=p.steps, initial=st.step, unit="step", desc="train_gan", mininterval=1.0,
               disable=not (progress and main))  # fmt: skip
    perm, perm_epoch = torch.empty(0, dtype=torch.long), -1
    t0, t_images = time.perf_counter(), 0
    completed = True
    while st.step < p.steps:
        epoch, i = divmod(st.step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = _epoch_perm(N, seed, epoch).to(device), epoch
        lo = (i * world_size + rank) * B
        real = data[perm[lo : lo + B]].float().div_(127.5).sub_(1.0)  # (B, C, S, S) in [-1, 1]
        reals = pyramid(real.contiguous(memory_format=torch.channels_last), cfg.scales)  # [(B, C, s, s)]
        y_real = classes[perm[lo : lo + B]] if classes is not None else None  # (B,) conditional only

        # ---------------------------------------------------------------- (1) update D
        # d_steps times, each on fresh noise; skipped while D's loss is under d_skip_below (D is winning:
        # let G catch up, the lesson's advice), all ranks agreeing on the loss averaged over them.
        skipped = 0
        for k in range(p.d_steps):
            z = torch.randn(B * world_size, p.latent_dim, 1, 1, generator=st.noise)  # the global batch's
            z = z[rank * B : (rank + 1) * B].to(device)  # (B, Z, 1, 1): this rank's slice
            y_fake = G.labels_for(z) if conditional else None  # (B,): the classes G is asked for
            d = loss.d_phase(
                reals, y_real, z, y_fake, n=st.step * p.d_steps + k, keep_graph=k == p.d_steps - 1
            )
            if p.d_skip_below > 0 and mean_over_ranks(d.loss, ddp) < p.d_skip_below:
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
        t_images += B * world_size
        if after_step:
            after_step(st.step, G, D)

        # ---------------------------------------------------------------- non-finite -> roll back
        # Losses every step (one sync; under DDP averaged over the ranks, so all agree on rolling back);
        # the weights too (identical on every rank) before anything is written from them.
        step = st.step
        losses = torch.stack([d.loss.detach(), loss_g.detach()]).float()
        if ddp:
            distributed.all_sum_(losses).div_(world_size)
        if not (bool(torch.isfinite(losses).all()) and (not _writes_at(step, p) or finite(G, D))):
            rollback(st, p, on_metrics, main)
            perm_epoch = -1
            bar.reset(total=p.steps)
            bar.update(st.step)
            continue
        bar.update(1)

        # ---------------------------------------------------------------- report, sample, checkpoint
        if step % p.log_every == 0 or step == p.steps:
            dt = time.perf_counter() - t0
            row = _row(st, losses, d, t_images / dt if dt > 0 else 0.0)
            t0, t_images = time.perf_counter(), 0
            if main:
                _report(st, row, bar, on_metrics)
        if main and p.monitor_every and (step % p.monitor_every == 0 or step == p.steps):
            run_monitor(st, run, p, monitor, on_metrics)
        if main and (step % p.sample_every == 0 or step == p.steps):
            grid = sample_grid(st, run)
            if on_sample:
                on_sample(step, grid)
        if step % p.checkpoint_every == 0 or step == p.steps:
            checkpoint(st, out, settings, rank=rank, ddp=ddp)
        if should_stop and step < p.steps and any_rank(should_stop(step), ddp):
            checkpoint(st, out, settings, rank=rank, ddp=ddp)
            completed = False
            break
    bar.close()

    final = None
    if completed and resumed_from == p.steps:  # nothing was left to train: make sure the outputs exist
        checkpoint(st, out, settings, rank=rank, ddp=ddp)
    if completed and main:
        final = export(st, run, out / "final", {"counters": st.counters, "world_size": world_size})
    best = out / "best" if (out / "best" / "config.json").is_file() else None
    return TrainResult(st.step, completed, resumed_from, out / "checkpoint.pt", final, st.history, st.monitored,
                       best, dict(st.counters))  # fmt: skip
