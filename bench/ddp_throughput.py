"""Benchmark: data-parallel training (2 gloo ranks x 1 thread) vs one process x 2 threads, same run.

Both train ganops' loop on the same global batch (the reference: one process, ``batch``, two intra-op
threads; DDP: two processes of ``batch / 2`` each, one thread each, gradients all-reduced over gloo on
loopback). Rounds alternate between the two so the machine's noise hits both alike; img/s is counted over
the global batch from the loop's own report (first window dropped: start-up and DDP's first bucket
build), the median of the rounds is reported with the ratio DDP / reference.

    python bench/ddp_throughput.py                          # demo nets: 32x32x1, ngf=ndf=32, batch 64
    python bench/ddp_throughput.py --ngf 64 --ndf 64 --batch 128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ganops.config import PLAIN_DCGAN, GanParams
from ganops.distributed import Place
from ganops.train_gan import fit


def _params(a: argparse.Namespace, batch: int) -> GanParams:
    return GanParams(**PLAIN_DCGAN, ngf=a.ngf, ndf=a.ndf, latent_dim=a.latent, batch_size=batch, steps=a.steps,
                     log_every=a.steps // 4, sample_every=10**6, checkpoint_every=10**6, resume=False)  # fmt: skip


def _rate(history: list[dict[str, float]]) -> float:
    return statistics.mean(row["img_per_s"] for row in history[1:])  # windows after the first


def _images(a: argparse.Namespace) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4096, 1, a.size, a.size), dtype=torch.uint8, generator=g)


def one_process(a: argparse.Namespace) -> float:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        r = fit(_images(a), _params(a, a.batch), tmp, progress=False)
    return _rate(r.history)


def _rank(rank: int, a: argparse.Namespace, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            r = fit(
                _images(a),
                _params(a, a.batch // 2),
                tmp,
                progress=False,
                place=Place(rank=rank, world_size=2),
            )
        if rank == 0:
            Path(out).write_text(json.dumps(_rate(r.history)))
    finally:
        dist.destroy_process_group()


def two_processes(a: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rate.json"
        mp.spawn(_rank, args=(a, (Path(tmp) / "rdzv").as_uri(), str(out)), nprocs=2, join=True)
        return float(json.loads(out.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--ndf", type=int, default=32)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64, help="global batch (each rank takes half)")
    ap.add_argument("--steps", type=int, default=80, help="steps per round (4 report windows)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/ddp_throughput.json"))
    a = ap.parse_args()

    ref, ddp = [], []
    for r in range(a.rounds):
        ref.append(one_process(a))
        ddp.append(two_processes(a))
        print(f"round {r + 1}: 1 process x 2 threads {ref[-1]:.0f} img/s, 2 processes x 1 thread {ddp[-1]:.0f} img/s",
              flush=True)  # fmt: skip
    result = {
        "command": "python " + " ".join(sys.argv),
        "config": vars(a) | {"out": str(a.out)},
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "one_process_2_threads_img_per_s": statistics.median(ref),
        "two_processes_1_thread_img_per_s": statistics.median(ddp),
        "rounds": {"one_process": ref, "two_processes": ddp},
        "ratio": statistics.median(ddp) / statistics.median(ref),
    }
    print(json.dumps(result, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
