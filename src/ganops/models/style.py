"""Style-transfer nets: frozen VGG19 feature slices (Gatys et al.) and the feed-forward TransformerNet
(Johnson et al.).

VGG19 weights: torchvision's IMAGENET1K_V1 from the torch.hub cache (``$TORCH_HOME/hub/checkpoints/``,
downloaded once when online), or a seeded random-weight VGG19 ("random"): offline and deterministic but
much lower quality; which one was used is part of every result's name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

# torchvision vgg19().features indices of each ReLU, by the paper's layer names (relu4_2 = after conv4_2).
_BLOCKS = [2, 2, 4, 4, 4]
VGG_LAYERS: dict[str, int] = {}
_i = 0
for _b, _n in enumerate(_BLOCKS, start=1):
    for _c in range(1, _n + 1):
        VGG_LAYERS[f"relu{_b}_{_c}"] = _i + 1  # conv at _i, its ReLU at _i + 1
        _i += 2
    _i += 1  # max-pool
VGG_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's IMAGENET1K_V1 weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StyleWeightsError(RuntimeError):
    """Pretrained VGG19 weights requested but not available; says which file goes where."""


def vgg_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILE


class VGGFeatures(nn.Module):
    """Frozen VGG19 cut after the last layer used: (B, 3, H, W) in [0, 1] -> {layer name: activation}."""

    def __init__(self, features: nn.Sequential, layers: list[str], name: str):
        super().__init__()
        unknown = [n for n in layers if n not in VGG_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG19 layers {unknown}; known: {', '.join(VGG_LAYERS)}")
        self.layers = list(dict.fromkeys(layers))
        last = max(VGG_LAYERS[n] for n in self.layers)
        self.body = features[: last + 1].eval()  # nothing past the deepest layer in use is ever computed
        for m in self.body:
            if isinstance(m, nn.ReLU):
                m.inplace = False  # activations we keep must not be overwritten by the next ReLU
        self.body.requires_grad_(False)
        self.name = name
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self._at = {VGG_LAYERS[n]: n for n in self.layers}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        h = (x - self.mean) / self.std  # type: ignore[operator]  # buffers are tensors
        for i, m in enumerate(self.body):
            h = m(h)
            if i in self._at:
                out[self._at[i]] = h
        return out


def build_vgg(weights: str, layers: list[str], seed: int = 0, download: bool = True) -> VGGFeatures:
    """VGG19 features for ``layers``; ``weights`` is "pretrained" (ImageNet) or "random" (seeded).

    Raises:
        StyleWeightsError: pretrained weights neither cached nor downloadable.
    """
    from torchvision.models import VGG19_Weights, vgg19

    if weights == "random":
        torch.manual_seed(seed)
        return VGGFeatures(vgg19(weights=None).features, layers, f"vgg19-random-seed{seed}")
    path = vgg_weights_path()
    if not path.is_file() and not download:
        raise StyleWeightsError(f"VGG19 weights not cached: put {VGG_FILE} at {path}")
    try:
        net = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)  # reads the cache; downloads once when online
    except Exception as err:  # offline: URLError / socket errors of many kinds
        raise StyleWeightsError(
            f"VGG19 ImageNet weights are not in the torch cache and could not be downloaded ({err}): put "
            f"{VGG_FILE} at {path} (TORCH_HOME sets the cache root), or set style.weights: random for an "
            "offline, lower-quality random-weight VGG"
        ) from None
    return VGGFeatures(net.features, layers, "vgg19-imagenet1k-v1")


# ----------------------------------------------------------------------------- feed-forward net


@dataclass(frozen=True)
class TransformerConfig:
    """Constructor arguments of :class:`TransformerNet`; stored with its weights."""

    width: int = 32  # channels of the first conv (then 2x, 4x)
    n_res: int = 5  # residual blocks at 1/4 resolution

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(a: int, b: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(k // 2), nn.Conv2d(a, b, k, stride))


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block = nn.Sequential(
            _conv(c, c, 3), nn.InstanceNorm2d(c, affine=True), nn.ReLU(True),
            _conv(c, c, 3), nn.InstanceNorm2d(c, affine=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation net: (B, 3, H, W) in [0, 1] -> same shape, any H, W."""

    def __init__(self, cfg: TransformerConfig = TransformerConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.net = nn.Sequential(
            _conv(3, w, 9), nn.InstanceNorm2d(w, affine=True), nn.ReLU(True),  # (B, w, H, W)
            _conv(w, 2 * w, 3, 2), nn.InstanceNorm2d(2 * w, affine=True), nn.ReLU(True),  # (B, 2w, H/2, W/2)
            _conv(2 * w, 4 * w, 3, 2), nn.InstanceNorm2d(4 * w, affine=True), nn.ReLU(True),  # (B, 4w, H/4, W/4)
            *[_Residual(4 * w) for _ in range(cfg.n_res)],
            # upsample + conv instead of transposed conv: no checkerboard artefacts
            nn.Upsample(scale_factor=2, mode="nearest"), _conv(4 * w, 2 * w, 3),
            nn.InstanceNorm2d(2 * w, affine=True), nn.ReLU(True),  # (B, 2w, H/2, W/2)
            nn.Upsample(scale_factor=2, mode="nearest"), _conv(2 * w, w, 3),
            nn.InstanceNorm2d(w, affine=True), nn.ReLU(True),  # (B, w, H, W)
            _conv(w, 3, 9),  # (B, 3, H, W)
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        # pad to a multiple of 4 so the two stride-2 stages round-trip exactly, crop back after
        ph, pw = (-H) % 4, (-W) % 4
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        y = torch.sigmoid(self.net(x))  # [0, 1]
        return y[..., :H, :W]
