import errno
import hashlib
import os

import pytest
import torch

from ganops.artifacts import (
    DamagedFileError,
    atomic_write,
    load_checkpoint,
    load_folder,
    previous,
    save_checkpoint,
    save_folder,
)


def test_round_trip_weights_only(tmp_path):
    state = {"w": torch.arange(6.0).view(2, 3), "step": 7, "rng": torch.get_rng_state(), "meta": {"a": "b"}}
    path = save_checkpoint(tmp_path / "c.pt", state, {"model": {"size": 32}})
    loaded, config = load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7 and loaded["meta"] == {"a": "b"}
    assert config == {"model": {"size": 32}}
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "c.pt"
    atomic_write(target, "old")

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_write(target, {"x": Boom()})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_pickled_code_is_refused(tmp_path):
    import pickle

    # a checkpoint smuggling an arbitrary object must not load under weights_only
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"config_json": "{}", "x": os.getcwd}))
    with pytest.raises(DamagedFileError, match="Weights only load failed"):
        load_checkpoint(tmp_path / "evil.pt")


def test_folder_round_trip_writes_weights_files_then_config(tmp_path):
    import json

    w = {"a": torch.arange(4.0)}
    folder = save_folder(tmp_path / "f", {"net.pt": w, "other.pt": {"b": torch.ones(2)}}, {"model": {"k": 1}},
                         files={"samples.png": b"png"})  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "net.pt", "other.pt", "samples.png"]
    # the layout every reader (registry, serving, evaluate) expects: indent 2, a final newline
    sums = {
        n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
        for n in ("net.pt", "other.pt", "samples.png")
    }
    expected = {"model": {"k": 1}, "sha256": sums}  # every file written with it, by its sha256
    assert (folder / "config.json").read_text() == json.dumps(expected, indent=2) + "\n"
    state, config = load_folder(folder, "net.pt")
    assert torch.equal(state["a"], w["a"]) and config == expected
    assert (folder / "samples.png").read_bytes() == b"png"
    # the style folders' layout: no final newline
    save_folder(tmp_path / "s", {}, {"method": "gatys"}, newline=False)
    assert (tmp_path / "s" / "config.json").read_text() == json.dumps(
        {"method": "gatys", "sha256": {}}, indent=2
    )


@pytest.mark.parametrize("fails", ["write", "rename"])
def test_a_full_disk_or_a_failing_rename_keeps_the_previous_file_and_leaves_no_temp(
    tmp_path, monkeypatch, fails
):
    target = tmp_path / "c.pt"
    atomic_write(target, "old")

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync" if fails == "write" else "replace", no_space)
    with pytest.raises(OSError) as err:
        atomic_write(target, "new" * 1000)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)  # says which file
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_keeping_the_previous_checkpoint_never_leaves_a_moment_without_one(tmp_path, monkeypatch):
    # a kill at any step of the write must find checkpoint.pt (resume reads it; without it training would
    # start afresh): the old file is linked to .prev.pt, never moved away first
    from ganops.artifacts import previous

    target = tmp_path / "checkpoint.pt"
    atomic_write(target, "step 1")
    seen, real_replace = [], os.replace

    def watched(src, dst):
        seen.append(target.read_text())  # raises if the checkpoint is missing at this step
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watched)
    atomic_write(target, "step 2", keep_previous=previous(target))
    monkeypatch.undo()
    assert seen and set(seen) == {"step 1"}  # present, and the old one, until the new one takes its place
    assert target.read_text() == "step 2" and previous(target).read_text() == "step 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]  # no temp


def _flip_a_bit(path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_or_weights_file_is_named_never_loaded(tmp_path, damage):
    state = {"w": torch.randn(64, 64), "step": 3}
    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", state, {"settings": {}})
    folder = save_folder(tmp_path / "final", {"generator.pt": {"w": torch.randn(64, 64)}}, {"model": {}})
    for path in (ckpt, folder / "generator.pt"):
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        else:
            _flip_a_bit(path)
    with pytest.raises(DamagedFileError, match=f"{ckpt} is damaged"):
        load_checkpoint(ckpt)
    with pytest.raises(DamagedFileError, match="generator.pt is damaged"):
        load_folder(folder, "generator.pt")


def test_a_checkpoint_keeps_the_one_it_replaces(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 2}, {})
    assert not previous(path).exists()
    save_checkpoint(path, {"step": 4}, {})
    assert load_checkpoint(path)[0]["step"] == 4 and load_checkpoint(previous(path))[0]["step"] == 2
    assert previous(path).name == "checkpoint.prev.pt"
