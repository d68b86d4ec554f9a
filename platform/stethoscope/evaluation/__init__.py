"""Evaluation (DESIGN.md step 5): AUC, pAUC (p = 0.1, McClish-standardized as the official DCASE evaluators report
it), the unstandardized partial AUC beside it, per-machine-type averages (arithmetic mean over IDs for DCASE 2020,
harmonic mean over sections for 2021+), official-format score CSVs, ``metrics.json``, ``results.md`` and plots.
"""

from stethoscope.evaluation.metrics import auc, domain_mask, hmean, pauc, pauc_unstandardized
from stethoscope.evaluation.report import ScoreError, evaluate, format_table, score_csv_name

__all__ = [
    "ScoreError",
    "auc",
    "domain_mask",
    "evaluate",
    "format_table",
    "hmean",
    "pauc",
    "pauc_unstandardized",
    "score_csv_name",
]
