"""Validation splits of labelled clips, for model selection that never touches the reported test labels.

DCASE practice (issue "Tune"): select on the development set's test clips, report on the evaluation set. When only
one labelled set exists (as in ../shared/data), split it: a seeded split stratified by (machine_type, ID/section,
domain, label) puts about ``fraction`` of each stratum in the validation part; the rest is the held-out test part.
Membership is written next to the results (:func:`write_split`) so any number can be traced to its clips.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stethoscope.errors import ConfigError, DataError


@dataclass
class Split:
    """``validation`` and ``test``: sorted lists of clip paths; ``seed`` / ``fraction`` / ``source`` describe it."""

    validation: list[str]
    test: list[str]
    seed: int | None
    fraction: float | None
    source: str

    def to_dict(self) -> dict:
        return {"source": self.source, "seed": self.seed, "fraction": self.fraction,
                "validation": self.validation, "test": self.test}


def stratified_split(clips: pd.DataFrame, *, fraction: float = 0.5, seed: int = 0) -> Split:
    """Seeded stratified split of labelled clips (rows need ``path`` and ``label``; strata also use
    ``machine_type``, ``machine_id``, ``section`` and ``domain`` when present).

    Each stratum of n clips gives round(n·fraction) clips to validation, at least one when n ≥ 2 and at most n−1,
    so both parts see every label where possible.

    Raises:
        ConfigError: fraction outside (0, 1). DataError: no labelled clips.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction = {fraction}; expected a number in (0, 1)")
    labelled = clips[clips["label"].notna()]
    if labelled.empty:
        raise DataError("no labelled clips to split into validation and test")
    keys = [c for c in ("machine_type", "machine_id", "section", "domain", "label") if c in labelled.columns]
    rng = np.random.default_rng(seed)
    val: list[str] = []
    for _, group in labelled.sort_values("path").groupby(keys, dropna=False, sort=True):
        paths = group["path"].tolist()
        n = len(paths)
        k = int(round(n * fraction))
        if n >= 2:
            k = min(max(k, 1), n - 1)
        chosen = rng.permutation(n)[:k]
        val.extend(paths[i] for i in chosen)
    val_set = set(val)
    test = sorted(p for p in labelled["path"] if p not in val_set)
    return Split(sorted(val_set), test, seed, fraction, "stratified")


def split_from_file(clips: pd.DataFrame, file_list: str | os.PathLike) -> Split:
    """A user-defined validation split: a text file with one path or file name per line (``#`` comments allowed).
    Listed clips are validation; every other labelled clip is test.

    Raises:
        DataError: the file is missing, or it names clips that are not among ``clips`` (all listed).
    """
    path = Path(file_list)
    if not path.is_file():
        raise DataError(f"validation file list {str(path)!r} does not exist")
    wanted = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    by_name = {os.path.basename(p): p for p in clips["path"]}
    by_path = set(clips["path"])
    val, unknown = [], []
    for w in wanted:
        if w in by_path:
            val.append(w)
        elif os.path.basename(w) in by_name:
            val.append(by_name[os.path.basename(w)])
        else:
            unknown.append(w)
    if unknown:
        raise DataError(f"validation file list {str(path)!r} names clips that are not in the data: {unknown}")
    val_set = set(val)
    labelled = clips[clips["label"].notna()]
    return Split(sorted(val_set), sorted(p for p in labelled["path"] if p not in val_set), None, None, str(path))


def write_split(split: Split, folder: str | os.PathLike) -> Path:
    """Write ``validation_split.json`` (membership, seed, fraction) into ``folder``; returns its path."""
    out = Path(folder) / "validation_split.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(split.to_dict(), indent=2) + "\n")
    return out
