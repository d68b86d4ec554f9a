"""Detectors (GMM, SOS) and the detector stage's per-group / per-domain detectors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from stethoscope.detectors import detector_names, get_detector
from stethoscope.detectors.density import _calibrate_betas
from stethoscope.detectors.stage import GroupedDetector, fit_candidates, parse_candidates
from stethoscope.errors import ConfigError, DataError


def _blobs(seed=0, n=120, d=6, shift=4.0):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n, d))
    test = np.vstack([rng.normal(size=(20, d)), rng.normal(size=(20, d)) + shift])
    y = np.r_[np.zeros(20), np.ones(20)]
    return train, test, y


@pytest.mark.parametrize("name", ["gmm", "sos", "knn", "lof", "mahalanobis"])
def test_every_density_and_neighbour_detector_finds_shifted_points(name):
    train, test, y = _blobs()
    params = {"metric": "euclidean"} if name in ("knn", "lof") else {}
    det = get_detector(name, **params).fit(train)
    assert roc_auc_score(y, det.decision_function(test)) >= 0.99
    assert det.training_scores().shape == (len(train),)


def test_gmm_score_is_the_negative_log_likelihood_of_a_gaussian():
    train, test, _ = _blobs()
    det = get_detector("gmm", covariance_type="full").fit(train)
    from scipy.stats import multivariate_normal

    mu, cov = train.mean(0), np.cov(train, rowvar=False, bias=True) + 1e-6 * np.eye(train.shape[1])
    np.testing.assert_allclose(det.decision_function(test), -multivariate_normal(mu, cov).logpdf(test), rtol=1e-4)


def test_sos_perplexity_calibration_and_out_of_sample_score():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3))
    d2 = ((X[:, None] - X[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    betas = _calibrate_betas(d2, 4.5)
    a = np.exp(-d2 * betas[:, None])
    p = a / a.sum(1, keepdims=True)
    entropy = -(p * np.log(np.where(p > 0, p, 1))).sum(1)
    np.testing.assert_allclose(np.exp(entropy), 4.5, rtol=1e-3)  # every row has the asked perplexity
    det = get_detector("sos").fit(X)
    far = det.decision_function(np.full((1, 3), 50.0))
    assert far[0] > -1e-9  # nobody binds to a far point: log p(x) = log 1 = 0, the maximum
    assert det.decision_function(X[:1])[0] < far[0]
    with pytest.raises(DataError, match="perplexity"):
        get_detector("sos", perplexity=40).fit(X)


def test_grouped_detector_fits_each_group_and_domain_and_takes_the_minimum():
    rng = np.random.default_rng(2)
    # group a: source around 0, target around 10; group b around -10
    src, tgt, b = rng.normal(size=(40, 4)), rng.normal(size=(8, 4)) + 10, rng.normal(size=(40, 4)) - 10
    X = np.vstack([src, tgt, b])
    groups = ["m/section_00"] * 48 + ["m/section_01"] * 40
    domains = ["source"] * 40 + ["target"] * 8 + ["source"] * 40
    det = GroupedDetector("knn", {"metric": "euclidean"}).fit(X, groups, domains)
    assert set(det.fitted) == {"m/section_00", "m/section_01"}
    assert set(det.fitted["m/section_00"]) == {"source", "target"} and det.fitted["m/section_00"]["target"].n == 8
    # a target-like clip is normal for section 00 (the target detector says so: min), anomalous for section 01
    q = rng.normal(size=(1, 4)) + 10
    s00 = det.decision_function(q, ["m/section_00"])[0]
    s01 = det.decision_function(q, ["m/section_01"])[0]
    assert s00 < 3 < s01
    # standardization: each detector's training scores have mean 0 and std 1 after z-scoring
    f = det.fitted["m/section_00"]["source"]
    z = (f.detector.training_scores() - f.mean) / f.std
    assert abs(z.mean()) < 1e-9 and abs(z.std() - 1) < 1e-9
    with pytest.raises(DataError, match="section_02"):
        det.decision_function(q, ["m/section_02"])


def test_grouped_detector_state_round_trips_through_weights_only_torch_load():
    train, test, _ = _blobs()
    groups = ["fan/id_00"] * len(train)
    for name in detector_names():
        det = GroupedDetector(name).fit(train, groups)
        buf = io.BytesIO()
        torch.save(det.state_dict(), buf)
        buf.seek(0)
        again = GroupedDetector.from_state(torch.load(buf, weights_only=True))
        np.testing.assert_allclose(again.decision_function(test, ["fan/id_00"] * len(test)),
                                   det.decision_function(test, ["fan/id_00"] * len(test)), rtol=1e-10, atol=1e-12)


def test_candidates_are_checked_before_training_and_unfit_ones_are_dropped_with_a_reason():
    with pytest.raises(ConfigError, match="known detectors"):
        parse_candidates(["knn", "isolation_forest"])
    with pytest.raises(ConfigError, match="n_neighbors"):
        parse_candidates([{"name": "knn", "n_neighbors": 0}])
    cands = parse_candidates(["knn", {"name": "lof", "n_neighbors": 10}])
    assert [c.label for c in cands] == ["knn", "lof(n_neighbors=10)"]
    X = np.random.default_rng(0).normal(size=(6, 3))
    fitted, dropped = fit_candidates(cands, X, ["fan/id_00"] * 6)
    assert [c.label for c in fitted] == ["knn"] and "lof(n_neighbors=10)" in dropped
