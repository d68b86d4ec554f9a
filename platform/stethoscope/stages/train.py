"""Train stage (DESIGN.md step 4): Ray Train fit of each training unit (:mod:`stethoscope.scopes`), then the
method's own detector fit, and the checkpoint in the run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stethoscope import methods, runs, storage
from stethoscope.splits import RunSplit
from stethoscope.stages.ingest import Prepared

log = logging.getLogger(__name__)


def train_stage(
    prepared: Prepared,
    run_dir: Path,
    *,
    method: str,
    config: Any,
    spec: Any,
    split: RunSplit,
    seed: int = 0,
    num_workers: int = 1,
    use_gpu: bool | None = None,
    resume: bool = False,
    unit: Any = None,
    max_failures: int = 0,
):
    """Ray Train fit of one training unit on its training clips (``split.train_validation`` held out for the
    validation loss), then ``fit_detector`` on its ``split.train`` clips (if the method has one).

    ``unit``: a :class:`stethoscope.scopes.Unit`; its model goes to ``run_dir/<unit.folder>`` (checkpoint,
    ``train_history.json`` and Ray Train's ``train/`` storage; for a run staged for object storage,
    :func:`stethoscope.runs.remote_uri`, Ray Train's storage is ``<run URI>/<unit.folder>/train``). None: the whole
    selection, saved in today's layout (``run_dir/model``, ``run_dir/train_history.json``). The unit's vocabulary is
    built from its training clips, so an all-types unit's ``group`` classes span every machine type (``fan/id_00``,
    ``pump/id_02`` ...).

    Returns the FitResult (its ``method`` now includes any fitted detector state).
    """
    from stethoscope import checkpoint as ckpt_io
    from stethoscope.training import Scaling, fit

    unit_dir = run_dir if unit is None or unit.folder == runs.MODEL_DIR else run_dir / unit.folder
    model_dir = run_dir / runs.MODEL_DIR if unit is None else run_dir / unit.folder
    train_ds = prepared.features("train", unit=unit)
    held = split.train_validation
    if unit is not None and held:
        clips = prepared.clips()
        held = sorted(set(held) & set(clips.loc[unit.mask(clips), "path"]))
    remote = runs.remote_uri(run_dir)  # a run staged for object storage: Ray Train checkpoints go there directly
    train_storage = None if remote is None else storage.join(
        remote, *unit_dir.relative_to(run_dir).parts, "train")
    result = fit(
        method, config, train_ds, Scaling(num_workers=num_workers, use_gpu=use_gpu), inputs=spec,
        run_dir=unit_dir, storage_path=train_storage, seed=seed, resume=resume, held_out=held,
        max_failures=max_failures,
    )
    storage.write_json(str(unit_dir / "train_history.json"), result.history)
    detector_metrics = {}
    if type(result.method).fit_detector is not methods.Method.fit_detector:
        fit_ds = prepared.features("train", split.train, unit=unit) if held else train_ds
        detector_metrics = result.method.fit_detector(_tensor_batches(fit_ds, result.method))
    keep = {k: v for k, v in result.meta.items()
            if k not in ("method", "config", "feature_spec", "num_classes", "inputs", "vocab")}
    unit_meta = {"unit": unit.to_dict()} if unit is not None else {}
    ckpt_io.save(result.method, model_dir, {**keep, "seed": seed, "detector": detector_metrics, **unit_meta})
    result.meta["detector"] = detector_metrics
    return result


def train_units(prepared: Prepared, run_dir: Path, units: list, **kwargs) -> dict[str, Any]:
    """:func:`train_stage` for each training unit in turn (``kwargs``: its keyword arguments).

    Returns:
        ``{unit name: FitResult}`` in the order of ``units``.
    """
    out = {}
    for unit in units:
        log.info("training unit %s (%s)", unit.name, unit.folder)
        out[unit.name] = train_stage(prepared, run_dir, unit=unit, **kwargs)
    return out


def scope_units(prepared: Prepared, scope: str) -> list:
    """The training units (:func:`stethoscope.scopes.training_units`) of ``prepared``'s training clips."""
    from stethoscope.scopes import training_units

    clips = prepared.clips()
    return training_units(scope, clips[clips["split"] == "train"])


def _tensor_batches(ds, method):
    from stethoscope.scoring import clip_batches

    for tensors, _ in clip_batches(ds.iter_batches(batch_size=16, batch_format="numpy"), method):
        yield tensors


__all__ = ["scope_units", "train_stage", "train_units"]
