import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from ganops.cli import app
from ganops.config import Params
from tests.conftest import PARAMS

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "-S", "data.image_size=16", "-S", "data.limit=64",
    "-S", "gan.steps=4", "-S", "gan.batch_size=16", "-S", "gan.ngf=4", "-S", "gan.ndf=4",
    "-S", "gan.latent_dim=8", "-S", "gan.sample_every=2", "-S", "gan.checkpoint_every=2", "-S", "gan.log_every=1",
    "-S", "gan.monitor_every=0",
]  # fmt: skip


@pytest.fixture
def project(tmp_path, monkeypatch, isolated_tracking):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_help_documents_every_command_and_option():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and "prepare" in r.output and "train-gan" in r.output and "summary" in r.output
    r = CliRunner().invoke(app, ["train-gan", "--help"])
    assert "--params" in r.output and "--set" in r.output and "--progress" in r.output


def test_prepare_then_train_then_summary(project, isolated_tracking):
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", *TINY])
    assert r.exit_code == 0, r.output
    assert "prepared 64 images (1x16x16, source digits, 10 classes)" in r.output
    r = runner.invoke(app, ["train-gan", "--no-progress", *TINY, "-S", "gan.monitor_every=2"])
    assert r.exit_code == 2 and "gan.monitor_every needs the domain classifier" in r.output  # nothing trained
    assert not (project / "models/gan").exists()
    assert (
        runner.invoke(app, ["classifier", "--no-progress", *TINY, "-S", "classifier.epochs=1"]).exit_code == 0
    )
    r = runner.invoke(app, ["train-gan", "--no-progress", *TINY, "-S", "gan.monitor_every=2"])
    assert r.exit_code == 0, r.output
    assert (project / "models/gan/best/generator.pt").is_file()
    assert (project / "models/gan/final/samples.png").is_file()
    m = json.loads((project / "metrics/train_gan.json").read_text())
    assert m["steps"] == 4 and set(m) >= {"loss_d", "loss_g", "d_real", "d_fake", "img_per_s", "d_skipped",
                                          "nan_rollbacks", "monitor_domain_fid", "monitor_kl", "best_step"}  # fmt: skip
    lines = (project / "metrics/train_gan_losses.csv").read_text().splitlines()
    assert lines[0] == "step,loss_d,loss_g,d_real,d_fake,img_per_s,d_skipped" and len(lines) == 5
    runs = MlflowClient(isolated_tracking).search_runs(
        [e.experiment_id for e in MlflowClient(isolated_tracking).search_experiments()]
    )
    assert len(runs) == 1 and runs[0].data.tags["entry_point"] == "cli"
    assert runs[0].data.params["gan.steps"] == "4"
    arts = [a.path for a in MlflowClient(isolated_tracking).list_artifacts(runs[0].info.run_id, "checkpoint")]
    assert "checkpoint/generator.pt" in arts and "checkpoint/config.json" in arts
    r = runner.invoke(app, ["classifier", "--no-progress", *TINY, "-S", "classifier.epochs=1"])
    assert r.exit_code == 0 and "domain-classifier -> models/classifier/ (held-out accuracy" in r.output
    r = runner.invoke(app, ["evaluate", *TINY, "-S", "evaluate.kid_subset_size=10"])
    assert r.exit_code == 0, r.output
    assert "domain FID" in r.output and "coverage" in r.output and "32 samples" in r.output
    ev = json.loads((project / "metrics/evaluate.json").read_text())
    assert ev["run_id"] == runs[0].info.run_id and ev["n_generated"] == 32
    evaluated = MlflowClient(isolated_tracking).get_run(ev["run_id"])
    assert "domain_fid" in evaluated.data.metrics
    note = evaluated.data.tags["mlflow.note.content"]  # the run's description: what, then how it scored
    assert note.startswith("dcgan generator trained on digits (first 64 pictures) at 16 px for 4 steps")
    assert f"Evaluated: domain_fid {ev['domain_fid']:.4g} (real-vs-real {ev['baseline_fid']:.4g})" in note
    assert [d.dataset.digest for d in evaluated.inputs.dataset_inputs] == [ev["dataset_hash"][:32]]
    r = runner.invoke(app, ["promote"])  # trained on 64 of the 1,797 digits: a smoke run never takes over
    assert (
        r.exit_code == 0
        and "@champion stays unset: candidate was trained on a subset (data.limit=64)" in r.output
    )
    r = runner.invoke(app, ["summary"])
    assert (
        "models/gan/final/samples.png" in r.output and "mlflow ui --backend-store-uri sqlite:///" in r.output
    )


def test_unavailable_device_is_a_clear_error(project, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = CliRunner()
    assert runner.invoke(app, ["prepare", *TINY]).exit_code == 0
    r = runner.invoke(app, ["classifier", "--no-progress", *TINY, "-S", "base.device=cuda"])
    assert r.exit_code == 2 and "base.device is 'cuda' but CUDA is not available here" in r.output


def test_best_export_is_evaluated_and_registered(project, isolated_tracking):
    # evaluate.export: best scores models/gan/best/ and promote registers the run's checkpoint_best/
    runner = CliRunner()
    full = ["data.limit=0" if s == "data.limit=64" else s for s in TINY]  # all the digits: promotable
    for cmd, extra in ((["prepare"], []), (["classifier", "--no-progress"], ["-S", "classifier.epochs=1"]),
                       (["train-gan", "--no-progress"], ["-S", "gan.monitor_every=2"])):  # fmt: skip
        r = runner.invoke(app, [*cmd, *full, *extra])  # later -S wins
        assert r.exit_code == 0, r.output
    best = json.loads((project / "models/gan/best/config.json").read_text())
    r = runner.invoke(app, ["evaluate", *full, "-S", "evaluate.export=best", "-S", "evaluate.n_samples=64",
                            "-S", "evaluate.kid_subset_size=10"])  # fmt: skip
    assert r.exit_code == 0, r.output
    ev = json.loads((project / "metrics/evaluate.json").read_text())
    assert ev["export"] == "best" and ev["step"] == best["step"]
    r = runner.invoke(app, ["promote", *full])
    assert r.exit_code == 0 and "v1 is now @champion" in r.output, r.output
    mv = MlflowClient(isolated_tracking).get_model_version("ganops-generator", "1")
    assert mv.source.endswith("/checkpoint_best") and mv.tags["export"] == "best"


def test_bad_parameter_is_named_and_nothing_runs(project):
    r = CliRunner().invoke(app, ["prepare", "-S", "data.sourse=folder"])
    assert r.exit_code == 2
    assert "data.sourse: unknown key (did you mean data.source?)" in r.output
    assert not (project / "data").exists()


def test_train_without_prepared_data_says_what_to_run(project):
    r = CliRunner().invoke(app, ["train-gan", *TINY])
    assert r.exit_code == 2 and "ganops prepare" in r.output


def test_train_with_stale_prepared_size(project):
    CliRunner().invoke(app, ["prepare", *TINY])
    r = CliRunner().invoke(app, ["train-gan", *TINY, "-S", "data.image_size=32"])
    assert r.exit_code == 2 and "holds 16px images but data.image_size is 32" in r.output


def test_unreachable_tracking_fails_before_training(project, monkeypatch):
    CliRunner().invoke(app, ["prepare", *TINY])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    r = CliRunner().invoke(app, ["train-gan", "--no-progress", *TINY])
    assert r.exit_code == 2 and "not reachable" in r.output
    assert not (project / "models" / "gan" / "checkpoint.pt").exists()


def test_folder_source_reports_skips(project):
    from PIL import Image

    own = project / "data" / "raw" / "own"
    own.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (24, 24), (i * 50, 0, 0)).save(own / f"{i}.png")
    (own / "broken.jpg").write_bytes(b"")
    r = CliRunner().invoke(app, ["prepare", "-S", "data.source=folder", "-S", "data.root=data/raw/own"])
    assert r.exit_code == 0, r.output
    assert "skipped 1 file(s)" in r.output and "broken.jpg: empty file (0 bytes)" in r.output
    report = json.loads((project / "data/prepared/report.json").read_text())
    assert report == {"skipped": [{"file": "broken.jpg", "reason": "empty file (0 bytes)"}]}
    man = json.loads((project / "data/prepared/manifest.json").read_text())
    assert man["count"] == 3 and man["channels"] == 3 and man["skipped"] == 1


def test_conditional_gan_on_unlabelled_pictures_is_a_clear_error(project):
    from PIL import Image

    own = project / "data" / "raw" / "own"
    own.mkdir(parents=True)
    for i in range(20):  # one flat folder: no class subfolders, so no labels
        Image.new("RGB", (24, 24), (i * 10, 0, 0)).save(own / f"{i}.png")
    src = [*TINY, "-S", "data.source=folder", "-S", "data.root=data/raw/own", "-S", "gan.batch_size=8"]
    assert CliRunner().invoke(app, ["prepare", *src]).exit_code == 0
    r = CliRunner().invoke(app, ["train-gan", "--no-progress", *src, "-S", "gan.conditional=true"])
    assert r.exit_code == 2 and "gan.conditional: true needs labelled data" in r.output
    assert not (project / "models" / "gan" / "checkpoint.pt").exists()
    # the default, auto, trains an unconditional GAN on them
    r = CliRunner().invoke(app, ["train-gan", "--no-progress", *src, "-S", "gan.conditional=auto"])
    assert r.exit_code == 0, r.output
    assert json.loads((project / "models/gan/final/config.json").read_text())["model"]["class_counts"] == []


def test_params_yaml_keys_all_have_comments():
    # every key in params.yaml carries a comment (house style); parse the file as text. The shipped copy,
    # tests/params.yaml, down to the keys of dict values; the working copy at its own keys only (the group
    # keys, two spaces in), which a user's edits keep: DVC's `-S` / `dvc exp apply` rewrites a list or dict
    # value in block style, one uncommented line per item, while the key keeps its comment.
    for line in PARAMS.read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
            assert "#" in line, f"tests/params.yaml key without a comment: {line.strip()}"
    assert yaml.safe_load(PARAMS.read_text())
    keys = [ln for ln in (ROOT / "params.yaml").read_text().splitlines() if re.match(r"  \w+:", ln)]
    assert len(keys) == len(Params().flat()), "a key line the pattern misses"
    assert all("#" in ln for ln in keys), [ln.strip() for ln in keys if "#" not in ln]


STYLE_TINY = [
    "-S",
    "style.size=32",
    "-S",
    "style.steps=4",
    "-S",
    "style.style_layers={relu1_1: 1.0, relu2_1: 1.0}",
]


def paintings(project: Path) -> None:
    """The shipped default style images, where params.yaml's style.style_dir expects them."""
    shutil.copytree(ROOT / "data/paintings", project / "data/paintings")


def photos(project: Path) -> None:
    """The shipped default photos, where params.yaml's style.content_dir expects them."""
    shutil.copytree(ROOT / "data/photos", project / "data/photos")


def test_stylize_and_sheet(project, isolated_tracking):
    runner = CliRunner()
    paintings(project)
    photos(project)
    before = {f.name: f.read_bytes() for f in (project / "data/photos").iterdir()}
    r = runner.invoke(app, ["stylize", "--style", "starry_night", "--no-progress", *STYLE_TINY])
    assert r.exit_code == 0, r.output
    assert "starry_night: feature extractor vgg19-caffe-q8, method gatys" in r.output
    assert "starry_night x china.jpg -> data/stylized/starry_night/china.png (loss" in r.output
    m = json.loads((project / "metrics/stylize/starry_night.json").read_text())
    assert m["extractor"] == "vgg19-caffe-q8" and set(m["pairs"]) == {"china", "flower"}
    assert m["pairs"]["china"]["final_total"] < m["pairs"]["china"]["start_total"]
    colour = {"colour_distance", "colour_distance_photo", "chroma", "style_chroma", "photo_chroma"}
    assert colour <= set(m["pairs"]["china"]) and m["pairs"]["china"]["colour_distance"] > 0
    fast = ["-S", "style.method=fast", "-S", "style.fast_steps=3", "-S", "style.fast_width=4"]
    for style in ("the_scream", "shipwreck"):
        r = runner.invoke(app, ["stylize", "--style", style, "--no-progress", *STYLE_TINY, *fast])
        assert r.exit_code == 0, r.output
    assert "registered ganops-style-shipwreck v1" in r.output
    assert (project / "models/style/shipwreck/transformer.pt").is_file()
    from PIL import Image

    fast_out = Image.open(project / "data/stylized/shipwreck/flower.png")
    gatys_out = Image.open(project / "data/stylized/starry_night/flower.png")
    assert fast_out.size == gatys_out.size == (32, 21)  # both at the working size (style.size=32), as trained
    r = runner.invoke(app, ["stylize-sheet"])
    assert r.exit_code == 0 and "2 contents x 3 styles" in r.output
    # 4 columns of 192 px; the paintings' row 192 px high, each 512x342 photo's row 128 px (+ caption strips)
    assert Image.open(project / "data/stylized_sheet.png").size == (
        4 + 4 * (192 + 4),
        4 + (192 + 18 + 4) + 2 * (128 + 18 + 4),
    )
    c = MlflowClient(isolated_tracking)
    exp = c.get_experiment_by_name("ganops-stylize")
    assert len(c.search_runs([exp.experiment_id])) == 2 + 2 * (
        1 + 2
    )  # gatys pairs, 2 x (fast training + pairs)
    assert int(c.get_model_version_by_alias("ganops-style-shipwreck", "champion").version) == 1
    # the photos folder is an input only: every stage left it exactly as it was
    assert {f.name: f.read_bytes() for f in (project / "data/photos").iterdir()} == before


def test_a_fast_net_trains_on_its_corpus_folder_and_its_subfolders(project, isolated_tracking):
    from PIL import Image

    paintings(project)
    photos(project)
    # a photo library: one photo at the top, two in albums (read too), one in a hidden folder (not)
    for i, (album, colour) in enumerate([("", (200, 30, 30)), ("ants", (30, 200, 30)), ("bees/2024", (30, 30, 200)),
                                         (".thumbnails", (9, 9, 9))]):  # fmt: skip
        (project / "corpus" / album).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), colour).save(project / "corpus" / album / f"c{i}.png")
    fast = ["-S", "style.method=fast", "-S", "style.fast_steps=2", "-S", "style.fast_width=4"]
    r = CliRunner().invoke(app, ["stylize", "--style", "shipwreck", "--no-progress", *STYLE_TINY, *fast,
                                 "-S", "style.fast_train_dir=corpus"])  # fmt: skip
    assert r.exit_code == 0, r.output
    made = json.loads((project / "models/style/shipwreck/config.json").read_text())
    assert made["trained_on"] == {"folder": "corpus", "photos": 3} and made["size"] == 32
    assert {f.name for f in (project / "data/stylized/shipwreck").iterdir()} == {"china.png", "flower.png"}
    r = CliRunner().invoke(app, ["stylize", "--style", "shipwreck", *STYLE_TINY, *fast,
                                 "-S", "style.fast_train_dir=nowhere"])  # fmt: skip
    assert r.exit_code == 2 and "style.fast_train_dir: nowhere: no such folder" in r.output
    assert (project / "models/style/shipwreck/transformer.pt").is_file()  # the last net stays until a new one


def test_stylize_errors_name_what_is_wrong(project):
    runner = CliRunner()
    r = runner.invoke(app, ["stylize", "--style", "starry"])
    assert r.exit_code == 2 and "unknown style 'starry'; style.styles defines: starry_night, the_scream, " \
        "shipwreck" in r.output  # fmt: skip
    r = runner.invoke(app, ["stylize", "--style", "shipwreck"])
    assert r.exit_code == 2 and "data/photos: no such folder" in r.output
    photos(project)
    r = runner.invoke(app, ["stylize", "--style", "shipwreck"])
    assert r.exit_code == 2 and "data/paintings: no such folder" in r.output
    paintings(project)
    (project / "data/paintings/shipwreck.jpg").unlink()
    r = runner.invoke(app, ["stylize", "--style", "shipwreck"])
    assert r.exit_code == 2 and "style image(s) ['shipwreck'] not in data/paintings/" in r.output
    (project / "data/photos/broken.jpg").write_bytes(b"\xff\xd8 nope")
    r = runner.invoke(app, ["stylize", "--style", "the_scream"])
    assert r.exit_code == 2 and "broken.jpg: not an image" in r.output


def test_stylize_image_one_pair_logged_like_the_stage(project, isolated_tracking):
    from PIL import Image

    paintings(project)
    Image.new("RGB", (48, 36), (40, 120, 200)).save(project / "photo.jpg")
    r = CliRunner().invoke(app, ["stylize-image", "photo.jpg", "data/paintings/the_scream.jpg", "-o", "out/styled.png",
                                 "--no-progress", *STYLE_TINY, "-S", "style.tv_weight=0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "photo.jpg x the_scream.jpg -> out/styled.png (features vgg19-caffe-q8, loss" in r.output
    out = Image.open(project / "out/styled.png")
    assert out.size == (48, 36)  # the photo's own size (under --size 512), reached from style.size (32 px)
    assert np.asarray(out).astype(float).std() > 1  # the flat blue photo took on texture
    c = MlflowClient(isolated_tracking)
    (run,) = c.search_runs([c.get_experiment_by_name("ganops-stylize").experiment_id])
    assert run.data.tags["style"] == "the_scream" and run.data.tags["content"] == "photo"
    assert run.data.tags["extractor"] == "vgg19-caffe-q8"
    assert run.data.params["style.tv_weight"] == "0.0" and run.data.params["style.style_weight"] == "3.0"
    assert run.data.metrics["final_total"] < run.data.metrics["start_total"]
    assert [a.path for a in c.list_artifacts(run.info.run_id, "stylized")] == ["stylized/styled.png"]
    # the colour metrics: a saturated blue photo (chroma ~50 in Lab), the result between it and the painting
    m = run.data.metrics
    assert m["photo_chroma"] > 40 and m["colour_distance"] > 0 and m["colour_distance_photo"] > 0
    # --size caps the long side (coarse to fine from 32 px); under 16 px is a clear error
    args = ["photo.jpg", "data/paintings/the_scream.jpg", "--no-progress", *STYLE_TINY]
    r = CliRunner().invoke(app, ["stylize-image", *args, "-o", "out/small.png", "--size", "40"])
    assert r.exit_code == 0, r.output
    assert Image.open(project / "out/small.png").size == (40, 30)
    r = CliRunner().invoke(app, ["stylize-image", *args, "-o", "out/tiny.png", "--size", "8"])
    assert r.exit_code == 2 and "--size 8: the long side must be at least 16 px" in r.output
    assert not (project / "out/tiny.png").exists()


def test_stylize_image_bad_input_is_a_clear_error_and_writes_nothing(project):
    from PIL import Image

    paintings(project)
    (project / "photo.jpg").write_bytes(b"\xff\xd8 truncated")
    runner = CliRunner()
    r = runner.invoke(app, ["stylize-image", "photo.jpg", "data/paintings/shipwreck.jpg", "-o", "o.png"])
    assert r.exit_code == 2 and "photo.jpg: not an image" in r.output
    Image.new("RGB", (40, 30)).save(project / "photo.jpg")
    r = runner.invoke(app, ["stylize-image", "photo.jpg", "nope.jpg", "-o", "o.png"])
    assert r.exit_code == 2 and "nope.jpg: no such file" in r.output
    r = runner.invoke(app, ["stylize-image", "photo.jpg", "data/paintings/shipwreck.jpg", "-o", "o.jpg"])
    assert r.exit_code == 2 and "o.jpg: the output is written as PNG" in r.output
    r = runner.invoke(app, ["stylize-image", "photo.jpg", "data/paintings/shipwreck.jpg", "-o", "o.png",
                            "-S", "style.style_weight=-1"])  # fmt: skip
    assert r.exit_code == 2 and "style.style_weight" in r.output
    assert not (project / "o.png").exists() and not (project / "o.jpg").exists()


def test_stylize_reads_the_content_and_style_folders_the_params_name(project):
    from PIL import Image

    paintings(project)
    photos(project)  # the default folders are there too: they must not be read
    (project / "mine").mkdir()
    Image.open(ROOT / "data/photos/flower.jpg").crop((100, 50, 196, 114)).save(project / "mine/field.png")
    (project / "art").mkdir()  # another painting under the style's name
    shutil.copy(ROOT / "data/paintings/the_scream.jpg", project / "art/starry_night.jpg")
    runner, out = CliRunner(), project / "data/stylized/starry_night"

    def styled(*dirs: str) -> bytes:
        r = runner.invoke(app, ["stylize", "--style", "starry_night", "--no-progress", *STYLE_TINY, *dirs])
        assert r.exit_code == 0, r.output
        assert sorted(f.name for f in out.iterdir()) == ["field.png"]  # only the named folder's photo
        pairs = json.loads((project / "metrics/stylize/starry_night.json").read_text())["pairs"]
        assert set(pairs) == {"field"}
        return (out / "field.png").read_bytes()

    from_art = styled("-S", "style.content_dir=mine", "-S", "style.style_dir=art")
    from_default = styled("-S", "style.content_dir=mine")  # style_dir: data/paintings (van Gogh's)
    assert from_art != from_default  # the style image came from the folder style.style_dir names
