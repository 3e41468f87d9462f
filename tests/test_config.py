from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ganops.config import Params, ParamsError, load_params, parse_params
from tests.conftest import PARAMS

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_yaml_has_exactly_the_configs_keys():
    # The working copy's params.yaml is the user's to edit (by hand, `dvc exp apply`): only its keys are
    # checked, never its values; the shipped values are pinned through tests/params.yaml below.
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert _keys(raw) - set(raw) == set(Params().flat()), "params.yaml must document every key"


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if (
            isinstance(v, dict) and prefix.count(".") < 1
        ):  # groups and their keys (dict-valued keys stay whole)
            out |= _keys(v, f"{prefix}{k}.")
    return out


def test_tests_params_copy_has_the_projects_keys_and_loads():
    # The suite runs on tests/params.yaml (a fixed copy); it must not drift from the project's schema.
    project = yaml.safe_load((ROOT / "params.yaml").read_text())
    fixed = yaml.safe_load(PARAMS.read_text())
    assert _keys(fixed) == _keys(project), _keys(fixed) ^ _keys(project)
    load_params(PARAMS)


def test_defaults_and_flat_keys():
    p = parse_params({})
    flat = p.flat()
    assert flat["gan.lr_g"] == pytest.approx(2e-4)
    assert flat["gan.beta1"] == 0.5
    assert {k.split(".")[0] for k in flat} == {
        "base",
        "data",
        "gan",
        "classifier",
        "evaluate",
        "promote",
        "style",
        "tracking",
    }


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ParamsError) as e:
        parse_params({"gan": {"lr_dd": 1e-4}})
    assert "gan.lr_dd: unknown key (did you mean gan.lr_d?)" in str(e.value)


def test_a_renamed_key_names_its_new_name(tmp_path):
    # gan.n_samples (the grid size) became gan.grid_samples, leaving n_samples to evaluate's scored count
    with pytest.raises(ParamsError) as e:
        parse_params({"gan": {"n_samples": 16}})
    assert "gan.n_samples: renamed to gan.grid_samples" in str(e.value)
    with pytest.raises(ParamsError, match="gan.n_samples: renamed to gan.grid_samples"):
        parse_params({}, ["gan.n_samples=16"])
    assert parse_params({}, ["gan.grid_samples=16", "evaluate.n_samples=16"]).gan.grid_samples == 16


def test_renamed_keys_point_at_real_keys():
    from ganops.config import RENAMED, _known_keys

    assert set(RENAMED.values()) <= set(_known_keys())
    assert not set(RENAMED) & set(_known_keys())


def test_unknown_group_is_named():
    with pytest.raises(ParamsError, match="ganx: unknown key"):
        parse_params({"ganx": {"lr_d": 1e-4}})


def test_wrong_type_names_the_key():
    with pytest.raises(ParamsError) as e:
        parse_params({"gan": {"batch_size": "many"}, "data": {"image_size": 48}})
    msg = str(e.value)
    assert "gan.batch_size" in msg and "'many'" in msg
    assert "data.image_size" in msg and "power of two" in msg


def test_overrides_are_parsed_as_yaml_and_validated():
    p = parse_params({}, ["gan.lr_d=1e-4", "data.channels=3", "base.device=cpu"])
    assert p.gan.lr_d == pytest.approx(1e-4)
    assert p.data.channels == 3
    with pytest.raises(ParamsError, match="gan.lr_dd: unknown key"):
        parse_params({}, ["gan.lr_dd=1e-4"])
    with pytest.raises(ParamsError, match="gan.lr_d"):
        parse_params({}, ["gan.lr_d=-1"])
    with pytest.raises(ParamsError, match="expected group.key=value"):
        parse_params({}, ["lr_d=1"])


def test_invalid_device_and_source():
    with pytest.raises(ParamsError, match="base.device"):
        parse_params({"base": {"device": "tpu"}})
    with pytest.raises(ParamsError, match="data.source"):
        parse_params({"data": {"source": "imagenet"}})


def test_params_are_frozen():
    p = Params()
    with pytest.raises(ValidationError, match="frozen"):
        p.gan.lr_d = 1.0  # type: ignore[misc]


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gan: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(lst)


def test_style_loss_weights_default_to_the_extractors_calibration():
    from ganops.config import CALIBRATED_WEIGHTS

    for weights, (cw, sw, tv) in CALIBRATED_WEIGHTS.items():
        s = parse_params({"style": {"weights": weights, "style_weight": None}}).style
        assert (s.content_weight, s.style_weight, s.tv_weight) == (cw, sw, tv)
    assert CALIBRATED_WEIGHTS["caffe-q8"] != CALIBRATED_WEIGHTS["random"]  # scales differ by orders
    s = parse_params({"style": {"weights": "random"}}, ["style.style_weight=7"]).style
    assert (s.style_weight, s.tv_weight) == (7.0, CALIBRATED_WEIGHTS["random"][2])  # a given value wins
    assert load_params(PARAMS).style.style_weight == CALIBRATED_WEIGHTS["caffe-q8"][1]  # the shipped file's
    with pytest.raises(
        ParamsError, match="style.weights: Input should be 'caffe-q8', 'pretrained' or 'random'"
    ):
        parse_params({"style": {"weights": "imagenet"}})


def test_shipped_params_carry_the_readme_demo_defaults():
    # README: the demo runs 2000 steps with hinge loss, R1, minibatch-stddev, EMA and auto conditioning.
    # The shipped values: tests/params.yaml, which equals the config's defaults (the next test).
    g = load_params(PARAMS).gan
    assert g.steps == 2000
    assert g.loss == "hinge"
    assert g.r1_gamma > 0
    assert g.mbstd is True
    assert g.ema_decay > 0
    assert g.conditional == "auto"
    assert load_params(PARAMS).data.source == "digits"


def test_shipped_params_are_the_configs_defaults():
    # The typed config's defaults are the shipped params' values, key for key: a key left out of a params
    # file (or a group built in code, GanParams()) means what the shipped params.yaml says. The shipped
    # values are tests/params.yaml's (a copy of params.yaml as shipped), not the working copy's, which a user
    # may have edited; the working copy's keys are checked above.
    raw = yaml.safe_load(PARAMS.read_text())
    assert _keys(raw) - set(raw) == set(Params().flat()), "tests/params.yaml must hold every key"
    code, shipped = Params().flat(), load_params(PARAMS).flat()
    assert {k: (v, shipped[k]) for k, v in code.items() if v != shipped[k]} == {}


def test_plain_dcgan_preset_turns_every_stabiliser_off():
    from ganops.config import PLAIN_DCGAN, GanParams

    g = GanParams(**PLAIN_DCGAN)
    assert g.arch == "dcgan"
    assert g.loss == "bce"
    assert g.r1_gamma == 0
    assert g.spectral_norm is False
    assert g.mbstd is False
    assert g.ema_decay == 0
    assert g.diffaugment == []
    assert g.d_skip_below == 0
    assert g.d_steps == 1
    assert g.conditional is False
    assert g.g_norm == "batch"
    assert g.monitor_every == 0


def test_list_valued_override_gives_a_diffaugment_policy():
    p = load_params(PARAMS, ["gan.diffaugment=[color,translation]"])
    assert p.gan.diffaugment == ["color", "translation"]
    with pytest.raises(ParamsError, match="gan.diffaugment"):
        load_params(PARAMS, ["gan.diffaugment=[color,blur]"])


@pytest.mark.parametrize(
    ("size", "conditional", "arch", "want"),
    [
        (16, "auto", "auto", "dcgan"),  # the digits demo
        (32, "auto", "auto", "dcgan"),
        (64, "auto", "auto", "fastgan"),  # own pictures: the best measured at 64 px
        (128, False, "auto", "fastgan"),
        (64, True, "auto", "dcgan"),  # class-conditioning asked for: fastgan cannot
        (64, "auto", "msg", "msg"),  # a named architecture is kept
        (16, "auto", "progressive", "progressive"),
    ],
)
def test_arch_auto_is_resolved_before_anything_reads_it(size, conditional, arch, want):
    raw = {"data": {"image_size": size}, "gan": {"arch": arch, "conditional": conditional}}
    p = parse_params(raw)
    assert p.gan.arch == want
    assert p.flat()["gan.arch"] == want  # what MLflow logs and the run name uses
    if conditional == "auto":  # the same from overrides, and with the key left out (auto is the default)
        assert parse_params({}, [f"data.image_size={size}", f"gan.arch={arch}"]).gan.arch == want
        if arch == "auto":
            assert parse_params({"data": {"image_size": size}}).gan.arch == want


def test_arch_auto_in_a_bare_gan_group_is_resolved_from_the_images():
    # GanParams built in code (benchmarks, notebooks) carries "auto": the settings resolve it from the data.
    import torch

    from ganops.config import GanParams
    from ganops.train_state import settings_for

    for size, want in ((16, "dcgan"), (64, "fastgan")):
        images = torch.zeros(8, 3, size, size, dtype=torch.uint8)
        s = settings_for(images, GanParams(), seed=0, data_hash="h")
        assert s["model"]["arch"] == want
        assert "grow_fade_steps" not in s  # the growth schedule is a setting of progressive runs only
    s = settings_for(images, GanParams(arch="progressive"), seed=0, data_hash="h")
    assert (s["grow_fade_steps"], s["grow_stable_steps"]) == (200, 200)


def test_arch_auto_with_malformed_params_still_names_the_bad_key():
    with pytest.raises(ParamsError, match="data.image_size"):
        parse_params({"data": {"image_size": "large"}})
    with pytest.raises(ParamsError, match="gan.arch"):
        parse_params({"gan": {"arch": "stylegan"}})
