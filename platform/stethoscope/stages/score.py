"""Scoring a run's clips with its model(s): per training unit, with each clip's role in the split, and the choice
of a score variant on the split's validation clips (methods with ``score_variants``: AEGAN-AD, EGBAD)."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from stethoscope.errors import DataError, StethoscopeError
from stethoscope.splits import RunSplit
from stethoscope.stages.ingest import Prepared


def unit_models(method_obj) -> list[tuple[Any, Any]]:
    """``[(unit, Method)]`` of a run: a list of (:class:`stethoscope.scopes.Unit`, Method) pairs is returned as it
    is; one Method is the model of the whole selection (``[(None, method)]``)."""
    if isinstance(method_obj, (list, tuple)):
        if not method_obj:
            raise StethoscopeError("no trained model to score with")
        return list(method_obj)
    return [(None, method_obj)]


def per_unit(prepared: Prepared, models: list, part: str, fn) -> pd.DataFrame:
    """``fn(method, dataset)`` over each unit's clips of ``part`` ("train" / "test"), concatenated. ``dataset`` is
    :meth:`Prepared.scoring_features` (read in this process for a small store, else a Ray Dataset)."""
    frames = [fn(m, prepared.scoring_features(part, unit=u)) for u, m in models]
    kept = [f for f in frames if not f.empty]
    return pd.concat(kept, ignore_index=True) if kept else frames[0]


def with_roles(frame: pd.DataFrame, split: RunSplit, what: str) -> pd.DataFrame:
    """``frame`` (one row per scored clip, a ``path`` column) with each clip's ``role`` in ``split``.

    Raises:
        DataError: a clip the split does not hold (``what`` names the clips in the message, e.g. "test").
    """
    roles = split.roles()
    frame = frame.copy()
    frame["role"] = [roles.get(p) for p in frame["path"]]
    outside = frame.loc[frame["role"].isna(), "path"].tolist()
    if outside:
        raise DataError(f"{len(outside)} scored {what} clip(s) are not in the run's validation split (made for other "
                        f"data?): {[os.path.basename(p) for p in outside[:10]]}")
    return frame


# -- score-variant selection on the split's validation clips (methods with ``score_variants``) ----------------------
#: Column prefix of the per-variant scores in ``score_variants.parquet``.
VARIANT_COLUMN_PREFIX = "variant:"
#: How a score variant is chosen.
VARIANT_CRITERION = "(AUC + pAUC) / 2 on the validation clips (pAUC: max_fpr 0.1, McClish-standardized)"


def has_score_variants(method_obj) -> bool:
    """True for a method that exposes several named anomaly scores: ``score_variants(batch) -> {name: Tensor [B]}``
    and ``set_score_variant(name)`` (AEGAN-AD, Jiang et al. ICASSP 2023; EGBAD, Zenati et al. 2018)."""
    return callable(getattr(method_obj, "score_variants", None)) and callable(
        getattr(method_obj, "set_score_variant", None))


def score_all_variants(method_obj, ds, batch_size: int = 16) -> pd.DataFrame:
    """Every score variant of every clip in a Ray Dataset of ingested clips.

    Returns:
        one row per clip: the metadata columns of :func:`stethoscope.scoring.score_batches` plus one float64 column
        ``variant:<name>`` per variant (higher = more anomalous). Empty (no rows) if the dataset has no clips.
    """
    import numpy as np
    import torch

    from stethoscope.scoring import clip_batches

    method_obj.eval()
    frames = []
    with torch.no_grad():
        for tensors, meta in clip_batches(ds.iter_batches(batch_size=batch_size, batch_format="numpy"), method_obj):
            variants = method_obj.score_variants({k: v.to(method_obj.device) for k, v in tensors.items()})
            frame = pd.DataFrame(meta)
            for name, values in variants.items():
                frame[VARIANT_COLUMN_PREFIX + name] = values.detach().cpu().numpy().astype(np.float64)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def choose_score_variant(variant_scores: pd.DataFrame, split: RunSplit, configured: str) -> dict[str, Any]:
    """The variant with the best (AUC + pAUC) / 2 on the validation clips of ``split``
    (:func:`stethoscope.evaluation.selection.select_score_variant`). Reads the labels of ``split.validation`` only,
    so the labels of the other clips cannot change the choice. If the validation clips cannot rank the variants
    (no clips, or one class only), ``configured`` is kept and ``reason`` says why.

    Args:
        variant_scores: a :func:`score_all_variants` table (``path``, ``label`` and ``variant:<name>`` columns).
        split: the run's split. configured: the variant the method was trained with (the fallback).
    Returns:
        ``{"selected", "configured", "criterion", "validation": {name: {"auc", "pauc", "mean"}}, "n_validation",
        "split_seed", "split_source", "reason"}`` (NaN metrics written as null).
    """
    import numpy as np

    from stethoscope.evaluation.selection import select_score_variant

    val = variant_scores[variant_scores["path"].isin(set(split.validation))]
    y = (val["label"] == "anomaly").to_numpy().astype(np.int64)
    cols = [c for c in variant_scores.columns if str(c).startswith(VARIANT_COLUMN_PREFIX)]
    record: dict[str, Any] = {"configured": configured, "criterion": VARIANT_CRITERION, "n_validation": len(val),
                              "split_seed": split.seed, "split_source": split.source}
    try:
        name, table = select_score_variant({c[len(VARIANT_COLUMN_PREFIX):]: val[c].to_numpy() for c in cols}, y)
    except DataError as exc:
        record.update(selected=configured, validation={},
                      reason=f"the validation clips cannot rank the score variants ({exc}); kept {configured!r}")
        return record
    finite = {k: {m: (v if v == v and abs(v) != float("inf") else None) for m, v in row.items()}
              for k, row in table.items()}  # JSON (metrics.json) has no NaN: a variant with NaN scores gets null
    record.update(selected=name, validation=finite, reason=None)
    return record


__all__ = ["VARIANT_COLUMN_PREFIX", "VARIANT_CRITERION", "choose_score_variant", "has_score_variants", "per_unit",
           "score_all_variants", "unit_models", "with_roles"]
