"""search_spaces/sc.yaml (issue 15): Tune chooses SC's backbone and lr per machine type on validation, with the
feature held per machine type at Table 3's value (a sweep ingests its inputs once). Fast: no Ray, no training."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from stethoscope.errors import ConfigError

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "sc.yaml"
FEATURES = ("stft", "log_mel")
BACKBONES = ("mobilefacenet", "mfnse", "ecapa_tdnn", "cnn6")
#: Table 3's machine types (the presets, presets/sc_aithu2022.yaml).
MACHINE_TYPES = ("bearing", "fan", "gearbox", "slider", "ToyCar", "ToyTrain", "valve")


def test_the_space_searches_every_backbone_and_an_lr_around_the_reports():
    from stethoscope.nn.backbones import BACKBONES as REGISTERED
    from stethoscope.tuning import load_space

    space = load_space(SPACE)
    assert space.method == "sc" and space.metric == "val_auc_pauc_mean" and space.mode == "max"
    assert space.resources.max_concurrent_trials == 1
    assert set(space.params) == {"backbone", "lr"}
    assert space.params["backbone"].kind == "choice"
    assert tuple(space.params["backbone"].values) == BACKBONES == tuple(REGISTERED)
    lr = space.params["lr"]
    assert lr.kind == "loguniform" and lr.low < 1e-3 < lr.high  # the report's AdamW lr 1e-3 inside the range
    assert space.fixed["feature"] == "stft"
    # Table 3: log-mel (64 mels) for ToyCar, |STFT| for the others
    for mt in MACHINE_TYPES:
        resolved = load_space(SPACE, mt)
        assert resolved.fixed["feature"] == ("log_mel" if mt == "ToyCar" else "stft"), mt
        assert set(resolved.params) == {"backbone", "lr"}
    assert load_space(SPACE, "ToyCar").fixed["n_mels"] == 64


def test_make_config_accepts_every_feature_and_backbone_and_every_sampled_trial():
    from stethoscope import methods
    from stethoscope.tuning import load_space

    cls = methods.get("sc")
    for feature, backbone in itertools.product(FEATURES, BACKBONES):
        cfg = cls.make_config({"feature": feature, "backbone": backbone, "lr": 1e-3})
        assert (cfg.feature, cfg.backbone) == (feature, backbone)
    rng = np.random.default_rng(0)
    for mt in MACHINE_TYPES:
        space = load_space(SPACE, mt)
        lr = space.params["lr"]
        lrs = [lr.low, lr.high, *np.exp(rng.uniform(np.log(lr.low), np.log(lr.high), 4)).tolist()]
        for backbone, value in itertools.product(space.params["backbone"].values, lrs):
            cfg = cls.make_config({**space.fixed, "backbone": backbone, "lr": float(value)})
            assert cfg.backbone == backbone and cfg.feature == space.fixed["feature"]
            assert cfg.epochs == 25 and cfg.weight_decay == 1e-4  # the report's, not searched


def test_searching_the_feature_in_one_sweep_is_refused():
    """The reason sc.yaml holds the feature fixed: "stft" and "log_mel" are different inputs."""
    from stethoscope.tuning import load_space

    data = {"method": "sc", "metric": "val_auc_pauc_mean", "mode": "max",
            "space": {"feature": {"choice": list(FEATURES)}}}
    with pytest.raises(ConfigError, match="changes the method's inputs"):
        load_space("sc_feature.yaml", data=data)
