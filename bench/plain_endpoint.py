"""The reference for serving: what a user would write instead of the project's service.

One plain Starlette app under uvicorn, one process, the same generator folder and the same image encoders
(``serving.images``), no batching across requests: each request runs its own forward pass in Starlette's
thread pool. ``bench/serve_throughput.py`` starts it next to ``bentoml serve`` and drives both with the
same clients.

    python bench/plain_endpoint.py --folder <generator export> --port 8001
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.batcher import forward  # noqa: E402

from ganops.models.gan import load_generator  # noqa: E402
from serving import images  # noqa: E402


def build_app(folder: Path) -> Starlette:
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))  # as the service does
    G = load_generator(folder)
    Z = G.cfg.latent_dim

    async def generate(request: Request) -> Response:
        body = await request.json()
        n, seed, fmt = int(body.get("n", 16)), int(body.get("seed", 0)), body.get("format", "png_list")
        if not 1 <= n <= 64 or fmt not in ("png_list", "npy"):
            return JSONResponse({"error": "bad request"}, status_code=400)

        def work() -> bytes:
            z = torch.randn(n, Z, generator=torch.Generator().manual_seed(seed))
            x = forward(G, z.numpy())
            return images.png_list_json(x, seed) if fmt == "png_list" else images.npy(x)

        media = "application/json" if fmt == "png_list" else "application/x-npy"
        return Response(await run_in_threadpool(work), media_type=media)

    async def ready(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/generate", generate, methods=["POST"]), Route("/readyz", ready)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--folder", type=Path, required=True, help="a generator export (generator.pt + config.json)"
    )
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    uvicorn.run(build_app(a.folder), host="127.0.0.1", port=a.port, log_level="warning", access_log=False)
