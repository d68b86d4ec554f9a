"""The validation split a sweep selects on, and the validation metric computed the same way a trial computes it.

Protocol (issue "Tune"): hyperparameters are selected on a *validation* metric; reported numbers come from clips
not used for selection. The validation split is either a user file list, every labelled clip of the data root
(``"all"``: the DCASE 2020 development test set, when the reported numbers come from the evaluation set), or a
seeded stratified split of the labelled clips (:func:`stethoscope.splits.stratified_split`). Its membership is
written next to the results (``validation_split.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stethoscope.errors import ConfigError, DataError
from stethoscope.splits import Split, split_from_file, stratified_split

SPLIT_COLUMNS = ["path", "machine_type", "machine_id", "section", "domain", "label"]


@dataclass(frozen=True)
class ValidationSpec:
    """How to build the validation split.

    ``file``: a text file listing validation clips (one path or file name per line), or ``"all"`` (every labelled
    clip of the selection). Otherwise a seeded stratified split: ``fraction`` of each (machine_type, ID/section,
    domain, label) stratum, drawn with ``seed``.
    """

    file: str | None = None
    fraction: float = 0.5
    seed: int = 0

    def to_dict(self) -> dict:
        return {"file": self.file, "fraction": self.fraction, "seed": self.seed}


def labelled_clips(prepared) -> pd.DataFrame:
    """Metadata of the selection's labelled (test) clips that survived ingest: one row per clip, ``SPLIT_COLUMNS``."""
    ds = prepared.features("test")
    cols = [c for c in SPLIT_COLUMNS if c in ds.schema().names]
    frame = ds.select_columns(cols).to_pandas()
    return frame[frame["label"].notna()].sort_values("path").reset_index(drop=True)


def make_split(clips: pd.DataFrame, spec: ValidationSpec) -> Split:
    """The validation split of ``clips`` (rows with ``path`` and ``label``) described by ``spec``.

    Raises:
        ConfigError: fraction outside (0, 1). DataError: an unknown clip in the file list, no labelled clips, or a
            validation part without both normal and anomalous clips (AUC would be undefined).
    """
    if spec.file == "all":
        labelled = clips[clips["label"].notna()]
        if labelled.empty:
            raise DataError("no labelled clips to validate on")
        split = Split(sorted(labelled["path"]), [], None, None, "all")
    elif spec.file:
        split = split_from_file(clips, spec.file)
    else:
        split = stratified_split(clips, fraction=spec.fraction, seed=spec.seed)
    labels = set(clips.set_index("path").loc[split.validation, "label"]) if split.validation else set()
    if labels != {"normal", "anomaly"}:
        raise DataError(
            f"the validation split ({split.source}, {len(split.validation)} clips) has labels {sorted(labels)}; it "
            "needs both normal and anomaly clips so that AUC and pAUC are defined"
        )
    return split


def validation_dataset(prepared, split: Split):
    """Ray Dataset of the validation clips (log-mel + metadata) of ``prepared``'s selection."""
    from stethoscope.data.ingest import read_features

    return read_features(prepared.ingest, split="test", path=list(split.validation), **prepared.where)


def clips_dict(ds) -> dict:
    """A Ray Dataset of clips → the column dict the Train loop scores each epoch (the same conversion as
    ``training.fit(eval_dataset=...)``)."""
    from stethoscope.training.trainer import clips_dict as _clips_dict

    return _clips_dict(ds)


def validation_metrics(method, ds, class_names: list[str] | None) -> dict[str, float]:
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


@dataclass
class HeldOut:
    """Wraps a :class:`~stethoscope.pipeline.Prepared` so that ``features("test")`` yields only the clips *not* in
    the validation split: the data the reported numbers come from."""

    prepared: object
    test_paths: list[str] = field(default_factory=list)

    def __getattr__(self, name):
        return getattr(self.prepared, name)

    def features(self, split: str):
        if split != "test":
            return self.prepared.features(split)
        if not self.test_paths:
            raise ConfigError("the validation split uses every labelled clip; nothing is left to report on")
        from stethoscope.data.ingest import read_features

        return read_features(self.prepared.ingest, split="test", path=list(self.test_paths), **self.prepared.where)


def held_out(prepared, split: Split) -> HeldOut:
    """``prepared`` restricted to the test part of ``split`` (for ``evaluate_stage``)."""
    return HeldOut(prepared, list(split.test))


def write_split(split: Split, folder: str | os.PathLike) -> str:
    """Write ``validation_split.json`` (membership, seed, fraction, source) into ``folder`` (a path or URI)."""
    from stethoscope import storage

    uri = storage.join(str(folder), "validation_split.json")
    storage.write_json(uri, split.to_dict())
    return uri
