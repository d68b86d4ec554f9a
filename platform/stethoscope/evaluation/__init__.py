"""Evaluation (DESIGN.md step 5): AUC, pAUC (p = 0.1, McClish-standardized as the official DCASE evaluators report
it), the unstandardized partial AUC beside it, per-machine-type averages (arithmetic mean over IDs for DCASE 2020,
harmonic mean over sections for 2021+), official-format score CSVs, ``metrics.json``, ``results.md`` and plots;
score ensembles (:mod:`.ensemble`) and gamma decision thresholds with the official decision CSVs (:mod:`.threshold`).
"""

from stethoscope.evaluation.metrics import auc, domain_mask, hmean, pauc, pauc_unstandardized, weighted_mean_std
from stethoscope.evaluation.report import ScoreError, evaluate, format_table, score_csv_name
from stethoscope.evaluation.ensemble import Ensemble, Standardizer, fit_ensemble, fit_weights, simplex_grid
from stethoscope.evaluation.threshold import (
    GammaThreshold,
    decide,
    decision_csv_name,
    fit_gamma_threshold,
    fit_threshold,
    write_decision_csvs,
)

__all__ = [
    "Ensemble",
    "GammaThreshold",
    "ScoreError",
    "Standardizer",
    "decide",
    "decision_csv_name",
    "fit_ensemble",
    "fit_gamma_threshold",
    "fit_threshold",
    "fit_weights",
    "simplex_grid",
    "write_decision_csvs",
    "auc",
    "domain_mask",
    "evaluate",
    "format_table",
    "hmean",
    "pauc",
    "pauc_unstandardized",
    "score_csv_name",
    "weighted_mean_std",
]
