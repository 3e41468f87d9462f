"""Benchmark: the live BentoML service vs the generator in-process and vs a hand-written endpoint, same run.

Builds a throwaway MLflow store with a generator of the demo's architecture as @champion, starts
`bentoml serve` (the project's service) and `bench/plain_endpoint.py` (plain Starlette + uvicorn, the same
generator folder and encoders, what a user would write instead) on free loopback ports, then, in
alternating rounds so that drifts of a shared machine hit all three alike:
  - in-process: G(z) forward at batch n (images/s; forward only, no encoding): the ceiling;
  - served / plain: POST /generate with n images from C concurrent clients, per format (png_list: every
    image PNG + base64 in JSON; npy: raw uint8 array): images/s, p50/p99 latency, errors.
Then p99 latency of n=1 from one client, and a soak: C clients for --soak seconds on the service with
random n, formats and labels-free requests; every answer must be 200 with an X-Model-Version.
Clients are threads with one keep-alive http.client connection each, in this process: they share the
cores with the servers. Goals (issue 13): served >= 0.7x in-process and >= 1.0x plain at 16 clients x
n=16; p99 <= 50 ms for n=1; 0 errors in the soak.

    python bench/serve_throughput.py                       # demo generator, 2 rounds of 10 s, 60 s soak
    python bench/serve_throughput.py --seconds 5 --rounds 1 --soak 10   # a quick look
    python bench/serve_throughput.py --rounds 1 --soak 0 --env GANOPS_ACCESS_LOG=1 --out /tmp/x.json  # a lever
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.servers import start_server, stop  # noqa: E402

from ganops.config import PLAIN_DCGAN, GanParams, parse_params  # noqa: E402
from ganops.evaluate import generate  # noqa: E402
from ganops.models.gan import load_generator  # noqa: E402
from ganops.tracking import RunContext, register_generator, set_alias, start_run  # noqa: E402
from ganops.train_gan import fit  # noqa: E402


def champion_store(tmp: Path, size: int, channels: int, ngf: int) -> tuple[str, Path]:
    """A store whose @champion is a generator of the given shape (demo: 32x32x1, ngf 32); 1 training step."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    images = torch.randint(0, 256, (256, channels, size, size), dtype=torch.uint8)
    p = GanParams(**PLAIN_DCGAN, steps=1, batch_size=64, sample_every=1, checkpoint_every=1, ngf=ngf, ndf=ngf)
    with start_run(parse_params({}), ctx=RunContext("bench"), data_hash="bench", root=tmp) as run:
        r = fit(images, p, tmp / "gan", progress=False)
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


def _post(conn: http.client.HTTPConnection, body: dict) -> tuple[int, bytes, str | None]:
    conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, r.read(), r.getheader("X-Model-Version")


def load(
    port: int,
    clients: int,
    seconds: float,
    request: Callable[[int, int], tuple[dict, int]],
    need_version: bool = False,
) -> dict[str, float]:
    """``clients`` threads POSTing ``request(k, i)`` (-> (body, images)) for ``seconds``; counts and latencies.

    An answer counts only if it is a 200 (and, with ``need_version``, carries ``X-Model-Version``).
    """
    lat: list[float] = []
    counts = {"images": 0, "errors": 0}
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = 0
        while time.perf_counter() < stop_at:
            body, n = request(k, i)
            t = time.perf_counter()
            try:
                status, _, version = _post(conn, body)
                ok = status == 200 and (not need_version or version not in (None, ""))
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                ok = False
            dt = time.perf_counter() - t
            with lock:
                if ok:
                    lat.append(dt)
                    counts["images"] += n
                else:
                    counts["errors"] += 1
            i += 1
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort() if lat else lat.append(float("nan"))
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000  # noqa: E731
    return {"requests": len(lat), "errors": counts["errors"], "images_per_s": counts["images"] / wall,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "mean_ms": statistics.mean(lat) * 1000}  # fmt: skip


def fixed(n: int, fmt: str) -> Callable[[int, int], tuple[dict, int]]:
    return lambda k, i: ({"n": n, "seed": k * 1_000_000 + i, "format": fmt}, n)


def mixed(k: int, i: int) -> tuple[dict, int]:
    n = random.randint(1, 16)
    return {"n": n, "seed": k * 1_000_000 + i, "format": random.choice(["grid", "png_list", "npy"])}, n


def _launch(cmd: list[str], env: dict, log: Path) -> Callable[[int], subprocess.Popen]:
    def launch(port: int) -> subprocess.Popen:
        with open(log, "a") as f:
            return subprocess.Popen([*cmd, str(port)], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)

    return launch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="images per request in the throughput scenarios")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each served scenario per round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians are reported")
    ap.add_argument("--soak", type=float, default=60.0, help="soak duration (0: none)")
    ap.add_argument("--formats", default="png_list,npy")
    ap.add_argument("--size", type=int, default=32, help="generator output size (demo: 32)")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the service only (a lever, e.g. GANOPS_ACCESS_LOG=1); repeatable",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/serve_throughput.json")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ganops-bench-"))
    uri, export = champion_store(tmp, a.size, a.channels, a.ngf)
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "BENTOML_DO_NOT_TRACK": "true", "GANOPS_MAX_N": "64",
                        "BENTOML_HOME": str(tmp / "bentoml"), "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    bin_ = Path(sys.executable).parent
    svc_env = env | dict(kv.split("=", 1) for kv in a.env)
    svc, sport = start_server(_launch([str(bin_ / "bentoml"), "serve", "serving.service:GanService", "--host",
                                       "127.0.0.1", "--port"], svc_env, tmp / "serve.log"), "/readyz")  # fmt: skip
    plain, pport = start_server(_launch([sys.executable, "bench/plain_endpoint.py", "--folder", str(export),
                                         "--port"], env, tmp / "plain.log"), "/readyz")  # fmt: skip
    res: dict = {"rounds": []}
    try:
        for port in (sport, pport):  # warm-up: first requests pay for lazy imports and allocator growth
            load(port, 4, 2, fixed(a.n, "png_list"))
        for r in range(a.rounds):
            row = {"in_process_start": in_process(export, a.n, a.seconds / 2)}
            for fmt in a.formats.split(","):
                for name, port in (("served", sport), ("plain", pport)):
                    row[f"{name}_{fmt}"] = m = load(port, a.clients, a.seconds, fixed(a.n, fmt))
                    print(f"round {r} {name:>6} {fmt:>8}: {m['images_per_s']:7.0f} img/s  p50 {m['p50_ms']:6.1f} ms  "
                          f"p99 {m['p99_ms']:6.1f} ms  ({m['requests']} requests, {m['errors']} errors)", flush=True)  # fmt: skip
            row["in_process_end"] = in_process(export, a.n, a.seconds / 2)  # before and after: drifts show
            row["in_process"] = (row["in_process_start"] + row["in_process_end"]) / 2
            print(f"round {r} in-process: {row['in_process_start']:7.0f} then {row['in_process_end']:7.0f} img/s",
                  flush=True)  # fmt: skip
            res["rounds"].append(row)
        med = lambda f: statistics.median(f(row) for row in res["rounds"])  # noqa: E731
        ref = med(lambda row: row["in_process"])
        res["in_process_images_per_s"] = ref
        for fmt in a.formats.split(","):
            s = med(lambda row: row[f"served_{fmt}"]["images_per_s"])  # noqa: B023
            p = med(lambda row: row[f"plain_{fmt}"]["images_per_s"])  # noqa: B023
            res[fmt] = {"served_images_per_s": s, "plain_images_per_s": p, "served_vs_in_process": s / ref,
                        "served_vs_plain": s / p, "plain_vs_in_process": p / ref}  # fmt: skip
        res["n1_1_client"] = load(sport, 1, a.seconds, fixed(1, "png_list"))
        res["n1_1_client_plain"] = load(pport, 1, a.seconds, fixed(1, "png_list"))
        if a.soak > 0:
            res["soak"] = load(sport, a.clients, a.soak, mixed, need_version=True) | {
                "seconds": a.soak,
                "clients": a.clients,
            }
    finally:
        stop(svc)
        stop(plain)
    res |= {"command": "python " + " ".join(sys.argv), "torch": torch.__version__, "cores": os.cpu_count(),
            "machine": platform.machine(), "n": a.n, "clients": a.clients, "service_env": a.env}  # fmt: skip
    print(json.dumps({k: v for k, v in res.items() if k != "rounds"}, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
