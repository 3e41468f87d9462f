"""Benchmark: ganops' training step vs a plain PyTorch DCGAN loop (pytorch/examples style), same run.

Both train the same architecture (ganops' Generator/Discriminator) on the same batch size; the reference
loop follows pytorch/examples dcgan: Sigmoid + BCELoss, separate real/fake backward passes for D, and a G
step that also computes D's (unused) weight gradients. Rounds alternate between the two so the machine's
noise hits both alike; the median img/s of each is reported with the ratio.

    python bench/train_throughput.py                    # 32x32x1, ngf=ndf=64, batch 128 (issue's reference)
    python bench/train_throughput.py --ngf 32 --ndf 32 --batch 64   # the demo's setting
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ganops.config import PLAIN_DCGAN, GanParams
from ganops.models.gan import GANConfig, build
from ganops.train_gan import Hooks, fit


def reference_loop(images: torch.Tensor, cfg: GANConfig, batch: int, steps: int) -> float:
    """The plain pytorch/examples DCGAN loop; returns img/s over ``steps`` after one warm-up step."""
    torch.manual_seed(0)
    netG, netD = build(cfg)
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    n = images.shape[0]
    t0 = 0.0
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        idx = torch.randint(0, n, (batch,))
        real = images[idx].float().div(127.5).sub(1)
        # (1) update D: maximise log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        label = torch.full((batch,), 1.0)
        errD_real = criterion(torch.sigmoid(netD(real)), label)
        errD_real.backward()
        noise = torch.randn(batch, cfg.latent_dim, 1, 1)
        fake = netG(noise)
        label.fill_(0.0)
        errD_fake = criterion(torch.sigmoid(netD(fake.detach())), label)
        errD_fake.backward()
        optD.step()
        # (2) update G: maximise log(D(G(z)))
        netG.zero_grad()
        label.fill_(1.0)
        errG = criterion(torch.sigmoid(netD(fake)), label)
        errG.backward()
        optG.step()
    return batch * steps / (time.perf_counter() - t0)


def ours(images: torch.Tensor, cfg: GANConfig, batch: int, steps: int) -> float:
    """ganops.train_gan for ``steps`` steps; img/s from its own per-window report (first window dropped)."""
    p = GanParams(
        **PLAIN_DCGAN, latent_dim=cfg.latent_dim, ngf=cfg.ngf, ndf=cfg.ndf, batch_size=batch, steps=steps + 1,
        log_every=1, sample_every=10**6, checkpoint_every=10**6, resume=False,
    )  # fmt: skip
    rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = {}

        def on_metrics(step: int, m: dict[str, float]) -> None:
            if step == 1:
                t["t0"] = time.perf_counter()

        fit(images, p, tmp, progress=False, hooks=Hooks(on_metrics=on_metrics))
        t1 = time.perf_counter()
    # Wall time of steps 2..steps+1 includes the final export (small); that counts against us.
    rates.append(batch * steps / (t1 - t["t0"]))
    return rates[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--ndf", type=int, default=64)
    ap.add_argument("--latent", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    a = ap.parse_args()

    cfg = GANConfig(image_size=a.size, channels=a.channels, latent_dim=a.latent, ngf=a.ngf, ndf=a.ndf)
    images = torch.randint(0, 256, (2048, a.channels, a.size, a.size), dtype=torch.uint8)
    ref, our = [], []
    for r in range(a.rounds):
        ref.append(reference_loop(images, cfg, a.batch, a.steps))
        our.append(ours(images, cfg, a.batch, a.steps))
        print(f"round {r + 1}: reference {ref[-1]:.0f} img/s, ganops {our[-1]:.0f} img/s", flush=True)
    result = {
        "command": "python " + " ".join(sys.argv),
        "config": vars(a) | {"out": str(a.out)},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "reference_img_per_s": statistics.median(ref),
        "ganops_img_per_s": statistics.median(our),
        "ratio": statistics.median(our) / statistics.median(ref),
    }
    print(json.dumps(result, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
