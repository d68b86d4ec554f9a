"""Threshold-free detection metrics for DCASE Task 2: AUC, pAUC (McClish-standardized), the unstandardized
partial area, and the per-machine-type averages (arithmetic mean for DCASE 2020, harmonic mean for 2021+).

Conventions: ``y_true`` is 1 for an anomaly and 0 for a normal clip; ``scores`` are anomaly scores (higher = more
anomalous, any unit). Both are 1-D sequences of the same length N (one entry per clip).

Sources:
- pAUC as the official DCASE evaluators report it is scikit-learn's ``roc_auc_score(y, s, max_fpr=p)``, i.e. the
  partial area over FPR in [0, p] standardized by McClish (1989, Med. Decis. Making 9(3)): ``0.5 * (1 + (A - A_min)
  / (A_max - A_min))`` with ``A_min = p**2 / 2`` (the chance diagonal) and ``A_max = p`` (a perfect detector).
  Used by github.com/y-kawagu/dcase2020_task2_baseline (01_test.py), github.com/nttcslab/dcase2023_task2_evaluator
  (dcase2023_task2_evaluator.py) and the 2021/2022 evaluators, all with p = 0.1.
- The DCASE 2020 task paper (Koizumi et al., arXiv:2006.05822, Eq. 3) writes pAUC as the *unstandardized*
  ``(1/p) * integral_0^p ROC(FPR) dFPR``; :func:`pauc_unstandardized` computes that. The two are different numbers
  for the same ROC curve (a chance detector gets 0.5 from the former and p/2 = 0.05 from the latter).
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import scipy.stats
from sklearn import metrics as skm

#: The FPR limit of pAUC in every DCASE Task 2 edition (2020-2024).
DEFAULT_MAX_FPR = 0.1

#: Harmonic means floor each value at this, as the DCASE 2022/2023 official evaluators do
#: (``scipy.stats.hmean(numpy.maximum(x, sys.float_info.epsilon))``), so an AUC of exactly 0 gives ~0, not an error.
HMEAN_FLOOR = sys.float_info.epsilon


def _check(y_true, scores, max_fpr: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.shape[0]} entries but scores has {s.shape[0]}")
    if not np.all(np.isfinite(s)):
        bad = np.flatnonzero(~np.isfinite(s)).tolist()
        raise ValueError(f"scores must be finite; NaN/inf at positions {bad}")
    classes = set(np.unique(y).tolist())
    if not classes <= {0, 1}:
        raise ValueError(f"y_true must hold 0 (normal) and 1 (anomaly) only, got values {sorted(classes, key=str)}")
    if classes != {0, 1}:
        raise ValueError(
            f"AUC is undefined with one class only: y_true has {int((y == 0).sum())} normal and "
            f"{int((y == 1).sum())} anomalous entries"
        )
    if max_fpr is not None and not (0.0 < float(max_fpr) <= 1.0):
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    return y.astype(np.int64), s


def auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve, ``sklearn.metrics.roc_auc_score(y_true, scores)``.

    Args:
        y_true: [N] labels, 1 = anomaly, 0 = normal.
        scores: [N] anomaly scores, higher = more anomalous.

    Returns:
        AUC in [0, 1]; ties count one half (trapezoidal ROC).

    Raises:
        ValueError: shapes differ, a score is NaN/inf, a label is not 0/1, or only one class is present.
    """
    y, s = _check(y_true, scores)
    return float(skm.roc_auc_score(y, s))


def pauc(y_true: Sequence[int], scores: Sequence[float], max_fpr: float = DEFAULT_MAX_FPR) -> float:
    """McClish-standardized partial AUC over FPR in [0, max_fpr]: ``roc_auc_score(y, s, max_fpr=max_fpr)``.

    This is the number the official DCASE Task 2 evaluators call pAUC (see the module docstring). It is 0.5 for a
    chance detector and 1.0 for a perfect one; with ``max_fpr = 1`` it equals :func:`auc`.

    Args:
        y_true: [N] labels, 1 = anomaly, 0 = normal.
        scores: [N] anomaly scores, higher = more anomalous.
        max_fpr: upper FPR limit p, in (0, 1]. DCASE uses 0.1.

    Raises:
        ValueError: as :func:`auc`, or max_fpr outside (0, 1].
    """
    y, s = _check(y_true, scores, max_fpr)
    return float(skm.roc_auc_score(y, s, max_fpr=float(max_fpr)))


def pauc_unstandardized(y_true: Sequence[int], scores: Sequence[float], max_fpr: float = DEFAULT_MAX_FPR) -> float:
    """Unstandardized partial AUC, ``(1/p) * integral_0^p TPR(FPR) dFPR``.

    Source: Koizumi et al. 2020, "Description and discussion on DCASE2020 Challenge Task2", arXiv:2006.05822, Eq. 3.

    The ROC curve comes from ``sklearn.metrics.roc_curve``; the TPR at FPR = p is interpolated linearly on the
    segment that crosses p, and the area is the trapezoidal rule (``sklearn.metrics.auc``). It is p/2 for a chance
    detector and 1.0 for a perfect one. Relation to :func:`pauc`: ``pauc = 0.5 * (1 + (p*u - p**2/2) / (p - p**2/2))``
    where ``u`` is this value.

    Args:
        y_true: [N] labels, 1 = anomaly, 0 = normal.
        scores: [N] anomaly scores, higher = more anomalous.
        max_fpr: upper FPR limit p, in (0, 1].

    Raises:
        ValueError: as :func:`auc`, or max_fpr outside (0, 1].
    """
    y, s = _check(y_true, scores, max_fpr)
    p = float(max_fpr)
    fpr, tpr, _ = skm.roc_curve(y, s)
    # roc_curve's FPR is non-decreasing from 0 to 1; keep every point at or left of p ...
    inside = fpr <= p
    x, t = fpr[inside], tpr[inside]
    if x[-1] < p:
        # ... and close the curve at FPR = p on the first segment that leaves [0, p].
        j = int(np.argmax(fpr > p))
        x0, x1, t0, t1 = fpr[j - 1], fpr[j], tpr[j - 1], tpr[j]
        t_p = t0 + (t1 - t0) * (p - x0) / (x1 - x0)
        x, t = np.append(x, p), np.append(t, t_p)
    return float(skm.auc(x, t) / p)


def domain_mask(y_true: Sequence[int], domains: Sequence[str | None], domain: str) -> np.ndarray:
    """Boolean [N] mask of the clips that enter the AUC of ``domain`` ("source" or "target") in DCASE 2022-2024:
    the *normal* clips of that domain plus *every* anomalous clip of the section, whatever its domain.

    Source: github.com/nttcslab/dcase2023_task2_evaluator, dcase2023_task2_evaluator.py, ``output_result``:
    ``y_true_auc = y_true_all[(y_domain == domain_idx) | (y_true_all != 0)]`` then
    ``metrics.roc_auc_score(y_true_auc, y_pred_auc)``; github.com/Kota-Dohi/dcase2022_evaluator
    (dcase2022_task2_evaluator.py) has the same line. The section's pAUC, in contrast, uses all its clips
    (both domains): ``metrics.roc_auc_score(y_true_all, y_pred_all, max_fpr=MAX_FPR)``.
    """
    y = np.asarray(y_true)
    d = np.asarray(domains, dtype=object)
    if y.shape != d.shape:
        raise ValueError(f"y_true has shape {y.shape} but domains has {d.shape}")
    return (d == domain) | (y == 1)


def hmean(values: Sequence[float]) -> float:
    """Harmonic mean, ``scipy.stats.hmean`` of the values floored at :data:`HMEAN_FLOOR` (as the DCASE 2022/2023
    official evaluators do). Raises ValueError on an empty sequence."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("harmonic mean of an empty sequence")
    return float(scipy.stats.hmean(np.maximum(v, HMEAN_FLOOR)))


def official_score(
    y_true: Sequence[int],
    scores: Sequence[float],
    groups: Sequence[str],
    domains: Sequence[str | None],
    max_fpr: float = DEFAULT_MAX_FPR,
) -> float | None:
    """The DCASE 2022-2024 official score of one machine type: the harmonic mean, over its sections, of each
    section's source AUC, target AUC and pAUC (:func:`domain_mask` says which clips enter each AUC; pAUC uses all
    the section's clips).

    Args:
        y_true / scores: [N] labels (0 normal, 1 anomaly) and anomaly scores.
        groups: [N] each clip's section (any hashable label, e.g. "00" or "section_00").
        domains: [N] "source" / "target" per clip.
        max_fpr: pAUC's FPR limit (0.1).
    Returns:
        The harmonic mean (:func:`hmean`) of every value that is defined: a section without anomalous clips
        contributes nothing, a domain without normal clips leaves out that domain's AUC. None when no value is
        defined at all.
    Raises:
        ValueError: sequences of different lengths.

    Source: github.com/nttcslab/dcase2023_task2_evaluator (the per-section AUCs and pAUC, then ``hmean`` over all
    of them); the same pooled h-mean the evaluation report gives as ``official_score``.
    """
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    g = np.asarray(groups, dtype=object).reshape(-1)
    d = np.asarray(domains, dtype=object).reshape(-1)
    if not (y.shape == s.shape == g.shape == d.shape):
        raise ValueError(f"official_score: {y.size} labels, {s.size} scores, {g.size} groups, {d.size} domains")
    values: list[float] = []
    for section in sorted(set(g.tolist()), key=str):
        m = g == section
        ys, ss, ds = y[m], s[m], d[m]
        if not ((ys == 0).any() and (ys == 1).any()):
            continue
        for dom in ("source", "target"):
            if ((ys == 0) & (ds == dom)).any():
                dm = domain_mask(ys, ds, dom)
                values.append(auc(ys[dm], ss[dm]))
        values.append(pauc(ys, ss, max_fpr))
    return hmean(values) if values else None


def amean(values: Sequence[float]) -> float:
    """Arithmetic mean (the DCASE 2020 per-machine-type average). Raises ValueError on an empty sequence."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("arithmetic mean of an empty sequence")
    return float(np.mean(v))


def weighted_mean_std(values: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    """Weighted mean and weighted standard deviation, JBCS 2024's summary over machine types (weights = each type's
    number of test clips): ``μ = Σ wᵢxᵢ / Σ wᵢ`` and ``σ = √(Σ wᵢ(xᵢ − μ)² / Σ wᵢ)`` (the population form: with one
    machine type σ = 0).

    Raises:
        ValueError: empty or mismatched sequences, a negative weight, or weights summing to 0.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if x.size == 0 or x.shape != w.shape:
        raise ValueError(f"weighted mean of {x.size} values with {w.size} weights")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 and sum to > 0; got {w.tolist()}")
    mu = float(np.sum(w * x) / np.sum(w))
    return mu, float(np.sqrt(np.sum(w * (x - mu) ** 2) / np.sum(w)))
