"""All stages in order for one machine type: index → ingest → train → score → evaluate (DESIGN.md data flow).

``run(...)`` is what ``jobs/pipeline.py`` wraps. Every artifact goes into one run folder:
``run.json`` (arguments, seed, versions, checkpoint), ``ingest_report.json``, ``train_history.json``, the score CSVs,
``scores.parquet``, ``metrics.json``, ``results.md`` and ``plots/``; for a method with score variants (AEGAN-AD) also
``validation_split.json`` and ``score_variants.parquet`` (:func:`select_score_variant_on_validation`).
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
from stethoscope.data.features import FeatureSpec, input_spec_to_dict
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


def input_specs_for(method_name: str, config: Any, overrides: dict | None = None) -> dict[str, Any]:
    """The method's declared inputs (``Method.input_specs``); ``overrides`` change the fields of its spectrogram
    input(s) (e.g. ``{"n_mels": 64}``; unknown keys / bad values → ConfigError)."""
    cls = methods.get(method_name)
    specs = dict(cls.input_specs(config))
    if overrides:
        for name, spec in specs.items():
            if isinstance(spec, FeatureSpec):
                specs[name] = FeatureSpec.from_dict({**spec.to_dict(), **overrides})
    return specs


def feature_spec_for(method_name: str, config: Any, overrides: dict | None = None) -> FeatureSpec:
    """The spectrogram spec of a one-log-mel-input method (``input_specs_for(...)["log_mel"]``)."""
    specs = input_specs_for(method_name, config, overrides)
    return specs.get("log_mel") or next(s for s in specs.values() if isinstance(s, FeatureSpec))


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
    spec: Any,
    *,
    machine_type: str,
    machine_ids: list[str] | None = None,
    store: str = "store",
    lenient: bool = False,
    require_train: bool = True,
) -> Prepared:
    """Index ``data_root``, select one machine type (and IDs/sections), and ingest it with Ray Data.

    ``spec``: the input specs to compute (one spec, several, or a Method's ``{name: spec}``).

    Raises:
        DataError: missing root, unknown machine type or IDs, no training clips (if ``require_train``), no test clips.
    """
    from stethoscope.data.ingest import ingest
    from stethoscope.runtime import init_ray

    idx = index(data_root, lenient=lenient)
    if idx.skipped:
        log.warning("skipped %d entr(ies) under the data root (listed in the ingest report): %s", len(idx.skipped),
                    [f"{s['path']}: {s['reason']}" for s in idx.skipped])
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
    ing = ingest(table, store, spec, not_indexed=idx.skipped)
    return Prepared(machine_type, id_col, ids, dataset_kind, ing, {"machine_type": machine_type, id_col: ids},
                    [s["path"] for s in idx.skipped if s["reason"] == "unparseable_name"])


def train_stage(
    prepared: Prepared,
    run_dir: Path,
    *,
    method: str,
    config: Any,
    spec: Any,
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
        method, config, train_ds, Scaling(num_workers=num_workers, use_gpu=use_gpu), inputs=spec,
        run_dir=run_dir, seed=seed, resume=resume,
    )
    storage.write_json(str(run_dir / "train_history.json"), result.history)
    detector_metrics = {}
    if type(result.method).fit_detector is not methods.Method.fit_detector:
        detector_metrics = result.method.fit_detector(_tensor_batches(train_ds, result.method))
    keep = {k: v for k, v in result.meta.items()
            if k not in ("method", "config", "feature_spec", "num_classes", "inputs", "vocab")}
    ckpt_io.save(result.method, run_dir / "model", {**keep, "seed": seed, "detector": detector_metrics})
    result.meta["detector"] = detector_metrics
    return result


def evaluate_stage(prepared: Prepared, run_dir: Path, method_obj, meta: dict, extra: dict | None = None):
    """Score the test clips with the run's model and write every evaluation artifact into ``run_dir``.

    A method with score variants (:func:`has_score_variants`, e.g. AEGAN-AD) first gets its variant chosen on a
    validation half of the labelled test clips (:func:`select_score_variant_on_validation`); the metrics then cover
    the other half only, and ``metrics["score_variant_selection"]`` records the choice. Other methods are scored
    and evaluated on every test clip.

    Returns ``(metrics, scores DataFrame)`` (for score-variant methods the DataFrame has every test clip, with a
    ``role`` column: ``validation`` / ``test`` / ``unlabelled``).
    """
    from stethoscope.evaluation import evaluate
    from stethoscope.scoring import score_dataset

    selection: dict | None = None
    if has_score_variants(method_obj):
        scores, selection = select_score_variant_on_validation(
            method_obj, prepared.features("test"), run_dir,
            seed=int(meta.get("seed") or 0), machine_type=prepared.machine_type,
        )
        reported = scores[scores["role"] != "validation"]
    else:
        scores = score_dataset(method_obj, prepared.features("test"))
        if scores.empty:
            raise DataError(f"no test clip of {prepared.machine_type!r} could be scored (all skipped at ingest?)")
        reported = scores
    scores.to_parquet(run_dir / "scores.parquet")
    metrics = evaluate(
        reported,
        run_dir,
        extra={
            "method": method_obj.name,
            "seed": meta.get("seed"),
            "input_spec_hashes": {k: v.hash() for k, v in method_obj.inputs.items()},
            "model": str(run_dir / "model"),
            "epochs": meta.get("epoch"),
            "final_train_metrics": (meta.get("history") or [{}])[-1],
            "detector": meta.get("detector", {}),
            "n_skipped_at_ingest": len(prepared.ingest.skipped),
            **({"score_variant_selection": selection} if selection is not None else {}),
            **(extra or {}),
        },
    )
    return metrics, scores


# -- score-variant selection on a validation split (methods with ``score_variants``, e.g. AEGAN-AD) -----------------
#: Share of the labelled test clips that choose the score variant; the other part is the one reported.
SCORE_VARIANT_VALIDATION_FRACTION = 0.5
#: Column prefix of the per-variant scores in ``score_variants.parquet``.
VARIANT_COLUMN_PREFIX = "variant:"


def has_score_variants(method_obj) -> bool:
    """True for a method that exposes several named anomaly scores: ``score_variants(batch) -> {name: Tensor [B]}``
    and ``set_score_variant(name)`` (AEGAN-AD; Jiang et al., ICASSP 2023)."""
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


def choose_score_variant(variant_scores: pd.DataFrame, split) -> tuple[str, dict]:
    """The variant with the best (AUC + pAUC) / 2 on the validation clips of ``split``
    (:func:`stethoscope.evaluation.selection.select_score_variant`). Reads the labels of ``split.validation`` only,
    so the labels of the other clips cannot change the choice.

    Args:
        variant_scores: a :func:`score_all_variants` table (``path``, ``label`` and ``variant:<name>`` columns).
        split: a :class:`stethoscope.splits.Split` of those clips.
    Returns:
        ``(name, {name: {"auc", "pauc", "mean"}})`` on the validation clips.
    Raises:
        DataError: the validation clips lack a class, or no variant has finite scores.
    """
    import numpy as np

    from stethoscope.evaluation.selection import select_score_variant

    val = variant_scores[variant_scores["path"].isin(set(split.validation))]
    y = (val["label"] == "anomaly").to_numpy().astype(np.int64)
    cols = [c for c in variant_scores.columns if str(c).startswith(VARIANT_COLUMN_PREFIX)]
    return select_score_variant({c[len(VARIANT_COLUMN_PREFIX):]: val[c].to_numpy() for c in cols}, y)


def select_score_variant_on_validation(
    method_obj,
    ds,
    run_dir: Path,
    *,
    seed: int = 0,
    fraction: float = SCORE_VARIANT_VALIDATION_FRACTION,
    machine_type: str = "",
) -> tuple[pd.DataFrame, dict]:
    """Choose a score-variant method's variant on a validation split of the labelled test clips, never on the
    clips that are reported.

    1. Scores every test clip with every variant (:func:`score_all_variants`).
    2. Splits the labelled clips with :func:`stethoscope.splits.stratified_split` (``fraction`` to validation,
       seeded with the run seed, stratified by ID/section, domain and label) and writes ``validation_split.json``.
       :func:`stethoscope.registry.publish_runs` splits ``scores.parquet`` with the same function, seed and
       fraction 0.5, so it holds out the same clips.
    3. Picks the variant on the validation clips (:func:`choose_score_variant`), calls
       ``method_obj.set_score_variant`` and re-saves ``run_dir/model`` (if it is a checkpoint) so that later
       stages score with it.
    4. Writes ``score_variants.parquet`` (every clip, every variant, its ``role``).
    If the validation clips cannot rank the variants (e.g. they lack a class), the configured variant is kept,
    nothing is held out, and the reason is recorded (and logged as a warning).

    Returns:
        ``(scores, record)``: scores = one row per test clip with ``score`` (the chosen variant) and ``role``
        (``validation`` / ``test`` / ``unlabelled``); record = ``{"selected", "configured", "criterion",
        "validation": {name: {"auc", "pauc", "mean"}}, "seed", "fraction", "n_validation", "n_test",
        "split_file", "reason"}``.
    Raises:
        DataError: no test clip could be scored.
    """
    from stethoscope import checkpoint as ckpt_io
    from stethoscope.scoring import META
    from stethoscope.splits import stratified_split, write_split

    frame = score_all_variants(method_obj, ds)
    if frame.empty:
        raise DataError(f"no test clip of {machine_type!r} could be scored (all skipped at ingest?)")
    configured = method_obj.score_variant
    record: dict[str, Any] = {
        "configured": configured, "seed": seed, "fraction": fraction,
        "criterion": "(AUC + pAUC) / 2 on the validation clips (pAUC: max_fpr 0.1, McClish-standardized)",
    }
    try:
        split = stratified_split(frame, fraction=fraction, seed=seed)
        name, table = choose_score_variant(frame, split)
    except DataError as exc:
        log.warning("%s: cannot choose a score variant on a validation split (%s); keeping %r and reporting "
                    "every clip", machine_type, exc, configured)
        name, table, val_set = configured, {}, set()
        record.update(reason=str(exc), split_file=None, n_validation=0)
    else:
        val_set = set(split.validation)
        record.update(reason=None, split_file=str(write_split(split, run_dir)), n_validation=len(val_set))
    method_obj.set_score_variant(name)
    frame["score"] = frame[VARIANT_COLUMN_PREFIX + name]
    frame["role"] = ["validation" if p in val_set else ("test" if lab is not None and lab == lab else "unlabelled")
                     for p, lab in zip(frame["path"], frame["label"])]
    frame.to_parquet(run_dir / "score_variants.parquet")
    finite = {k: {m: (v if v == v and abs(v) != float("inf") else None) for m, v in row.items()}
              for k, row in table.items()}  # JSON (metrics.json) has no NaN: a variant with NaN scores gets null
    record.update(selected=name, validation=finite, n_test=int((frame["role"] == "test").sum()))
    model_dir = run_dir / "model"
    if (model_dir / ckpt_io.META_FILE).is_file():
        kept = {k: v for k, v in ckpt_io.read_meta(model_dir).items()
                if k not in ("method", "config", "feature_spec", "num_classes", "inputs", "vocab")}
        ckpt_io.save(method_obj, model_dir, {**kept, "score_variant": name})
    log.info("%s: score variant %r chosen on %d validation clip(s); reporting %d test clip(s)",
             machine_type, name, record["n_validation"], record["n_test"])
    return frame[[c for c in (*META, "score", "role") if c in frame.columns]], record


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
    registry: str | None = "registry",
) -> PipelineResult:
    """Index, ingest, train, score and evaluate one machine type (optionally restricted to some IDs/sections),
    then publish the run as a one-member bundle to ``registry`` (so the demo leaves a servable registry behind).

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
        registry: registry root (folder or URI) to publish to (:func:`stethoscope.registry.publish_runs`; the
            publish files go to ``<run folder>/publish/``); None skips publishing.
    Returns:
        PipelineResult (the run folder, metrics, per-clip scores, checkpoint path, printable table). With a
        registry, ``extra["publish"]`` is the :class:`stethoscope.registry.PublishResult` and the table ends with
        the publish table.
    Raises:
        DataError: missing data root, unknown machine/IDs, no training clips, no test clips.
        ConfigError: unknown method, bad config or feature parameter.
    """
    from stethoscope.evaluation import format_table

    cls = methods.get(method)
    cfg = cls.make_config(config or {})
    spec = input_specs_for(method, cfg, feature_overrides)
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
        "inputs": {k: input_spec_to_dict(v) for k, v in spec.items()},
        "input_spec_hashes": {k: v.hash() for k, v in spec.items()},
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
    table, extra = format_table(metrics), {}
    if registry:
        from stethoscope.registry import format_publish_table, publish_runs

        (published,) = publish_runs([run_dir], registry, data_root=str(data_root), store=store,
                                    seed=seed, out_dir=run_dir / "publish", lenient=lenient)
        extra["publish"] = published
        manifest.update(published={"registry": str(registry), "machine_type": published.machine_type,
                                   "scope": published.scope, "version": published.version})
        storage.write_json(str(run_dir / "run.json"), manifest)
        table += "\n\npublished to " + str(registry) + ":\n" + format_publish_table([published])
    return PipelineResult(str(run_dir), metrics, scores, result.checkpoint_path, table, extra)


def _tensor_batches(ds, method):
    from stethoscope.scoring import clip_batches

    for tensors, _ in clip_batches(ds.iter_batches(batch_size=16, batch_format="numpy"), method):
        yield tensors
