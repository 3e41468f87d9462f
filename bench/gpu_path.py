"""The GPU path in one prepared run, for a machine with CUDA (issue 15): figures for BENCHMARKS.md.

1. Training throughput of ganops' loop on CUDA (bf16 autocast, channels_last) vs fp32 on the same GPU, at
   32x32 and 64x64, batch 256 and 1024 (the demo's nets: ngf = ndf = 32 at 32 px, 64 at 64 px): img/s
   from the loop's own report, first window dropped.
2. A data-parallel smoke run over nccl: `ganops.distributed` with one rank per visible GPU (torchrun's
   environment set by ``torch.multiprocessing``), a few steps, ranks' weights compared.
   Each generator family (dcgan, dcgan with resize upsampling, msg, fastgan, progressive) at 64 and 128 px,
   3 channels, batch 64, bf16: img/s of the loop at its default widths (progressive grown by step 9).
3. `/generate` from a live `bentoml serve` with ``GANOPS_DEVICE=cuda`` (a throwaway champion): 16 clients x
   n=16 images/s next to ``GANOPS_DEVICE=cpu`` on the same machine.

    python bench/gpu_path.py                  # everything, results in bench/results/gpu_path.json
    python bench/gpu_path.py --device cpu --quick   # the same code paths on a CPU (a smoke run of the script)

Not part of `make test`: tests must not need a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ganops.config import PLAIN_DCGAN, GanParams  # noqa: E402
from ganops.distributed import Place  # noqa: E402
from ganops.train_gan import Hooks, fit  # noqa: E402


def _images(size: int, n: int = 4096, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def training(device: str, size: int, batch: int, amp: bool, steps: int) -> float:
    width = 32 if size <= 32 else 64
    p = GanParams(**PLAIN_DCGAN, ngf=width, ndf=width, batch_size=batch, steps=steps, amp=amp,
                  log_every=max(1, steps // 4), sample_every=10**6, checkpoint_every=10**6, resume=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        r = fit(_images(size, max(4096, 2 * batch)), p, tmp, device=device, progress=False)
    return statistics.mean(row["img_per_s"] for row in r.history[1:])


ARCHS = {"dcgan": {"arch": "dcgan"}, "dcgan_resize": {"arch": "dcgan", "upsample": "resize"}, "msg": {"arch": "msg"},
         "fastgan": {"arch": "fastgan"}, "progressive": {"arch": "progressive"}}  # fmt: skip


def family(device: str, arch: str, size: int, steps: int) -> float:
    """img/s of one family's loop at the params' defaults (3 channels, batch 64, bf16), after the first window;
    progressive grows one phase per step (full size from step 9 at 64 px, 11 at 128), past its first windows."""
    grow = {"grow_fade_steps": 1, "grow_stable_steps": 1}
    p = GanParams(**(ARCHS[arch] | grow), batch_size=64, steps=steps, amp=device != "cpu", log_every=max(1, steps // 4),
                  sample_every=10**6, checkpoint_every=10**6, monitor_every=0, resume=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        r = fit(_images(size, 1024, channels=3), p, tmp, device=device, progress=False)
    return statistics.mean(row["img_per_s"] for row in r.history[-2:])


def _rank(rank: int, world: int, init: str, device_type: str, out: str) -> None:
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    try:
        p = GanParams(**PLAIN_DCGAN, batch_size=64, steps=8, log_every=4, sample_every=10**6, checkpoint_every=10**6,
                      resume=False)  # fmt: skip
        sums: list[float] = []  # every rank's G after its last step (only rank 0 writes files)

        def after_step(step: int, G: torch.nn.Module, D: torch.nn.Module) -> None:
            sums[:] = [sum(float(t.double().sum()) for t in G.state_dict().values())]

        with tempfile.TemporaryDirectory() as tmp:
            fit(_images(32), p, tmp, device=device, progress=False, place=Place(rank=rank, world_size=world), hooks=Hooks(after_step=after_step))  # fmt: skip
        total = torch.tensor(sums, device=device)
        gathered = [torch.zeros_like(total) for _ in range(world)]
        dist.all_gather(gathered, total)
        if rank == 0:
            Path(out).write_text(json.dumps({"backend": backend, "world_size": world,
                                             "weight_sums": [float(g.item()) for g in gathered]}))  # fmt: skip
    finally:
        dist.destroy_process_group()


def ddp_smoke(device_type: str) -> dict:
    import torch.multiprocessing as mp

    world = max(1, torch.cuda.device_count()) if device_type == "cuda" else 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        mp.spawn(
            _rank, args=(world, (Path(tmp) / "rdzv").as_uri(), device_type, str(out)), nprocs=world, join=True
        )
        result = json.loads(out.read_text())
    result["ranks_identical"] = len(set(result["weight_sums"])) == 1
    return result


def serving(device: str, seconds: float) -> dict:
    from tests.e2e.serving_env import make_champion, serve

    from serve_throughput import fixed, load

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        make_champion(Path(tmp), uri)
        for dev in dict.fromkeys(["cpu", device]):
            with serve(Path(tmp), uri, GANOPS_DEVICE=dev) as base:
                # serve_throughput's load: 16 keep-alive clients x n=16 npy, counts, errors, latencies
                rates[dev] = load(int(base.rsplit(":", 1)[1]), 16, seconds, fixed(16, "npy"))
    return {"generate": rates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny settings: check that the script runs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu_path.json")
    a = ap.parse_args()
    steps, seconds = (12, 3.0) if a.quick else (200, 20.0)
    combos = [(32, 256), (64, 256)] if a.quick else [(32, 256), (32, 1024), (64, 256), (64, 1024)]

    result: dict = {"command": "python bench/gpu_path.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
                    "device_name": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.machine(),
                    "training_img_per_s": {}}  # fmt: skip
    for size, batch in combos:
        for amp in (False, True):
            key = f"{size}px_batch{batch}_{'bf16' if amp else 'fp32'}"
            result["training_img_per_s"][key] = training(a.device, size, batch, amp, steps)
            print(key, f"{result['training_img_per_s'][key]:.0f} img/s", flush=True)
    result["families_img_per_s"] = {}
    for size in (64,) if a.quick else (64, 128):
        for arch in ARCHS:
            key = f"{arch}_{size}px"
            result["families_img_per_s"][key] = family(a.device, arch, size, 24 if a.quick else 200)
            print(key, f"{result['families_img_per_s'][key]:.0f} img/s", flush=True)
    result["ddp"] = ddp_smoke(torch.device(a.device).type)
    print("ddp", result["ddp"], flush=True)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    result["serving"] = serving(a.device, seconds)
    print("serving", result["serving"], flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
