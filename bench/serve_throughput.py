"""Benchmark: the live BentoML service vs the generator's in-process forward, same run.

Builds a throwaway MLflow store with a generator of the demo's architecture as @champion, starts
`bentoml serve` on a free loopback port, and measures for a bounded time per scenario:
  - in-process: G(z) forward at batch n (images/s), the ceiling;
  - served: POST /generate with n images (png_list) from C concurrent clients: images/s, p50/p99 latency.
Goals (issue): >= 0.7x in-process images/s at 16 clients; p99 <= 50 ms for n=1 on CPU.

    python bench/serve_throughput.py                    # n=16 throughput at 1 and 16 clients, n=1 latency
    python bench/serve_throughput.py --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.servers import free_port, stop, wait_http  # noqa: E402

from ganops.config import GanParams, parse_params  # noqa: E402
from ganops.evaluate import generate  # noqa: E402
from ganops.models.gan import load_generator  # noqa: E402
from ganops.tracking import RunContext, register_generator, set_alias, start_run  # noqa: E402
from ganops.train_gan import train_gan  # noqa: E402


def champion_store(tmp: Path, size: int, channels: int, ngf: int) -> tuple[str, Path]:
    """A store whose @champion is a generator of the given shape (demo: 32x32x1, ngf 32); 1 training step."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    images = torch.randint(0, 256, (256, channels, size, size), dtype=torch.uint8)
    p = GanParams(steps=1, batch_size=64, sample_every=1, checkpoint_every=1, ngf=ngf, ndf=ngf)
    with start_run(parse_params({}), ctx=RunContext("bench"), data_hash="bench", root=tmp) as run:
        r = train_gan(images, p, tmp / "gan", progress=False)
        run.log_artifacts(r.export, "checkpoint")
    facts = register_generator(run.run_id, "ganops-generator", {"dataset_hash": "bench", "extractor": "none"})
    set_alias("ganops-generator", "champion", facts["version"])
    del os.environ["MLFLOW_TRACKING_URI"]
    return uri, r.export


def in_process(export: Path, n: int, seconds: float) -> float:
    G = load_generator(export)
    generate(G, n, seed=0)  # warm-up
    done, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        generate(G, n, seed=i)
        done, i = done + n, i + 1
    return done / (time.perf_counter() - t0)


def served(base: str, n: int, clients: int, seconds: float) -> dict[str, float]:
    lat: list[float] = []
    errors = [0]
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as c:
            i = 0
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                r = c.post(base + "/generate", json={"n": n, "seed": k * 1_000_000 + i, "format": "png_list"})
                dt = time.perf_counter() - t
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                    else:
                        errors[0] += 1
                i += 1

    with httpx.Client(timeout=30) as c:  # warm-up: first batches teach the dispatcher its timings
        for i in range(20):
            c.post(base + "/generate", json={"n": n, "seed": i, "format": "png_list"})
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000  # noqa: E731
    return {"requests": len(lat), "errors": errors[0], "images_per_s": len(lat) * n / wall,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "mean_ms": statistics.mean(lat) * 1000}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="images per request in the throughput scenarios")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each scenario")
    ap.add_argument("--size", type=int, default=32, help="generator output size (demo: 32)")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/serve_throughput.json")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ganops-bench-"))
    uri, export = champion_store(tmp, a.size, a.channels, a.ngf)
    port = free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "BENTOML_DO_NOT_TRACK": "true", "GANOPS_MAX_N": "64",
                        "BENTOML_HOME": str(tmp / "bentoml")}  # fmt: skip
    bentoml = str(Path(sys.executable).parent / "bentoml")
    with open(tmp / "serve.log", "w") as log:
        proc = subprocess.Popen([bentoml, "serve", "serving.service:GanService", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/readyz", proc)
            res: dict = {"in_process_images_per_s": {}, "served": {}}
            for n in (1, a.n):
                res["in_process_images_per_s"][f"n={n}"] = in_process(export, n, a.seconds / 2)
            for n, clients in ((1, 1), (a.n, 1), (a.n, 16), (1, 16)):
                r = served(base, n, clients, a.seconds)
                res["served"][f"n={n},clients={clients}"] = r
                print(f"n={n:>2} clients={clients:>2}: {r['images_per_s']:7.0f} img/s  p50 {r['p50_ms']:6.1f} ms  "
                      f"p99 {r['p99_ms']:6.1f} ms  ({r['requests']} requests, {r['errors']} errors)", flush=True)  # fmt: skip
        finally:
            stop(proc)
    ref = res["in_process_images_per_s"][f"n={a.n}"]
    res["ratio_16_clients"] = res["served"][f"n={a.n},clients=16"]["images_per_s"] / ref
    res["p99_ms_n1_1_client"] = res["served"]["n=1,clients=1"]["p99_ms"]
    res |= {"command": "python " + " ".join(sys.argv), "torch": torch.__version__, "cores": os.cpu_count(),
            "machine": platform.machine()}  # fmt: skip
    print(json.dumps({k: v for k, v in res.items() if k != "served"}, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
