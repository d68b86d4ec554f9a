"""Ensembles (standardize → convex weights chosen on validation) and gamma decision thresholds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

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


# -- DCASE 2022+ official score as the ensemble objective (issue 16) ------------------------------------------------
def test_official_score_equals_a_hand_computed_h_mean():
    from stethoscope.evaluation.metrics import official_score

    # section 00: source normals 0.1, 0.4; target normal 0.3; anomalies 0.35 (source), 0.5 (target)
    #   AUC(source) = 3/4 (0.35 < 0.4); AUC(target) = 1; pAUC(0.1): TPR 1/2 on FPR [0, 1/3] → area 0.05,
    #   McClish 0.5 · (1 + (0.05 − 0.005) / (0.1 − 0.005)) = 14/19
    # section 01: every anomaly above every normal → 1, 1, 1
    y = [0, 0, 0, 1, 1, 0, 0, 0, 1]
    s = [0.1, 0.4, 0.3, 0.35, 0.5, 0.2, 0.6, 0.1, 0.7]
    g = ["00"] * 5 + ["01"] * 4
    d = ["source", "source", "target", "source", "target", "source", "source", "target", "target"]
    # h-mean of (3/4, 1, 14/19, 1, 1, 1) = 6 / (4/3 + 4 + 19/14) = 252/281
    assert official_score(y, s, g, d) == pytest.approx(252 / 281, abs=1e-12)
    # a section without anomalies adds nothing; a domain without normals leaves out its AUC
    assert official_score(y[:5] + [0], s[:5] + [9.0], g[:5] + ["02"], d[:5] + ["source"]) == pytest.approx(
        3 / (4 / 3 + 1 + 19 / 14))
    assert official_score([0, 0], [0.1, 0.2], ["00", "00"], ["source", "target"]) is None


def _complementary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[4n, 2] scores of two members on two sections × two domains, n normals and n anomalies per section and
    domain: half the anomalies are of kind 1 (member 0 sees them: +2.5σ, member 1 is blind), half of kind 2 (the
    other way round)."""
    rng = np.random.default_rng(seed)
    rows, y, g, d = [], [], [], []
    for section in ("00", "01"):
        for domain in ("source", "target"):
            rows.append(rng.normal(0, 1, (n, 2)))
            y += [0] * n
            for k in range(n):
                shift = np.array([2.5, 0.0]) if k % 2 == 0 else np.array([0.0, 2.5])
                rows.append(rng.normal(0, 1, (1, 2)) + shift)
            y += [1] * n
            g += [section] * 2 * n
            d += [domain] * 2 * n
    return np.vstack(rows), np.asarray(y), np.asarray(g, dtype=object), np.asarray(d, dtype=object)


def test_two_complementary_members_ensembled_beat_both_on_validation_and_test():
    from stethoscope.evaluation.metrics import official_score

    rng = np.random.default_rng(0)
    train = [rng.normal(0, 1, 200), rng.normal(0, 1, 200)]
    val, y_val, g_val, d_val = _complementary(20, seed=1)
    test, y_test, g_test, d_test = _complementary(20, seed=2)
    ens = fit_ensemble(["sees_kind_1", "sees_kind_2"], train, val, y_val, objective="official_score",
                       groups=g_val, domains=d_val)
    assert ens.info["objective_name"] == "official_score"
    assert len(ens.members) == 2 and min(ens.weights) >= 0.3, ens.to_dict()
    for scores, y, g, d in ((val, y_val, g_val, d_val), (test, y_test, g_test, d_test)):
        alone = [official_score(y, scores[:, j], g, d) for j in range(2)]
        together = official_score(y, ens.score(scores), g, d)
        assert together > max(alone) + 0.03, (together, alone)
    assert ens.info["validation_objective"] == pytest.approx(official_score(y_val, ens.score(val), g_val, d_val))


def test_official_score_objective_needs_sections_and_falls_back_when_undefined():
    rng = np.random.default_rng(5)
    train = [rng.normal(0, 1, 20)] * 2
    val = rng.normal(0, 1, (4, 2))
    y = np.array([0, 0, 1, 1])
    with pytest.raises(DataError, match="section"):
        fit_ensemble(["a", "b"], train, val, y, objective="official_score")
    with pytest.raises(ConfigError, match="objective"):
        fit_ensemble(["a", "b"], train, val, y, objective="h_mean")
    # each section holds one class only: the official score is undefined, the search says so and uses (AUC+pAUC)/2
    ens = fit_ensemble(["a", "b"], train, val, y, objective="official_score", groups=["00", "00", "01", "01"],
                       domains=["source"] * 4)
    assert ens.info["objective_name"] == "auc_pauc" and "undefined" in ens.info["objective_note"]


def test_uniform_weights_keep_the_best_members_without_a_search():
    rng = np.random.default_rng(6)
    y = np.r_[np.zeros(20), np.ones(20)]
    good = np.r_[rng.normal(0, 1, 20), rng.normal(3, 1, 20)]
    weak = np.r_[rng.normal(0, 1, 20), rng.normal(0.5, 1, 20)]
    noise = rng.normal(0, 1, 40)
    train = [rng.normal(0, 1, 50)] * 3
    ens = fit_ensemble(["noise", "weak", "good"], train, np.c_[noise, weak, good], y, max_members=2,
                       weights="uniform")
    assert ens.members == ["weak", "good"] and ens.weights.tolist() == [0.5, 0.5]
    assert ens.info["n_grid"] == 0 and "uniform" in ens.info["reason"]
    # the same standardizer for all three: the average's AUC is that of weak + good
    assert ens.info["validation_auc"] == pytest.approx(roc_auc_score(y, weak + good))
    with pytest.raises(ConfigError, match="uniform"):
        fit_ensemble(["a"], train[:1], good[:, None], y, weights="equal")
