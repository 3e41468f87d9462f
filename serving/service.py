"""BentoML 1.4 service: the MLflow champion generator (and the registered style nets) behind HTTP.

    bentoml serve serving.service:GanService --host 127.0.0.1 --port 3000     (or `make serve`)

One process: the API and the models live together, and concurrent /generate requests are merged into one
forward pass by ``serving.batcher`` (adaptive batching without a second service and its extra HTTP hop).
At start it loads ``models:/<name>@<alias>``; no champion -> it refuses to start, saying what to run. It
then follows the alias (``serving.champion``). Requests are screened by ``serving.guard`` first.

Settings (environment; the README lists them with their defaults): MLFLOW_TRACKING_URI,
GANOPS_MODEL_NAME, GANOPS_MODEL_ALIAS, GANOPS_MAX_N, GANOPS_MAX_BODY_BYTES, GANOPS_MAX_UPLOAD_BYTES,
GANOPS_MAX_PIXELS, GANOPS_MIN_SIDE, GANOPS_STYLE_MAX_SIDE, GANOPS_POLL_SECONDS, GANOPS_ALLOWED_HOSTS,
GANOPS_ALLOWED_ORIGINS, GANOPS_MAX_BATCH, GANOPS_TORCH_THREADS, GANOPS_ACCESS_LOG, GANOPS_TRACING, GANOPS_DEVICE.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import torch
from bentoml.validators import ContentType
from pydantic import Field, StrictInt
from starlette.responses import JSONResponse, Response

from ganops.devices import DeviceError, resolve_device
from ganops.images import to_tensor, to_uint8
from serving import images
from serving.batcher import Batcher
from serving.champion import STYLE_PREFIX, Follower, NoChampion
from serving.gallery import app as gallery_app
from serving.guard import Guard

MODEL_NAME = os.environ.get("GANOPS_MODEL_NAME", "ganops-generator")
MODEL_ALIAS = os.environ.get("GANOPS_MODEL_ALIAS", "champion")
MAX_N = int(os.environ.get("GANOPS_MAX_N", "64"))
MAX_BODY = int(os.environ.get("GANOPS_MAX_BODY_BYTES", str(64 * 1024)))
MAX_UPLOAD = int(os.environ.get("GANOPS_MAX_UPLOAD_BYTES", str(8 * 1024 * 1024)))  # /stylize only
MAX_PIXELS = int(os.environ.get("GANOPS_MAX_PIXELS", str(4096 * 4096)))  # checked from the image header
MIN_SIDE = int(os.environ.get("GANOPS_MIN_SIDE", "16"))  # the style net downsamples by 4, pads by 4
STYLE_MAX_SIDE = int(os.environ.get("GANOPS_STYLE_MAX_SIDE", "1024"))
POLL_S = float(os.environ.get("GANOPS_POLL_SECONDS", "10"))  # 0: never look for a new champion
HOSTS = os.environ.get("GANOPS_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
ORIGINS = [o for o in os.environ.get("GANOPS_ALLOWED_ORIGINS", "").split(",") if o]
MAX_BATCH = int(os.environ.get("GANOPS_MAX_BATCH", "512"))  # images per forward pass
DEVICE = os.environ.get("GANOPS_DEVICE", "cpu")  # the generator's: cpu | auto | cuda | cuda:N
MAX_LABEL = 1023  # the schema's bound; the champion's own class count is checked per request
torch.set_num_threads(int(os.environ.get("GANOPS_TORCH_THREADS", max(1, min(4, os.cpu_count() or 1)))))
# Per-request extras of BentoML that cost throughput (BENCHMARKS.md has the ratios): a log line per request
# and OpenTelemetry spans of the API routes (only useful with an exporter set in BentoML's configuration).
ACCESS_LOG = os.environ.get("GANOPS_ACCESS_LOG", "0") == "1"
TRACING = os.environ.get("GANOPS_TRACING", "0") == "1"

_follower: Follower | None = None  # set by GanService.__init__, read by the guard's X-Model-Version
_batch_sizes = bentoml.metrics.Histogram(
    name="ganops_forward_batch_images", documentation="images per generator forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)  # fmt: skip


def _served_version() -> Any:
    return _follower.current.version if _follower is not None else ""


def _refuse_to_start(err: Exception) -> None:
    """No champion, or no such device: say what to do and stop the whole server. Left alone, BentoML would
    restart this worker every few seconds, forever, and the service would never become ready; neither
    problem fixes itself, so the `bentoml serve` process (this worker's parent) is asked to shut down."""
    import psutil

    logging.getLogger("ganops.serving").error("cannot start: %s", err)
    parent = psutil.Process(os.getppid())
    if any("bentoml" in part for part in parent.cmdline()):
        parent.send_signal(signal.SIGTERM)
    raise SystemExit(f"ganops: {err}")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@bentoml.service(
    name="ganops", workers=1, traffic={"timeout": 30}, http={"host": "127.0.0.1"},
    logging={"access": {"enabled": ACCESS_LOG}},
    tracing={"excluded_urls": [] if TRACING else ["/generate", "/model", "/stylize", "/reload"]},
)  # fmt: skip
@bentoml.asgi_app(gallery_app, path="/ui")
class GanService:
    """POST /generate, /model, /stylize, /reload; GET /ui/ (gallery); BentoML's /readyz, /livez, /docs."""

    def __init__(self) -> None:
        global _follower
        try:
            device = resolve_device(DEVICE, what="GANOPS_DEVICE")
            self.follower = _follower = Follower(MODEL_NAME, MODEL_ALIAS, POLL_S, device)
        except (NoChampion, DeviceError) as err:
            _refuse_to_start(err)
        self.batcher = Batcher(MAX_BATCH, on_batch=_batch_sizes.observe)

    @bentoml.api(route="/generate")
    async def generate(
        self,
        n: Annotated[StrictInt, Field(ge=1, le=MAX_N, description="number of images")] = 16,
        seed: Annotated[
            StrictInt | None, Field(ge=0, le=2**63 - 1, description="same seed -> same images")
        ] = None,
        format: Literal["grid", "png_list", "npy"] = "grid",
        label: Annotated[
            StrictInt | None,
            Field(ge=0, le=MAX_LABEL, description="class of every image (conditional champion)"),
        ] = None,
    ) -> Annotated[bytes, ContentType("image/png")]:
        """``n`` images from the champion: a PNG grid, JSON ``{"seed", "images": [base64 PNG]}`` (png_list),
        or raw ``.npy`` bytes of (n, S, S, C) uint8 (npy, for bulk clients: ``numpy.load``).

        ``label``: a class-conditional champion draws every image of that class (same seed, other label:
        the same noise otherwise); without it each image's class is drawn from its noise.
        Headers: ``X-Seed`` (the seed used), ``X-Model-Version`` (the registered version that drew them).
        """
        from ganops.models.gan import noise_for_class

        m = self.follower.current  # this request's model, whatever switches while it runs
        counts = m.shape["class_counts"]
        if label is not None and not counts:
            return _error(400, "this champion is unconditional: it takes no label")  # type: ignore[return-value]
        if label is not None and label >= len(counts):
            return _error(400, f"label must lie in 0..{len(counts) - 1} for this champion")  # type: ignore[return-value]
        seed = secrets.randbelow(2**31) if seed is None else seed
        z = torch.randn(n, m.shape["latent_dim"], generator=torch.Generator().manual_seed(seed))
        if label is not None:
            z = noise_for_class(z, torch.full((n,), label), counts)
        encode, media = {
            "grid": (lambda x: images.png(images.grid(x)), "image/png"),
            "png_list": (lambda x: images.png_list_json(x, seed), "application/json"),
            "npy": (images.npy, "application/x-npy"),
        }[format]
        body = await self.batcher.run(m.G, z.numpy(), encode)
        headers = {"X-Seed": str(seed), "X-Model-Version": str(m.version)}
        return Response(body, media_type=media, headers=headers)  # type: ignore[return-value]

    @bentoml.api(route="/model")
    async def model_info(self) -> dict[str, Any]:
        """What is served: name, version, alias, run id, dataset hash, metrics (with their real-vs-real
        ``baseline_*``), image shape, styles, every registered version with its metrics, and where it runs
        (the generator's device, torch threads)."""
        m = self.follower.current
        info = dict(m.facts)
        keys = ("version", "run_id", "dataset_hash", "extractor")
        out = {"name": MODEL_NAME, "alias": MODEL_ALIAS} | {k: info.pop(k, None) for k in keys} | m.shape
        versions = [{"version": v["version"], "run_id": v["run_id"], "dataset_hash": v.get("dataset_hash"),
                     "metrics": {k: x for k, x in v.items() if isinstance(x, float)}}
                    for v in self.follower.versions]  # fmt: skip
        return out | {"metrics": info, "max_n": MAX_N, "styles": sorted(m.styles), "versions": versions,
                      "poll_seconds": POLL_S, "device": str(self.follower.device),
                      "torch_threads": torch.get_num_threads()}  # fmt: skip

    @bentoml.api(route="/reload")
    async def reload(self) -> dict[str, Any]:
        """Look for a moved alias now (as the poll does every GANOPS_POLL_SECONDS); switch if it moved."""
        import anyio

        try:
            switched = await anyio.to_thread.run_sync(self.follower.refresh)
        except Exception as err:  # noqa: BLE001 - the registry's trouble, not the client's: say so, keep serving
            return _error(
                503, f"the registry could not be read ({err}); still serving v{self.follower.current.version}"
            )  # type: ignore[return-value]
        return {"switched": switched, "version": self.follower.current.version}

    @bentoml.api(route="/stylize")
    def stylize(
        self,
        image: Annotated[Path, Field(description="the photo (multipart file upload)")],
        style: Annotated[str, Field(min_length=1, max_length=100, description="a registered style name")],
    ) -> Annotated[bytes, ContentType("image/png")]:
        """Style an uploaded photo with the registered fast net ``ganops-style-<style>``; returns a PNG."""
        m = self.follower.current
        if not m.styles:
            return _error(404, "no style nets registered: run the pipeline with style.method: fast")  # type: ignore[return-value]
        if style not in m.styles:
            return _error(400, f"unknown style {style!r}; available: {', '.join(sorted(m.styles))}")  # type: ignore[return-value]
        try:
            img = images.open_upload(image, max_pixels=MAX_PIXELS, min_side=MIN_SIDE, max_side=STYLE_MAX_SIDE)
        except images.UploadError as err:
            return _error(err.status, str(err))  # type: ignore[return-value]
        x = to_tensor(img)  # (1, 3, H, W) in [0, 1]
        with torch.inference_mode():
            y = m.styles[style](x)[0]  # (3, H, W) in [0, 1]
        out = images.png(to_uint8(y))
        version = m.style_versions[
            STYLE_PREFIX + style
        ]  # X-Model-Version (the champion's) comes from the guard
        return Response(out, media_type="image/png", headers={"X-Style-Version": str(version)})  # type: ignore[return-value]


GanService.add_asgi_middleware(
    Guard, hosts=HOSTS, origins=ORIGINS, json_routes=("/generate", "/model", "/reload"),
    multipart_routes=("/stylize",), max_body=MAX_BODY, max_upload=MAX_UPLOAD, version=_served_version,
)  # fmt: skip
