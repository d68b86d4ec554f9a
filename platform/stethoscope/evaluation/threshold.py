"""Decision thresholds and the official decision-result CSVs.

The DCASE 2021-2024 Task 2 baselines turn anomaly scores into normal/anomaly decisions the same way: fit a gamma
distribution to the anomaly scores of the *training* clips (all normal), ``scipy.stats.gamma.fit(y_pred)``, and call a
clip anomalous when its score is above the fitted distribution's ``ppf(0.9)``
(github.com/y-kawagu/dcase2021_task2_baseline_ae: ``00_train.py`` fits and saves the gamma parameters,
``01_test.py`` computes ``scipy.stats.gamma.ppf(q=decision_threshold, a=..., loc=..., scale=...)`` with
``decision_threshold: 0.9`` from ``baseline.yaml``, and writes ``1`` when ``y_pred > decision_threshold``).

Decision files follow the same baselines: one row ``file_name,decision`` per clip (1 = anomaly, 0 = normal), no
header, named ``decision_result_<machine_type>_id_<XX>.csv`` (DCASE 2020 grammar) or
``decision_result_<machine_type>_section_<XX>_test.csv`` (2021+), next to the ``anomaly_score_*`` CSVs.
"""

from __future__ import annotations

import csv
import math
import os
import posixpath
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from stethoscope.data.labels import id_field
from stethoscope.errors import ConfigError, DataError

#: The quantile of the DCASE 2021+ baselines (``decision_threshold: 0.9`` in their baseline.yaml).
DEFAULT_QUANTILE = 0.9

#: Fewest scores a gamma fit is attempted on (three parameters).
MIN_FIT_SCORES = 3


#: Threshold rules: the DCASE baselines' gamma quantile, and the fallback when no gamma can be fitted (ours).
THRESHOLD_METHODS = ("gamma", "max_train_normal")


@dataclass(frozen=True)
class GammaThreshold:
    """A fitted decision threshold: ``value = scipy.stats.gamma.ppf(quantile, shape, loc, scale)``, or, with
    ``method="max_train_normal"`` (:func:`fit_threshold`'s fallback, ours), the largest normal score.

    Attributes (units are those of the scores it was fitted on):
        value: the threshold; a score strictly above it is an anomaly.
        quantile: q in (0, 1). shape / loc / scale: the gamma parameters (``a``, ``loc``, ``scale`` in scipy);
            None for the fallback.
        n: how many scores the fit saw. reason: why the fallback was used (None for a gamma fit).
    """

    value: float
    quantile: float
    shape: float | None
    loc: float | None
    scale: float | None
    n: int
    method: str = "gamma"
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GammaThreshold":
        """Rebuild from :meth:`to_dict` output. Raises ConfigError on missing or unknown keys."""
        from stethoscope.config import from_dict

        return from_dict(cls, values, "decision threshold")

    def decide(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Decisions [N] int64 (1 = anomaly: score > value, as the baselines' ``y_pred > threshold``)."""
        return decide(scores, self.value)


def fit_gamma_threshold(normal_scores: Sequence[float] | np.ndarray, quantile: float = DEFAULT_QUANTILE) -> GammaThreshold:
    """Fit a gamma distribution to normal scores and take its ``quantile`` as the decision threshold.

    Args:
        normal_scores: [N] anomaly scores of normal clips (the training clips, as the DCASE 2021+ baselines do),
            any unit, N >= 3, finite, not all equal.
        quantile: q in (0, 1); DCASE 2021+ baselines: 0.9.
    Returns:
        GammaThreshold with ``value = scipy.stats.gamma.ppf(q, *scipy.stats.gamma.fit(normal_scores))``.
    Raises:
        ConfigError: quantile outside (0, 1).
        DataError: fewer than 3 scores, NaN/inf, zero spread, or a fit that does not give a finite threshold.
    """
    q = float(quantile)
    if not 0.0 < q < 1.0:
        raise ConfigError(f"decision threshold quantile = {quantile}; expected a number in (0, 1), e.g. 0.9")
    x = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    if x.size < MIN_FIT_SCORES:
        raise DataError(f"a gamma threshold needs at least {MIN_FIT_SCORES} normal scores; got {x.size}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{int((~np.isfinite(x)).sum())} normal score(s) are NaN or infinite; cannot fit a threshold")
    if np.ptp(x) == 0.0:
        raise DataError(f"all {x.size} normal scores equal {x[0]!r}; a gamma distribution cannot be fitted")
    shape, loc, scale = scipy.stats.gamma.fit(x)
    value = float(scipy.stats.gamma.ppf(q, shape, loc=loc, scale=scale))
    if not math.isfinite(value):
        raise DataError(f"the gamma fit (a={shape}, loc={loc}, scale={scale}) gives no finite {q} quantile")
    return GammaThreshold(value, q, float(shape), float(loc), float(scale), int(x.size))


def fit_threshold(normal_scores: Sequence[float] | np.ndarray, quantile: float = DEFAULT_QUANTILE, *,
                  fallback: bool = True) -> GammaThreshold:
    """:func:`fit_gamma_threshold`, or, when no gamma can be fitted (fewer than 3 scores, all equal, no finite
    quantile) and ``fallback`` is set, the largest normal score (``method="max_train_normal"``, ``reason`` says
    why). The fallback is ours, not the baselines': it lets a machine type with one or two training clips (the
    DCASE 2023 sample) be published, and the manifest shows it.

    Raises:
        ConfigError: quantile outside (0, 1). DataError: no finite normal score, or no gamma fit and no fallback.
    """
    try:
        return fit_gamma_threshold(normal_scores, quantile)
    except DataError as exc:
        x = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
        if not fallback or x.size == 0 or not np.all(np.isfinite(x)):
            raise
        return GammaThreshold(float(x.max()), float(quantile), None, None, None, int(x.size),
                              method="max_train_normal",
                              reason=f"no gamma fit ({exc}); threshold = the largest of the {x.size} normal scores")


def decide(scores: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """[N] scores → [N] int64 decisions, 1 where ``score > threshold`` (anomaly), else 0."""
    return (np.asarray(scores, dtype=np.float64) > float(threshold)).astype(np.int64)


def decision_csv_name(dataset: str, machine_type: str, group_number: str) -> str:
    """``decision_result_<machine_type>_id_<XX>.csv`` (dataset "dcase2020") or
    ``decision_result_<machine_type>_section_<XX>_test.csv`` (2021+), as the baselines name them."""
    if dataset == "dcase2020":
        return f"decision_result_{machine_type}_id_{group_number}.csv"
    return f"decision_result_{machine_type}_section_{group_number}_test.csv"


def write_decision_csvs(scores: pd.DataFrame, threshold: float, out_dir: str | os.PathLike) -> list[Path]:
    """Write one official decision-result CSV per machine type and ID/section into ``out_dir`` (created).

    Args:
        scores: one row per clip with ``path``, ``dataset``, ``machine_type``, ``machine_id`` (2020) or
            ``section`` (2021+) and ``score`` (the same table :func:`stethoscope.evaluation.evaluate` takes).
        threshold: a score strictly above it is an anomaly.
    Returns:
        The written paths, sorted. Rows are ``file_name,decision`` sorted by file name, no header.
    Raises:
        DataError: a missing column, or NaN/inf scores (the message lists the paths).
    """
    need = ("path", "dataset", "machine_type", "score")
    missing = [c for c in need if c not in scores.columns]
    if missing:
        raise DataError(f"the scores table lacks column(s) {missing}")
    s = scores["score"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(s)):
        bad = scores.loc[~np.isfinite(s), "path"].tolist()
        raise DataError(f"{len(bad)} clip(s) have a NaN or infinite score: {bad}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    frame = scores.assign(
        _file=[posixpath.basename(str(p).replace("\\", "/")) for p in scores["path"]],
        _decision=decide(s, threshold),
    )
    for (dataset, machine_type), mdf in frame.groupby(["dataset", "machine_type"], sort=True):
        col = id_field(str(dataset))
        if col not in mdf.columns:
            raise DataError(f"the scores table lacks column {col!r} (needed for {dataset} clips)")
        for group, g in mdf.groupby(col, sort=True):
            path = out / decision_csv_name(str(dataset), str(machine_type), str(group))
            with open(path, "w", newline="") as fh:
                w = csv.writer(fh, lineterminator="\n")
                for name, d in sorted(zip(g["_file"], g["_decision"])):
                    w.writerow([name, int(d)])
            written.append(path)
    return sorted(written)
