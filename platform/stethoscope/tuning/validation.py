"""The validation clips a sweep selects on, and the validation metric computed the same way a trial computes it.

Protocol (issue "Tune"): hyperparameters are selected on a *validation* metric; reported numbers come from clips
not used for selection. A sweep draws no split of its own: it writes the run split of :mod:`stethoscope.splits`
(``validation_split.json``) once into the sweep folder, every trial validates on its ``validation`` part and holds
out its ``train_validation`` part for the validation loss, and a retrain of the best config (``jobs/train.py
--config best_config.yaml``) reuses the same file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stethoscope.errors import DataError
from stethoscope.splits import Split, ValidationSpec, labelled_split

SPLIT_COLUMNS = ["path", "machine_type", "machine_id", "section", "domain", "label"]


def labelled_clips(prepared) -> pd.DataFrame:
    """Metadata of the selection's labelled (test) clips that survived ingest: one row per clip, ``SPLIT_COLUMNS``."""
    frame = prepared.clips()
    frame = frame[(frame["split"] == "test") & frame["label"].notna()]
    return frame[[c for c in SPLIT_COLUMNS if c in frame.columns]].sort_values("path").reset_index(drop=True)


def make_split(clips: pd.DataFrame, spec: ValidationSpec) -> Split:
    """The validation / test split of the labelled ``clips`` described by ``spec``, with both labels among the
    validation clips (:func:`stethoscope.splits.labelled_split` with ``require_both=True``).

    Raises:
        ConfigError: fraction outside (0, 1). DataError: an unknown clip in the file list, no labelled clips, or a
            validation part without both normal and anomalous clips (AUC would be undefined).
    """
    return labelled_split(clips, spec, require_both=True)


def validation_dataset(prepared, split):
    """The validation clips (:meth:`Prepared.scoring_features`: read in this process for a small store, else a Ray
    Dataset) (log-mel + metadata) of ``prepared``'s selection (``split``: a
    :class:`stethoscope.splits.RunSplit` or :class:`stethoscope.splits.Split`)."""
    return prepared.scoring_features("test", list(split.validation))


def clips_dict(ds) -> dict:
    """A Ray Dataset of clips → the column dict the Train loop scores each epoch (the same conversion as
    ``training.fit(eval_dataset=...)``)."""
    from stethoscope.training.trainer import clips_dict as _clips_dict

    return _clips_dict(ds)


def validation_metrics(method, ds) -> dict[str, float]:
    """``val_auc``, ``val_pauc`` (sklearn ``max_fpr=0.1``, McClish-standardised) and ``val_auc_pauc_mean`` of
    ``method`` on the validation clips in ``ds``, computed exactly as a Tune trial computes them each epoch
    (``stethoscope.training.trainer._eval_metrics``), so a retrained best config reproduces its trial's value.

    Raises:
        DataError: the clips do not contain both labels.
    """
    from stethoscope.training.trainer import _eval_metrics

    out = _eval_metrics(method, clips_dict(ds))
    if not out:
        raise DataError("the validation clips need both normal and anomaly clips to compute AUC")
    return out


def unit_validation_metrics(prepared, split, models) -> dict[str, float]:
    """The validation metric of a run's models (``[(unit, Method)]``, or one Method): each unit's model scores its
    own validation clips, and the metric is :func:`stethoscope.training.trainer.validation_auc` of them all (per
    machine type, then the mean over types: an all_machine_types model's objective; per_id models pool the IDs of
    their type). With one Method over the selection this equals :func:`validation_metrics`.

    Raises:
        DataError: no machine type's validation clips contain both labels.
    """
    from stethoscope.stages.score import unit_models
    from stethoscope.scoring import score_batches
    from stethoscope.training.trainer import validation_auc

    clips = prepared.clips()
    clips = clips[clips["path"].isin(set(split.validation))]
    frames = []
    for unit, method in unit_models(models):
        paths = sorted(clips.loc[unit.mask(clips), "path"]) if unit is not None else sorted(clips["path"])
        if paths:
            frames.append(score_batches(method, [clips_dict(prepared.scoring_features("test", paths, unit=unit))]))
    out = validation_auc(pd.concat(frames, ignore_index=True)) if frames else {}
    if not out:
        raise DataError("the validation clips need both normal and anomaly clips to compute AUC")
    return out


__all__ = ["SPLIT_COLUMNS", "ValidationSpec", "clips_dict", "labelled_clips", "make_split", "unit_validation_metrics",
           "validation_dataset", "validation_metrics"]
