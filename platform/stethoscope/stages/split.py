"""Split stage (DESIGN.md step 2): the run's one validation split, made (or reused) from the ingested clips before
anything trains, and written to the run folder (:mod:`stethoscope.splits`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from stethoscope import runs
from stethoscope.splits import RunSplit, ValidationSpec, make_run_split, read_run_split, write_run_split
from stethoscope.stages.ingest import Prepared

log = logging.getLogger(__name__)


def split_stage(
    prepared: Prepared,
    *,
    validation: ValidationSpec | None = None,
    train_validation_fraction: float = 0.0,
    split_from: str | os.PathLike | dict | None = None,
) -> RunSplit:
    """The run's one split (DESIGN.md step 2), made from the ingested clips before anything trains.

    Args:
        validation: how the labelled clips split into validation and test (default: seeded half / half, seed 0).
        train_validation_fraction: share of the training clips held out for the validation loss (the method's
            ``val_fraction``).
        split_from: an existing ``validation_split.json`` (or a folder holding one, e.g. a sweep's) to reuse as it
            is, or ``{"file", "sha256"}`` (what a sweep's best_config.yaml records: the file must still have that
            hash); it must have been made for exactly these clips.
    Raises:
        DataError: a reused split made for other clips; no training clips. ConfigError: a bad fraction.
    """
    clips = prepared.clips()
    if split_from is not None:
        ref = split_from if isinstance(split_from, dict) else {"file": split_from, "sha256": None}
        split = read_run_split(ref["file"], expected_sha256=ref.get("sha256"))
        split.check_clips(clips, f"the ingested {prepared.machine_type} clips")
        log.info("reusing the validation split %s (%s, seed %d)", ref["file"], split.source, split.seed)
        return split
    split = make_run_split(
        clips, validation=validation or ValidationSpec(), train_validation_fraction=train_validation_fraction,
        selection={"machine_type": prepared.machine_type, "id_field": prepared.id_col, "ids": prepared.ids,
                   **({"machine_types": prepared.machine_types} if len(prepared.machine_types) > 1 else {})},
    )
    for note in split.notes:
        log.warning("%s split: %s", prepared.machine_type, note)
    return split


def record_split(run_dir: Path, split: RunSplit, manifest: dict) -> dict:
    """Write ``validation_split.json`` into ``run_dir`` and record its hash in ``manifest`` (run.json's dict)."""
    _, sha = write_run_split(split, run_dir)
    manifest["validation_split"] = runs.split_record(split, sha)
    return manifest


__all__ = ["record_split", "split_stage"]
