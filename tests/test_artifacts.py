import os

import pytest
import torch

from ganops.artifacts import atomic_write, load_checkpoint, load_folder, save_checkpoint, save_folder


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
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path / "evil.pt")


def test_folder_round_trip_writes_weights_files_then_config(tmp_path):
    import json

    w = {"a": torch.arange(4.0)}
    folder = save_folder(tmp_path / "f", {"net.pt": w, "other.pt": {"b": torch.ones(2)}}, {"model": {"k": 1}},
                         files={"samples.png": b"png"})  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "net.pt", "other.pt", "samples.png"]
    # the layout every reader (registry, serving, evaluate) expects: indent 2, a final newline
    assert (folder / "config.json").read_text() == json.dumps({"model": {"k": 1}}, indent=2) + "\n"
    state, config = load_folder(folder, "net.pt")
    assert torch.equal(state["a"], w["a"]) and config == {"model": {"k": 1}}
    assert (folder / "samples.png").read_bytes() == b"png"
    # the style folders' layout: no final newline
    save_folder(tmp_path / "s", {}, {"method": "gatys"}, newline=False)
    assert (tmp_path / "s" / "config.json").read_text() == json.dumps({"method": "gatys"}, indent=2)
