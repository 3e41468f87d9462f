"""stages.style_job: what a Dask worker rebuilds from params and paths equals what stylize_setup made; the
fast net's registration (name, alias, artifact path) and what readers of the registry load back."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ganops import stages
from ganops.config import load_params
from ganops.stylize import fast_stylize, load_image
from tests.conftest import PARAMS

ROOT = Path(__file__).resolve().parents[1]
TINY = ["style.size=32", "style.steps=3", "style.style_layers={relu1_1: 1.0, relu2_1: 1.0}",
        "style.method=fast", "style.fast_steps=2", "style.fast_width=4"]  # fmt: skip


def test_rebuilt_job_stylises_exactly_like_the_setup_one(tmp_path, isolated_tracking):
    shutil.copytree(ROOT / "data/paintings", tmp_path / "data/paintings")
    shutil.copytree(ROOT / "data/photos", tmp_path / "data/photos")
    p = load_params(PARAMS, TINY)
    at = stages.Layout(root=tmp_path, tracking_root=tmp_path)
    made = stages.stylize_setup(p, "shipwreck", at, progress=False)
    again = stages.style_job(p, "shipwreck", at)
    assert again.contents == made.contents and again.vgg.name == made.vgg.name
    assert [w for _, w in again.styles] == [w for _, w in made.styles]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(again.styles, made.styles, strict=True))
    assert again.net is not None and again.net.precision == made.net.precision
    img = load_image(made.contents[0], p.style.max_side)
    assert torch.equal(fast_stylize(again.net, img), fast_stylize(made.net, img))


def test_fast_setup_decodes_each_photo_once_per_use_and_a_bad_one_stops_it_before_outputs_go(
    tmp_path, isolated_tracking, monkeypatch
):
    from ganops import stylize

    shutil.copytree(ROOT / "data/paintings", tmp_path / "data/paintings")
    shutil.copytree(ROOT / "data/photos", tmp_path / "data/photos")
    p = load_params(PARAMS, TINY)
    at = stages.Layout(root=tmp_path, tracking_root=tmp_path)
    opened: list[str] = []
    real = stylize.open_image
    monkeypatch.setattr(
        stylize, "open_image", lambda path, **kw: opened.append(Path(path).name) or real(path, **kw)
    )
    stages.stylize_setup(p, "shipwreck", at, progress=False)
    # each photo once to check it and once more as the net's training corpus (then held), the painting once
    assert sorted(opened) == ["china.jpg", "china.jpg", "flower.jpg", "flower.jpg", "shipwreck.jpg"]

    kept = at.stylized / "shipwreck" / "earlier.png"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(b"an earlier result")
    (tmp_path / "data/photos/broken.jpg").write_bytes(b"\xff\xd8 nope")
    try:
        stages.stylize_setup(p, "shipwreck", at, progress=False)
    except stylize.StyleError as err:
        assert "broken.jpg: not an image" in str(err)
    else:
        raise AssertionError("a corrupt photo must stop the setup")
    assert kept.read_bytes() == b"an earlier result"  # nothing cleared before the inputs were checked


def test_fast_net_is_registered_under_the_promote_alias_and_old_versions_still_load(
    tmp_path, isolated_tracking
):
    # the style nets' alias is promote.alias (the service looks the generator and the style nets up under one
    # alias); the net's folder is logged at STYLE_NET_ARTIFACT, and a version registered before, whose source
    # is the run's `checkpoint/`, loads the same way: readers go through the version, never the path
    from mlflow import MlflowClient

    from ganops.models.style import load_style_net
    from ganops.tracking import (
        STYLE_NET_ARTIFACT,
        RunContext,
        download_version,
        register_folder,
        style_model_name,
        style_run,
    )

    shutil.copytree(ROOT / "data/paintings", tmp_path / "data/paintings")
    shutil.copytree(ROOT / "data/photos", tmp_path / "data/photos")
    p = load_params(PARAMS, [*TINY, "promote.alias=staging"])
    at = stages.Layout(root=tmp_path, tracking_root=tmp_path)
    job = stages.stylize_setup(p, "shipwreck", at, progress=False)
    name = style_model_name("shipwreck")
    c = MlflowClient(isolated_tracking)
    new = c.get_model_version_by_alias(name, "staging")
    assert name == "ganops-style-shipwreck" and new.source.endswith(f"/{STYLE_NET_ARTIFACT}")
    assert STYLE_NET_ARTIFACT != "checkpoint"
    with style_run(p, ctx=RunContext(entry_point="test"), style="shipwreck", content="(training)",
                   extractor=job.vgg.name, root=tmp_path) as run:  # fmt: skip
        run.log_artifacts(at.style_models / "shipwreck", "checkpoint")  # how versions were logged before
        old = register_folder(run.run_id, "checkpoint", name, "older", {"style": "shipwreck"})
    img = load_image(job.contents[0], p.style.max_side)
    for version in (int(new.version), old):
        net = load_style_net(download_version(name, version, tmp_path / f"v{version}"))
        assert torch.equal(fast_stylize(net, img), fast_stylize(job.net, img))
