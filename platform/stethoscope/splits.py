"""The run's one validation split (DESIGN.md data-flow step 2): ``validation_split.json``, written once, read by every
later stage.

Whatever starts a run (``pipeline.run``, ``jobs/train.py``, a sweep in ``tuning.runner``) builds one
:class:`RunSplit` from the ingested clips of its selection *before* training and writes it into the run (or sweep)
folder. Nothing else draws a split: training holds out ``train_validation`` for its validation loss, evaluation
selects on ``validation`` (score variants) and reports on ``test``, tuning validates every trial on ``validation``,
and publishing chooses ensemble members and weights on ``validation`` and reports ``test``.

Parts (lists of clip paths, sorted):

- ``train``: training clips (all normal) used for fitting;
- ``train_validation``: training clips held out for the validation loss (``train_validation_fraction`` of each
  stratum of training clips, seeded; whole clips, since neighbouring frame vectors overlap);
- ``validation``: labelled clips used for any selection (score variant, ensemble members and weights);
- ``test``: labelled clips whose metrics are reported, never used for selection;
- ``unlabelled``: clips without a label (e.g. an evaluation set), scored and written to the score CSVs only.

The labelled clips are split by a :class:`ValidationSpec`: a seeded split stratified by (machine_type,
machine_id/section, domain, label) (:func:`stratified_split`), a file list (:func:`split_from_file`), or ``"all"``
(every labelled clip validates; nothing is held out for reporting, e.g. a DCASE development set whose numbers are
reported on the evaluation set).

The file also records the seed, the source, the fractions, per-part clip counts by stratum, ``notes`` on what the
split could not do (tiny strata: a part without anomalous clips, a stratum of one clip) and the ``fingerprint`` of the
clip set it was made for: the SHA-256 of the sorted ``<machine_type>/<split>/<file name>`` of every clip, so a moved
data root still matches and any added, removed or renamed clip does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from stethoscope.data.labels import local_group
from stethoscope.errors import ConfigError, DataError

#: The split artifact's file name, in every run and sweep folder.
SPLIT_FILE = "validation_split.json"
FORMAT = "stethoscope-validation-split"
FORMAT_VERSION = 2
#: The parts of a split, in file order.
PARTS = ("train", "train_validation", "validation", "test", "unlabelled")
#: Columns the split reads from the clip table (``path``, ``split``, ``label`` are required).
CLIP_COLUMNS = ["path", "file_name", "machine_type", "machine_id", "section", "domain", "split", "label"]
#: Share of the labelled clips that validate when nothing else is said (half / half, as in the tests and sweeps).
DEFAULT_VALIDATION_FRACTION = 0.5


@dataclass
class Split:
    """A split of *labelled* clips: ``validation`` and ``test`` (sorted paths); ``seed`` / ``fraction`` / ``source``
    describe how it was drawn. :func:`make_run_split` wraps it in a :class:`RunSplit`."""

    validation: list[str]
    test: list[str]
    seed: int | None
    fraction: float | None
    source: str

    def to_dict(self) -> dict:
        return {"source": self.source, "seed": self.seed, "fraction": self.fraction,
                "validation": self.validation, "test": self.test}


@dataclass(frozen=True)
class ValidationSpec:
    """How to split the labelled clips.

    ``file``: a text file listing validation clips (one path or file name per line, ``#`` comments), or ``"all"``
    (every labelled clip validates). Otherwise a seeded stratified split: ``fraction`` of each (machine_type,
    ID/section, domain, label) stratum, drawn with ``seed``.
    """

    file: str | None = None
    fraction: float = DEFAULT_VALIDATION_FRACTION
    seed: int = 0

    def to_dict(self) -> dict:
        return {"file": self.file, "fraction": self.fraction, "seed": self.seed}


def _strata_keys(frame: pd.DataFrame, with_label: bool = True) -> list[str]:
    cols = ["machine_type", "machine_id", "section", "domain"] + (["label"] if with_label else [])
    return [c for c in cols if c in frame.columns]


def _stratum_name(frame: pd.DataFrame, with_label: bool = True) -> list[str]:
    """One readable key per row: ``slider/id_00/normal``, ``valve/section_00/source/anomaly``."""
    out = []
    for row in frame.itertuples(index=False):
        d = row._asdict()
        parts = [str(d.get("machine_type"))]
        try:
            parts.append(local_group(d.get("machine_id"), d.get("section")))
        except DataError:  # a clip with neither: its stratum is named without a group
            pass
        if d.get("domain") is not None and d.get("domain") == d.get("domain"):
            parts.append(str(d["domain"]))
        if with_label and d.get("label") is not None and d.get("label") == d.get("label"):
            parts.append(str(d["label"]))
        out.append("/".join(parts))
    return out


def _stratified_pick(frame: pd.DataFrame, fraction: float, rng: np.random.Generator, *, with_label: bool,
                     at_least_one: bool) -> tuple[list[str], list[str]]:
    """Paths drawn from each stratum of n clips: round(n·fraction), at least one when n ≥ 2 (if ``at_least_one``)
    and at most n − 1, so the other part keeps one. Returns (picked, strata where nothing was picked)."""
    picked: list[str] = []
    empty: list[str] = []
    keys = _strata_keys(frame, with_label)
    for _, group in frame.sort_values("path").groupby(keys, dropna=False, sort=True):
        paths = group["path"].tolist()
        n = len(paths)
        k = int(round(n * fraction))
        if at_least_one and n >= 2:
            k = max(k, 1)
        k = min(k, n - 1)
        chosen = rng.permutation(n)[:k]
        picked.extend(paths[i] for i in chosen)
        if k == 0 and fraction > 0:
            empty.append(f"{_stratum_name(group.head(1), with_label)[0]} ({n} clip{'s' if n != 1 else ''})")
    return picked, empty


def stratified_split(clips: pd.DataFrame, *, fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0) -> Split:
    """Seeded stratified split of labelled clips (rows need ``path`` and ``label``; strata also use
    ``machine_type``, ``machine_id``, ``section`` and ``domain`` when present).

    Each stratum of n clips gives round(n·fraction) clips to validation, at least one when n ≥ 2 and at most n−1,
    so both parts see every label where possible; a stratum of one clip goes to test.

    Raises:
        ConfigError: fraction outside (0, 1). DataError: no labelled clips.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction = {fraction}; expected a number in (0, 1)")
    labelled = clips[clips["label"].notna()]
    if labelled.empty:
        raise DataError("no labelled clips to split into validation and test")
    val, _ = _stratified_pick(labelled, fraction, np.random.default_rng(seed), with_label=True, at_least_one=True)
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


def labelled_split(clips: pd.DataFrame, spec: ValidationSpec, *, require_both: bool = False) -> Split:
    """The validation / test split of the labelled clips of ``clips`` described by ``spec``.

    Args:
        require_both: raise unless the validation part holds normal and anomalous clips (sweeps need a defined
            validation AUC every epoch).
    Raises:
        ConfigError: fraction outside (0, 1). DataError: an unknown clip in the file list, no labelled clips, or
            (``require_both``) a validation part without both labels.
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
    if require_both:
        labels = set(clips.set_index("path").loc[split.validation, "label"]) if split.validation else set()
        if labels != {"normal", "anomaly"}:
            raise DataError(
                f"the validation split ({split.source}, {len(split.validation)} clips) has labels {sorted(labels)}; it "
                "needs both normal and anomaly clips so that AUC and pAUC are defined"
            )
    return split


def clip_key(machine_type: str, split: str, file_name: str) -> str:
    """A clip's identity in the fingerprint: ``<machine_type>/<split>/<file name>`` (independent of the data root)."""
    return f"{machine_type}/{split}/{file_name}"


def fingerprint(clips: pd.DataFrame) -> str:
    """SHA-256 (hex) of the sorted :func:`clip_key` of every clip in ``clips`` (columns ``machine_type``, ``split``
    and ``path``; ``file_name`` if present)."""
    names = clips["file_name"] if "file_name" in clips.columns else [os.path.basename(p) for p in clips["path"]]
    keys = sorted(clip_key(str(m), str(s), str(n)) for m, s, n in zip(clips["machine_type"], clips["split"], names))
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


@dataclass
class RunSplit:
    """The run's validation split (the content of ``validation_split.json``; see the module docstring).

    ``fractions``: ``{"validation": float | None, "train_validation": float}``; ``strata``: part → stratum → number
    of clips; ``notes``: what could not be drawn (e.g. no anomalous validation clip), empty when nothing.
    """

    seed: int
    source: str
    fractions: dict[str, float | None]
    fingerprint: str
    train: list[str]
    train_validation: list[str]
    validation: list[str]
    test: list[str]
    unlabelled: list[str]
    selection: dict[str, Any] = field(default_factory=dict)
    strata: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def part(self, name: str) -> list[str]:
        if name not in PARTS:
            raise ValueError(f"unknown split part {name!r}; parts: {list(PARTS)}")
        return getattr(self, name)

    def roles(self) -> dict[str, str]:
        """path → part name, for every clip of the split."""
        return {p: name for name in PARTS for p in getattr(self, name)}

    def reported(self) -> list[str]:
        """The clips whose metrics are reported: ``test`` (and ``unlabelled``, scored only); when the split holds
        nothing out (source ``all``), the validation clips, and the report says so."""
        return sorted(self.test + self.unlabelled) if (self.test or self.unlabelled) else list(self.validation)

    def to_dict(self) -> dict[str, Any]:
        counts = {name: len(getattr(self, name)) for name in PARTS}
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "seed": self.seed, "source": self.source,
            "fractions": dict(self.fractions), "fingerprint": self.fingerprint, "selection": dict(self.selection),
            "counts": counts, "strata": self.strata, "notes": list(self.notes),
            **{name: list(getattr(self, name)) for name in PARTS},
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "validation_split.json") -> "RunSplit":
        """Raises DataError if ``doc`` is not a version-2 split (e.g. a file written before the one-split layout)."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{where} is not a {FORMAT} file of version {FORMAT_VERSION} (it has format "
                f"{doc.get('format') if isinstance(doc, dict) else None!r}, version "
                f"{doc.get('format_version') if isinstance(doc, dict) else None!r}); it was written by an older "
                "stethoscope: train the run again"
            )
        missing = [k for k in ("seed", "source", "fractions", "fingerprint", *PARTS) if k not in doc]
        if missing:
            raise DataError(f"{where} lacks {missing}")
        return cls(int(doc["seed"]), str(doc["source"]), dict(doc["fractions"]), str(doc["fingerprint"]),
                   *[sorted(doc[name]) for name in PARTS], selection=dict(doc.get("selection") or {}),
                   strata=dict(doc.get("strata") or {}), notes=list(doc.get("notes") or []))

    def check_clips(self, clips: pd.DataFrame, what: str = "the data") -> None:
        """Raise DataError unless ``clips`` (the ingested clips of the run's selection) are exactly the clips this
        split was made for; the message names up to 10 clips on each side."""
        if fingerprint(clips) == self.fingerprint:
            return
        have = {str(p) for p in clips["path"]}
        listed = set(self.roles())
        names = lambda paths: sorted(os.path.basename(p) for p in paths)[:10]  # noqa: E731
        extra, gone = names(have - listed), names(listed - have)
        raise DataError(
            f"the validation split (fingerprint {self.fingerprint[:12]}…) was made for another clip set than "
            f"{what} ({fingerprint(clips)[:12]}…): clips not in the split {extra}, split clips not in the data "
            f"{gone}. Use the data the split was made for, or start a new run"
        )


def _counts(frame: pd.DataFrame, paths: Iterable[str], with_label: bool) -> dict[str, int]:
    sub = frame[frame["path"].isin(set(paths))]
    out: dict[str, int] = {}
    for k in _stratum_name(sub, with_label):
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def make_run_split(
    clips: pd.DataFrame,
    *,
    validation: ValidationSpec = ValidationSpec(),
    train_validation_fraction: float = 0.1,
    selection: dict[str, Any] | None = None,
) -> RunSplit:
    """Build the run's split from the ingested clips of its selection.

    Args:
        clips: one row per ingested clip (training and test): ``path``, ``split`` ("train"/"test"), ``label``
            (null = unlabelled), ``machine_type``, ``machine_id`` / ``section``, ``domain``, ``file_name``.
        validation: how the labelled clips split into validation and test (its ``seed`` also seeds the training
            hold-out, from an independent stream).
        train_validation_fraction: share of each stratum of training clips (machine_type, ID/section, domain) held
            out for the validation loss: round(n·f) of n, at most n − 1 (0 = none).
        selection: what the clips were selected by (machine type, IDs ...), recorded in the file.
    Returns:
        A :class:`RunSplit`. Tiny strata never raise: what could not be drawn is listed in ``notes``.
    Raises:
        ConfigError: a fraction outside its range. DataError: no training clips, an unknown clip in a file list.
    """
    if not 0.0 <= float(train_validation_fraction) < 1.0:
        raise ConfigError(f"train_validation fraction = {train_validation_fraction}; expected a number in [0, 1)")
    missing = [c for c in ("path", "split", "label") if c not in clips.columns]
    if missing:
        raise DataError(f"the clip table lacks column(s) {missing}")
    frame = clips[[c for c in CLIP_COLUMNS if c in clips.columns]].drop_duplicates("path").sort_values("path")
    train = frame[frame["split"] == "train"]
    test = frame[frame["split"] != "train"]
    notes: list[str] = []
    if train.empty:
        raise DataError("no training clips to split: the selection has no train/ clips")
    held, empty = _stratified_pick(train, float(train_validation_fraction),
                                   np.random.default_rng([int(validation.seed), 1]), with_label=False, at_least_one=False)
    if train_validation_fraction > 0 and empty:
        notes.append(f"train_validation: no clip held out for the validation loss from {', '.join(empty)}")
    labelled = test[test["label"].notna()]
    unlabelled = sorted(test.loc[test["label"].isna(), "path"])
    if labelled.empty:
        lab = Split([], [], validation.seed, validation.fraction, "none")
        notes.append("no labelled clips: nothing to validate or report on (every test clip is unlabelled)")
    else:
        lab = labelled_split(labelled, validation)
        if lab.source == "stratified":
            _, single = _stratified_pick(labelled, validation.fraction, np.random.default_rng(validation.seed),
                                         with_label=True, at_least_one=True)
            if single:
                notes.append(f"validation: strata of one clip went to test only: {', '.join(single)}")
    label_of = dict(zip(labelled["path"], labelled["label"]))
    for part, paths in (("validation", lab.validation), ("test", lab.test)):
        have = {label_of[p] for p in paths}
        if paths and have != {"normal", "anomaly"}:
            notes.append(f"{part}: only {sorted(have)} clips ({len(paths)}), so AUC and pAUC are undefined on it"
                         + ("; selection on validation falls back to the configured choice" if part == "validation"
                            else ""))
        elif not paths and not labelled.empty and not (part == "test" and lab.source == "all"):
            notes.append(f"{part}: no clips")
    held_set = set(held)
    train_paths = sorted(p for p in train["path"] if p not in held_set)
    out = RunSplit(
        seed=int(validation.seed),
        source="all" if lab.source == "all" else ("stratified" if lab.source == "stratified" else
                                                  ("none" if lab.source == "none" else f"file:{lab.source}")),
        fractions={"validation": validation.fraction if lab.source == "stratified" else None,
                   "train_validation": float(train_validation_fraction)},
        fingerprint=fingerprint(frame),
        train=train_paths, train_validation=sorted(held_set), validation=list(lab.validation), test=list(lab.test),
        unlabelled=unlabelled, selection=dict(selection or {}), notes=notes,
    )
    out.strata = {name: _counts(frame, getattr(out, name), with_label=name in ("validation", "test"))
                  for name in PARTS}
    return out


def split_sha256(text: str | bytes) -> str:
    """SHA-256 (hex) of a split file's bytes: runs record it, so a later edit of the file is detected."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def write_run_split(split: RunSplit, folder: str | os.PathLike) -> tuple[str, str]:
    """Write ``validation_split.json`` into ``folder`` (a path or URI). Returns ``(uri, sha256 of its bytes)``."""
    from stethoscope import storage

    text = json.dumps(split.to_dict(), indent=2) + "\n"
    uri = storage.join(str(folder), SPLIT_FILE)
    storage.write_text(uri, text)
    return uri, split_sha256(text)


def read_run_split(path: str | os.PathLike, expected_sha256: str | None = None) -> RunSplit:
    """Read a ``validation_split.json`` (a file, or a folder holding one; a path or URI).

    Args:
        expected_sha256: the hash the run recorded when it wrote the file; a different file is refused.
    Raises:
        DataError: the file is missing, not JSON, of an older layout, or changed since the run recorded it.
    """
    from stethoscope import storage

    uri = str(path)
    if not uri.endswith(".json"):
        uri = storage.join(uri, SPLIT_FILE)
    if not storage.exists(uri):
        raise DataError(f"{uri} does not exist: the run has no validation split (train it again)")
    text = storage.read_text(uri)
    if expected_sha256 is not None and split_sha256(text) != expected_sha256:
        raise DataError(
            f"{uri} was changed after the run wrote it (sha256 {split_sha256(text)[:12]}… ≠ recorded "
            f"{expected_sha256[:12]}…): its clips are not the ones the run was trained and scored with"
        )
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{uri} is not valid JSON: {exc}") from None
    return RunSplit.from_dict(doc, uri)


__all__ = [
    "PARTS",
    "RunSplit",
    "SPLIT_FILE",
    "Split",
    "ValidationSpec",
    "clip_key",
    "fingerprint",
    "labelled_split",
    "make_run_split",
    "read_run_split",
    "split_from_file",
    "split_sha256",
    "stratified_split",
    "write_run_split",
]
