import os

import pytest
import torch

from ganops.checkpoint import atomic_write, load_checkpoint, save_checkpoint


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
