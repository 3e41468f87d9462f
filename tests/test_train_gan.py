import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ganops.artifacts import load_checkpoint, save_checkpoint
from ganops.config import PLAIN_DCGAN, GanParams
from ganops.distributed import Place
from ganops.models.gan import load_generator
from ganops.train_gan import Hooks, fit
from ganops.train_state import TrainingDiverged


def tiny(**kw) -> GanParams:
    # the plain DCGAN with tiny nets; a test turns on the stabiliser it checks
    base = PLAIN_DCGAN | dict(
        latent_dim=8,
        ngf=4,
        ndf=4,
        batch_size=8,
        steps=4,
        sample_every=2,
        checkpoint_every=2,
        log_every=1,
        grid_samples=4,
    )
    return GanParams(**(base | kw))


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=g)


def _weights(ckpt):
    state, _ = load_checkpoint(ckpt)
    return state


def _assert_equal(a, b, where: str) -> None:
    """``a`` == ``b``: tensors exactly (dtype, shape, values), dicts and lists/tuples entry by entry."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_same_training_state(ckpt_a, ckpt_b) -> None:
    """Two checkpoints hold the same G, D, G_ema (None when off) and both Adam states (moments, step, lr)."""
    a, b = _weights(ckpt_a), _weights(ckpt_b)
    for key in ("G", "D", "G_ema", "opt_g", "opt_d"):
        _assert_equal(a[key], b[key], key)


def test_one_step_changes_both_nets(images, tmp_path):
    fit(images, tiny(steps=1, checkpoint_every=1), tmp_path / "a", progress=False)
    # the same seed with zero training: the nets fit starts from (it seeds with base.seed = 0, then builds)
    from ganops.models.gan import GANConfig, build

    torch.manual_seed(0)
    G0, D0 = build(GANConfig(image_size=16, channels=1, latent_dim=8, ngf=4, ndf=4))
    s = _weights(tmp_path / "a" / "checkpoint.pt")
    # parameters only: BatchNorm's running statistics (buffers) move on a forward pass alone, so they
    # would "change" even if the optimiser step did nothing
    for net0, key in ((G0, "G"), (D0, "D")):
        params = dict(net0.named_parameters())
        assert params and set(params) <= set(s[key])
        changed = [name for name, p in params.items() if not torch.equal(p.detach(), s[key][name])]
        assert changed, f"{key}'s parameters did not change after one step"


def test_outputs_callbacks_and_export(images, tmp_path):
    seen, grids = [], []
    r = fit(images, tiny(), tmp_path, progress=False, data_hash="abc", hooks=Hooks(on_metrics=lambda s, m: seen.append((s, m)), on_sample=lambda s, p: grids.append((s, p))))  # fmt: skip
    assert r.completed and r.step == 4 and r.resumed_from == 0
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert set(seen[0][1]) == {"loss_d", "loss_g", "d_real", "d_fake", "img_per_s", "d_skipped"}
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
    full = fit(images, tiny(steps=8, checkpoint_every=4), tmp_path / "full", progress=False)
    # N steps, "crash", then resume for N more with the same settings
    fit(images, tiny(steps=4, checkpoint_every=4), tmp_path / "split", progress=False)
    resumed = fit(images, tiny(steps=8, checkpoint_every=4), tmp_path / "split", progress=False)
    assert resumed.resumed_from == 4 and resumed.step == 8
    assert_same_training_state(full.checkpoint, resumed.checkpoint)
    assert [r["loss_d"] for r in full.history] == [r["loss_d"] for r in resumed.history]


def test_stop_callback_checkpoints_and_resume_finishes(images, tmp_path):
    r = fit(
        images,
        tiny(steps=6, checkpoint_every=100),
        tmp_path,
        progress=False,
        hooks=Hooks(should_stop=lambda s: s == 3),
    )
    assert not r.completed and r.step == 3 and r.export is None
    assert _weights(r.checkpoint)["step"] == 3  # checkpointed on stop despite checkpoint_every=100
    r2 = fit(images, tiny(steps=6, checkpoint_every=100), tmp_path, progress=False)
    assert r2.completed and r2.resumed_from == 3 and r2.export is not None


def test_changed_settings_start_fresh(images, tmp_path, caplog):
    fit(images, tiny(), tmp_path, progress=False)
    r = fit(images, tiny(lr_d=1e-3), tmp_path, progress=False)
    assert r.resumed_from == 0
    assert "other settings" in caplog.text
    r = fit(images, tiny(lr_d=1e-3), tmp_path, progress=False, data_hash="different data")
    assert r.resumed_from == 0


def test_resume_false_ignores_checkpoint(images, tmp_path):
    fit(images, tiny(), tmp_path, progress=False)
    assert fit(images, tiny(resume=False), tmp_path, progress=False).resumed_from == 0


def test_batch_larger_than_dataset_is_a_clear_error(images, tmp_path):
    with pytest.raises(ValueError, match="batch_size 64"):
        fit(images, tiny(batch_size=64), tmp_path, progress=False)


def test_world_size_above_one_needs_a_process_group(images, tmp_path):
    # rank 1 writing nothing is shown with real ranks in tests/e2e/test_ddp.py
    with pytest.raises(ValueError, match="process group"):
        fit(images, tiny(), tmp_path, progress=False, place=Place(rank=1, world_size=2))
    assert not (tmp_path / "checkpoint.pt").exists()


STABILISERS = {
    "hinge": {"loss": "hinge"},
    "r1": {"r1_gamma": 1.0, "r1_every": 2},
    "spectral_norm": {"spectral_norm": True},
    "mbstd": {"mbstd": True},
    "diffaugment": {"diffaugment": ["color", "translation", "cutout"]},
    "d_steps": {"d_steps": 2},
    "msg": {"arch": "msg"},
    "resize": {"upsample": "resize"},
    "antialias": {"d_antialias": True, "spectral_norm": True},
    "msg_resize": {"arch": "msg", "upsample": "resize"},
    "fastgan": {"arch": "fastgan", "loss": "hinge", "ema_decay": 0.9, "diffaugment": ["color", "translation"]},
    # 6 steps: 4 px, fading to 8 px (alpha 0, 0.5), 8 px, fading to 16 px: the stop at 3 is at a phase change
    "progressive": {"arch": "progressive", "grow_fade_steps": 2, "grow_stable_steps": 1, "ema_decay": 0.9,
                    "conditional": True, "mbstd": True, "diffaugment": ["translation"]},
    "ema": {"ema_decay": 0.9},
    "conditional": {"conditional": True},
    "all": {"loss": "hinge", "r1_gamma": 0.5, "spectral_norm": True, "mbstd": True, "arch": "msg",
            "diffaugment": ["translation"], "ema_decay": 0.9, "conditional": "auto"},
}  # fmt: skip


@pytest.fixture
def labels(images):
    return torch.arange(len(images)) % 3  # three classes, for the conditional option


@pytest.mark.parametrize("name", list(STABILISERS))
def test_each_stabiliser_trains_and_resumes_exactly(name, images, labels, tmp_path):
    kw = STABILISERS[name]
    full = fit(
        images, tiny(steps=6, checkpoint_every=3, **kw), tmp_path / "full", labels=labels, progress=False
    )
    assert full.completed and all(
        math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) for r in full.history
    )
    G = load_generator(full.export)
    assert G(torch.randn(2, 8)).shape == (2, 1, 16, 16) and G.cfg.arch == kw.get("arch", "dcgan")
    assert G.cfg.n_classes == (3 if kw.get("conditional") else 0)
    assert G.cfg.upsample == kw.get("upsample", "transposed")
    # RNG for noise and augmentation is part of the checkpoint: stop at 3 + resume == uninterrupted
    split = tmp_path / "split"
    fit(images, tiny(steps=3, checkpoint_every=3, **kw), split, labels=labels, progress=False)
    resumed = fit(images, tiny(steps=6, checkpoint_every=3, **kw), split, labels=labels, progress=False)
    assert resumed.resumed_from == 3
    assert_same_training_state(full.checkpoint, resumed.checkpoint)


def test_settings_name_every_stabiliser(images, labels, tmp_path):
    fit(images, tiny(), tmp_path, labels=labels, progress=False)
    # each stabiliser changes the weights, so none may resume a checkpoint built without it
    for kw in STABILISERS.values():
        assert fit(images, tiny(**kw), tmp_path, labels=labels, progress=False).resumed_from == 0


def test_progressive_grows_resumes_mid_fade_exactly_and_reports_its_phase(images, labels, tmp_path, caplog):
    # fade 3, stable 1 at 16 px: step 0 at 4 px, 1-3 fade to 8 px, 4 at 8 px, 5-7 fade to 16 px, 8 at 16 px
    kw = {
        "arch": "progressive",
        "grow_fade_steps": 3,
        "grow_stable_steps": 1,
        "ema_decay": 0.9,
        "mbstd": True,
    }
    full = fit(images, tiny(steps=9, checkpoint_every=3, **kw), tmp_path / "full", progress=False)
    assert [(r["resolution"], round(r["fade_alpha"], 2)) for r in full.history] == [
        (4, 1), (8, 0), (8, 0.33), (8, 0.67), (8, 1), (16, 0), (16, 0.33), (16, 0.67), (16, 1)
    ]  # fmt: skip
    G = load_generator(full.export)
    assert G.growth.resolution == 16 and G(torch.randn(2, 8)).shape == (2, 1, 16, 16)
    # stopped mid-fade (after 6 of 9 steps, the next at 16 px, alpha 1/3) and resumed: the uninterrupted weights
    split = tmp_path / "split"
    stop = Hooks(should_stop=lambda step: step == 6)
    r = fit(images, tiny(steps=9, checkpoint_every=3, **kw), split, hooks=stop, progress=False)
    assert not r.completed and r.step == 6
    state, _ = load_checkpoint(split / "checkpoint.pt")
    assert state["G"]["growth_state"].tolist() == [2.0, 0.0]  # the checkpoint carries its last step's growth
    resumed = fit(images, tiny(steps=9, checkpoint_every=3, **kw), split, progress=False)
    assert resumed.resumed_from == 6
    assert_same_training_state(full.checkpoint, resumed.checkpoint)
    # a run that ends before the last level: warned, and the export is full size at the level it reached
    short = fit(images, tiny(steps=3, **kw), tmp_path / "short", progress=False)
    assert "ends before progressive growing reaches 16 px (9 steps" in caplog.text
    G = load_generator(short.export)
    x = G(torch.randn(2, 8))
    assert G.growth.level == 1 and G.growth.alpha == pytest.approx(1 / 3)  # its last step: 8 px, fading in
    assert x.shape == (2, 1, 16, 16)
    assert torch.equal(x, x[:, :, ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3))  # 2-px squares
    # the schedule shapes the weights: another one never resumes this checkpoint
    other = fit(images, tiny(steps=9, **(kw | {"grow_fade_steps": 2})), split, progress=False)
    assert other.resumed_from == 0


def test_fastgan_is_unconditional_auto_leaves_it_so_and_d_reports_its_reconstruction(
    images, labels, tmp_path
):
    with pytest.raises(ValueError, match="fastgan is unconditional"):
        fit(images, tiny(arch="fastgan", conditional=True), tmp_path, labels=labels, progress=False)
    r = fit(images, tiny(arch="fastgan", conditional="auto"), tmp_path, labels=labels, progress=False)
    G = load_generator(r.export)
    assert G.cfg.arch == "fastgan" and G.cfg.n_classes == 0 and G(torch.randn(3, 8)).shape == (3, 1, 16, 16)
    # the self-supervised D's decoding error is reported beside the losses, and falls from its start
    rec = [row["d_reconstruction"] for row in r.history]
    assert len(rec) == 4 and all(0 < x < 2 for x in rec)


def test_conditional_needs_labels_auto_follows_them(images, labels, tmp_path):
    with pytest.raises(ValueError, match="gan.conditional: true needs labelled data"):
        fit(images, tiny(conditional=True), tmp_path, progress=False)
    with pytest.raises(ValueError, match="labelled data"):  # one image without a label is not labelled data
        fit(images, tiny(conditional=True), tmp_path, labels=torch.cat([labels[:-1], torch.tensor([-1])]))
    with pytest.raises(ValueError, match="40 images but 39 labels"):
        fit(images, tiny(conditional=True), tmp_path, labels=labels[:-1])
    unlabelled = fit(images, tiny(conditional="auto"), tmp_path / "u", progress=False)
    assert load_generator(unlabelled.export).cfg.n_classes == 0
    labelled = fit(images, tiny(conditional="auto"), tmp_path / "l", labels=labels, progress=False)
    assert load_generator(labelled.export).cfg.class_counts == (14, 13, 13)
    off = fit(images, tiny(conditional=False), tmp_path / "o", labels=labels, progress=False)
    assert load_generator(off.export).cfg.n_classes == 0
    # "auto" and true on labelled data build the same model: the checkpoint resumes across them
    more = fit(images, tiny(conditional=True, steps=6), tmp_path / "l", labels=labels, progress=False)
    assert more.resumed_from == 4


def test_conditional_generator_draws_the_class_it_is_asked_for(tmp_path):
    # class 0: dark images, class 1: bright ones. A conditional G must learn which is which.
    g = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 40, (32, 1, 16, 16), dtype=torch.uint8, generator=g)
    bright = torch.randint(215, 256, (32, 1, 16, 16), dtype=torch.uint8, generator=g)
    images, labels = torch.cat([dark, bright]), torch.tensor([0] * 32 + [1] * 32)
    p = tiny(steps=300, checkpoint_every=300, sample_every=300, ngf=8, ndf=8, lr_g=1e-3, lr_d=1e-3,
             conditional=True, loss="hinge", grid_samples=6)  # fmt: skip
    G = load_generator(fit(images, p, tmp_path, labels=labels, progress=False).export)
    z = torch.randn(64, 8)
    with torch.no_grad():
        asked_dark, asked_bright = (
            G(z, torch.zeros(64, dtype=torch.long)),
            G(z, torch.ones(64, dtype=torch.long)),
        )
    assert asked_dark.mean() < -0.5 < 0.5 < asked_bright.mean()  # the data: about -0.84 and +0.84
    # the sample grid reads class by class: one column per class (2 px padding around 16 px tiles)
    grid = Image.open(tmp_path / "final" / "samples.png")
    assert grid.size == (2 + 2 * 18, 2 + 3 * 18)  # 6 samples: 2 columns (classes) x 3 rows, not 3 x 2
    px = torch.from_numpy(np.array(grid.convert("L"))).float()
    left, right = px[:, 2:18].mean(), px[:, 20:36].mean()
    assert left < 100 < 150 < right  # column 0 asks for dark images, column 1 for bright ones
    # without a class, G draws one from z, in the data's proportions (half and half here)
    drawn = G.labels_for(torch.randn(4000, 8))
    assert 0.45 < drawn.double().mean() < 0.55


def test_ema_weights_are_exported_for_serving_and_differ_from_raw(images, tmp_path):
    r = fit(images, tiny(steps=6, ema_decay=0.9), tmp_path, progress=False)
    final = r.export
    ema = torch.load(final / "generator.pt", weights_only=True)
    raw = torch.load(final / "generator_raw.pt", weights_only=True)
    differs = [k for k in ema if ema[k].is_floating_point() and not torch.equal(ema[k], raw[k])]
    assert differs and json.loads((final / "config.json").read_text())["ema"] is True
    # the EMA is an average of the raw trajectory: it lags behind the raw weights, not beyond them
    state = _weights(r.checkpoint)
    assert all(torch.equal(state["G_ema"][k], ema[k]) for k in ema)
    G = load_generator(final)  # what evaluate, promote and serving load
    assert torch.equal(G.state_dict()["main.0.weight"], ema["main.0.weight"])


def test_d_skip_counts_skipped_updates(images, tmp_path):
    seen = []
    # a threshold no loss is under: nothing skipped; one every loss is under: every D update skipped
    r = fit(images, tiny(d_skip_below=1e-9), tmp_path / "a", progress=False)
    assert r.counters["d_skipped"] == 0
    r = fit(images, tiny(d_skip_below=100.0, d_steps=2), tmp_path / "b", progress=False, hooks=Hooks(on_metrics=lambda s, m: seen.append(m)))  # fmt: skip
    assert r.counters["d_skipped"] == 8 and seen[-1]["d_skipped"] == 8
    from ganops.models.gan import GANConfig, build

    torch.manual_seed(0)
    _, D0 = build(GANConfig(image_size=16, channels=1, latent_dim=8, ngf=4, ndf=4))
    D = _weights(r.checkpoint)["D"]
    assert all(
        torch.equal(v, D[k]) for k, v in D0.state_dict().items() if k.endswith("weight")
    )  # D never moved


def test_injected_nan_is_rolled_back_and_training_continues(images, tmp_path, caplog):
    seen = []

    def poison(step, G, D):
        if step == 5 and not poisoned:
            poisoned.append(step)
            with torch.no_grad():
                next(G.parameters()).fill_(float("nan"))

    poisoned: list[int] = []
    r = fit(images, tiny(steps=8, checkpoint_every=4, lr_g=1e-3, lr_d=2e-3), tmp_path, progress=False, hooks=Hooks(after_step=poison, on_metrics=lambda s, m: seen.append((s, m))))  # fmt: skip
    assert r.completed and r.step == 8 and r.counters["nan_rollbacks"] == 1
    assert "rolled back to step 4" in caplog.text
    rollback = [(s, m) for s, m in seen if "nan_rollbacks" in m]
    assert rollback == [(4, {"nan_rollbacks": 1.0, "lr_g": 5e-4, "lr_d": 1e-3})]
    state = _weights(r.checkpoint)
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())
    assert state["opt_g"]["param_groups"][0]["lr"] == 5e-4  # the lowered rate is kept (and resumed)
    assert [row["step"] for row in r.history] == [1, 2, 3, 4, 5, 6, 7, 8]  # rows after step 4 rewritten


def test_two_nans_before_the_next_checkpoint_both_roll_back_to_clean_state(images, tmp_path):
    # The second rollback must restore the checkpoint's Adam moments, not ones the first NaN's aftermath
    # wrote into (the optimizer adopts the tensors it is restored from).
    poisoned: list[int] = []

    def poison(step, G, D):
        if step == 5 and len(poisoned) < 2:
            poisoned.append(step)
            with torch.no_grad():
                next(G.parameters()).fill_(float("nan"))

    r = fit(images, tiny(steps=8, checkpoint_every=4, nan_max_rollbacks=3), tmp_path, progress=False, hooks=Hooks(after_step=poison))  # fmt: skip
    assert poisoned == [5, 5]
    assert r.completed and r.step == 8 and r.counters["nan_rollbacks"] == 2
    state = _weights(r.checkpoint)
    for key in ("G", "D"):
        assert all(torch.isfinite(v).all() for v in state[key].values() if v.is_floating_point())
    for opt in ("opt_g", "opt_d"):
        for moments in state[opt]["state"].values():
            assert all(torch.isfinite(v).all() for v in moments.values())


def test_stale_temp_files_of_a_killed_run_are_removed_at_start(images, tmp_path):
    (tmp_path / "final").mkdir(parents=True)
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / "final" / ".generator.pt.x9.tmp"]
    for f in stale:
        f.write_bytes(b"half a file")
    keep = tmp_path / "notes.tmp"  # not one of atomic_write's temp names: not ours to delete
    keep.write_text("mine")
    fit(images, tiny(steps=2), tmp_path, progress=False)
    assert not any(f.exists() for f in stale) and keep.read_text() == "mine"
    assert not list(tmp_path.rglob(".*.tmp"))


def test_nan_every_time_gives_up_with_advice(images, tmp_path):
    def poison(step, G, D):
        with torch.no_grad():
            next(G.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="after 2 rollback"):
        fit(
            images,
            tiny(steps=8, nan_max_rollbacks=2),
            tmp_path,
            progress=False,
            hooks=Hooks(after_step=poison),
        )


def test_monitor_reports_and_keeps_the_best_export(images, tmp_path):
    scores = iter([3.0, 1.0, 2.0])
    calls = []

    def monitor(G):
        calls.append(G.training)
        return {"domain_fid": next(scores), "kl": 0.5, "coverage": 1, "mode_collapse": True}

    seen = []
    r = fit(images, tiny(steps=6, monitor_every=2, ema_decay=0.9), tmp_path, progress=False, hooks=Hooks(monitor=monitor, on_metrics=lambda s, m: seen.append((s, m))))  # fmt: skip
    assert calls == [False, False, False]  # scored in eval mode
    assert [m["step"] for m in r.monitor] == [2, 4, 6]
    assert [(s, m["monitor_domain_fid"]) for s, m in seen if "monitor_domain_fid" in m] == [
        (2, 3.0),
        (4, 1.0),
        (6, 2.0),
    ]
    best = json.loads((r.best / "config.json").read_text())
    assert best["step"] == 4 and best["monitor"]["domain_fid"] == 1.0 and best["ema"] is True
    assert (r.best / "generator.pt").is_file() and load_generator(r.best)
    assert json.loads((r.export / "config.json").read_text())["step"] == 6  # the last, besides the best


def test_diffaugment_sees_real_and_fake_in_both_phases_with_one_policy(images, tmp_path, monkeypatch):
    import ganops.losses as losses  # GanLoss applies the policy in both phases

    calls = []
    real_fn = losses.diff_augment

    def spy(x, policy, generator=None):
        calls.append((policy, x[0].requires_grad))
        return real_fn(x, policy, generator)

    monkeypatch.setattr(losses, "diff_augment", spy)
    fit(images, tiny(steps=2, diffaugment=["translation", "cutout"]), tmp_path, progress=False)
    # per step: D phase real (no grad), D phase fake (detached), G phase fake (grad flows to G)
    assert calls == [(("translation", "cutout"), False), (("translation", "cutout"), False),
                     (("translation", "cutout"), True)] * 2  # fmt: skip


def test_bf16_autocast_trains_in_float32_weights_and_resumes_exactly(images, tmp_path):
    # gan.amp is meant for CUDA; CPU autocast runs the same code path here (bf16 forward, fp32 weights)
    fp32 = fit(images, tiny(steps=4), tmp_path / "fp32", progress=False)
    full = fit(images, tiny(steps=4, amp=True), tmp_path / "full", progress=False)
    a = _weights(full.checkpoint)
    assert all(v.dtype == torch.float32 for v in a["G"].values() if v.is_floating_point())
    assert all(math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) for r in full.history)
    assert full.history[-1]["loss_d"] != fp32.history[-1]["loss_d"]  # bf16 forward passes: other numbers
    fit(images, tiny(steps=2, amp=True), tmp_path / "split", progress=False)
    resumed = fit(images, tiny(steps=4, amp=True), tmp_path / "split", progress=False)
    assert resumed.resumed_from == 2
    assert_same_training_state(full.checkpoint, resumed.checkpoint)
    # an amp checkpoint does not resume in float32 (other settings)
    assert fit(images, tiny(steps=4), tmp_path / "split", progress=False).resumed_from == 0


def test_a_checkpoint_written_before_a_setting_existed_resumes_at_its_legacy_value(images, tmp_path):
    # amp, world_size and the model's g_norm and upsample came after the first checkpoints: one that lacks
    # them resumes
    fit(images, tiny(steps=2), tmp_path, progress=False)
    state, conf = load_checkpoint(tmp_path / "checkpoint.pt")
    older = {k: v for k, v in conf["settings"].items() if k not in ("amp", "world_size")}
    older["model"] = {
        k: v for k, v in older["model"].items() if k not in ("g_norm", "upsample", "d_antialias")
    }
    save_checkpoint(tmp_path / "checkpoint.pt", state, {"settings": older})
    assert fit(images, tiny(steps=4), tmp_path, progress=False).resumed_from == 2
    # ... but not under settings that differ from the legacy values (amp on, G without BatchNorm)
    save_checkpoint(tmp_path / "checkpoint.pt", state, {"settings": older})
    assert fit(images, tiny(steps=4, g_norm="none"), tmp_path, progress=False).resumed_from == 0
    save_checkpoint(tmp_path / "checkpoint.pt", state, {"settings": older})
    assert fit(images, tiny(steps=4, upsample="resize"), tmp_path, progress=False).resumed_from == 0
    save_checkpoint(tmp_path / "checkpoint.pt", state, {"settings": older})
    assert fit(images, tiny(steps=4, d_antialias=True), tmp_path, progress=False).resumed_from == 0


def test_a_collapsed_monitor_result_logs_a_warning(images, tmp_path, caplog):
    # README: the monitor scores the EMA generator every N steps, "a warning on collapse".
    verdicts = iter([False, True])

    def monitor(G):
        return {"domain_fid": 1.0, "kl": 2.3, "coverage": 1, "mode_collapse": next(verdicts)}

    with caplog.at_level("WARNING", logger="ganops"):
        fit(images, tiny(steps=4, monitor_every=2), tmp_path, progress=False, hooks=Hooks(monitor=monitor))
    warned = [r.getMessage() for r in caplog.records if "possible mode collapse" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("step 4:"), warned  # only the collapsed check warns


def test_progress_bar_shows_losses_d_outputs_and_throughput(images, tmp_path, capsys):
    # README: "A progress bar shows losses, D(x), D(G(z)) and img/s" (tqdm writes to stderr).
    fit(images, tiny(steps=3), tmp_path, progress=True)
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "3/3" in last
    for key in ("loss_d=", "loss_g=", "Dx=", "DGz=", "img_s="):
        assert key in last, (key, last)
    fit(images, tiny(steps=3, resume=False), tmp_path / "quiet", progress=False)
    assert "loss_d=" not in capsys.readouterr().err


def test_fastgan_at_128_px_trains_resumes_exactly_and_exports_full_size(tmp_path):
    # what `arch: auto` trains for 128-px pictures: tiny widths, 4 steps, stopped at 2 and resumed
    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 256, (16, 3, 128, 128), dtype=torch.uint8, generator=g)
    kw = {"arch": "auto", "ngf": 2, "ndf": 1, "batch_size": 4, "steps": 4, "checkpoint_every": 2}
    full = fit(big, tiny(**kw), tmp_path / "full", progress=False)
    G = load_generator(full.export)
    assert G.cfg.arch == "fastgan" and G(torch.randn(2, 8)).shape == (2, 3, 128, 128)
    fit(big, tiny(**(kw | {"steps": 2})), tmp_path / "split", progress=False)
    resumed = fit(big, tiny(**kw), tmp_path / "split", progress=False)
    assert resumed.resumed_from == 2
    assert_same_training_state(full.checkpoint, resumed.checkpoint)
