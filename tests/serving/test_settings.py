"""serving.settings: the GANOPS_* variables -> one typed ServingSettings (defaults, overrides, errors)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from serving.settings import ServingSettings, SettingsError

README = Path(__file__).resolve().parents[2] / "README.md"
VARIABLES = {f.alias for f in ServingSettings.model_fields.values()}


def test_defaults_without_any_variable():
    s = ServingSettings.from_env({})
    assert (s.model_name, s.model_alias, s.poll_seconds, s.device) == (
        "ganops-generator",
        "champion",
        10.0,
        "cpu",
    )
    assert (s.max_n, s.max_batch, s.max_body_bytes, s.max_upload_bytes) == (64, 512, 65536, 8 * 1024 * 1024)
    assert (s.max_pixels, s.min_side, s.style_max_side) == (4096 * 4096, 16, 1024)
    assert s.allowed_hosts == ("localhost", "127.0.0.1", "[::1]") and s.allowed_origins == ()
    assert s.torch_threads == max(1, min(4, os.cpu_count() or 1))
    assert (s.access_log, s.tracing) == (False, False)


def test_every_setting_is_a_documented_ganops_variable():
    assert len(VARIABLES) == 16 and all(v and v.startswith("GANOPS_") for v in VARIABLES)
    assert all(f.description for f in ServingSettings.model_fields.values())


def test_the_readme_table_lists_every_variable_with_its_default():
    """Each README default, given as the variable's value, means what the unset variable means."""
    text = README.read_text()
    table = text[text.index("| setting (environment) |") :].split("\n\n")[0].splitlines()[2:]
    listed: dict[str, str] = {}  # variable -> its default as the README writes it
    for row in table:
        names, default = (re.findall(r"`([^`]*)`", cell) for cell in row.split("|")[1:3])
        listed |= dict(zip(names, default if len(default) == len(names) else [""] * len(names), strict=True))
    assert set(listed) - {"MLFLOW_TRACKING_URI"} == VARIABLES
    literal = {k: v for k, v in listed.items() if k in VARIABLES and v and v != "min(4, cores)"}
    assert len(literal) == 14  # all but GANOPS_ALLOWED_ORIGINS (none) and GANOPS_TORCH_THREADS
    unset = ServingSettings.from_env({})
    for name, value in literal.items():
        assert ServingSettings.from_env({name: value}) == unset, (name, value)


def test_variables_override_the_defaults():
    s = ServingSettings.from_env({
        "GANOPS_MODEL_NAME": "my-gen", "GANOPS_MODEL_ALIAS": "prod", "GANOPS_MAX_N": "32",
        "GANOPS_POLL_SECONDS": "0.5", "GANOPS_ALLOWED_HOSTS": "example.org, *", "GANOPS_TORCH_THREADS": "3",
        "GANOPS_ALLOWED_ORIGINS": "http://localhost:5173,,", "GANOPS_ACCESS_LOG": "1", "GANOPS_TRACING": "0",
        "GANOPS_MAX_BODY_BYTES": "300", "GANOPS_DEVICE": "cuda:1", "PATH": "/bin",
    })  # fmt: skip
    assert (s.model_name, s.model_alias, s.max_n, s.poll_seconds) == ("my-gen", "prod", 32, 0.5)
    assert s.allowed_hosts == ("example.org", "*") and s.allowed_origins == ("http://localhost:5173",)
    assert (s.torch_threads, s.access_log, s.tracing) == (3, True, False)
    assert (s.max_body_bytes, s.device) == (300, "cuda:1")
    assert s.max_upload_bytes == 8 * 1024 * 1024  # the others keep their defaults


@pytest.mark.parametrize(
    "env,named",
    [
        ({"GANOPS_MAX_N": "abc"}, ["GANOPS_MAX_N='abc'"]),
        ({"GANOPS_MAX_N": "2.5"}, ["GANOPS_MAX_N='2.5'"]),
        ({"GANOPS_MAX_BATCH": "0"}, ["GANOPS_MAX_BATCH='0'"]),
        ({"GANOPS_POLL_SECONDS": "-1", "GANOPS_TRACING": "maybe"}, ["GANOPS_POLL_SECONDS", "GANOPS_TRACING"]),
        ({"GANOPS_MODEL_NAME": ""}, ["GANOPS_MODEL_NAME=''"]),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable(env, named):
    with pytest.raises(SettingsError) as err:
        ServingSettings.from_env(env)
    assert all(n in str(err.value) for n in named), err.value


def test_a_near_miss_of_a_variable_name_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="ganops.serving"):
        ServingSettings.from_env({"GANOPS_MAX_NN": "8", "GANOPS_PROJECT_ROOT": "/p"})
    assert "GANOPS_MAX_NN is not a setting: did you mean GANOPS_MAX_N?" in caplog.text
    assert "GANOPS_PROJECT_ROOT" not in caplog.text  # another tool's variable, not a typo


def test_settings_are_frozen():
    with pytest.raises(ValueError):
        ServingSettings.from_env({}).max_n = 3  # type: ignore[misc]
