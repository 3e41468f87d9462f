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
it knows nothing about MLflow. Resuming from ``checkpoint.pt`` reproduces an uninterrupted run exactly on
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

import copy
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ganops import distributed
from ganops.augment import diff_augment
from ganops.checkpoint import atomic_write, load_checkpoint, remove_stale_temps, save_checkpoint
from ganops.config import GanParams
from ganops.images import grid_png
from ganops.losses import D_LOSSES, G_LOSSES, r1_penalty
from ganops.models.gan import GANConfig, Generator, build, ema_update

log = logging.getLogger(__name__)

MetricsFn = Callable[[int, dict[str, float]], None]
SampleFn = Callable[[int, Path], None]
StopFn = Callable[[int], bool]
MonitorFn = Callable[[nn.Module], dict[str, Any]]  # G (eval mode) -> {"domain_fid": .., "kl": .., ...}
StepFn = Callable[[int, nn.Module, nn.Module], None]

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


def _epoch_perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    # A pure function of (seed, epoch): data order needs no state in the checkpoint.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _finite(*nets: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for net in nets for t in net.parameters())


def _grid_png(x: torch.Tensor, n_classes: int = 0) -> bytes:
    """(N, C, S, S) in [-1, 1] -> PNG of a near-square grid, classes in columns (``images.grid_png``)."""
    return grid_png(x, n_classes)


class _Pyramid(nn.Module):
    """``G.pyramid`` as a module's forward, so DistributedDataParallel can wrap it (DDP hooks ``forward``)."""

    def __init__(self, G: Generator):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.G.pyramid(z, labels)


def _mean_over_ranks(x: torch.Tensor, ddp: bool) -> float:
    v = x.detach().float().reshape(1).clone()
    if ddp:
        distributed.all_sum_(v).div_(distributed.world_size())
    return v.item()


def _any_rank(flag: bool, ddp: bool) -> bool:
    """True when ``flag`` is true on any rank (a stop request reaches one rank, all must stop together)."""
    if not ddp:
        return flag
    return bool(distributed.all_sum_(torch.tensor([float(flag)])).item() > 0)


def pyramid(x: torch.Tensor, scales: list[int]) -> list[torch.Tensor]:
    """(B, C, S, S) -> [x at each side in ``scales``] by average pooling (what MSG's D sees of real data)."""
    S = x.shape[-1]
    return [x if s == S else F.avg_pool2d(x, S // s) for s in scales]


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
    main = rank == 0
    N, C, S, _ = images.shape
    B = p.batch_size
    steps_per_epoch = N // (B * world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"gan.batch_size {B} x {world_size} process(es) exceeds the {N} images: lower it")
    if labels is not None and len(labels) != N:
        raise ValueError(f"{N} images but {len(labels)} labels")
    ddp = world_size > 1
    if ddp and distributed.world_size() != world_size:
        raise ValueError(f"world_size {world_size} needs a torch.distributed process group of that size: "
                         "launch under torchrun (`ganops train-gan --nproc N`)")  # fmt: skip
    settings = settings_for(images, p, seed, data_hash, labels, world_size)
    cfg = GANConfig(**settings["model"])
    conditional = cfg.n_classes > 0

    torch.manual_seed(seed)  # the same init on every rank (DDP also broadcasts rank 0's weights)
    G, D = build(cfg)
    # channels_last: oneDNN's convolutions run ~1.2x faster in NHWC on CPU (bench/train_throughput.py),
    # and cuDNN's tensor-core kernels want NHWC too.
    G = G.to(device).to(memory_format=torch.channels_last)
    D = D.to(device).to(memory_format=torch.channels_last)
    # The EMA generator: never trained directly, always in eval mode; what every consumer of G sees.
    # Every rank keeps one: it is updated from G's (identical) weights, so it stays identical too.
    G_ema = copy.deepcopy(G).requires_grad_(False).eval() if p.ema_decay > 0 else None
    # What the loop calls for the passes whose gradients must be averaged over the ranks: G's forward in D's
    # step (kept for G's step) and D's forward in D's step. G's step calls the raw D: D is frozen there, and
    # a DDP forward whose parameters get no gradient would leave its reducer waiting.
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
    loss_d_fn, loss_g_fn = D_LOSSES[p.loss], G_LOSSES[p.loss]

    def amp() -> torch.autocast:
        # gan.amp: the nets' forward passes in bfloat16 (tensor cores on CUDA; slower on most CPUs); losses,
        # optimiser state and weights stay float32. A fresh context each use (autocast keeps enter state).
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=p.amp)

    policy = tuple(p.diffaugment)
    # Fixed noise: the same z every grid, so grids are comparable across steps and runs.
    fixed_z = torch.randn(
        p.grid_samples, p.latent_dim, 1, 1, generator=torch.Generator().manual_seed(seed + 1)
    )
    fixed_z = fixed_z.to(device)
    # conditional: one column per class (image i asks for class i mod K), so a grid reads class by class
    fixed_y = torch.arange(p.grid_samples, device=device) % cfg.n_classes if conditional else None
    # Training noise, drawn on CPU for device independence. Every rank draws the global batch's noise from
    # the same stream and keeps its own slice: per-rank noise, and the same z one process would use.
    noise = torch.Generator().manual_seed(seed + 2)
    # DiffAugment's draws: one stream per rank (rank 0's is the one-process stream); all are checkpointed.
    aug_rng = torch.Generator().manual_seed(seed + 3 + 1_000_003 * rank)
    data = images.to(device)
    classes = labels.to(device) if conditional and labels is not None else None
    history: list[dict[str, float]] = []
    monitored: list[dict[str, Any]] = []
    counters = {"d_skipped": 0, "nan_rollbacks": 0}
    best: dict[str, Any] = {"value": math.inf, "step": 0}

    def snapshot() -> dict[str, Any]:
        return {
            "G": G.state_dict(),
            "D": D.state_dict(),
            "G_ema": G_ema.state_dict() if G_ema is not None else None,
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "step": step,
            "rng_torch": torch.get_rng_state(),
            "rng_noise": noise.get_state(),
            "rng_aug": aug_rng.get_state(),
            "history": history,
            "monitor": monitored,
            "counters": counters,
            "best": best,
            "meta": meta,
        }

    def restore(state: dict[str, Any]) -> int:
        # A copy: optimizers adopt the tensors they are given, so restoring `last_good` itself would let
        # the next steps' in-place Adam updates poison it, and a second rollback would restore NaNs.
        state = copy.deepcopy(state)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        if G_ema is not None:
            G_ema.load_state_dict(state["G_ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["rng_torch"])
        noise.set_state(state["rng_noise"])
        aug_rng.set_state(state["rng_aug"])
        history[:] = state["history"]
        monitored[:] = state["monitor"]
        counters.update(state["counters"])
        best.update(state["best"])
        return int(state["step"])

    ckpt_path = out / "checkpoint.pt"
    if main:  # half-written files of a killed run (their atomic renames never happened)
        remove_stale_temps(out)
    step = 0
    state = load_resumable(ckpt_path, settings, device) if p.resume and main else None
    if ddp:  # rank 0's checkpoint for everyone: other nodes need no shared disk
        state = distributed.broadcast_object(state)
        if state is not None:
            state = {**state, "rng_aug": state["rng_aug_ranks"][rank]}
    if state is not None:
        step = restore(state)
        meta = {**state["meta"], **(meta or {})}
        log.info("resuming from %s at step %d", ckpt_path, step)
    resumed_from = step
    meta = dict(meta or {})
    if step == 0 and main:  # a fresh start: grids and exports of an earlier run would mislead
        for old in (out / "samples", out / "final", out / "best"):
            shutil.rmtree(old, ignore_errors=True)
    last_good = copy.deepcopy(snapshot())  # what a non-finite loss rolls back to

    def checkpoint() -> None:  # on every rank at the same step (it gathers every rank's augmentation RNG)
        nonlocal last_good
        last_good = copy.deepcopy(snapshot())
        saved = last_good
        if ddp:
            saved = {**last_good, "rng_aug_ranks": distributed.gather_objects(aug_rng.get_state())}
        if main:
            save_checkpoint(ckpt_path, saved, {"settings": settings})

    def sampler() -> nn.Module:
        return G_ema if G_ema is not None else G

    def sample_grid(notify: bool = True) -> Path:
        g = sampler()
        g.eval()  # what serving will see: BatchNorm on running statistics
        with torch.no_grad():
            x = g(fixed_z, fixed_y).float().cpu()  # (grid_samples, C, S, S) in [-1, 1]
        G.train()
        path = atomic_write(out / "samples" / f"step_{step:06d}.png", _grid_png(x, cfg.n_classes))
        if on_sample and notify:
            on_sample(step, path)
        return path

    def export(folder: Path, extra: dict[str, Any]) -> Path:
        config = {"model": cfg.to_dict(), "settings": settings, "step": step, "meta": meta,
                  "ema": G_ema is not None, **extra}  # fmt: skip
        atomic_write(folder / "generator.pt", sampler().state_dict())
        if G_ema is not None:  # the raw weights too, for comparison; serving loads generator.pt
            atomic_write(folder / "generator_raw.pt", G.state_dict())
        atomic_write(folder / "discriminator.pt", D.state_dict())
        atomic_write(folder / "samples.png", sample_grid(notify=False).read_bytes())
        atomic_write(folder / "config.json", json.dumps(config, indent=2) + "\n")
        return folder

    def run_monitor() -> None:
        if monitor is None or not main:
            return
        g = sampler()
        g.eval()
        m = monitor(g)
        G.train()
        monitored.append({"step": step, **m})
        if on_metrics:
            on_metrics(step, {f"monitor_{k}": float(v) for k, v in m.items() if isinstance(v, int | float)})
        if m.get("mode_collapse"):
            log.warning("step %d: possible mode collapse (coverage %s, KL %.3f)", step, m.get("coverage"),
                        m.get("kl", math.nan))  # fmt: skip
        value = float(m[p.best_metric])
        if value < best["value"]:
            best.update(value=value, step=step)
            export(out / "best", {"monitor": m, "best_metric": p.best_metric})

    bar = tqdm(
        total=p.steps,
        initial=step,
        unit="step",
        desc="train_gan",
        mininterval=1.0,
        disable=not (progress and main),
    )
    perm, perm_epoch = torch.empty(0, dtype=torch.long), -1
    t0, t_images = time.perf_counter(), 0
    completed = True
    scales = cfg.scales  # [S] for dcgan; [4, 8, ..., S] for msg
    while step < p.steps:
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = _epoch_perm(N, seed, epoch).to(device), epoch
        lo = (i * world_size + rank) * B
        real = data[perm[lo : lo + B]].float().div_(127.5).sub_(1.0)  # (B, C, S, S) in [-1, 1]
        reals = pyramid(real.contiguous(memory_format=torch.channels_last), scales)  # [(B, C, s, s)]
        y_real = classes[perm[lo : lo + B]] if classes is not None else None  # (B,) conditional only

        # ---------------------------------------------------------------- (1) update D
        # BCE: maximise log D(x) + log(1 - D(G(z))); hinge: push D(x) above 1 and D(G(z)) below -1.
        # Real and generated batches go through the same DiffAugment policy (identity when off).
        # Conditional: D judges each image together with its class (real: the label; fake: G's class).
        skipped = 0
        for k in range(p.d_steps):
            z = torch.randn(B * world_size, p.latent_dim, 1, 1, generator=noise)  # the global batch's noise
            z = z[rank * B : (rank + 1) * B].to(device)  # (B, Z, 1, 1): this rank's slice
            y_fake = G.labels_for(z) if conditional else None  # (B,): the classes G is asked for
            # [(B, C, s, s)], kept for (2) from the last D step; earlier ones are only ever used detached
            with nullcontext() if k == p.d_steps - 1 else torch.no_grad(), amp():
                fakes = [f.float() for f in G_fwd(z, y_fake)]
            r1 = p.r1_gamma > 0 and (step * p.d_steps + k) % p.r1_every == 0
            real_in = diff_augment(reals, policy, aug_rng)
            if r1:  # R1 needs the gradient with respect to D's (augmented) real input
                real_in = [t.detach().requires_grad_(True) for t in real_in]
            with amp():
                real_logits = D_fwd(real_in, y_real).float()  # (B,)
            fake_in = diff_augment([f.detach() for f in fakes], policy, aug_rng)  # detach: D's step, not G's
            with amp():
                fake_logits = D_fwd(fake_in, y_fake).float()  # (B,)
            loss_d = loss_d_fn(real_logits, fake_logits)
            total_d = loss_d
            if r1:  # lazy regularisation: every r1_every D steps, scaled up to match
                total_d = total_d + p.r1_gamma / 2 * p.r1_every * r1_penalty(real_logits, real_in)
            if p.d_skip_below > 0 and _mean_over_ranks(loss_d, ddp) < p.d_skip_below:  # all ranks agree
                skipped += 1  # D is winning: let G catch up (the lesson's advice)
                continue
            opt_d.zero_grad(set_to_none=True)
            total_d.backward()
            opt_d.step()
        counters["d_skipped"] += skipped

        # ---------------------------------------------------------------- (2) update G
        # BCE: maximise log D(G(z)) (non-saturating); hinge: maximise D(G(z)). Through the just-updated D,
        # whose weights are frozen so its backward computes input gradients only.
        D.requires_grad_(False)
        fake_in = diff_augment(fakes, policy, aug_rng)
        with amp():
            loss_g = loss_g_fn(D(fake_in, y_fake).float())
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        if ddp:  # before the EMA copies them: every rank's BatchNorm statistics the same
            distributed.average_buffers_(G, D)
        if G_ema is not None:  # warm-up: a short average early on, while G changes fast
            ema_update(G_ema, G, min(p.ema_decay, (1 + step) / (10 + step)))

        step += 1
        t_images += B * world_size
        if after_step:
            after_step(step, G, D)

        # ---------------------------------------------------------------- non-finite -> roll back
        # Losses every step (one sync); the weights too before anything is written from them.
        writes = (
            step % p.checkpoint_every == 0
            or step == p.steps
            or bool(p.monitor_every and step % p.monitor_every == 0)
        )
        # Under DDP the losses are averaged over the ranks (one small all-reduce), so all ranks agree on
        # rolling back; the weights are identical on every rank already.
        losses = torch.stack([loss_d.detach(), loss_g.detach()]).float()
        if ddp:
            distributed.all_sum_(losses).div_(world_size)
        finite = bool(torch.isfinite(losses).all()) and (not writes or _finite(G, D))
        if not finite:
            if counters["nan_rollbacks"] >= p.nan_max_rollbacks:
                raise TrainingDiverged(
                    f"non-finite loss at step {step} after {counters['nan_rollbacks']} rollback(s): lower "
                    f"gan.lr_g / gan.lr_d, or turn on gan.spectral_norm / gan.r1_gamma"
                )
            n_rollbacks = counters["nan_rollbacks"] + 1
            bad_step, step = step, restore(last_good)
            counters["nan_rollbacks"] = n_rollbacks
            for opt in (opt_g, opt_d):
                for group in opt.param_groups:
                    group["lr"] *= p.nan_lr_factor
            lrs = {"lr_g": opt_g.param_groups[0]["lr"], "lr_d": opt_d.param_groups[0]["lr"]}
            log.warning("non-finite loss at step %d: rolled back to step %d, learning rates now %s",
                        bad_step, step, lrs)  # fmt: skip
            if on_metrics and main:
                on_metrics(step, {"nan_rollbacks": float(n_rollbacks), **lrs})
            perm_epoch = -1
            bar.reset(total=p.steps)
            bar.update(step)
            continue
        bar.update(1)

        # ---------------------------------------------------------------- report, sample, checkpoint
        if step % p.log_every == 0 or step == p.steps:
            dt = time.perf_counter() - t0
            row = {
                "step": float(step),
                "loss_d": losses[0].item(),  # over the global batch
                "loss_g": losses[1].item(),
                # this rank's batch (rank 0 reports):
                "d_real": torch.sigmoid(real_logits).mean().item(),  # sigmoid D(x), -> 0.5 at equilibrium
                "d_fake": torch.sigmoid(fake_logits).mean().item(),  # sigmoid D(G(z)) before D's update
                "img_per_s": t_images / dt if dt > 0 else 0.0,
                "d_skipped": float(counters["d_skipped"]),
            }
            t0, t_images = time.perf_counter(), 0
            if main:
                history.append(row)
                bar.set_postfix(
                    loss_d=f"{row['loss_d']:.3f}",
                    loss_g=f"{row['loss_g']:.3f}",
                    Dx=f"{row['d_real']:.2f}",
                    DGz=f"{row['d_fake']:.2f}",
                    img_s=f"{row['img_per_s']:.0f}",
                )
                if on_metrics:
                    on_metrics(step, {k: v for k, v in row.items() if k != "step"})
        if p.monitor_every and (step % p.monitor_every == 0 or step == p.steps):
            run_monitor()
        if main and (step % p.sample_every == 0 or step == p.steps):
            sample_grid()
        if step % p.checkpoint_every == 0 or step == p.steps:
            checkpoint()
        if should_stop and step < p.steps and _any_rank(should_stop(step), ddp):
            checkpoint()
            completed = False
            break
    bar.close()

    final = None
    if completed and resumed_from == p.steps:  # nothing was left to train: make sure the outputs exist
        checkpoint()
    if completed and main:
        final = export(out / "final", {"counters": counters, "world_size": world_size})
    best_dir = out / "best" if (out / "best" / "config.json").is_file() else None
    return TrainResult(
        step, completed, resumed_from, ckpt_path, final, history, monitored, best_dir, dict(counters)
    )
