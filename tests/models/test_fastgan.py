import json

import pytest
import torch

from ganops.artifacts import atomic_write
from ganops.models.fastgan import FastDiscriminator, FastGenerator, NoiseInjection, SkipExcitation, sle_pairs
from ganops.models.gan import GANConfig, build, ema_update, load_generator


def cfg(size: int = 32, **kw) -> GANConfig:
    return GANConfig(
        **{"image_size": size, "channels": 3, "latent_dim": 8, "ngf": 8, "ndf": 8, "arch": "fastgan"} | kw
    )


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_and_the_self_supervised_discriminator(size):
    torch.manual_seed(0)
    G, D = build(cfg(size))
    assert isinstance(G, FastGenerator) and isinstance(D, FastDiscriminator) and D.self_supervised
    x = G(torch.randn(4, 8))
    assert x.shape == (4, 3, size, size) and x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (4,) and D([x]).shape == (4,)  # one scale, as a list too (what the loop passes)
    logits, rec = D(x, reconstruct=True)
    assert logits.shape == (4,) and rec.shape == () and rec > 0
    rec.backward()  # the decoders train through the reconstruction: both get gradient, and D's body too
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for m in (D.dec_all, D.dec_part) for p in m.parameters()
               if p.requires_grad and p.dim() > 1)  # fmt: skip
    assert D.from_img[0].parametrizations.weight.original.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unconditional"):
        D(x, torch.zeros(4, dtype=torch.long))


def test_skip_layer_excitation_gates_each_channel_within_0_and_1():
    torch.manual_seed(0)
    sle = SkipExcitation(16, 6).eval()  # eval: spectral norm's power iteration holds still between calls
    small, big = torch.randn(5, 16, 4, 4) * 10, torch.randn(5, 6, 64, 64)
    gate = sle.gate(small)
    assert (
        gate.shape == (5, 6, 1, 1) and gate.min() > 0 and gate.max() < 1
    )  # one weight per image and channel
    assert torch.allclose(sle(small, big), big * gate)
    assert sle_pairs(256) == [(4, 64), (8, 128), (16, 256)] and sle_pairs(128) == [(4, 64), (8, 128)]
    assert sle_pairs(64) == [(4, 64)] and sle_pairs(32) == [(4, 32)]
    G = FastGenerator(cfg(64))
    assert list(G.sle) == ["4_64"]


def test_every_conv_is_spectrally_normalised_and_noise_starts_off():
    G, D = build(cfg(64))
    convs = [
        m
        for net in (G, D)
        for m in net.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    noises = [m for m in G.modules() if isinstance(m, NoiseInjection)]
    assert len(noises) == 4 and all(n.weight.item() == 0 for n in noises)  # 8x8 and 32x32 blocks, two each
    assert not [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d) and m.stride != (1, 1)]


def test_eval_g_is_a_pure_function_of_z_and_training_draws_noise():
    torch.manual_seed(0)
    G, _ = build(cfg(32))
    for n in G.modules():
        if isinstance(n, NoiseInjection):
            n.weight.data.fill_(0.5)
    z = torch.randn(3, 8)
    G.eval()
    assert torch.equal(G(z), G(z))  # the fixed noise maps: same z, same image (serving, grids, metrics)
    noise = next(m for m in G.modules() if isinstance(m, NoiseInjection)).train()
    h = torch.zeros(2, 4, 8, 8)
    torch.manual_seed(1)
    a = noise(h)
    torch.manual_seed(1)
    assert torch.equal(a, noise(h)) and not torch.equal(a, noise(h))  # training: torch's (checkpointed) RNG
    assert torch.equal(noise.eval()(h), noise(h))


def test_exports_load_and_ema_follow(tmp_path):
    c = cfg(32)
    G, _ = build(c)
    ema, _ = build(c)
    ema_update(ema, G, 0.0)  # decay 0: a copy, buffers (BN statistics, fixed noise) included
    atomic_write(tmp_path / "generator.pt", ema.state_dict())
    atomic_write(tmp_path / "config.json", json.dumps({"model": c.to_dict()}))
    G2 = load_generator(tmp_path)
    z = torch.randn(2, 8)
    assert isinstance(G2, FastGenerator) and torch.equal(G.eval()(z), G2(z))


def test_fastgan_config_rules():
    with pytest.raises(ValueError, match="unconditional"):
        cfg(32, class_counts=(3, 4))
    with pytest.raises(ValueError, match="image_size >= 16"):
        cfg(8)
