"""BentoML 1.4 service: the MLflow champion generator behind HTTP.

    bentoml serve serving.service:GanService --host 127.0.0.1 --port 3000     (or `make serve`)

Two services: ``GanService`` (the API: /generate, /model, the /ui gallery) depends on
``GeneratorModel``, whose batchable ``forward`` is where BentoML's adaptive batching merges the latent
batches of many concurrent requests into one forward pass. Both load ``models:/<name>@<alias>`` from the
MLflow registry at start; no champion -> the service refuses to start with a message saying what to run.

Settings (environment): MLFLOW_TRACKING_URI (default: <cwd>/mlflow.db), GANOPS_MODEL_NAME
(ganops-generator), GANOPS_MODEL_ALIAS (champion), GANOPS_MAX_N (64 images per request),
GANOPS_MAX_BODY_BYTES (65536).
"""

from __future__ import annotations

import base64
import io
import math
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
import torch
from bentoml.validators import ContentType
from PIL import Image, ImageOps
from pydantic import Field
from starlette.responses import JSONResponse

from serving.gallery import app as gallery_app

MODEL_NAME = os.environ.get("GANOPS_MODEL_NAME", "ganops-generator")
MODEL_ALIAS = os.environ.get("GANOPS_MODEL_ALIAS", "champion")
MAX_N = int(os.environ.get("GANOPS_MAX_N", "64"))
MAX_BODY = int(os.environ.get("GANOPS_MAX_BODY_BYTES", str(64 * 1024)))
MAX_UPLOAD = int(os.environ.get("GANOPS_MAX_UPLOAD_BYTES", str(8 * 1024 * 1024)))  # /stylize only
STYLE_MAX_SIDE = int(os.environ.get("GANOPS_STYLE_MAX_SIDE", "1024"))
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@bentoml.service(
    name="ganops-generator-model",
    workers=1,
    traffic={"timeout": 30},
    # BentoML 1.4.40 renews its client session to a dependency every `max_requests` calls (default 100)
    # by closing the old session under any requests still in flight on it: under concurrency those fail
    # with "Server disconnected" (bentoml/BentoML#4971). One worker, so nothing to rebalance: never renew.
    runner_connection={"max_requests": 2**62, "max_age": 1e12},
)
class GeneratorModel:
    """The champion generator in eval mode; ``forward`` is batched across requests.

    The only process that talks to MLflow (one process initialising a fresh sqlite store, not two racing).
    """

    def __init__(self) -> None:
        from ganops.models.gan import load_generator
        from ganops.tracking import download_champion, use_store

        use_store()
        folder, self.facts = download_champion(MODEL_NAME, MODEL_ALIAS)
        self.G = load_generator(folder)
        cfg = self.G.cfg
        self.shape = {"image_size": cfg.image_size, "channels": cfg.channels, "latent_dim": cfg.latent_dim,
                      "class_counts": list(cfg.class_counts)}  # fmt: skip

    # max_latency_ms is a ceiling, not a wait: past it BentoML answers 503 "overloaded", so keep it generous;
    # the dispatcher releases a batch as soon as waiting longer stops paying off.
    @bentoml.api(batchable=True, max_batch_size=512, max_latency_ms=5000)
    def forward(self, z: np.ndarray) -> np.ndarray:
        """(B, Z) float32 latents -> (B, S, S, C) uint8 images."""
        with torch.inference_mode():
            x = self.G(torch.from_numpy(z))  # (B, C, S, S) in [-1, 1]; eval mode: samples are independent
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    @bentoml.api
    def info(self) -> dict[str, Any]:
        """Registry facts of the loaded version plus the generator's shape."""
        return {**self.facts, **self.shape}


class BodyLimit:
    """ASGI middleware: 413 for request bodies over GANOPS_MAX_BODY_BYTES (by header or as they stream)."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY, max_upload: int = MAX_UPLOAD) -> None:
        self.app, self.max_bytes, self.max_upload = app, max_bytes, max_upload

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_upload if scope.get("path") == "/stylize" else self.max_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = JSONResponse({"error": f"request body over {limit} bytes"}, status_code=413)
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await too_big(scope, receive, send)
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ValueError("request body too large")
            return message

        try:
            await self.app(scope, counting_receive, send)
        except ValueError as err:  # raised before the app answered: the body never finished arriving
            if "too large" not in str(err):
                raise
            await too_big(scope, receive, send)


def _png(image: np.ndarray) -> bytes:
    """(H, W, C) uint8 -> PNG bytes (grey for C=1)."""
    from PIL import Image

    a = image[..., 0] if image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """(N, S, S, C) -> one (rows*S', cols*S', C) tile image with black padding."""
    n, s, _, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (s + pad) + pad, cols * (s + pad) + pad, c), np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        out[pad + r * (s + pad) : pad + r * (s + pad) + s, pad + q * (s + pad) : pad + q * (s + pad) + s] = im
    return out


def _load_style_nets() -> dict[str, torch.nn.Module]:
    """Every registered ``ganops-style-<name>@<alias>`` fast net, by style name (empty if none)."""
    import json

    from ganops.models.style import TransformerConfig, TransformerNet
    from ganops.tracking import registered_with_prefix, use_store

    use_store()
    nets = {}
    for model, folder in registered_with_prefix("ganops-style-", MODEL_ALIAS).items():
        cfg = json.loads((folder / "config.json").read_text())
        net = TransformerNet(TransformerConfig(**cfg["model"]))
        net.load_state_dict(torch.load(folder / "transformer.pt", map_location="cpu", weights_only=True))
        nets[model.removeprefix("ganops-style-")] = net.eval()
    return nets


@bentoml.service(name="ganops", workers=1, traffic={"timeout": 30}, http={"host": "127.0.0.1"})
@bentoml.asgi_app(gallery_app, path="/ui")
class GanService:
    """POST /generate, POST /model, GET /ui (gallery); BentoML's /readyz, /livez, /docs stay as they are."""

    model = bentoml.depends(GeneratorModel)

    def __init__(self) -> None:
        self._info: dict[str, Any] | None = None
        self.styles = _load_style_nets()

    async def _model(self) -> dict[str, Any]:
        if self._info is None:  # asked once, on first use: the dependency may start after us
            self._info = await self.model.to_async.info()
        return self._info

    async def _forward(self, z: np.ndarray) -> np.ndarray:
        import aiohttp

        try:
            return await self.model.to_async.forward(z)
        except aiohttp.ClientConnectionError:  # a pooled connection closed under us: safe to repeat once
            return await self.model.to_async.forward(z)

    @bentoml.api(route="/generate")
    async def generate(
        self,
        n: Annotated[int, Field(ge=1, le=MAX_N, description="number of images")] = 16,
        seed: Annotated[int | None, Field(ge=0, lt=2**63, description="same seed -> same images")] = None,
        format: Literal["grid", "png_list"] = "grid",
        label: Annotated[
            int | None, Field(ge=0, description="class of every image (class-conditional generators)")
        ] = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> Annotated[bytes, ContentType("image/png")]:
        """``n`` images from the champion: one PNG grid, or (png_list) JSON ``{"seed", "images": [base64 PNG]}``.

        ``label``: a class-conditional champion draws every image of that class (same seed, other label:
        the same noise otherwise); without it each image's class is drawn from its noise.
        """
        from bentoml.exceptions import InvalidArgument

        from ganops.models.gan import noise_for_class

        seed = secrets.randbelow(2**31) if seed is None else seed
        info = await self._model()
        zt = torch.randn(n, info["latent_dim"], generator=torch.Generator().manual_seed(seed))
        if label is not None:
            try:
                zt = noise_for_class(zt, torch.full((n,), label), info.get("class_counts") or [])
            except ValueError as err:
                raise InvalidArgument(str(err)) from None
        z = zt.numpy()
        images = await self._forward(z)  # (n, S, S, C) uint8
        ctx.response.headers["X-Seed"] = str(seed)
        if format == "png_list":
            pngs = [base64.b64encode(_png(im)).decode() for im in images]
            return JSONResponse({"seed": seed, "images": pngs}, headers={"X-Seed": str(seed)})  # type: ignore[return-value]
        return _png(_grid(images))

    @bentoml.api(route="/model")
    async def model_info(self) -> dict[str, Any]:
        """What is served: registered name, version, alias, run id, dataset hash, metrics, image shape."""
        info = dict(await self._model())
        keys = ("version", "run_id", "dataset_hash", "extractor", "image_size", "channels", "latent_dim",
                "class_counts")  # fmt: skip
        out = {"name": MODEL_NAME, "alias": MODEL_ALIAS} | {k: info.pop(k, None) for k in keys}
        return out | {"metrics": info, "max_n": MAX_N}

    @bentoml.api(route="/stylize")
    def stylize(
        self,
        image: Annotated[Path, Field(description="the photo (multipart file upload)")],
        style: Annotated[str, Field(min_length=1, max_length=100, description="a registered style name")],
    ) -> Image.Image:
        """Style an uploaded photo with the registered fast net ``ganops-style-<style>``; returns a PNG."""
        from bentoml.exceptions import InvalidArgument, NotFound

        if not self.styles:
            raise NotFound("no style nets registered: run the pipeline with style.method: fast")
        if style not in self.styles:
            raise InvalidArgument(f"unknown style {style!r}; available: {', '.join(sorted(self.styles))}")
        try:  # decoded here, not by BentoML, so a bad upload is the client's 400, not our 500
            with Image.open(image) as f:
                f.draft("RGB", (STYLE_MAX_SIDE, STYLE_MAX_SIDE))
                f.load()
                img = ImageOps.exif_transpose(f).convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise InvalidArgument(f"the upload is not a readable image ({err})") from None
        img.thumbnail((STYLE_MAX_SIDE, STYLE_MAX_SIDE), Image.Resampling.LANCZOS)  # never a huge tensor
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            y = self.styles[style](x)[0]  # (3, H, W) in [0, 1]
        return Image.fromarray((y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


GanService.add_asgi_middleware(BodyLimit)
