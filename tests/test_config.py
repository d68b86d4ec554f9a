"""Config validation (pydantic) and the package's YAML reader (YAML 1.2 floats everywhere)."""

from __future__ import annotations

import pytest

from stethoscope import methods
from stethoscope.config import from_dict, load_config_file, load_yaml, parse_scalar
from stethoscope.errors import ConfigError


@pytest.mark.parametrize("text, value", [("2e-4", 2e-4), ("1e-4", 1e-4), (".5", 0.5), ("-.5", -0.5), ("1E5", 1e5),
                                         ("3", 3), ("0.001", 0.001), ("true", True), ("[0.5, 0.999]", [0.5, 0.999])])
def test_command_line_values_parse_as_yaml_1_2(text, value):
    got = parse_scalar(text)
    assert got == value and type(got) is type(value)


def test_every_yaml_reader_gives_floats_for_exponent_notation(tmp_path):
    assert load_yaml("lr: 2e-4\nmu: .5\n") == {"lr": 2e-4, "mu": 0.5}
    cfg = tmp_path / "best.yaml"
    cfg.write_text("method: ganomaly\nconfig: {lr: 2e-4, epochs: 3}\n")
    values = load_config_file(str(cfg), "ganomaly")
    assert values == {"lr": 2e-4, "epochs": 3}
    assert methods.get("ganomaly").make_config(values).lr == 2e-4


def test_config_errors_name_the_key_the_value_and_what_was_expected():
    ae = methods.get("autoencoder")
    with pytest.raises(ConfigError, match=r"field 'lr' = 'fast'; expected a valid number"):
        ae.make_config({"lr": "fast"})
    with pytest.raises(ConfigError, match=r"field 'epochs' = 1.5; expected a valid integer"):
        ae.make_config({"epochs": 1.5})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]; valid keys are \[.*'lr'"):
        ae.make_config({"learning_rate": 1e-3})
    # the dataclass's own checks still run, with their own message
    with pytest.raises(ConfigError, match="val_fraction"):
        ae.make_config({"val_fraction": 1.5})
    aegan = methods.get("aegan_ad")
    assert aegan.make_config({"betas": [0.1, 0.2]}).betas == (0.1, 0.2)
    with pytest.raises(ConfigError, match="betas"):
        aegan.make_config({"betas": [0.1]})


def test_literal_fields_list_their_choices():
    from stethoscope.data.features import FeatureSpec

    with pytest.raises(ConfigError, match=r"field 'scale' = 'log10'; expected 'db', 'ln' or 'linear'"):
        from_dict(FeatureSpec, {"scale": "log10"}, "FeatureSpec")
