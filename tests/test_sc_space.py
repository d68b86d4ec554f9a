"""search_spaces/sc.yaml (issue 15): Tune chooses SC's input feature, backbone and lr per machine type on the
validation clips. Fast checks of the file, and one real sweep (slow) in which trials of both features read their own
feature store."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "sc.yaml"
FEATURES = ("stft", "log_mel")
BACKBONES = ("mobilefacenet", "mfnse", "ecapa_tdnn", "cnn6")


def test_the_space_searches_feature_backbone_and_an_lr_around_the_reports():
    from stethoscope import methods
    from stethoscope.nn.backbones import BACKBONES as REGISTERED
    from stethoscope.tuning import load_space
    from stethoscope.tuning.space import input_variants

    space = load_space(SPACE)
    assert space.method == "sc" and space.metric == "val_auc_pauc_mean" and space.mode == "max"
    assert space.resources.max_concurrent_trials == 1
    assert set(space.params) == {"feature", "backbone", "lr"}
    assert tuple(space.params["feature"].values) == FEATURES
    assert tuple(space.params["backbone"].values) == BACKBONES == tuple(REGISTERED)
    lr = space.params["lr"]
    assert lr.kind == "loguniform" and lr.low < 1e-3 < lr.high  # the report's AdamW lr 1e-3 inside the range
    sets = input_variants(methods.get("sc"), space.fixed, space.params)
    kinds = [(s["spectrogram"].kind, s["spectrogram"].n_bins) for s in sets]
    assert kinds == [("stft", 1025), ("mel", 64)]  # two feature stores per sweep, whatever the backbone or lr


def test_make_config_accepts_every_sampled_trial():
    from stethoscope import methods
    from stethoscope.tuning import load_space

    cls = methods.get("sc")
    space = load_space(SPACE)
    lr = space.params["lr"]
    lrs = [lr.low, lr.high, *np.exp(np.random.default_rng(0).uniform(np.log(lr.low), np.log(lr.high), 2)).tolist()]
    for feature, backbone, value in itertools.product(FEATURES, BACKBONES, lrs):
        cfg = cls.make_config({**space.fixed, "feature": feature, "backbone": backbone, "lr": float(value)})
        assert (cfg.feature, cfg.backbone, cfg.lr) == (feature, backbone, float(value))
        assert cfg.epochs == 25 and cfg.weight_decay == 1e-4  # the report's, not searched


@pytest.mark.slow
def test_a_sweep_over_the_feature_trains_each_trial_on_its_own_features(ray_session, tmp_path):
    """A grid over feature ∈ {stft, log_mel} (tiny SC, 1 epoch): both trials finish, each with its own feature store,
    and the best config records that trial's own inputs."""
    from stethoscope.data.synthetic import make_dcase2022_tree
    from stethoscope.tuning.runner import run_sweep

    tree = make_dcase2022_tree(tmp_path / "tree", sections=("00", "01"), n_train_source=6, n_train_target=2,
                               n_test_normal=3, n_test_anomaly=3, duration_s=1.0, seed=1)
    tiny = {"n_frames": 16, "crop_hop": 16, "backbone": "mobilefacenet", "epochs": 1, "batch_size": 16,
            "backbone_overrides": {"setting": [[2, 16, 1, 2]], "stem_channels": 8, "head_channels": 32,
                                   "embedding_dim": 16}, "n_mels": 32, "val_fraction": 0.0}
    space = {"method": "sc", "metric": "val_auc_pauc_mean", "mode": "max", "sampler": "grid", "seed": 0,
             "scheduler": "none",
             "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 0, "max_concurrent_trials": 2},
             "fixed": tiny, "space": {"feature": {"choice": list(FEATURES)}}}
    path = tmp_path / "sc_feature.yaml"
    path.write_text(yaml.safe_dump(space))
    res = run_sweep(path, machine_type="fan", data_root=tree, storage_root=str(tmp_path / "tune"), name="feat",
                    store=str(tmp_path / "store"))
    assert res.complete and sorted(res.trials["feature"]) == sorted(FEATURES)
    assert (res.trials["status"] != "error").all(), res.trials
    settings = json.loads(Path(res.sweep_dir, "sweep.json").read_text())
    stores = {s["inputs"]["spectrogram"]["kind"]: s["features_path"] for s in settings["input_stores"]}
    assert sorted(stores) == ["mel", "stft"] and stores["mel"] != stores["stft"]
    best = yaml.safe_load(Path(res.best_config_path).read_text())
    kind = "stft" if best["config"]["feature"] == "stft" else "mel"
    assert best["inputs"]["spectrogram"]["kind"] == kind
