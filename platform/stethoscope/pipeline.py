"""All stages in order for one machine type: index → ingest → split → train → score → evaluate (DESIGN.md data flow).

``run(...)`` is what ``jobs/pipeline.py`` wraps. Every artifact goes into one run folder (:mod:`stethoscope.runs`):
``run.json`` (arguments, seed, preset, versions, checkpoint, the split's hash), ``validation_split.json`` (the run's
one split, written before training: :mod:`stethoscope.splits`), ``ingest_report.json``, ``train_history.json``,
``model/``, ``scores.parquet`` (every test clip, with its role in the split), ``train_scores.parquet`` (every
training clip), the score CSVs, ``metrics.json``, ``results.md`` and ``plots/`` (the held-out test clips only); for
a method with score variants (AEGAN-AD, EGBAD) also ``score_variant.json`` (the variant chosen on the validation
clips) and ``score_variants.parquet``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stethoscope import methods, runs, storage
from stethoscope.data.features import FeatureSpec, input_spec_to_dict
from stethoscope.data.index import index, select
from stethoscope.errors import DataError, StethoscopeError
from stethoscope.runs import git_commit  # noqa: F401  (re-exported: jobs import it from here)
from stethoscope.splits import CLIP_COLUMNS, RunSplit, ValidationSpec, make_run_split, read_run_split, write_run_split

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


def resolve_config(method: str, machine_type: str, overrides: dict | None = None,
                   preset: bool = False) -> tuple[Any, dict | None]:
    """The run's Config: the paper preset of ``machine_type`` (if ``preset``), updated with ``overrides`` (which
    win: ``--config``, then ``--set``, then ``--epochs``), then validated.

    Returns:
        ``(config, preset record or None)``; the record (:func:`stethoscope.presets.preset_record`) goes into
        run.json.
    Raises:
        ConfigError: unknown method, no preset row for the machine type (lists the rows), a bad value, or an
            unknown detector candidate.
    """
    cls = methods.get(method)
    record = None
    values: dict = {}
    if preset:
        from stethoscope.presets import preset_record

        record = preset_record(method, machine_type)
        values.update(record["values"])
    values.update(overrides or {})
    if record is not None:
        record["overridden"] = sorted(k for k in (overrides or {}) if k in record["values"]
                                      and overrides[k] != record["values"][k])
    cfg = cls.make_config(values)
    if getattr(cfg, "detectors", None):  # an embedding method's detector candidates: checked before anything trains
        from stethoscope.detectors.stage import parse_candidates

        parse_candidates(list(cfg.detectors))
    return cfg, record


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

    def features(self, split: str, paths: list[str] | None = None):
        """Ray Dataset of the selection's ingested clips of ``split`` ("train"/"test"), optionally only ``paths``."""
        from stethoscope.data.ingest import read_features

        extra = {"path": list(paths)} if paths is not None else {}
        return read_features(self.ingest, split=split, **self.where, **extra)

    def clips(self) -> pd.DataFrame:
        """Metadata of every ingested clip of the selection (train and test), one row per clip, columns
        :data:`stethoscope.splits.CLIP_COLUMNS`. Read with pyarrow in the driver (no Ray job)."""
        import pyarrow.dataset as pads

        fs, path = storage.resolve(self.ingest.features_path)
        ds = pads.dataset(path, filesystem=fs, format="parquet")
        expr = None
        for name, value in self.where.items():
            if value is None:
                continue
            term = pads.field(name).isin(list(value)) if isinstance(value, (list, tuple, set)) else (
                pads.field(name) == value)
            expr = term if expr is None else (expr & term)
        cols = [c for c in CLIP_COLUMNS if c in ds.schema.names]
        return ds.to_table(columns=cols, filter=expr).to_pandas().sort_values("path").reset_index(drop=True)


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
        selection={"machine_type": prepared.machine_type, "id_field": prepared.id_col, "ids": prepared.ids},
    )
    for note in split.notes:
        log.warning("%s split: %s", prepared.machine_type, note)
    return split


def record_split(run_dir: Path, split: RunSplit, manifest: dict) -> dict:
    """Write ``validation_split.json`` into ``run_dir`` and record its hash in ``manifest`` (run.json's dict)."""
    _, sha = write_run_split(split, run_dir)
    manifest["validation_split"] = runs.split_record(split, sha)
    return manifest


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
):
    """Ray Train fit on the training clips (``split.train_validation`` held out for the validation loss), then
    ``fit_detector`` on the ``split.train`` clips (if the method has one); saves ``run_dir/model``.

    Returns the FitResult (its ``method`` now includes any fitted detector state).
    """
    from stethoscope import checkpoint as ckpt_io
    from stethoscope.training import Scaling, fit

    train_ds = prepared.features("train")
    result = fit(
        method, config, train_ds, Scaling(num_workers=num_workers, use_gpu=use_gpu), inputs=spec,
        run_dir=run_dir, seed=seed, resume=resume, held_out=split.train_validation,
    )
    storage.write_json(str(run_dir / "train_history.json"), result.history)
    detector_metrics = {}
    if type(result.method).fit_detector is not methods.Method.fit_detector:
        fit_ds = prepared.features("train", split.train) if split.train_validation else train_ds
        detector_metrics = result.method.fit_detector(_tensor_batches(fit_ds, result.method))
    keep = {k: v for k, v in result.meta.items()
            if k not in ("method", "config", "feature_spec", "num_classes", "inputs", "vocab")}
    ckpt_io.save(result.method, run_dir / runs.MODEL_DIR, {**keep, "seed": seed, "detector": detector_metrics})
    result.meta["detector"] = detector_metrics
    return result


def _with_roles(frame: pd.DataFrame, split: RunSplit, what: str) -> pd.DataFrame:
    roles = split.roles()
    frame = frame.copy()
    frame["role"] = [roles.get(p) for p in frame["path"]]
    outside = frame.loc[frame["role"].isna(), "path"].tolist()
    if outside:
        raise DataError(f"{len(outside)} scored {what} clip(s) are not in the run's validation split (made for other "
                        f"data?): {[os.path.basename(p) for p in outside[:10]]}")
    return frame


def covers(split: RunSplit, reported: pd.DataFrame) -> dict[str, Any]:
    """The ``clips`` entry of metrics.json: which clips a report covers, and which it leaves out and why."""
    y = reported["label"]
    held = bool(split.test or split.unlabelled)
    part = "test" if held else "validation"
    out = {
        "part": part,
        "split_file": "validation_split.json",
        "split_source": split.source,
        "split_seed": split.seed,
        "fingerprint": split.fingerprint,
        "n": int(len(reported)),
        "n_normal": int((y == "normal").sum()),
        "n_anomaly": int((y == "anomaly").sum()),
        "n_unlabelled": int(y.isna().sum()),
        "n_validation_excluded": len(split.validation) if held else 0,
    }
    if held:
        out["description"] = (
            f"the held-out test part of validation_split.json ({out['n_normal']} normal, {out['n_anomaly']} "
            f"anomalous, {out['n_unlabelled']} unlabelled clips); its {len(split.validation)} validation clips are "
            "used for selection only and are not in these numbers")
    else:
        out["description"] = (
            f"the validation clips of validation_split.json ({out['n_normal']} normal, {out['n_anomaly']} anomalous): "
            f"the split ({split.source}) holds nothing out, so these are the clips any selection was made on")
    return out


def detector_candidates(method_obj) -> list:
    """The detector candidates an embedding method's config names (``detectors``; empty → no detector stage)."""
    return list(getattr(method_obj.config, "detectors", None) or ())


def uses_detector_stage(method_obj) -> bool:
    """True for a method whose scores come from the detector stage: it has ``embed()`` and names candidates."""
    return bool(method_obj.can_embed and detector_candidates(method_obj))


def detect_stage(prepared: Prepared, run_dir: Path, method_obj, split: RunSplit
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The detector stage (issue 12 §2; ASDKit's extract + backend stages; TLDiffGAN Eq. 6): embed every clip, fit
    each candidate detector per group (and per domain on DCASE 2022+ data, scoring with the minimum) on the training
    embeddings, and choose one per machine type by mean(AUC, pAUC) on the split's validation clips.

    Artifacts in ``run_dir``: ``embeddings.parquet`` (every training and test clip: labels, ``role``, ``embedding``
    float32 [D]); ``detector_scores.parquet`` (every test clip, one ``variant:<detector>`` column per candidate);
    ``detect.json`` (per machine type: the candidates' validation AUC/pAUC, the choice and dropped candidates);
    ``detectors/<machine_type>.pt`` (the chosen :class:`~stethoscope.detectors.stage.GroupedDetector`'s state,
    ``torch.load(weights_only=True)``); ``umap_<machine_type>.png``.

    Returns:
        ``(test scores, training scores, record)``: test scores = one row per test clip with the chosen detector's
        ``score`` and ``role``; training scores = each training clip's standardized score from its own detector,
        scored without itself where the detector allows (what publishing fits thresholds on).
    Raises:
        ConfigError: an unknown detector name (before anything is embedded). DataError: no test clip, or no
        candidate could be fitted for a machine type (every reason listed).
    """
    import numpy as np
    import torch

    from stethoscope.data.labels import group_key
    from stethoscope.detectors.stage import fit_candidates, parse_candidates
    from stethoscope.evaluation.plots import plot_umap
    from stethoscope.scoring import META, embed_dataset

    candidates = parse_candidates(detector_candidates(method_obj))
    train = _with_roles(embed_dataset(method_obj, prepared.features("train")), split, "training")
    test = _with_roles(embed_dataset(method_obj, prepared.features("test")), split, "test")
    if test.empty:
        raise DataError(f"no test clip of {prepared.machine_type!r} could be embedded (all skipped at ingest?)")
    emb = pd.concat([train, test], ignore_index=True)
    emb.to_parquet(run_dir / runs.EMBEDDINGS)
    (run_dir / runs.DETECTORS_DIR).mkdir(exist_ok=True)
    keep = [c for c in (*META, "role") if c in test.columns]
    record: dict[str, Any] = {"candidates": [c.label for c in candidates], "criterion": VARIANT_CRITERION,
                              "machine_types": {}}
    test_frames, train_frames = [], []
    for mt in sorted(set(train["machine_type"])):
        tr, te = train[train["machine_type"] == mt], test[test["machine_type"] == mt]
        if te.empty:
            continue
        keys_tr = [group_key(mt, a, b) for a, b in zip(tr["machine_id"], tr["section"])]
        keys_te = [group_key(mt, a, b) for a, b in zip(te["machine_id"], te["section"])]
        domains = tr["domain"].tolist() if "domain" in tr.columns else None
        fitted, dropped = fit_candidates(candidates, np.stack(tr["embedding"].to_list()), keys_tr, domains)
        x_te = np.stack(te["embedding"].to_list())
        table = te[keep].copy()
        for det in fitted:
            table[VARIANT_COLUMN_PREFIX + det.label] = det.decision_function(x_te, keys_te)
        selection = choose_score_variant(table, split, configured=fitted[0].label)
        if selection["reason"]:
            log.warning("%s: %s", mt, selection["reason"])
        chosen = fitted[[d.label for d in fitted].index(selection["selected"])]
        table["score"] = table[VARIANT_COLUMN_PREFIX + chosen.label]
        torch.save(chosen.state_dict(), run_dir / runs.DETECTORS_DIR / f"{mt}.pt")
        tr_scores = tr[[c for c in keep if c in tr.columns]].copy()
        tr_scores["score"] = chosen.train_scores_
        test_frames.append(table)
        train_frames.append(tr_scores)
        record["machine_types"][mt] = {**selection, "dropped": dropped,
                                       "file": f"{runs.DETECTORS_DIR}/{mt}.pt"}
        log.info("%s: detector %r chosen on %d validation clip(s)", mt, chosen.label, selection["n_validation"])
        rows = emb["machine_type"] == mt
        try:
            plot_umap(run_dir / f"umap_{mt}.png", np.stack(emb.loc[rows, "embedding"].to_list()),
                      labels=emb.loc[rows, "label"].tolist(),
                      domains=emb.loc[rows, "domain"].tolist() if "domain" in emb.columns else None,
                      splits=emb.loc[rows, "split"].tolist(), title=f"{mt}: {method_obj.name} embeddings")
        except Exception as exc:  # noqa: BLE001 - a plot never takes down a run
            log.warning("%s: no UMAP plot (%s: %s)", mt, type(exc).__name__, exc)
    variants = pd.concat(test_frames, ignore_index=True)
    variants.to_parquet(run_dir / runs.DETECTOR_SCORES)
    storage.write_json(str(run_dir / runs.DETECT_JSON), record)
    return variants[[*keep, "score"]], pd.concat(train_frames, ignore_index=True), record


def evaluate_stage(prepared: Prepared, run_dir: Path, method_obj, meta: dict, split: RunSplit,
                   extra: dict | None = None):
    """Score every test and training clip with the run's model, and report on the held-out test clips.

    1. The split must have been made for exactly the ingested clips (else DataError).
    2. A method with score variants (:func:`has_score_variants`: AEGAN-AD, EGBAD) gets its variant chosen on the
       split's validation clips (:func:`choose_score_variant`); the choice goes to ``score_variant.json`` and
       ``method_obj`` scores with it from then on. The model in ``run_dir/model`` is never rewritten:
       :func:`stethoscope.runs.load_model` applies the choice when a later stage loads the run.
       An embedding method that names detector candidates (:func:`uses_detector_stage`) is scored by the detector
       stage instead (:func:`detect_stage`: the detector is chosen per machine type on the validation clips).
    3. ``scores.parquet``: every test clip with its score and ``role`` (validation / test / unlabelled);
       ``train_scores.parquet``: every training clip (role train / train_validation), what publishing fits its
       standardizers and thresholds on.
    4. metrics.json, results.md, score CSVs and plots cover the ``test`` (and unlabelled) clips only; metrics.json's
       ``clips`` says so (:func:`covers`). A split that holds nothing out (source ``all``) reports the validation
       clips and says that instead.

    Returns:
        ``(metrics, scores DataFrame of every test clip)``.
    Raises:
        DataError: a split made for other clips, or no test clip could be scored.
    """
    from stethoscope.evaluation import evaluate
    from stethoscope.scoring import META, score_dataset

    split.check_clips(prepared.clips(), f"the ingested {prepared.machine_type} clips")
    selection: dict | None = None
    detection: dict | None = None
    train_scores = None
    if uses_detector_stage(method_obj):
        scores, train_scores, detection = detect_stage(prepared, run_dir, method_obj, split)
    elif has_score_variants(method_obj):
        variants = score_all_variants(method_obj, prepared.features("test"))
        if variants.empty:
            raise DataError(f"no test clip of {prepared.machine_type!r} could be scored (all skipped at ingest?)")
        variants = _with_roles(variants, split, "test")
        selection = choose_score_variant(variants, split, configured=method_obj.score_variant)
        if selection["reason"]:
            log.warning("%s: %s", prepared.machine_type, selection["reason"])
        method_obj.set_score_variant(selection["selected"])
        variants["score"] = variants[VARIANT_COLUMN_PREFIX + selection["selected"]]
        variants.to_parquet(run_dir / "score_variants.parquet")
        runs.write_score_variant(run_dir, selection)
        scores = variants[[c for c in (*META, "score", "role") if c in variants.columns]]
        log.info("%s: score variant %r (%s)", prepared.machine_type, selection["selected"],
                 "chosen on %d validation clips" % selection["n_validation"] if not selection["reason"] else "kept")
    else:
        scores = score_dataset(method_obj, prepared.features("test"))
        if scores.empty:
            raise DataError(f"no test clip of {prepared.machine_type!r} could be scored (all skipped at ingest?)")
        scores = _with_roles(scores, split, "test")
    scores.to_parquet(run_dir / runs.SCORES)
    if train_scores is None:
        train_scores = _with_roles(score_dataset(method_obj, prepared.features("train")), split, "training")
    train_scores.to_parquet(run_dir / runs.TRAIN_SCORES)
    reported = scores[scores["path"].isin(set(split.reported()))]
    clips = covers(split, reported)
    metrics = evaluate(
        reported,
        run_dir,
        extra={
            "clips": clips,
            "method": method_obj.name,
            "seed": meta.get("seed"),
            "input_spec_hashes": {k: v.hash() for k, v in method_obj.inputs.items()},
            "model": str(run_dir / runs.MODEL_DIR),
            "epochs": meta.get("epoch"),
            "final_train_metrics": (meta.get("history") or [{}])[-1],
            "detector": meta.get("detector", {}),
            "n_skipped_at_ingest": len(prepared.ingest.skipped),
            **({"score_variant_selection": selection} if selection is not None else {}),
            **({"detector_selection": detection} if detection is not None else {}),
            **(extra or {}),
        },
    )
    return metrics, scores


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


def run(
    data_root: str | os.PathLike = DEFAULT_DATA_ROOT,
    *,
    machine_type: str = "slider",
    machine_ids: list[str] | None = None,
    method: str = "autoencoder",
    config: dict | None = None,
    preset: bool = False,
    feature_overrides: dict | None = None,
    store: str = "store",
    runs_root: str = "runs",
    seed: int = 0,
    validation: ValidationSpec | None = None,
    split_from: str | os.PathLike | dict | None = None,
    num_workers: int = 1,
    use_gpu: bool | None = None,
    lenient: bool = False,
    registry: str | None = "registry",
) -> PipelineResult:
    """Index, ingest, split, train, score and evaluate one machine type (optionally restricted to some
    IDs/sections), then publish the run as a one-member bundle to ``registry`` (so the demo leaves a servable
    registry behind).

    Args:
        data_root: a DCASE tree (2020 or 2021-2024 layout).
        machine_type / machine_ids: what to train and evaluate; IDs as two-digit strings ("00"). For 2021+ data
            the same list selects sections.
        method / config: a registered method and Config overrides (e.g. ``{"epochs": 20}``).
        preset: start from the method's paper preset for ``machine_type`` (:mod:`stethoscope.presets`; ``config``
            wins over it); run.json records the preset's row under ``preset``.
        feature_overrides: FeatureSpec fields to change from the method's default.
        store: feature-cache root (path or URI). runs_root: parent of the run folder.
        seed: the training seed (recorded in run.json and every checkpoint).
        validation: how the labelled clips split into validation and test (default: seeded half / half, seed 0;
            independent of ``seed``, so runs with several training seeds share one split and publish together).
        split_from: reuse an existing ``validation_split.json`` (e.g. a sweep's; see :func:`split_stage`) instead
            of drawing one.
        num_workers / use_gpu: Ray Train scaling (use_gpu None = auto-detect).
        lenient: skip unparseable file names instead of failing.
        registry: registry root (folder or URI) to publish to (:func:`stethoscope.publishing.publish_runs`; the
            publish files go to ``<run folder>/publish/``); None skips publishing. If the run cannot be published
            (e.g. too few training clips for a decision threshold), run.json and the table say why.
    Returns:
        PipelineResult (the run folder, metrics, per-clip scores, checkpoint path, printable table). With a
        registry, ``extra["publish"]`` is the :class:`stethoscope.publishing.PublishResult` (or
        ``extra["publish_error"]`` the reason it was not published) and the table ends with the publish table.
    Raises:
        DataError: missing data root, unknown machine/IDs, no training clips, no test clips, a reused split made
            for other clips.
        ConfigError: unknown method, bad config or feature parameter, no preset row for the machine type.
    """
    from stethoscope.evaluation import format_table

    cfg, preset_rec = resolve_config(method, machine_type, config, preset)
    spec = input_specs_for(method, cfg, feature_overrides)
    prepared = ingest_stage(
        data_root, spec, machine_type=machine_type, machine_ids=machine_ids, store=store, lenient=lenient
    )
    split = split_stage(prepared, validation=validation,
                        train_validation_fraction=float(getattr(cfg, "val_fraction", 0.0)), split_from=split_from)
    run_dir = new_run_dir(runs_root, method, machine_type)
    log.info("run folder: %s", run_dir)
    manifest = {
        "stage": "pipeline",
        "data_root": str(Path(data_root).resolve()),
        "machine_type": machine_type,
        "ids": prepared.ids,
        "method": method,
        "preset": preset_rec,
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
    record_split(run_dir, split, manifest)
    storage.write_json(str(run_dir / runs.RUN_JSON), manifest)
    storage.write_json(str(run_dir / "ingest_report.json"), {
        **prepared.ingest.report, "features_path": prepared.ingest.features_path, "cached": prepared.ingest.cached})
    result = train_stage(
        prepared, run_dir, method=method, config=cfg, spec=spec, split=split, seed=seed, num_workers=num_workers,
        use_gpu=use_gpu,
    )
    metrics, scores = evaluate_stage(prepared, run_dir, result.method, {**result.meta, "seed": seed}, split,
                                     {"checkpoint": result.checkpoint_path})
    manifest.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), checkpoint=result.checkpoint_path,
                    model=str(run_dir / runs.MODEL_DIR))
    storage.write_json(str(run_dir / runs.RUN_JSON), manifest)
    table, extra = format_table(metrics), {}
    if registry:
        from stethoscope.publishing import format_publish_table, publish_runs

        try:
            (published,) = publish_runs([run_dir], registry, out_dir=run_dir / "publish")
        except StethoscopeError as exc:
            log.warning("%s: not published: %s", machine_type, exc)
            extra["publish_error"] = str(exc)
            manifest["published"] = {"registry": str(registry), "error": str(exc)}
            table += f"\n\nnot published to {registry}: {exc}"
        else:
            extra["publish"] = published
            manifest["published"] = {"registry": str(registry), "machine_type": published.machine_type,
                                     "scope": published.scope, "version": published.version}
            table += "\n\npublished to " + str(registry) + ":\n" + format_publish_table([published])
        storage.write_json(str(run_dir / runs.RUN_JSON), manifest)
    return PipelineResult(str(run_dir), metrics, scores, result.checkpoint_path, table, extra)


def _tensor_batches(ds, method):
    from stethoscope.scoring import clip_batches

    for tensors, _ in clip_batches(ds.iter_batches(batch_size=16, batch_format="numpy"), method):
        yield tensors


__all__ = [
    "PipelineResult",
    "Prepared",
    "VARIANT_COLUMN_PREFIX",
    "choose_score_variant",
    "covers",
    "evaluate_stage",
    "feature_spec_for",
    "git_commit",
    "has_score_variants",
    "ingest_stage",
    "new_run_dir",
    "record_split",
    "resolve_config",
    "run",
    "score_all_variants",
    "split_stage",
    "train_stage",
]
