import json

import pytest
import torch

from ganops.checkpoint import load_checkpoint
from ganops.config import GanParams
from ganops.models.gan import load_generator
from ganops.train_gan import train_gan


def tiny(**kw) -> GanParams:
    base = dict(
        latent_dim=8,
        ngf=4,
        ndf=4,
        batch_size=8,
        steps=4,
        sample_every=2,
        checkpoint_every=2,
        log_every=1,
        n_samples=4,
    )
    return GanParams(**(base | kw))


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=g)


def _weights(ckpt):
    state, _ = load_checkpoint(ckpt)
    return state


def test_one_step_changes_both_nets(images, tmp_path):
    train_gan(images, tiny(steps=0 + 1, checkpoint_every=1), tmp_path / "a", progress=False)
    # the same seed with zero training: compare with a fresh build
    from ganops.models.gan import GANConfig, build

    torch.manual_seed(0)
    G0, D0 = build(GANConfig(image_size=16, channels=1, latent_dim=8, ngf=4, ndf=4))
    s = _weights(tmp_path / "a" / "checkpoint.pt")
    for net0, key in ((G0, "G"), (D0, "D")):
        changed = [
            not torch.equal(v, s[key][k]) for k, v in net0.state_dict().items() if v.is_floating_point()
        ]
        assert any(changed), f"{key} did not change after one step"


def test_outputs_callbacks_and_export(images, tmp_path):
    seen, grids = [], []
    r = train_gan(
        images, tiny(), tmp_path, progress=False, data_hash="abc",
        on_metrics=lambda s, m: seen.append((s, m)), on_sample=lambda s, p: grids.append((s, p)),
    )  # fmt: skip
    assert r.completed and r.step == 4 and r.resumed_from == 0
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert set(seen[0][1]) == {"loss_d", "loss_g", "d_real", "d_fake", "img_per_s"}
    assert all(0 <= m["d_real"] <= 1 and m["img_per_s"] > 0 for _, m in seen)
    assert [s for s, _ in grids] == [2, 4] and all(p.is_file() for _, p in grids)
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == [
        "config.json", "discriminator.pt", "generator.pt", "samples.png",
    ]  # fmt: skip
    cfg = json.loads((tmp_path / "final" / "config.json").read_text())
    assert cfg["model"]["image_size"] == 16 and cfg["settings"]["data_hash"] == "abc" and cfg["step"] == 4
    G = load_generator(tmp_path / "final")
    assert G(torch.randn(3, 8)).shape == (3, 1, 16, 16)
    assert len(r.history) == 4 and r.history[-1]["step"] == 4


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(images, tmp_path):
    full = train_gan(images, tiny(steps=8, checkpoint_every=4), tmp_path / "full", progress=False)
    # N steps, "crash", then resume for N more with the same settings
    train_gan(images, tiny(steps=4, checkpoint_every=4), tmp_path / "split", progress=False)
    resumed = train_gan(images, tiny(steps=8, checkpoint_every=4), tmp_path / "split", progress=False)
    assert resumed.resumed_from == 4 and resumed.step == 8
    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    for net in ("G", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert [r["loss_d"] for r in full.history] == [r["loss_d"] for r in resumed.history]


def test_stop_callback_checkpoints_and_resume_finishes(images, tmp_path):
    r = train_gan(
        images, tiny(steps=6, checkpoint_every=100), tmp_path, progress=False, should_stop=lambda s: s == 3
    )
    assert not r.completed and r.step == 3 and r.export is None
    assert _weights(r.checkpoint)["step"] == 3  # checkpointed on stop despite checkpoint_every=100
    r2 = train_gan(images, tiny(steps=6, checkpoint_every=100), tmp_path, progress=False)
    assert r2.completed and r2.resumed_from == 3 and r2.export is not None


def test_changed_settings_start_fresh(images, tmp_path, caplog):
    train_gan(images, tiny(), tmp_path, progress=False)
    r = train_gan(images, tiny(lr_d=1e-3), tmp_path, progress=False)
    assert r.resumed_from == 0
    assert "other settings" in caplog.text
    r = train_gan(images, tiny(lr_d=1e-3), tmp_path, progress=False, data_hash="different data")
    assert r.resumed_from == 0


def test_resume_false_ignores_checkpoint(images, tmp_path):
    train_gan(images, tiny(), tmp_path, progress=False)
    assert train_gan(images, tiny(resume=False), tmp_path, progress=False).resumed_from == 0


def test_batch_larger_than_dataset_is_a_clear_error(images, tmp_path):
    with pytest.raises(ValueError, match="batch_size 64"):
        train_gan(images, tiny(batch_size=64), tmp_path, progress=False)


def test_rank_one_writes_nothing(images, tmp_path):
    r = train_gan(images, tiny(), tmp_path, progress=False, rank=1, world_size=2)
    assert r.step == 4 and not r.checkpoint.exists() and r.export is None and r.history == []
