"""Stage `train_gan`: the DCGAN training loop, one straight function.

Each step: (1) update D on a real batch labelled 1 and a generated batch labelled 0; (2) update G through
a frozen D with target 1 (non-saturating BCE). Fixed-noise sample grids and atomic checkpoints every N
steps. The loop reports through callbacks (``on_metrics``, ``on_sample``) and stops when ``should_stop``
says so; it knows nothing about MLflow. Resuming from ``checkpoint.pt`` reproduces an uninterrupted run
exactly on CPU: data order and noise are functions of (seed, step) and saved RNG states.

Multi-process ready: ``rank``/``world_size`` pick each process's slice of every batch, and only rank 0
reports, writes grids and checkpoints.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from ganops.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from ganops.config import GanParams
from ganops.losses import d_loss_bce, g_loss_nonsaturating
from ganops.models.gan import GANConfig, build

log = logging.getLogger(__name__)

MetricsFn = Callable[[int, dict[str, float]], None]
SampleFn = Callable[[int, Path], None]
StopFn = Callable[[int], bool]


@dataclass
class TrainResult:
    """What a (possibly resumed or stopped) training run ended with."""

    step: int  # steps done in total
    completed: bool  # False when should_stop ended it early
    resumed_from: int  # 0 for a fresh start
    checkpoint: Path  # out/checkpoint.pt: full training state
    export: Path | None  # out/final/: generator.pt + discriminator.pt + config.json + samples.png
    history: list[dict[str, float]] = field(default_factory=list)  # one row per log_every steps


def training_settings(p: GanParams, cfg: GANConfig, seed: int, data_hash: str) -> dict[str, Any]:
    """Everything that shapes the weights; a checkpoint resumes only under identical settings.

    ``steps`` and the reporting intervals are left out, so a finished run can be extended.
    """
    return {
        "model": cfg.to_dict(),
        "batch_size": p.batch_size,
        "lr_g": p.lr_g,
        "lr_d": p.lr_d,
        "betas": [p.beta1, p.beta2],
        "seed": seed,
        "data_hash": data_hash,
    }


def settings_for(images: torch.Tensor, p: GanParams, seed: int, data_hash: str) -> dict[str, Any]:
    """:func:`training_settings` for a dataset of this shape."""
    _, C, S, _ = images.shape
    cfg = GANConfig(image_size=S, channels=C, latent_dim=p.latent_dim, ngf=p.ngf, ndf=p.ndf)
    return training_settings(p, cfg, seed, data_hash)


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


def _grid_png(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    save_image(
        make_grid(x, nrow=math.ceil(math.sqrt(len(x))), normalize=True, value_range=(-1, 1)), buf, "png"
    )
    return buf.getvalue()


def train_gan(
    images: torch.Tensor,
    p: GanParams,
    out: str | Path,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    data_hash: str = "",
    meta: dict[str, str] | None = None,
    on_metrics: MetricsFn | None = None,
    on_sample: SampleFn | None = None,
    should_stop: StopFn | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> TrainResult:
    """Train a DCGAN on ``images`` and write checkpoints, sample grids and the final export under ``out``.

    Args:
        images: (N, C, S, S) uint8, the prepared dataset (kept whole on ``device``).
        p: the ``gan`` params group.
        out: output folder (``models/gan``): checkpoint.pt, samples/step_*.png, final/.
        seed: seeds init, data order and noise.
        device: where to train.
        data_hash: the prepared data's content hash, stored with the checkpoint.
        meta: small str->str facts stored in the checkpoint (e.g. the MLflow run id), returned on resume.
        on_metrics: called every ``p.log_every`` steps with loss_d, loss_g, d_real, d_fake, img_per_s.
        on_sample: called with (step, png path) after each sample grid is written.
        should_stop: polled after every step; True -> checkpoint and return early.
        rank, world_size: this process's place in a multi-process run (only rank 0 writes).
        progress: show a progress bar.

    Returns:
        A :class:`TrainResult`.
    """
    out = Path(out)
    device = torch.device(device)
    main = rank == 0
    N, C, S, _ = images.shape
    B = p.batch_size
    steps_per_epoch = N // (B * world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"gan.batch_size {B} x {world_size} process(es) exceeds the {N} images: lower it")
    settings = settings_for(images, p, seed, data_hash)
    cfg = GANConfig(**settings["model"])

    torch.manual_seed(seed)
    G, D = build(cfg)
    # channels_last: oneDNN's convolutions run ~1.2x faster in NHWC on CPU (bench/train_throughput.py).
    G = G.to(device).to(memory_format=torch.channels_last)
    D = D.to(device).to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(G.parameters(), lr=p.lr_g, betas=(p.beta1, p.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=p.lr_d, betas=(p.beta1, p.beta2))
    # Fixed noise: the same z every grid, so grids are comparable across steps and runs.
    fixed_z = torch.randn(p.n_samples, p.latent_dim, 1, 1, generator=torch.Generator().manual_seed(seed + 1))
    fixed_z = fixed_z.to(device)
    noise = torch.Generator().manual_seed(seed + 2)  # training noise, drawn on CPU for device independence
    data = images.to(device)
    history: list[dict[str, float]] = []

    ckpt_path = out / "checkpoint.pt"
    step = 0
    state = load_resumable(ckpt_path, settings, device) if p.resume else None
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["rng_torch"])
        noise.set_state(state["rng_noise"])
        history = list(state["history"])
        meta = {**state["meta"], **(meta or {})}
        step = int(state["step"])
        log.info("resuming from %s at step %d", ckpt_path, step)
    resumed_from = step
    meta = dict(meta or {})
    if step == 0 and main:  # a fresh start: grids and exports of an earlier run would mislead
        for old in (out / "samples", out / "final"):
            shutil.rmtree(old, ignore_errors=True)

    def checkpoint() -> None:
        if not main:
            return
        state = {
            "G": G.state_dict(),
            "D": D.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "step": step,
            "rng_torch": torch.get_rng_state(),
            "rng_noise": noise.get_state(),
            "history": history,
            "meta": meta,
        }
        save_checkpoint(ckpt_path, state, {"settings": settings})

    def sample_grid() -> Path:
        G.eval()  # what serving will see: BatchNorm on running statistics
        with torch.no_grad():
            x = G(fixed_z).float().cpu()  # (n_samples, C, S, S) in [-1, 1]
        G.train()
        path = atomic_write(out / "samples" / f"step_{step:06d}.png", _grid_png(x))
        if on_sample:
            on_sample(step, path)
        return path

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
    while step < p.steps:
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = _epoch_perm(N, seed, epoch).to(device), epoch
        lo = (i * world_size + rank) * B
        real = data[perm[lo : lo + B]].float().div_(127.5).sub_(1.0)  # (B, C, S, S) in [-1, 1]
        real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(B, p.latent_dim, 1, 1, generator=noise).to(device)  # (B, Z, 1, 1)

        # ---------------------------------------------------------------- (1) update D
        # maximise log D(x) + log(1 - D(G(z))): real batch labelled 1, generated batch labelled 0
        fake = G(z)  # (B, C, S, S)
        real_logits = D(real)  # (B,)
        fake_logits = D(fake.detach())  # (B,); detach: this phase must not reach G
        loss_d = d_loss_bce(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # ---------------------------------------------------------------- (2) update G
        # maximise log D(G(z)) through the just-updated D; D's weights are frozen so its backward
        # computes input gradients only (no wasted weight gradients).
        D.requires_grad_(False)
        loss_g = g_loss_nonsaturating(D(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)

        step += 1
        t_images += B * world_size
        bar.update(1)

        # ---------------------------------------------------------------- report, sample, checkpoint
        if step % p.log_every == 0 or step == p.steps:
            dt = time.perf_counter() - t0
            row = {
                "step": float(step),
                "loss_d": loss_d.item(),
                "loss_g": loss_g.item(),
                "d_real": torch.sigmoid(real_logits).mean().item(),  # D(x), -> 0.5 at equilibrium
                "d_fake": torch.sigmoid(fake_logits).mean().item(),  # D(G(z)) before D's update
                "img_per_s": t_images / dt if dt > 0 else 0.0,
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
        if main and (step % p.sample_every == 0 or step == p.steps):
            sample_grid()
        if step % p.checkpoint_every == 0 or step == p.steps:
            checkpoint()
        if should_stop and step < p.steps and should_stop(step):
            checkpoint()
            completed = False
            break
    bar.close()

    export = None
    if completed and main:
        if resumed_from == p.steps:  # nothing was left to train: make sure the outputs exist
            sample_grid()
            checkpoint()
        export = out / "final"
        config = {"model": cfg.to_dict(), "settings": settings, "step": step, "meta": meta}
        atomic_write(export / "generator.pt", G.state_dict())
        atomic_write(export / "discriminator.pt", D.state_dict())
        atomic_write(export / "samples.png", (out / "samples" / f"step_{step:06d}.png").read_bytes())
        atomic_write(export / "config.json", json.dumps(config, indent=2) + "\n")
    return TrainResult(step, completed, resumed_from, ckpt_path, export, history)
