"""Damaged files on disk: every command that reads one names it and says what to do (exit 2, one line, no
traceback), nothing good is overwritten, and training loses at most one checkpoint interval."""

import shutil

import pytest
import torch
from typer.testing import CliRunner

from ganops.artifacts import DamagedFileError, previous
from ganops.cli import app
from ganops.config import PLAIN_DCGAN, GanParams
from ganops.train_gan import fit
from tests.conftest import PARAMS
from tests.test_cli import TINY


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _tiny(**kw) -> GanParams:
    base = PLAIN_DCGAN | dict(latent_dim=8, ngf=4, ndf=4, batch_size=8, steps=4, sample_every=2,
                              checkpoint_every=2, log_every=1, grid_samples=4)  # fmt: skip
    return GanParams(**(base | kw))


@pytest.fixture
def images():
    return torch.randint(
        0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(images, tmp_path, caplog):
    fit(images, _tiny(steps=4), tmp_path, progress=False)  # checkpoints at 2 (-> prev) and 4
    _truncate(tmp_path / "checkpoint.pt")
    r = fit(images, _tiny(steps=6), tmp_path, progress=False)
    assert r.resumed_from == 2 and r.step == 6  # one interval lost, not the run
    assert "checkpoint.pt is damaged" in caplog.text and "checkpoint.prev.pt" in caplog.text
    # the same as an uninterrupted run from step 2 on: the fallback is a real resume
    fit(images, _tiny(steps=2), tmp_path / "ref", progress=False)
    ref = fit(images, _tiny(steps=6), tmp_path / "ref", progress=False)
    a, b = (torch.load(p / "final/generator.pt", weights_only=True) for p in (tmp_path, tmp_path / "ref"))
    assert ref.resumed_from == 2 and all(torch.equal(a[k], b[k]) for k in a)


def test_both_checkpoints_damaged_stops_naming_them_and_overwrites_nothing(images, tmp_path):
    fit(images, _tiny(steps=4), tmp_path, progress=False)
    for p in (tmp_path / "checkpoint.pt", previous(tmp_path / "checkpoint.pt")):
        _truncate(p)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(DamagedFileError, match="checkpoint.pt is damaged.*previous checkpoint too"):
        fit(images, _tiny(steps=6), tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.fixture
def project(tmp_path, monkeypatch, isolated_tracking):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for cmd in (
        ["prepare"],
        ["classifier", "--no-progress", "-S", "classifier.epochs=1"],
        ["train-gan", "--no-progress"],
    ):
        assert runner.invoke(app, [*cmd, *TINY]).exit_code == 0
    return tmp_path


def test_train_gan_on_a_truncated_checkpoint_finishes_from_the_previous_one(project):
    _truncate(project / "models/gan/checkpoint.pt")
    r = CliRunner().invoke(app, ["train-gan", "--no-progress", *TINY, "-S", "gan.steps=8"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "trained 8 steps" in r.output


@pytest.mark.parametrize(
    "command", [["train-gan", "--no-progress"], ["evaluate"], ["classifier", "--no-progress"]]
)
def test_a_damaged_dataset_stops_every_reader_in_one_line(project, command):
    _truncate(project / "data/prepared/dataset.pt")
    r = CliRunner().invoke(app, [*command, *TINY])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "dataset.pt is damaged" in r.output and "ganops prepare" in r.output


def test_a_bit_flipped_dataset_or_export_is_caught(project):
    data = bytearray((project / "data/prepared/dataset.pt").read_bytes())
    data[len(data) // 2] ^= 0x01  # one pixel bit: still a valid file, no longer the data it was
    (project / "data/prepared/dataset.pt").write_bytes(bytes(data))
    r = CliRunner().invoke(app, ["evaluate", *TINY])
    assert r.exit_code == 2 and "no longer match its content hash" in r.output
    assert CliRunner().invoke(app, ["prepare", *TINY]).exit_code == 0  # writing it again mends it
    gen = project / "models/gan/final/generator.pt"
    data = bytearray(gen.read_bytes())
    data[len(data) // 2] ^= 0x01
    gen.write_bytes(bytes(data))
    r = CliRunner().invoke(app, ["evaluate", *TINY])
    assert r.exit_code == 2 and "generator.pt is damaged" in r.output and "Traceback" not in r.output
