"""The VGG19 embedding that judges generated photos: the shipped caffe-q8 weights (checksum-checked when
loaded), the same activations as the style extractor, one vector per picture."""

import hashlib

import torch
import torch.nn.functional as F

from ganops.models.style import CAFFE_SHA256, EMBEDDING_LAYERS, build_embedding, build_vgg, caffe_weights_path


def test_embedding_uses_the_shipped_weights_and_the_style_extractors_activations():
    assert hashlib.sha256(caffe_weights_path().read_bytes()).hexdigest() == CAFFE_SHA256
    emb = build_embedding("caffe-q8", size=64)
    assert emb.name.startswith("vgg19-caffe-q8/") and emb.num_features == 1024
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [-1, 1]
    style = build_vgg("caffe-q8", list(EMBEDDING_LAYERS))
    up = F.interpolate((x + 1) / 2, size=(64, 64), mode="bilinear", align_corners=False)
    acts = style(up)
    expected = torch.cat([acts[n].mean((2, 3)) for n in EMBEDDING_LAYERS], 1)
    assert torch.allclose(emb(x), expected, atol=1e-5)


def test_grey_pictures_are_seen_as_three_equal_channels_and_uint8_as_its_scale():
    emb = build_embedding("random", size=32, seed=0)
    grey = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.allclose(emb(grey), emb(grey.expand(-1, 3, -1, -1)))
    as_uint8 = ((grey + 1) * 127.5).round().to(torch.uint8)
    assert torch.allclose(emb(as_uint8), emb(as_uint8.float() / 127.5 - 1))
    assert emb(grey).shape == (2, 1024)
