"""The service's settings: one typed object read from the ``GANOPS_*`` environment variables.

Every field is one variable (its pydantic alias is the variable's name, so a validation error names the
variable: ``GANOPS_MAX_N='abc': Input should be a valid integer ...``); a variable left unset takes the
default the README's settings table gives. ``MLFLOW_TRACKING_URI`` is not here: it is MLflow's own setting
and MLflow reads it (``ganops.tracking.use_store``).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PREFIX = "GANOPS_"


class SettingsError(ValueError):
    """A ``GANOPS_*`` variable holds a value the service cannot use; the message names the variable."""


def _default_threads() -> int:
    # a forward pass gains little past 4 threads on small generators, and the encode threads need cores too
    return max(1, min(4, os.cpu_count() or 1))


class ServingSettings(BaseModel):
    """What ``bentoml serve serving.service:GanService`` is configured with (see :meth:`from_env`)."""

    # validate_by_name: tests build it from field names; the environment goes through the aliases
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)

    # -- what is served
    model_name: str = Field("ganops-generator", alias="GANOPS_MODEL_NAME", min_length=1,
                            description="registered model name of the generator")  # fmt: skip
    model_alias: str = Field("champion", alias="GANOPS_MODEL_ALIAS", min_length=1,
                             description="alias served; it also names the style nets' alias")  # fmt: skip
    poll_seconds: float = Field(10.0, alias="GANOPS_POLL_SECONDS", ge=0,
                                description="how often to look for a moved alias; 0: never (POST /reload)")  # fmt: skip
    device: str = Field("cpu", alias="GANOPS_DEVICE",
                        description="the generator's device: cpu | auto | cuda | cuda:N (checked at start)")  # fmt: skip
    # -- request limits (the guard counts bodies; uploads are checked from the image header)
    max_n: int = Field(64, alias="GANOPS_MAX_N", ge=1, description="images per /generate request")
    max_body_bytes: int = Field(64 * 1024, alias="GANOPS_MAX_BODY_BYTES", ge=1,
                                description="JSON request bodies (/generate, /model, /reload)")  # fmt: skip
    max_upload_bytes: int = Field(8 * 1024 * 1024, alias="GANOPS_MAX_UPLOAD_BYTES", ge=1,
                                  description="/stylize request bodies (multipart)")  # fmt: skip
    max_pixels: int = Field(4096 * 4096, alias="GANOPS_MAX_PIXELS", ge=1,
                            description="pixels of an upload, read from its header before decoding")  # fmt: skip
    # 16: the style net downsamples by 4 and pads by 4, so smaller photos come out as mostly padding
    min_side: int = Field(16, alias="GANOPS_MIN_SIDE", ge=1,
                          description="shortest side of an upload, before and after the downscale")  # fmt: skip
    style_max_side: int = Field(1024, alias="GANOPS_STYLE_MAX_SIDE", ge=1,
                                description="uploads are scaled down to this long side before styling")  # fmt: skip
    # -- who may call (comma-separated in the environment)
    allowed_hosts: tuple[str, ...] = Field(("localhost", "127.0.0.1", "[::1]"), alias="GANOPS_ALLOWED_HOSTS",
                                           description="Host names served (any port); *: any")  # fmt: skip
    allowed_origins: tuple[str, ...] = Field((), alias="GANOPS_ALLOWED_ORIGINS",
                                             description="other web origins allowed to POST")  # fmt: skip
    # -- throughput
    max_batch: int = Field(512, alias="GANOPS_MAX_BATCH", ge=1,
                           description="images per forward pass when requests are merged")  # fmt: skip
    torch_threads: int = Field(default_factory=_default_threads, alias="GANOPS_TORCH_THREADS", ge=1,
                               description="torch threads for the forward passes; default min(4, cores)")  # fmt: skip
    # per-request extras of BentoML that cost throughput (BENCHMARKS.md has the ratios)
    access_log: bool = Field(
        False, alias="GANOPS_ACCESS_LOG", description="1: BentoML's log line per request"
    )
    tracing: bool = Field(False, alias="GANOPS_TRACING",
                          description="1: OpenTelemetry spans of the API routes (needs an exporter)")  # fmt: skip

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """``"a, b,"`` -> ``("a", "b")``: the environment's form of a list; empty items are dropped."""
        return tuple(x.strip() for x in v.split(",") if x.strip()) if isinstance(v, str) else v

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServingSettings:
        """The settings that ``environ``'s ``GANOPS_*`` variables give (unset ones: the defaults).

        Args:
            environ: the process environment (``os.environ``) or any mapping of variable -> value.

        Returns:
            The validated, frozen settings.

        Raises:
            SettingsError: a variable's value is invalid (``GANOPS_MAX_N=abc``, ``GANOPS_POLL_SECONDS=-1``);
                the message names every such variable with its value and what is wrong.
        """
        names = {f.alias or key for key, f in cls.model_fields.items()}
        for name in sorted(k for k in environ if k.startswith(PREFIX) and k not in names):
            # other tools read GANOPS_* names too (GANOPS_PROJECT_ROOT), so only a near miss is suspicious
            near = difflib.get_close_matches(name, names, n=1, cutoff=0.85)
            if near:
                logging.getLogger("ganops.serving").warning(
                    "%s is not a setting: did you mean %s?", name, near[0]
                )
        try:
            return cls.model_validate({k: v for k, v in environ.items() if k in names})
        except ValidationError as err:
            problems = [
                f"{e['loc'][0]}={environ.get(str(e['loc'][0]), '')!r}: {e['msg']}" for e in err.errors()
            ]
            raise SettingsError("invalid serving settings: " + "; ".join(problems)) from None
