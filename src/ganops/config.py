"""Typed parameters: one pydantic model per `params.yaml` group, loaded once at the edge.

Unknown keys and wrong types are errors that name the key (``gan.lr_dd``), never silent defaults.
Command-line overrides (``--set gan.lr_d=1e-4``) go through the same validation.

``params.yaml`` is the one source of defaults: every default below is the value params.yaml gives the key
(tests/test_config.py proves the two equal), so a key left out of a params file means what the project's
params.yaml says. Presets that differ on purpose are named, e.g. :data:`PLAIN_DCGAN`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ParamsError(ValueError):
    """Invalid parameters; the message names every offending key."""


class _Group(BaseModel):
    # extra="forbid": a misspelled key must fail loudly instead of being ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Group):
    seed: int = 0
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        ok = v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit())
        if not ok:
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v


DataSource = Literal["digits", "mnist", "fashion-mnist", "cifar10", "folder"]


class DataParams(_Group):
    source: DataSource = "digits"
    root: str = "data/raw"
    download: bool = False
    split: Literal["train", "test"] = "train"
    image_size: int = Field(32, ge=16, le=256)
    channels: Literal[1, 3] | None = None
    min_side: int = Field(16, ge=1)
    limit: int = Field(0, ge=0)

    @field_validator("image_size")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("must be a power of two (16, 32, 64, 128 or 256)")
        return v


class GanParams(_Group):
    latent_dim: int = Field(64, ge=1)
    ngf: int = Field(32, ge=1)
    ndf: int = Field(32, ge=1)
    batch_size: int = Field(64, ge=2)
    steps: int = Field(2000, ge=1)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    sample_every: int = Field(250, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    log_every: int = Field(10, ge=1)
    grid_samples: int = Field(64, ge=1, le=1024)  # images in the sample grid (was n_samples: RENAMED)
    resume: bool = True
    # Stabilisers: params.yaml's choice (PLAIN_DCGAN turns them all off: the lesson's DCGAN).
    # auto: resolved by resolve_arch (dcgan up to 32 px, fastgan from 64 px) before anything is written
    arch: Literal["auto", "dcgan", "msg", "fastgan", "progressive"] = "auto"
    loss: Literal["bce", "hinge"] = "hinge"
    spectral_norm: bool = False
    g_norm: Literal["batch", "none"] = "batch"
    upsample: Literal["transposed", "resize"] = "transposed"
    d_antialias: bool = False
    mbstd: bool = True
    conditional: Literal["auto"] | bool = "auto"
    diffaugment: list[Literal["color", "translation", "cutout"]] = Field(default_factory=list)
    r1_gamma: float = Field(1.0, ge=0)
    r1_every: int = Field(4, ge=1)
    d_steps: int = Field(1, ge=1, le=10)
    d_skip_below: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    monitor_every: int = Field(250, ge=0)
    monitor_samples: int = Field(500, ge=10)
    best_metric: Literal["auto", "domain_fid", "kl", "vgg_kid"] = "auto"
    nan_max_rollbacks: int = Field(3, ge=0)
    nan_lr_factor: float = Field(0.5, gt=0, lt=1)
    nproc: int = Field(1, ge=1)
    amp: bool = False
    # arch progressive: steps per fade-in of a new resolution and per stable phase (4x4 starts stable)
    grow_fade_steps: int = Field(200, ge=1)
    grow_stable_steps: int = Field(200, ge=1)


# Measured choice of `gan.arch: auto` (BENCHMARKS.md, "Resize upsampling and FastGAN"): DCGAN is the best
# of the families on the digits at 16-32 px (the demo's numbers), FastGAN at 64 px on a folder of photos
# (VGG KID 13.1 against DCGAN's 28.8 for the same 10 CPU minutes). FastGAN is unconditional: a params
# file that asks for class-conditioning (`conditional: true`) gets DCGAN at every size.
AUTO_ARCH_MAX_DCGAN = 32


def resolve_arch(arch: str, image_size: int, conditional: bool | str = "auto") -> str:
    """The concrete architecture ``gan.arch`` names at ``image_size`` px (``auto`` -> dcgan or fastgan)."""
    if arch != "auto":
        return arch
    if image_size <= AUTO_ARCH_MAX_DCGAN or conditional is True:
        return "dcgan"
    return "fastgan"


# The lesson's plain DCGAN (BCE, no R1, no minibatch-stddev, no EMA, unconditional, no in-training monitor):
# GanParams(**PLAIN_DCGAN, ...) is the baseline the benchmarks compare against. Not a default: a preset.
PLAIN_DCGAN: dict[str, Any] = {
    "arch": "dcgan",
    "loss": "bce",
    "spectral_norm": False,
    "g_norm": "batch",
    "upsample": "transposed",
    "d_antialias": False,
    "mbstd": False,
    "conditional": False,
    "diffaugment": [],
    "r1_gamma": 0.0,
    "d_steps": 1,
    "d_skip_below": 0.0,
    "ema_decay": 0.0,
    "monitor_every": 0,
}


class ClassifierParams(_Group):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(3e-3, gt=0)
    width: int = Field(16, ge=4)
    features: int = Field(64, ge=2)
    holdout: float = Field(0.1, ge=0, lt=1)
    outlier_weight: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"


class EvaluateParams(_Group):
    n_samples: int = Field(0, ge=0)
    batch_size: int = Field(256, ge=1)
    coverage_min_frac: float = Field(0.01, gt=0, lt=1)
    kl_threshold: float = Field(0.1, gt=0)
    kid_subset_size: int = Field(500, ge=2)
    inception: bool = False
    export: Literal["final", "best"] = "final"
    extractor: Literal["auto", "domain", "vgg19"] = "auto"
    vgg_size: int = Field(128, ge=32, le=512)


PromoteMetric = Literal["auto", "domain_fid", "domain_kid", "kl", "vgg_kid", "vgg_fid"]


class PromoteParams(_Group):
    metric: PromoteMetric = "auto"
    model_name: str = Field("ganops-generator", min_length=1)
    alias: str = Field("champion", min_length=1)
    dry_run: bool = False
    across_data: bool = False


StyleWeights = Literal["caffe-q8", "pretrained", "random"]

# Loss weights (content, style, TV) chosen per feature extractor: their activations differ in scale by
# orders of magnitude, so one set of numbers cannot serve all three. caffe-q8 and random were calibrated
# on photos x paintings (BENCHMARKS.md, "Style transfer: calibrated weights per extractor");
# pretrained could not be (no ImageNet weights offline) and reuses caffe-q8's, see the same section.
CALIBRATED_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "caffe-q8": (1.0, 3.0, 10.0),
    "pretrained": (1.0, 3.0, 10.0),
    "random": (1.0, 1e5, 0.01),
}


class StyleParams(_Group):
    content_dir: str = "data/photos"
    style_dir: str = "data/paintings"
    styles: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {
            "starry_night": {"starry_night": 1.0},
            "the_scream": {"the_scream": 1.0},
            "shipwreck": {"shipwreck": 1.0},
        }
    )
    method: Literal["gatys", "fast"] = "gatys"
    weights: StyleWeights = "caffe-q8"
    size: int = Field(160, ge=16, le=4096)
    max_side: int = Field(1024, ge=16)
    content_layer: str = "relu4_2"
    style_layers: dict[str, float] = Field(
        default_factory=lambda: {
            "relu1_1": 1.0,
            "relu2_1": 1.0,
            "relu3_1": 1.0,
            "relu4_1": 1.0,
            "relu5_1": 1.0,
        }
    )
    # the three loss weights: when left out or null, CALIBRATED_WEIGHTS[weights] (see _calibrated)
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(3.0, ge=0)
    tv_weight: float = Field(10.0, ge=0)
    init: Literal["content", "noise", "content+noise", "palette"] = "palette"
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    steps: int = Field(80, ge=1)
    lr: float = Field(1.0, gt=0)
    scales: list[float] = Field(default_factory=lambda: [1.0])
    style_scale: float = Field(1.0, gt=0, le=4)
    preserve_color: Literal["none", "luminance", "match"] = "none"
    fast_train_dir: str = Field("data/photos", min_length=1)
    fast_steps: int = Field(400, ge=1)
    fast_batch_size: int = Field(4, ge=1)
    fast_lr: float = Field(1e-3, gt=0)
    fast_content_scale: float = Field(3.0, ge=0)
    fast_width: int = Field(32, ge=4)
    fast_precision: Literal["auto", "bf16", "fp32"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _calibrated(cls, raw: Any) -> Any:
        """content/style/tv weight left out or null -> the calibrated value for ``weights``."""
        if not isinstance(raw, dict):
            return raw
        table = CALIBRATED_WEIGHTS.get(raw.get("weights", "caffe-q8"))
        if table is None:  # an unknown extractor: let the field validation name it
            return raw
        keys = ("content_weight", "style_weight", "tv_weight")
        return {**raw, **{k: v for k, v in zip(keys, table, strict=True) if raw.get(k) is None}}

    @field_validator("styles")
    @classmethod
    def _styles(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for name, blend in v.items():
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"style name {name!r} must be a plain folder name")
            if not blend or any(w <= 0 for w in blend.values()):
                raise ValueError(f"style {name!r}: give at least one style image with a weight > 0")
        return v

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < s <= 1 for s in v) or v != sorted(v) or v[-1] != 1.0:
            raise ValueError("must rise to 1.0 with every scale in (0, 1], e.g. [0.5, 1.0]")
        return v


class TrackingParams(_Group):
    experiment: str = Field("ganops", min_length=1)


class Params(_Group):
    base: BaseParams = BaseParams()
    data: DataParams = DataParams()
    gan: GanParams = GanParams()
    classifier: ClassifierParams = ClassifierParams()
    evaluate: EvaluateParams = EvaluateParams()
    promote: PromoteParams = PromoteParams()
    style: StyleParams = StyleParams()
    tracking: TrackingParams = TrackingParams()

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto(cls, raw: Any) -> Any:
        """``gan.arch: auto`` becomes the architecture it picks for ``data.image_size``, so the settings,
        checkpoints, MLflow params and run names all name a concrete one. Malformed input is left for the
        field validators to report."""
        if not isinstance(raw, dict):
            return raw
        gan, data = raw.get("gan", {}), raw.get("data", {})
        gan = gan.model_dump() if isinstance(gan, GanParams) else gan
        data = data.model_dump() if isinstance(data, DataParams) else data
        if not isinstance(gan, dict) or not isinstance(data, dict):
            return raw
        arch, size = gan.get("arch", "auto"), data.get("image_size", DataParams().image_size)
        if arch != "auto" or not isinstance(size, int):
            return raw
        return {**raw, "gan": {**gan, "arch": resolve_arch("auto", size, gan.get("conditional", "auto"))}}

    def flat(self) -> dict[str, Any]:
        """Flatten to ``{"gan.lr_d": 0.0002, ...}`` (what MLflow logs as params)."""
        return {f"{g}.{k}": v for g, group in self.model_dump().items() for k, v in group.items()}


# Keys renamed since they were released -> their new name. The old name is an error naming the new one (a
# params file that still says gan.n_samples must not silently get the new key's default).
RENAMED: dict[str, str] = {
    "gan.n_samples": "gan.grid_samples",  # the grid's size; evaluate.n_samples is the scored count
}


def _known_keys(model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _format(err: ValidationError, origin: str) -> str:
    known = _known_keys()
    lines = [f"invalid parameters in {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden" and key in RENAMED:
            msg = f"renamed to {RENAMED[key]}: use that key instead"
        elif e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(key, known, n=1)
            msg = "unknown key" + (f" (did you mean {hint[0]}?)" if hint else "")
        else:
            msg = f"{e['msg']} (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``group.key=value`` overrides applied (values parsed as YAML).

    Raises:
        ParamsError: an override is not of the form ``group.key=value``.
    """
    out = {g: dict(v) if isinstance(v, dict) else v for g, v in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ParamsError(f"override {item!r}: expected group.key=value, e.g. gan.lr_d=1e-4")
        group, name = parts
        section = out.setdefault(group, {})
        if not isinstance(section, dict):
            raise ParamsError(f"override {item!r}: {group} is not a group")
        section[name] = yaml.safe_load(value) if value.strip() else None
    return out


def parse_params(raw: dict[str, Any] | None, overrides: list[str] = (), origin: str = "params") -> Params:  # type: ignore[assignment]
    """Validate a raw params mapping (plus overrides) into :class:`Params`.

    Args:
        raw: the mapping read from params.yaml (``None`` for an empty file).
        overrides: ``group.key=value`` strings applied on top, validated the same way.
        origin: where the mapping came from, for error messages.

    Returns:
        The validated, frozen parameters.

    Raises:
        ParamsError: unknown key, wrong type or out-of-range value; the message names each key.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping of groups, got {type(raw).__name__}")
    merged = apply_overrides(raw, list(overrides))
    try:
        return Params.model_validate(merged)
    except ValidationError as err:
        raise ParamsError(_format(err, origin)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] = ()) -> Params:  # type: ignore[assignment]
    """Read and validate ``params.yaml``; see :func:`parse_params`."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameters file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, overrides, origin=str(path))
