"""BentoML 1.4 service: the MLflow champion generator (and the registered style nets) behind HTTP.

    bentoml serve serving.service:GanService --host 127.0.0.1 --port 3000     (or `make serve`)

One process: the API and the models live together, and concurrent /generate requests are merged into one
forward pass by ``serving.batcher`` (adaptive batching without a second service and its extra HTTP hop).
At start it loads ``models:/<name>@<alias>``; no champion -> it refuses to start, saying what to run. It
then follows the alias (``serving.champion``). Requests are screened by ``serving.guard`` first.

Settings: MLFLOW_TRACKING_URI (MLflow's own) and the GANOPS_* variables, read once into ``SETTINGS``
(``serving.settings``; the README lists them with their defaults). They are read at import, not in
``GanService.__init__``, because BentoML takes some of them when the class is decorated: the
``@bentoml.service`` options (access log, tracing), /generate's bound on ``n`` in its signature and the
guard's arguments; everything else reads the same object. A bad value stops ``bentoml serve`` at once,
naming the variable.

Routes that can answer an error return starlette ``Response`` objects (typed so); BentoML passes a
returned ``Response`` through as it is, so their documented success body is given to ``bentoml.api`` as
``output_spec`` (the spec it would infer from the success type) instead of being inferred from the
return annotation.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import bentoml
import torch
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from pydantic import Field, StrictInt
from starlette.responses import JSONResponse, Response

from ganops.devices import DeviceError, resolve_device
from ganops.images import to_tensor, to_uint8
from ganops.models.gan import noise_for_class, seeded_noise
from ganops.stylize import fast_stylize_at_scale
from ganops.tracking import style_model_name
from serving import images
from serving.batcher import Batcher
from serving.champion import DamagedVersion, Follower, NoChampion
from serving.gallery import app as gallery_app
from serving.guard import Guard
from serving.settings import ServingSettings

SETTINGS = ServingSettings.from_env(os.environ)  # at import: the decorators below need it (see above)
MAX_LABEL = 1023  # the schema's bound; the champion's own class count is checked per request
PNG = Annotated[bytes, ContentType("image/png")]  # the success body of /generate (default format), /stylize
_batch_sizes = bentoml.metrics.Histogram(
    name="ganops_forward_batch_images", documentation="images per generator forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)  # fmt: skip


def _served_version() -> int | str:
    """The version this worker serves now, for the guard's ``X-Model-Version``; "" before the service is
    up. BentoML keeps the worker's service instance (``get_current_service``), so no global of ours."""
    try:
        service: GanService = bentoml.get_current_service()
    except BentoMLException:
        return ""
    return service.follower.current.version


def _output_spec(annotation: Any) -> type[bentoml.IODescriptor]:
    """The output spec BentoML infers for a route annotated ``-> annotation``: what /docs.json documents
    for a route typed ``-> Response`` (so it can also answer a JSON error) whose success body is that."""

    def route() -> None: ...

    route.__annotations__["return"] = annotation
    return bentoml.IODescriptor.from_output(route)


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
    logging={"access": {"enabled": SETTINGS.access_log}},
    tracing={"excluded_urls": [] if SETTINGS.tracing else ["/generate", "/model", "/stylize", "/reload"]},
)  # fmt: skip
@bentoml.asgi_app(gallery_app, path="/ui")
class GanService:
    """POST /generate, /model, /stylize, /reload; GET /ui/ (gallery); BentoML's /readyz, /livez, /docs."""

    def __init__(self) -> None:
        s = SETTINGS
        torch.set_num_threads(s.torch_threads)  # here, in the worker that runs the forward passes
        try:
            device = resolve_device(s.device, what="GANOPS_DEVICE")
            self.follower = Follower(s.model_name, s.model_alias, s.poll_seconds, device)
        except (NoChampion, DamagedVersion, DeviceError) as err:
            _refuse_to_start(err)
        self.batcher = Batcher(s.max_batch, on_batch=_batch_sizes.observe)

    @bentoml.api(route="/generate", output_spec=_output_spec(PNG))
    async def generate(
        self,
        n: Annotated[StrictInt, Field(ge=1, le=SETTINGS.max_n, description="number of images")] = 16,
        seed: Annotated[
            StrictInt | None, Field(ge=0, le=2**63 - 1, description="same seed -> same images")
        ] = None,
        format: Literal["grid", "png_list", "npy"] = "grid",
        label: Annotated[
            StrictInt | None,
            Field(ge=0, le=MAX_LABEL, description="class of every image (conditional champion)"),
        ] = None,
    ) -> Response:
        """``n`` images from the champion: a PNG grid, JSON ``{"seed", "images": [base64 PNG]}`` (png_list),
        or raw ``.npy`` bytes of (n, S, S, C) uint8 (npy, for bulk clients: ``numpy.load``).

        ``label``: a class-conditional champion draws every image of that class (same seed, other label:
        the same noise otherwise); without it each image's class is drawn from its noise.
        Headers: ``X-Seed`` (the seed used), ``X-Model-Version`` (the registered version that drew them).
        """
        m = self.follower.current  # this request's model, whatever switches while it runs
        counts = m.shape["class_counts"]
        if label is not None and not counts:
            return _error(400, "this champion is unconditional: it takes no label")
        if label is not None and label >= len(counts):
            return _error(400, f"label must lie in 0..{len(counts) - 1} for this champion")
        seed = secrets.randbelow(2**31) if seed is None else seed
        z = seeded_noise(n, m.shape["latent_dim"], seed).flatten(1)  # (n, Z): the batcher's rows
        if label is not None:
            z = noise_for_class(z, torch.full((n,), label), counts)
        encode, media = {
            "grid": (lambda x: images.png(images.grid(x)), "image/png"),
            "png_list": (lambda x: images.png_list_json(x, seed), "application/json"),
            "npy": (images.npy, "application/x-npy"),
        }[format]
        body = await self.batcher.run(m.G, z.numpy(), encode)
        headers = {"X-Seed": str(seed), "X-Model-Version": str(m.version)}
        return Response(body, media_type=media, headers=headers)

    @bentoml.api(route="/model")
    async def model_info(self) -> dict[str, Any]:
        """What is served: name, version, alias, run id, dataset hash, metrics (with their real-vs-real
        ``baseline_*``), image shape, styles, every registered version with its metrics, and where it runs
        (the generator's device, torch threads)."""
        m = self.follower.current
        info = dict(m.facts)
        keys = ("version", "run_id", "dataset_hash", "extractor")
        s = SETTINGS
        out = {"name": s.model_name, "alias": s.model_alias} | {k: info.pop(k, None) for k in keys} | m.shape
        versions = [{"version": v["version"], "run_id": v["run_id"], "dataset_hash": v.get("dataset_hash"),
                     "metrics": {k: x for k, x in v.items() if isinstance(x, float)}}
                    for v in self.follower.versions]  # fmt: skip
        return out | {"metrics": info, "max_n": s.max_n, "styles": sorted(m.styles), "versions": versions,
                      "poll_seconds": s.poll_seconds, "device": str(self.follower.device),
                      "torch_threads": torch.get_num_threads()}  # fmt: skip

    @bentoml.api(route="/reload", output_spec=_output_spec(dict[str, Any]))
    async def reload(self) -> dict[str, Any] | JSONResponse:
        """Look for a moved alias now (as the poll does every GANOPS_POLL_SECONDS); switch if it moved."""
        import anyio

        try:
            switched = await anyio.to_thread.run_sync(self.follower.refresh)
        except DamagedVersion as err:  # refused, logged; the version held goes on serving
            logging.getLogger("ganops.serving").error("%s", err)
            return _error(503, f"{err}; still serving v{self.follower.current.version}")
        except Exception as err:  # noqa: BLE001 - the registry's trouble, not the client's: say so, keep serving
            version = self.follower.current.version
            return _error(503, f"the registry could not be read ({err}); still serving v{version}")
        return {"switched": switched, "version": self.follower.current.version}

    @bentoml.api(route="/stylize", output_spec=_output_spec(PNG))
    def stylize(
        self,
        image: Annotated[Path, Field(description="the photo (multipart file upload)")],
        style: Annotated[str, Field(min_length=1, max_length=100, description="a registered style name")],
    ) -> Response:
        """Style an uploaded photo with the registered fast net ``ganops-style-<style>``; returns a PNG."""
        m = self.follower.current
        if not m.styles:
            return _error(404, "no style nets registered: run the pipeline with style.method: fast")
        if style not in m.styles:
            return _error(400, f"unknown style {style!r}; available: {', '.join(sorted(m.styles))}")
        try:
            img = images.open_upload(image, max_pixels=SETTINGS.max_pixels, min_side=SETTINGS.min_side,
                                     max_side=SETTINGS.style_max_side)  # fmt: skip
        except images.UploadError as err:
            return _error(err.status, str(err))
        x = to_tensor(img)  # (1, 3, H, W) in [0, 1]
        with torch.inference_mode():
            y = fast_stylize_at_scale(m.styles[style], x)[0]  # (3, H, W) in [0, 1], at the net's own scale
        out = images.png(to_uint8(y))
        version = m.style_versions[style_model_name(style)]  # X-Model-Version (the champion's): the guard's
        return Response(out, media_type="image/png", headers={"X-Style-Version": str(version)})


# cast: type checkers do not apply class decorators, and @bentoml.service made GanService a bentoml.Service
cast("bentoml.Service[GanService]", GanService).add_asgi_middleware(
    Guard, hosts=SETTINGS.allowed_hosts, origins=SETTINGS.allowed_origins,
    json_routes=("/generate", "/model", "/reload"), multipart_routes=("/stylize",),
    max_body=SETTINGS.max_body_bytes, max_upload=SETTINGS.max_upload_bytes, version=_served_version,
)  # fmt: skip
