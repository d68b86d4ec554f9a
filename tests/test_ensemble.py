"""Ensembles (standardize → convex weights chosen on validation) and gamma decision thresholds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from stethoscope.errors import ConfigError, DataError
from stethoscope.evaluation import (
    Ensemble,
    Standardizer,
    decision_csv_name,
    fit_ensemble,
    fit_gamma_threshold,
    fit_weights,
    simplex_grid,
    write_decision_csvs,
)


# -- gamma threshold ---------------------------------------------------------------------------------------------
def test_gamma_threshold_matches_scipy_and_the_true_quantile():
    rng = np.random.default_rng(0)
    x = scipy.stats.gamma.rvs(2.0, loc=1.0, scale=3.0, size=4000, random_state=rng)
    th = fit_gamma_threshold(x)  # default quantile 0.9, as the DCASE 2021+ baselines
    a, loc, scale = scipy.stats.gamma.fit(x)
    assert th.quantile == 0.9
    assert th.value == pytest.approx(scipy.stats.gamma.ppf(0.9, a, loc=loc, scale=scale), rel=1e-12)
    assert (th.shape, th.loc, th.scale) == pytest.approx((a, loc, scale), rel=1e-12)
    # the fit recovers the generating distribution's 0.9 quantile, and about 10 % of the sample lies above it
    assert th.value == pytest.approx(scipy.stats.gamma.ppf(0.9, 2.0, loc=1.0, scale=3.0), rel=0.03)
    assert np.mean(x > th.value) == pytest.approx(0.1, abs=0.015)


def test_threshold_quantile_is_configurable_and_decisions_are_strictly_above():
    x = np.random.default_rng(1).gamma(3.0, 2.0, size=500)
    lo, hi = fit_gamma_threshold(x, quantile=0.5), fit_gamma_threshold(x, quantile=0.99)
    assert lo.value < hi.value
    assert list(hi.decide([hi.value, hi.value + 1e-9, -1.0])) == [0, 1, 0]
    with pytest.raises(ConfigError, match="quantile"):
        fit_gamma_threshold(x, quantile=1.0)
    with pytest.raises(DataError, match="all 5 normal scores equal"):
        fit_gamma_threshold(np.ones(5))
    with pytest.raises(DataError, match="at least 3"):
        fit_gamma_threshold([1.0, 2.0])
    with pytest.raises(DataError, match="NaN"):
        fit_gamma_threshold([1.0, 2.0, np.nan, 4.0])


def test_decision_csvs_have_the_official_names_and_rows(tmp_path):
    scores = pd.DataFrame({
        "path": ["/d/slider/test/normal_id_00_1.wav", "/d/slider/test/anomaly_id_00_2.wav",
                 "/d/slider/test/normal_id_02_3.wav"],
        "dataset": "dcase2020", "machine_type": "slider", "machine_id": ["00", "00", "02"],
        "score": [0.5, 2.0, 1.0],
    })
    written = write_decision_csvs(scores, 1.0, tmp_path)
    assert [p.name for p in written] == ["decision_result_slider_id_00.csv", "decision_result_slider_id_02.csv"]
    assert written[0].read_text() == "anomaly_id_00_2.wav,1\nnormal_id_00_1.wav,0\n"
    assert written[1].read_text() == "normal_id_02_3.wav,0\n"  # equal to the threshold → normal
    assert decision_csv_name("dcase2021+", "fan", "01") == "decision_result_fan_section_01_test.csv"


# -- ensembles ---------------------------------------------------------------------------------------------------
def test_simplex_grid_enumerates_every_convex_weight_vector():
    for m, step in ((1, 0.1), (2, 0.1), (3, 0.1), (4, 0.25)):
        g = simplex_grid(m, step)
        k = round(1 / step)
        assert g.shape == (math.comb(k + m - 1, m - 1), m)
        assert np.allclose(g.sum(axis=1), 1.0) and (g >= 0).all()
        assert len({tuple(np.round(r * k).astype(int)) for r in g}) == g.shape[0]
    with pytest.raises(ConfigError, match="1/K"):
        simplex_grid(2, 0.3)


def _along(direction, offset, t):
    """Points offset + t·direction for each t (rows)."""
    return np.asarray(offset)[None, :] + np.outer(t, direction)


def test_weight_search_finds_the_only_separating_combination():
    # Normals spread along d = (0.7, -0.3); anomalies are the same spread shifted by (1, 1). Only w ∝ (0.3, 0.7)
    # (w·d = 0) collapses the spread and separates them perfectly; w1 = 0.2 or 0.4 leave a ±0.1·t spread that overlaps.
    t = np.linspace(-10, 10, 21)
    d = np.array([0.7, -0.3])
    scores = np.vstack([_along(d, [0, 0], t), _along(d, [1, 1], t)])
    labels = np.r_[np.zeros(21), np.ones(21)]
    search = fit_weights(scores, labels, step=0.1)
    assert search.weights.tolist() == pytest.approx([0.3, 0.7])
    assert search.auc == 1.0 and search.pauc == 1.0
    # each member alone is worse: the combination really is chosen for its validation figures
    assert fit_weights(scores[:, :1], labels).auc < 1.0 and fit_weights(scores[:, 1:], labels).auc < 1.0
    # and the labels matter: flipping them moves the choice
    assert fit_weights(scores, 1 - labels).weights.tolist() != pytest.approx([0.3, 0.7])


def test_members_that_do_not_help_get_zero_weight_and_are_dropped():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(30), np.ones(30)]
    good = np.r_[np.linspace(0, 1, 30), np.linspace(5, 6, 30)]  # separates perfectly
    inverse = -good + rng.normal(0, 0.1, 60)  # anti-informative
    noise = rng.normal(0, 1, 60)
    train = [rng.normal(0, 1, 50), rng.normal(0, 1, 50), rng.normal(0, 1, 50)]
    ens = fit_ensemble(["noise", "good", "inverse"], train, np.c_[noise, good, inverse], y)
    assert ens.members == ["good"] and ens.weights.tolist() == [1.0]
    assert ens.info["dropped"] == ["noise", "inverse"]
    assert ens.info["validation_auc"] == 1.0


def test_standardizer_uses_training_normal_mean_and_std_and_the_ensemble_combines_them():
    st_a, st_b = Standardizer.fit([1.0, 3.0]), Standardizer.fit([10.0, 20.0, 30.0])
    assert (st_a.mean, st_a.std) == (2.0, 1.0)
    assert st_b.mean == 20.0 and st_b.std == pytest.approx(math.sqrt(200 / 3))
    ens = Ensemble(["a", "b"], [st_a, st_b], np.array([0.25, 0.75]))
    raw = np.array([[4.0, 20.0], [2.0, 20.0 + math.sqrt(200 / 3)]])
    assert ens.standardize(raw).ravel().tolist() == pytest.approx([2.0, 0.0, 0.0, 1.0])
    assert ens.score(raw).tolist() == pytest.approx([0.5, 0.75])
    assert Ensemble.from_dict(ens.to_dict()).score(raw).tolist() == pytest.approx([0.5, 0.75])
    with pytest.raises(DataError, match="cannot be standardized"):
        Standardizer.fit([5.0, 5.0, 5.0])
    with pytest.raises(ConfigError, match="sum to 1"):
        Ensemble(["a", "b"], [st_a, st_b], np.array([0.5, 0.6]))


def test_one_member_ensembles_and_validation_without_anomalies():
    rng = np.random.default_rng(4)
    one = fit_ensemble(["ae"], [rng.normal(5, 2, 40)], rng.normal(5, 2, (10, 1)), np.r_[np.zeros(5), np.ones(5)])
    assert one.members == ["ae"] and one.weights.tolist() == [1.0]
    assert one.standardizers[0].mean == pytest.approx(5.0, abs=1.0)
    two = fit_ensemble(["a", "b"], [rng.normal(0, 1, 40)] * 2, rng.normal(0, 1, (6, 2)), np.zeros(6))
    assert two.weights.tolist() == [0.5, 0.5]
    assert "no weight search is possible" in two.info["reason"]
