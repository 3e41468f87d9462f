import pytest
import torch

from ganops.models.gan import GANConfig, build, ema_update, load_generator
from ganops.models.progressive import (
    Growth,
    ProDiscriminator,
    ProGenerator,
    grown_by,
    growth_at,
    growth_for,
    schedule_warning,
)
from ganops.train_gan import TrainRun, write_export
from ganops.train_state import TrainState


def cfg(size: int = 16, **kw) -> GANConfig:
    return GANConfig(
        **{"image_size": size, "channels": 3, "latent_dim": 8, "ngf": 8, "ndf": 8, "arch": "progressive"} | kw
    )


def test_the_schedule_starts_stable_at_4px_then_fades_in_each_level_from_alpha_0():
    # fade 4, stable 2, two levels (16 px): 2 steps at 4 px, 4 fading to 8 px, 2 at 8, 4 fading to 16, then 16
    got = [growth_at(s, fade=4, stable=2, n_blocks=2) for s in range(14)]
    assert [g.level for g in got] == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert [g.alpha for g in got] == [1, 1, 0, 0.25, 0.5, 0.75, 1, 1, 0, 0.25, 0.5, 0.75, 1, 1]
    assert [g.resolution for g in got[::4]] == [4, 8, 16, 16]
    assert not got[0].fading and got[2].fading and not got[6].fading
    assert grown_by(4, 2, 2) == 14 and growth_at(10_000, 4, 2, 2) == Growth(2)
    assert growth_for(cfg(arch="dcgan"), 4, 2, 3) is None and growth_for(cfg(), 4, 2, 3) == Growth(1, 0.25)
    assert Growth(1, 0.25).metrics() == {"resolution": 8.0, "fade_alpha": 0.25}


def test_schedule_warning_says_where_a_short_run_stops():
    assert schedule_warning(cfg(), steps=14, fade=4, stable=2) is None
    assert schedule_warning(cfg(arch="dcgan"), steps=1, fade=4, stable=2) is None
    note = schedule_warning(cfg(), steps=5, fade=4, stable=2)
    assert "reaches 16 px (14 steps" in note and "draws at 8 px (fading in, alpha 0.50)" in note


@pytest.mark.parametrize("size", [16, 32])
def test_every_level_draws_full_size_images_at_its_own_resolution(size):
    torch.manual_seed(0)
    G, D = build(cfg(size))
    assert isinstance(G, ProGenerator) and isinstance(D, ProDiscriminator)
    z = torch.randn(4, 8)
    for level in range(G.cfg.n_blocks + 1):
        for alpha in (0.5, 1.0):
            g = Growth(level, alpha if level else 1.0)
            G.set_growth(g)
            D.set_growth(g)
            x = G(z)
            assert x.shape == (4, 3, size, size) and x.min() >= -1 and x.max() <= 1
            k = size // g.resolution  # each pixel of the r x r image is a k x k square
            assert torch.equal(x, x[:, :, ::k, ::k].repeat_interleave(k, 2).repeat_interleave(k, 3))
            assert D(x).shape == (4,) and D([x]).shape == (4,)
    with pytest.raises(ValueError, match="level 3 outside 0..2"):
        build(cfg(16))[0].set_growth(Growth(3))


def test_alpha_0_is_the_old_level_and_alpha_1_the_new_one_in_both_nets():
    torch.manual_seed(0)
    G, D = build(cfg(32))
    G.eval(), D.eval()
    z, x = torch.randn(4, 8), torch.rand(4, 3, 32, 32) * 2 - 1
    for level in (1, 2, 3):

        def at(g):
            G.set_growth(g)
            D.set_growth(g)
            return G(z), D(x)

        old, new = at(Growth(level - 1)), at(Growth(level))
        start, end, mid = at(Growth(level, 0.0)), at(Growth(level, 1.0)), at(Growth(level, 0.5))
        assert torch.equal(start[0], old[0]) and torch.allclose(start[1], old[1], atol=1e-6)
        assert torch.equal(end[0], new[0]) and torch.equal(end[1], new[1])
        assert not torch.allclose(mid[0], old[0]) and not torch.allclose(mid[0], new[0])


@pytest.mark.parametrize("growth", [Growth(0), Growth(1, 0.5), Growth(1), Growth(2, 0.0), Growth(2)])
def test_active_lists_exactly_the_modules_that_get_gradient(growth):
    # what the per-phase DDP wrapper registers: every one of them gets gradient, no other module does
    torch.manual_seed(0)
    G, D = build(cfg(16, class_counts=(3, 5), mbstd=True))
    y = torch.tensor([0, 1, 1, 0])
    for net in (G, D):
        net.set_growth(growth)
    D(G(torch.randn(4, 8), y), y).sum().backward()
    for net in (G, D):
        active = {id(p) for m in net.active() for p in m.parameters()}
        graded = {id(p) for p in net.parameters() if p.grad is not None}
        assert graded == active, type(net).__name__


def test_growth_travels_in_the_weights_ema_and_export(tmp_path):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    from ganops.config import GanParams

    p = GanParams(arch="progressive", latent_dim=8, ngf=8, ndf=8, batch_size=4, ema_decay=0.9)
    run = TrainRun.create(images, p, tmp_path, progress=False)
    G, D = build(run.cfg)
    G.set_growth(Growth(1, 0.5))
    G_ema = build(run.cfg)[0]
    ema_update(G_ema, G, 0.5)  # buffers are copied: the EMA draws at G's growth
    assert G_ema.growth == Growth(1, 0.5)
    st = TrainState(G, D, G_ema.eval(), torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()),
                    torch.Generator(), torch.Generator())  # fmt: skip
    out = write_export(st, run, tmp_path / "final", {})
    loaded = load_generator(out)  # an export taken mid-fade keeps drawing as it did: at 8 px, half faded in
    z = torch.randn(3, 8)
    assert loaded.growth == Growth(1, 0.5) and torch.equal(loaded(z), G_ema(z))
    assert loaded(z).shape == (3, 3, 16, 16)


def test_conditional_pair_takes_classes():
    torch.manual_seed(0)
    G, D = build(cfg(16, class_counts=(2, 2)))
    y = torch.tensor([0, 1, 1])
    assert G(torch.randn(3, 8), y).shape == (3, 3, 16, 16)
    assert D(torch.zeros(3, 3, 16, 16), y).shape == (3,)
    with pytest.raises(ValueError, match="needs class labels"):
        D(torch.zeros(3, 3, 16, 16))
    with pytest.raises(ValueError, match="class labels must lie in 0..1"):
        D(torch.zeros(3, 3, 16, 16), torch.tensor([0, 1, 2]))
