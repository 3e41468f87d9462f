import json

import pytest
import torch

from ganops.artifacts import atomic_write
from ganops.models.gan import (
    LEGACY,
    GANConfig,
    MinibatchStd,
    build,
    ema_update,
    load_generator,
    noise_for_class,
)


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


@pytest.mark.parametrize("arch", ["dcgan", "msg"])
@pytest.mark.parametrize("sn", [False, True])
@pytest.mark.parametrize("mbstd", [False, True])
def test_options_build_and_run(arch, sn, mbstd):
    cfg = GANConfig(
        image_size=32, channels=3, latent_dim=8, ngf=4, ndf=4, arch=arch, spectral_norm=sn, mbstd=mbstd
    )
    G, D = build(cfg)
    z = torch.randn(8, 8)
    pyr = G.pyramid(z)
    assert [t.shape[-1] for t in pyr] == cfg.scales == ([4, 8, 16, 32] if arch == "msg" else [32])
    assert all(t.shape[:2] == (8, 3) for t in pyr)
    assert torch.equal(pyr[-1], G(z))  # G(z) is always the full-resolution image (what serving uses)
    D(pyr).sum().backward()
    # msg: every scale's head receives gradient through D (the point of multi-scale gradients)
    heads = [h[0].weight.grad for h in G.heads]
    assert len(heads) == (3 if arch == "msg" else 0) and all(
        g is not None and g.abs().sum() > 0 for g in heads
    )
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    assert has_bn != sn  # spectral norm replaces D's BatchNorm
    assert any("parametrizations" in k for k in D.state_dict()) == sn


def test_msg_discriminator_rejects_a_single_scale():
    cfg = GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4, arch="msg")
    _, D = build(cfg)
    with pytest.raises(ValueError, match="3 scale"):
        D(torch.randn(2, 1, 16, 16))


def test_minibatch_std_tells_a_collapsed_batch_from_a_varied_one():
    cfg = GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4, mbstd=True)
    mb = MinibatchStd()
    varied = torch.randn(8, 5, 4, 4)
    same = varied[:1].expand(8, -1, -1, -1)
    assert mb(varied).shape == (8, 6, 4, 4)
    assert mb(same)[:, -1].abs().max() < 1e-3 < mb(varied)[:, -1].min()
    assert mb(torch.randn(6, 5, 4, 4)).shape == (6, 6, 4, 4)  # 6 is not a multiple of 4: one group
    assert build(cfg)[1].out.in_channels == 4 * 2 + 1


def test_ema_update_moves_towards_the_model_and_copies_buffers():
    a, b = torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2)
    with torch.no_grad():
        a.weight.fill_(0.0)
        b.weight.fill_(1.0)
        b.running_mean.fill_(3.0)
    ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, torch.full((2,), 0.1))
    assert torch.equal(a.running_mean, b.running_mean)


def test_conditional_pair_takes_classes():
    cfg = GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4, mbstd=True, class_counts=[100, 300, 600])
    G, D = build(cfg)
    G.eval()
    z = torch.randn(6, 8)
    # no class given: G draws one from z, deterministically, in the data's proportions (0.1 / 0.3 / 0.6)
    assert torch.equal(G(z), G(z, G.labels_for(z)))
    drawn = torch.bincount(G.labels_for(torch.randn(20_000, 8)), minlength=3).double() / 20_000
    assert torch.allclose(drawn, torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), atol=0.015)
    # the class changes the image; z given as (B, Z, 1, 1) works alike
    a, b = G(z, torch.zeros(6, dtype=torch.long)), G(z[:, :, None, None], torch.full((6,), 2))
    assert a.shape == b.shape == (6, 1, 16, 16) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="0..2"):
        G(z, torch.full((6,), 3))
    # D's projection term: the same images score differently under other classes, and the class
    # embedding receives gradient
    x = G(z, torch.zeros(6, dtype=torch.long)).detach()
    y0, y1 = torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)
    D.embed.weight.data.normal_(0, 1)
    assert not torch.allclose(D(x, y0), D(x, y1))
    D(x, y1).sum().backward()
    assert D.embed.weight.grad[1].abs().sum() > 0 and D.embed.weight.grad[0].abs().sum() == 0
    with pytest.raises(ValueError, match="needs class labels"):
        D(x)


def test_unconditional_pair_refuses_classes_and_config_round_trips(tmp_path):
    G, D = build(GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4))
    with pytest.raises(ValueError, match="unconditional"):
        G(torch.randn(2, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="takes none"):
        D(torch.randn(2, 1, 16, 16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="2 classes"):
        GANConfig(class_counts=[50])
    cfg = GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4, class_counts=(5, 7), spectral_norm=True)
    assert GANConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg  # what config.json gives back
    G, D = build(cfg)
    assert D(G.pyramid(torch.randn(3, 8)), torch.tensor([0, 1, 1])).shape == (3,)


def test_noise_for_class_moves_only_z0_into_the_class():
    counts = (50, 150, 300)
    G, _ = build(GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4, class_counts=counts))
    z = torch.randn(3000, 8)
    z[:3, 0] = torch.tensor([-40.0, 40.0, 0.0])  # the far tails stay in their class too
    for k in range(3):
        moved = noise_for_class(z, torch.full((3000,), k), counts)
        assert G.labels_for(moved).eq(k).all() and torch.equal(moved[:, 1:], z[:, 1:])
    # z[0] keeps its order within the class: the same seed gives a comparable "style" across classes
    moved = noise_for_class(z[3:], torch.ones(2997, dtype=torch.long), counts)
    assert (moved[z[3:, 0].argsort(), 0].diff() >= 0).all()  # monotone in z[0]
    with pytest.raises(ValueError, match="0..2"):
        noise_for_class(z, torch.full((3000,), 3), counts)
    with pytest.raises(ValueError, match="unconditional"):
        noise_for_class(z, torch.zeros(3000, dtype=torch.long), ())


def test_g_norm_none_makes_every_image_independent_of_its_batch_mates():
    z = torch.randn(8, 8, 1, 1)
    for arch in ("dcgan", "msg"):
        cfg = GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4, arch=arch, g_norm="none")
        G, _ = build(cfg)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules())
        G.train()  # training mode: where BatchNorm would mix the batch
        whole, halves = G.pyramid(z), [G.pyramid(z[:4]), G.pyramid(z[4:])]
        for i, x in enumerate(whole):
            assert torch.allclose(x, torch.cat([halves[0][i], halves[1][i]]), atol=1e-6)
    G, _ = build(GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4))  # BatchNorm: the batch matters
    assert not torch.allclose(G(z)[:4], G(z[:4]), atol=1e-4)


def test_a_key_missing_from_an_older_config_takes_its_legacy_value():
    # configs written before g_norm existed have no such key: they rebuild the nets of that version
    older = {k: v for k, v in GANConfig(g_norm="none").to_dict().items() if k != "g_norm"}
    assert GANConfig.from_dict(older).g_norm == LEGACY["g_norm"] == "batch"
    assert GANConfig.from_dict(GANConfig(g_norm="none").to_dict()).g_norm == "none"  # a stored value wins
    assert GANConfig.from_dict(GANConfig().to_dict()) == GANConfig()
    with pytest.raises(ValueError, match="g_norm"):
        GANConfig(g_norm="layer")


@pytest.mark.parametrize("arch", ["dcgan", "msg"])
def test_resize_upsampling_has_no_transposed_conv_and_gives_the_same_shapes(arch):
    torch.manual_seed(0)
    cfg = GANConfig(image_size=32, channels=3, latent_dim=8, ngf=4, ndf=4, arch=arch, upsample="resize")
    G, D = build(cfg)
    assert not [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    ups = [m for m in G.modules() if isinstance(m, torch.nn.Upsample)]
    assert len(ups) == cfg.n_blocks and all(u.mode == "nearest" and u.scale_factor == 2 for u in ups)
    assert all(
        c.kernel_size == (3, 3) for c in G.modules() if isinstance(c, torch.nn.Conv2d) and c.out_channels > 3
    )
    z = torch.randn(4, 8)
    pyr = G.pyramid(z)
    assert [t.shape[-1] for t in pyr] == cfg.scales and torch.equal(pyr[-1], G(z))
    D(pyr).sum().backward()
    assert G.main[0][1].weight.std().item() == pytest.approx(
        0.02, rel=0.1
    )  # the linear start, DCGAN-initialised
    # the transposed G of the same config is another net: resize is not a relabelling
    T, _ = build(GANConfig(**{**cfg.to_dict(), "upsample": "transposed"}))
    assert set(T.state_dict()) != set(G.state_dict())


def test_a_config_without_upsample_is_transposed_and_loads(tmp_path):
    # every version registered before `upsample` existed: its config.json has no such key
    cfg = GANConfig(image_size=16, channels=1, latent_dim=8, ngf=4, ndf=4)
    G, _ = build(cfg)
    older = {k: v for k, v in cfg.to_dict().items() if k != "upsample"}
    atomic_write(tmp_path / "generator.pt", G.state_dict())
    atomic_write(tmp_path / "config.json", json.dumps({"model": older}))
    G2 = load_generator(tmp_path)
    assert G2.cfg.upsample == LEGACY["upsample"] == "transposed" and G2.cfg == cfg
    z = torch.randn(2, 8)
    assert torch.equal(G.eval()(z), G2(z))
    with pytest.raises(ValueError, match="upsample"):
        GANConfig(upsample="bilinear")


def test_blur_is_a_normalised_low_pass_and_sits_before_every_strided_conv_of_d():
    from ganops.models.dcgan import Discriminator
    from ganops.models.fastgan import FastDiscriminator
    from ganops.models.gan import Blur

    blur = Blur(2)
    flat = torch.full((1, 2, 8, 8), 0.7)
    assert blur(flat).shape == (1, 2, 8, 8) and torch.allclose(
        blur(flat)[..., 2:-2, 2:-2], flat[..., 2:-2, 2:-2]
    )
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1  # the highest frequency
    assert blur(checker.expand(1, 2, 8, 8))[..., 2:-2, 2:-2].abs().max() < 1e-6  # removed entirely
    assert Blur(3).state_dict() == {}  # a fixed filter, not a weight: exports keep their keys
    for D, n_strided in (
        (Discriminator(GANConfig(image_size=32, d_antialias=True)), 3),
        (Discriminator(GANConfig(image_size=32, arch="msg", d_antialias=True, channels=3)), 3),
        (FastDiscriminator(GANConfig(image_size=32, arch="fastgan", d_antialias=True, channels=3)), 2),
    ):
        mods = list(D.modules())
        strided = [i for i, m in enumerate(mods) if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
        assert len(strided) == n_strided
        assert all(isinstance(mods[i - 1], Blur) for i in strided), type(D).__name__
        x = torch.rand(4, D.cfg.channels, 32, 32)
        pyramid = [torch.nn.functional.avg_pool2d(x, 32 // side) for side in D.cfg.scales]  # [x] but for msg
        assert D(pyramid).shape == (4,)
    assert not any(isinstance(m, Blur) for m in Discriminator(GANConfig(image_size=32)).modules())
