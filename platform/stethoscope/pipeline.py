"""All stages in order for one machine type: index → ingest → train → score → evaluate (DESIGN.md data flow).

``run(...)`` is what ``jobs/pipeline.py`` wraps. Every artifact goes into one run folder:
``run.json`` (arguments, seed, versions, checkpoint), ``ingest_report.json``, ``train_history.json``, the score CSVs,
``scores.parquet``, ``metrics.json``, ``results.md`` and ``plots/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stethoscope import methods, storage
from stethoscope.data.features import FeatureSpec
from stethoscope.data.index import index, select
from stethoscope.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = "../shared/data/dcase2020_task2_dev_sample"


@dataclass
class PipelineResult:
    run_dir: str
    metrics: dict
    scores: pd.DataFrame
    checkpoint_path: str
    table: str = ""
    extra: dict = field(default_factory=dict)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def new_run_dir(runs_root: str | os.PathLike, method: str, machine_type: str) -> Path:
    """``<runs_root>/<YYYYmmdd-HHMMSS>-<method>-<machine_type>`` (suffixed if it already exists)."""
    base = Path(runs_root).resolve() / f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{machine_type}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def feature_spec_for(method_name: str, config: Any, overrides: dict | None = None) -> FeatureSpec:
    """The method's paper FeatureSpec, with ``overrides`` applied (unknown keys / bad values → ConfigError)."""
    cls = methods.get(method_name)
    spec = cls.default_feature_spec(config)
    if overrides:
        spec = FeatureSpec.from_dict({**spec.to_dict(), **overrides})
    return spec


@dataclass
class Prepared:
    """What the ingest stage hands on: the selection, its feature dataset handles and bookkeeping."""

    machine_type: str
    id_col: str
    ids: list[str]
    dataset_kind: str
    ingest: Any
    where: dict
    skipped_unparseable: list[str]

    def features(self, split: str):
        from stethoscope.data.ingest import read_features

        return read_features(self.ingest, split=split, **self.where)


def ingest_stage(
    data_root: str | os.PathLike,
    spec: FeatureSpec,
    *,
    machine_type: str,
    machine_ids: list[str] | None = None,
    store: str = "store",
    lenient: bool = False,
    require_train: bool = True,
) -> Prepared:
    """Index ``data_root``, select one machine type (and IDs/sections), and ingest it with Ray Data.

    Raises:
        DataError: missing root, unknown machine type or IDs, no training clips (if ``require_train``), no test clips.
    """
    from stethoscope.data.ingest import ingest
    from stethoscope.runtime import init_ray

    idx = index(data_root, lenient=lenient)
    if idx.skipped:
        log.warning("skipped %d unparseable file(s): %s", len(idx.skipped), [p for p, _ in idx.skipped])
    table = select(idx.table, machine_type=machine_type)
    dataset_kind = table.column("dataset")[0].as_py()
    id_col = "machine_id" if dataset_kind == "dcase2020" else "section"
    if machine_ids:
        table = select(table, **({"machine_ids": machine_ids} if id_col == "machine_id" else {"sections": machine_ids}))
    n_train = sum(1 for s in table.column("split").to_pylist() if s == "train")
    n_test = table.num_rows - n_train
    ids = sorted(set(table.column(id_col).to_pylist()))
    if require_train and n_train == 0:
        raise DataError(
            f"machine type {machine_type!r} ({id_col} {ids}) has no training clips under {data_root}; "
            f"expected {machine_type}/train/*.wav (normal operation). Only test clips were found."
        )
    if n_test == 0:
        raise DataError(f"machine type {machine_type!r} ({id_col} {ids}) has no test clips under {data_root}")
    init_ray(num_cpus=os.cpu_count())
    ing = ingest(table, store, spec)
    return Prepared(machine_type, id_col, ids, dataset_kind, ing, {"machine_type": machine_type, id_col: ids},
                    [p for p, _ in idx.skipped])


def train_stage(
    prepared: Prepared,
    run_dir: Path,
    *,
    method: str,
    config: Any,
    spec: FeatureSpec,
    seed: int = 0,
    num_workers: int = 1,
    use_gpu: bool | None = None,
    resume: bool = False,
):
    """Ray Train fit on the training clips, then ``fit_detector`` (if the method has one); saves ``run_dir/model``.

    Returns the FitResult (its ``method`` now includes any fitted detector state).
    """
    from stethoscope import checkpoint as ckpt_io
    from stethoscope.training import Scaling, fit

    train_ds = prepared.features("train")
    result = fit(
        method, config, train_ds, Scaling(num_workers=num_workers, use_gpu=use_gpu), feature_spec=spec,
        run_dir=run_dir, seed=seed, resume=resume,
    )
    storage.write_json(str(run_dir / "train_history.json"), result.history)
    class_names = result.meta.get("class_names") or None
    detector_metrics = {}
    if type(result.method).fit_detector is not methods.Method.fit_detector:
        detector_metrics = result.method.fit_detector(_tensor_batches(train_ds, class_names))
    keep = {k: v for k, v in result.meta.items() if k not in ("method", "config", "feature_spec", "num_classes")}
    ckpt_io.save(result.method, run_dir / "model", {**keep, "seed": seed, "detector": detector_metrics})
    result.meta["detector"] = detector_metrics
    return result


def evaluate_stage(prepared: Prepared, run_dir: Path, method_obj, meta: dict, extra: dict | None = None):
    """Score the test clips with the run's model and write every evaluation artifact into ``run_dir``.

    Returns ``(metrics, scores DataFrame)``.
    """
    from stethoscope.evaluation import evaluate
    from stethoscope.scoring import score_dataset

    scores = score_dataset(method_obj, prepared.features("test"), meta.get("class_names") or None)
    if scores.empty:
        raise DataError(f"no test clip of {prepared.machine_type!r} could be scored (all skipped at ingest?)")
    scores.to_parquet(run_dir / "scores.parquet")
    metrics = evaluate(
        scores,
        run_dir,
        extra={
            "method": method_obj.name,
            "seed": meta.get("seed"),
            "feature_spec_hash": method_obj.feature_spec.hash(),
            "model": str(run_dir / "model"),
            "epochs": meta.get("epoch"),
            "final_train_metrics": (meta.get("history") or [{}])[-1],
            "detector": meta.get("detector", {}),
            "n_skipped_at_ingest": len(prepared.ingest.skipped),
            **(extra or {}),
        },
    )
    return metrics, scores


def run(
    data_root: str | os.PathLike = DEFAULT_DATA_ROOT,
    *,
    machine_type: str = "slider",
    machine_ids: list[str] | None = None,
    method: str = "autoencoder",
    config: dict | None = None,
    feature_overrides: dict | None = None,
    store: str = "store",
    runs_root: str = "runs",
    seed: int = 0,
    num_workers: int = 1,
    use_gpu: bool | None = None,
    lenient: bool = False,
) -> PipelineResult:
    """Index, ingest, train, score and evaluate one machine type (optionally restricted to some IDs/sections).

    Args:
        data_root: a DCASE tree (2020 or 2021-2024 layout).
        machine_type / machine_ids: what to train and evaluate; IDs as two-digit strings ("00"). For 2021+ data
            the same list selects sections.
        method / config: a registered method and Config overrides (e.g. ``{"epochs": 20}``).
        feature_overrides: FeatureSpec fields to change from the method's default.
        store: feature-cache root (path or URI). runs_root: parent of the run folder.
        seed: the run seed (recorded in run.json and every checkpoint).
        num_workers / use_gpu: Ray Train scaling (use_gpu None = auto-detect).
        lenient: skip unparseable file names instead of failing.
    Returns:
        PipelineResult (the run folder, metrics, per-clip scores, checkpoint path, printable table).
    Raises:
        DataError: missing data root, unknown machine/IDs, no training clips, no test clips.
        ConfigError: unknown method, bad config or feature parameter.
    """
    from stethoscope.evaluation import format_table

    cls = methods.get(method)
    cfg = cls.make_config(config or {})
    spec = feature_spec_for(method, cfg, feature_overrides)
    prepared = ingest_stage(
        data_root, spec, machine_type=machine_type, machine_ids=machine_ids, store=store, lenient=lenient
    )
    run_dir = new_run_dir(runs_root, method, machine_type)
    log.info("run folder: %s", run_dir)
    manifest = {
        "stage": "pipeline",
        "data_root": str(Path(data_root).resolve()),
        "machine_type": machine_type,
        "ids": prepared.ids,
        "method": method,
        "config": dataclasses.asdict(cfg),
        "feature_spec": spec.to_dict(),
        "feature_spec_hash": spec.hash(),
        "store": str(store),
        "seed": seed,
        "num_workers": num_workers,
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "skipped_unparseable": prepared.skipped_unparseable,
    }
    storage.write_json(str(run_dir / "run.json"), manifest)
    storage.write_json(str(run_dir / "ingest_report.json"), {
        **prepared.ingest.report, "features_path": prepared.ingest.features_path, "cached": prepared.ingest.cached})
    result = train_stage(
        prepared, run_dir, method=method, config=cfg, spec=spec, seed=seed, num_workers=num_workers, use_gpu=use_gpu
    )
    metrics, scores = evaluate_stage(prepared, run_dir, result.method, {**result.meta, "seed": seed},
                                     {"checkpoint": result.checkpoint_path})
    manifest.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), checkpoint=result.checkpoint_path,
                    model=str(run_dir / "model"))
    storage.write_json(str(run_dir / "run.json"), manifest)
    return PipelineResult(str(run_dir), metrics, scores, result.checkpoint_path, format_table(metrics))


def _tensor_batches(ds, class_names):
    from stethoscope.scoring import clip_batches

    for tensors, _ in clip_batches(ds.iter_batches(batch_size=16, batch_format="numpy"), class_names):
        yield tensors
