"""Choosing one score variant among several on a validation split (never on the test split).

Methods such as AEGAN-AD (Jiang et al., ICASSP 2023, arXiv:2303.17949) compute many anomaly scores from one model
(reconstruction errors in input and latent space, detectors on discriminator embeddings) and report the best one per
machine type. The reference code picks it on the test set; here the choice is made on a labelled validation split
that is disjoint from the test split, by the mean of AUC and pAUC (max_fpr = 0.1, McClish-standardized:
``sklearn.metrics.roc_auc_score(y, s, max_fpr=0.1)``, as the official DCASE evaluators report it).
"""

from __future__ import annotations

import logging
import math
from typing import Mapping

import numpy as np

from stethoscope.errors import DataError
from stethoscope.evaluation.metrics import DEFAULT_MAX_FPR, auc, pauc

log = logging.getLogger(__name__)


def _labels(labels: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"{what} labels must be 1-D [N], got shape {y.shape}")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise DataError(f"{what} labels must be 0 (normal) or 1 (anomaly); got values {sorted(values, key=str)}")
    if values != {0, 1}:
        raise DataError(
            f"the {what} split needs both normal and anomalous clips to compare score variants; it has "
            f"{int((y == 0).sum())} normal and {int((y == 1).sum())} anomalous"
        )
    return y.astype(np.int64)


def variant_table(
    variant_scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    max_fpr: float = DEFAULT_MAX_FPR,
    what: str = "validation",
) -> dict[str, dict[str, float]]:
    """AUC, pAUC and their mean for every score variant.

    Args:
        variant_scores: name → scores [N] (higher = more anomalous), numpy arrays or tensors.
        labels: [N] 0 = normal, 1 = anomaly.
        max_fpr: pAUC's FPR limit (DCASE: 0.1).
    Returns:
        name → ``{"auc": float, "pauc": float, "mean": float}``; all three are NaN for a variant whose scores hold
        NaN or inf.
    Raises:
        DataError: no variants, labels not 1-D 0/1 with both classes, or a variant with a length other than N.
    """
    if not variant_scores:
        raise DataError("no score variants to evaluate")
    y = _labels(labels, what)
    table: dict[str, dict[str, float]] = {}
    for name, scores in variant_scores.items():
        s = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64).reshape(-1)
        if s.shape[0] != y.shape[0]:
            raise DataError(f"score variant {name!r} has {s.shape[0]} scores for {y.shape[0]} {what} labels")
        if not np.all(np.isfinite(s)):
            log.warning("score variant %r has NaN/inf scores on the %s split; it cannot be selected", name, what)
            table[name] = {"auc": math.nan, "pauc": math.nan, "mean": math.nan}
            continue
        a, p = auc(y, s), pauc(y, s, max_fpr=max_fpr)
        table[name] = {"auc": a, "pauc": p, "mean": 0.5 * (a + p)}
    return table


def select_score_variant(
    variant_scores: Mapping[str, np.ndarray], labels: np.ndarray, max_fpr: float = DEFAULT_MAX_FPR
) -> tuple[str, dict[str, dict[str, float]]]:
    """The variant with the best mean of AUC and pAUC on a validation split.

    Pass validation scores and labels only: the test labels must never reach this function.
    Ties go to the higher AUC, then to the name that sorts first (so the result does not depend on dict order).

    Args:
        variant_scores: name → validation scores [N] (higher = more anomalous).
        labels: [N] validation labels, 0 = normal, 1 = anomaly.
        max_fpr: pAUC's FPR limit (DCASE: 0.1).
    Returns:
        ``(selected name, table)`` with the table of :func:`variant_table`.
    Raises:
        DataError: as :func:`variant_table`, or every variant has non-finite scores.
    """
    table = variant_table(variant_scores, labels, max_fpr)
    ranked = [(-row["mean"], -row["auc"], name) for name, row in table.items() if math.isfinite(row["mean"])]
    if not ranked:
        raise DataError(f"every score variant has NaN/inf scores on the validation split: {sorted(table)}")
    best = min(ranked)[2]
    log.info("selected score variant %r on the validation split: %s", best, table[best])
    return best, table


def select_and_evaluate(
    val_scores: Mapping[str, np.ndarray],
    val_labels: np.ndarray,
    test_scores: Mapping[str, np.ndarray],
    test_labels: np.ndarray,
    max_fpr: float = DEFAULT_MAX_FPR,
) -> dict:
    """Select a variant on the validation split, then report the selected variant on the test split.

    The selection sees ``val_scores`` / ``val_labels`` only; ``test_labels`` are used after it, to score the chosen
    variant, so shuffling them cannot change the choice.

    Returns:
        ``{"selected": name, "validation": {name: {"auc", "pauc", "mean"}}, "test": {"auc", "pauc", "mean"}}``
        (test metrics of the selected variant only).
    Raises:
        DataError: as :func:`select_score_variant`, or the selected variant is missing from ``test_scores``.
    """
    name, table = select_score_variant(val_scores, val_labels, max_fpr)
    if name not in test_scores:
        raise DataError(f"selected score variant {name!r} is missing from the test scores ({sorted(test_scores)})")
    test = variant_table({name: test_scores[name]}, test_labels, max_fpr, what="test")[name]
    return {"selected": name, "validation": table, "test": test}
