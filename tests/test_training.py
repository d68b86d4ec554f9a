"""Ray Train: the AE baseline learns, detects severe clicks, is reproducible, and resumes from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stethoscope.data.features import FeatureSpec
from stethoscope.data.index import index
from stethoscope.data.ingest import ingest, read_features
from stethoscope.scoring import score_dataset
from stethoscope.training import Scaling, fit

SPEC = FeatureSpec()
CFG = {"epochs": 20, "batch_size": 64}


@pytest.fixture(scope="module")
def clicks_features(ray_session, synthetic_clicks, tmp_path_factory):
    return ingest(index(synthetic_clicks).table, str(tmp_path_factory.mktemp("store")), SPEC)


@pytest.fixture(scope="module")
def trained(clicks_features, tmp_path_factory):
    train = read_features(clicks_features, split="train")
    return fit("autoencoder", CFG, train, Scaling(1), feature_spec=SPEC,
               run_dir=tmp_path_factory.mktemp("run_a"), seed=3)


def test_validation_loss_goes_down_and_severe_clicks_are_detected(trained, clicks_features):
    hist = trained.history
    assert [h["epoch"] for h in hist] == list(range(1, CFG["epochs"] + 1))
    assert hist[-1]["val_loss"] < 0.5 * hist[0]["val_loss"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    scores = score_dataset(trained.method, read_features(clicks_features, split="test"))
    y = (scores["label"] == "anomaly").astype(int)
    assert len(scores) == 20 and y.sum() == 10
    assert roc_auc_score(y, scores["score"]) >= 0.9


def test_same_seed_gives_the_same_scores(trained, clicks_features, tmp_path):
    again = fit("autoencoder", CFG, read_features(clicks_features, split="train"), Scaling(1),
                feature_spec=SPEC, run_dir=tmp_path, seed=3)
    test = read_features(clicks_features, split="test")
    a = score_dataset(trained.method, test)["score"].to_numpy()
    b = score_dataset(again.method, test)["score"].to_numpy()
    np.testing.assert_array_equal(a, b)
    assert again.meta["seed"] == 3


def test_resume_continues_at_the_next_epoch_and_equals_an_uninterrupted_run(trained, clicks_features, tmp_path):
    """Train 10 of the 20 epochs, resume to 20: the same run as ``trained`` (seed 3, 20 epochs straight), because
    every epoch is reseeded from (seed, epoch), so a resumed run replays the same shuffles."""
    train = read_features(clicks_features, split="train")
    half = CFG["epochs"] // 2
    first = fit("autoencoder", {**CFG, "epochs": half}, train, Scaling(1), feature_spec=SPEC, run_dir=tmp_path, seed=3)
    assert first.meta["epoch"] == half
    resumed = fit("autoencoder", CFG, train, Scaling(1), feature_spec=SPEC, run_dir=tmp_path, seed=3, resume=True)
    assert [h["epoch"] for h in resumed.history] == list(range(1, CFG["epochs"] + 1))
    assert resumed.history[:half] == first.history  # epochs 1..10 come from the checkpoint's history
    assert resumed.history[-1]["loss"] == pytest.approx(trained.history[-1]["loss"], rel=1e-5)
    test = read_features(clicks_features, split="test")
    np.testing.assert_allclose(score_dataset(resumed.method, test)["score"].to_numpy(),
                               score_dataset(trained.method, test)["score"].to_numpy(), rtol=1e-5)


def test_two_workers_train_and_checkpoint(clicks_features, tmp_path):
    res = fit("autoencoder", {**CFG, "epochs": 2}, read_features(clicks_features, split="train"),
              Scaling(num_workers=2, cpus_per_worker=0.5), feature_spec=SPEC, run_dir=tmp_path, seed=1)
    assert res.meta["epoch"] == 2 and res.history[-1]["loss"] < res.history[0]["loss"]


def test_unknown_method_and_bad_config_are_clear_errors(clicks_features, tmp_path):
    from stethoscope.errors import ConfigError

    train = read_features(clicks_features, split="train")
    with pytest.raises(ConfigError, match="unknown method 'ae'; known methods: .*autoencoder"):
        fit("ae", {}, train, feature_spec=SPEC, run_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown key.*'epoch'"):
        fit("autoencoder", {"epoch": 3}, train, feature_spec=SPEC, run_dir=tmp_path)
