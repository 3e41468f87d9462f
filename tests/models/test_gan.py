import json

import pytest
import torch

from ganops.checkpoint import atomic_write
from ganops.models.gan import GANConfig, build, load_generator


@pytest.mark.parametrize("size,channels", [(32, 1), (32, 3), (64, 3), (64, 1), (16, 1)])
def test_shapes_and_ranges(size, channels):
    torch.manual_seed(0)
    cfg = GANConfig(image_size=size, channels=channels, latent_dim=16, ngf=8, ndf=8)
    G, D = build(cfg)
    z = torch.randn(5, 16, 1, 1)
    x = G(z)
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1  # Tanh output
    assert G(z.flatten(1)).shape == x.shape  # (B, Z) accepted too
    logits = D(x)
    assert logits.shape == (5,)


def test_block_count_and_widths():
    G, D = build(GANConfig(image_size=64, channels=3, latent_dim=100, ngf=64, ndf=64))
    convs = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [512, 256, 128, 64, 3]  # the DCGAN paper's 64px generator
    dconvs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in dconvs] == [64, 128, 256, 512, 1]


def test_init_is_dcgan_normal():
    torch.manual_seed(0)
    G, _ = build(GANConfig(image_size=32, ngf=64, latent_dim=100))
    w = G.main[0].weight
    assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.05)


def test_invalid_size():
    with pytest.raises(ValueError, match="power of two"):
        GANConfig(image_size=48)


def test_load_generator_rebuilds_from_config(tmp_path):
    cfg = GANConfig(image_size=16, channels=3, latent_dim=8, ngf=4, ndf=4)
    G, _ = build(cfg)
    atomic_write(tmp_path / "generator.pt", G.state_dict())
    atomic_write(tmp_path / "config.json", json.dumps({"model": cfg.to_dict()}))
    G2 = load_generator(tmp_path)
    assert not G2.training and G2.cfg == cfg
    z = torch.randn(2, 8)
    assert torch.equal(G.eval()(z), G2(z))
