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
from stethoscope.errors import ConfigError, DataError, StethoscopeError
from stethoscope.runs import git_commit  # noqa: F401  (re-exported: jobs import it from here)
from stethoscope.splits import CLIP_COLUMNS, RunSplit, ValidationSpec, make_run_split, read_run_split, write_run_split

log = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = "../shared/data/dcase2020_task2_dev_sample"
#: How a selection of several machine types is named (Prepared.machine_type, run folder names, run.json).
ALL_LABEL = "all"


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
    """What the ingest stage hands on: the selection, its feature dataset handles and bookkeeping.

    ``machine_type`` names the selection in messages and folder names: its one machine type, or ``all`` when it
    holds several (an all_machine_types run); ``machine_types`` lists them.
    """

    machine_type: str
    id_col: str
    ids: list[str]
    dataset_kind: str
    ingest: Any
    where: dict
    skipped_unparseable: list[str]
    machine_types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.machine_types:
            self.machine_types = [self.machine_type]

    def features(self, split: str, paths: list[str] | None = None, unit: Any = None):
        """Ray Dataset of the selection's ingested clips of ``split`` ("train"/"test"), optionally only ``paths``,
        and only those of a training ``unit`` (:class:`stethoscope.scopes.Unit`; None = the whole selection)."""
        from stethoscope.data.ingest import read_features

        where = dict(self.where)
        if unit is not None:
            where["machine_type"] = list(unit.machine_types)
            if unit.group is not None:
                where[self.id_col] = [unit.group.rsplit("_", 1)[-1]]
        extra = {"path": list(paths)} if paths is not None else {}
        return read_features(self.ingest, split=split, **where, **extra)

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
    machine_type: str | list[str] | tuple[str, ...],
    machine_ids: list[str] | None = None,
    store: str = "store",
    lenient: bool = False,
    require_train: bool = True,
) -> Prepared:
    """Index ``data_root``, select one machine type or several (an all_machine_types run), and IDs/sections, and
    ingest them with Ray Data.

    ``spec``: the input specs to compute (one spec, several, or a Method's ``{name: spec}``). ``machine_ids``
    selects the same IDs / sections in every machine type.

    Raises:
        DataError: missing root, unknown machine type or IDs, no training clips for a machine type (if
            ``require_train``), no test clips, machine types of different dataset grammars.
    """
    import pyarrow as pa

    from stethoscope.data.ingest import ingest
    from stethoscope.runtime import init_ray

    types = [machine_type] if isinstance(machine_type, str) else list(dict.fromkeys(machine_type))
    if not types:
        raise DataError("no machine type selected")
    idx = index(data_root, lenient=lenient)
    if idx.skipped:
        log.warning("skipped %d entr(ies) under the data root (listed in the ingest report): %s", len(idx.skipped),
                    [f"{s['path']}: {s['reason']}" for s in idx.skipped])
    tables = []
    for mt in types:
        table = select(idx.table, machine_type=mt)
        kind = table.column("dataset")[0].as_py()
        id_col = "machine_id" if kind == "dcase2020" else "section"
        if machine_ids:
            table = select(table, **({"machine_ids": machine_ids} if id_col == "machine_id" else {"sections": machine_ids}))
        n_train = sum(1 for s in table.column("split").to_pylist() if s == "train")
        n_test = table.num_rows - n_train
        ids = sorted(set(table.column(id_col).to_pylist()))
        if require_train and n_train == 0:
            raise DataError(
                f"machine type {mt!r} ({id_col} {ids}) has no training clips under {data_root}; "
                f"expected {mt}/train/*.wav (normal operation). Only test clips were found."
            )
        if n_test == 0:
            raise DataError(f"machine type {mt!r} ({id_col} {ids}) has no test clips under {data_root}")
        tables.append(table)
    kinds = sorted({t.column("dataset")[0].as_py() for t in tables})
    if len(kinds) != 1:
        raise DataError(f"machine types {types} mix dataset grammars {kinds}; select types of one dataset")
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    dataset_kind = kinds[0]
    id_col = "machine_id" if dataset_kind == "dcase2020" else "section"
    ids = sorted(set(table.column(id_col).to_pylist()))
    init_ray(num_cpus=os.cpu_count())
    ing = ingest(table, store, spec, not_indexed=idx.skipped)
    label = types[0] if len(types) == 1 else ALL_LABEL
    where = {"machine_type": types[0] if len(types) == 1 else types, id_col: ids}
    return Prepared(label, id_col, ids, dataset_kind, ing, where,
                    [s["path"] for s in idx.skipped if s["reason"] == "unparseable_name"], types)


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
):
    """Ray Train fit of one training unit on its training clips (``split.train_validation`` held out for the
    validation loss), then ``fit_detector`` on its ``split.train`` clips (if the method has one).

    ``unit``: a :class:`stethoscope.scopes.Unit`; its model goes to ``run_dir/<unit.folder>`` (checkpoint,
    ``train_history.json`` and Ray Train's ``train/`` storage). None: the whole selection, saved in today's layout
    (``run_dir/model``, ``run_dir/train_history.json``). The unit's vocabulary is built from its training clips, so
    an all-types unit's ``group`` classes span every machine type (``fan/id_00``, ``pump/id_02`` ...).

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
    result = fit(
        method, config, train_ds, Scaling(num_workers=num_workers, use_gpu=use_gpu), inputs=spec,
        run_dir=unit_dir, seed=seed, resume=resume, held_out=held,
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


def unit_models(method_obj) -> list[tuple[Any, Any]]:
    """``[(unit, Method)]`` of a run: a list of (:class:`stethoscope.scopes.Unit`, Method) pairs is returned as it
    is; one Method is the model of the whole selection (``[(None, method)]``)."""
    if isinstance(method_obj, (list, tuple)):
        if not method_obj:
            raise StethoscopeError("no trained model to score with")
        return list(method_obj)
    return [(None, method_obj)]


def _per_unit(prepared: Prepared, models: list, part: str, fn) -> pd.DataFrame:
    """``fn(method, dataset)`` over each unit's clips of ``part`` ("train" / "test"), concatenated."""
    frames = [fn(m, prepared.features(part, unit=u)) for u, m in models]
    kept = [f for f in frames if not f.empty]
    return pd.concat(kept, ignore_index=True) if kept else frames[0]


def detect_stage(prepared: Prepared, run_dir: Path, method_obj, split: RunSplit
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The detector stage (issue 12 §2; ASDKit's extract + backend stages; TLDiffGAN Eq. 6): embed every clip, fit
    each candidate detector per group (and per domain on DCASE 2022+ data, scoring with the minimum) on the training
    embeddings, and choose one per machine type by mean(AUC, pAUC) on the split's validation clips.

    Artifacts in ``run_dir``: ``embeddings.parquet`` (every training and test clip: labels, ``role``, ``embedding``
    float32 [D]); ``detector_scores.parquet`` (every test clip, one ``variant:<detector>`` column per candidate);
    ``detect.json`` (per machine type: the candidates' validation AUC/pAUC, the choice and dropped candidates);
    ``detectors/<machine_type>.pt`` (the chosen :class:`~stethoscope.detectors.stage.GroupedDetector`'s state,
    ``torch.load(weights_only=True)``); ``umap_<machine_type>.png``. ``method_obj``: one Method, or the run's
    ``[(unit, Method)]`` (:func:`unit_models`): each unit's model embeds its own clips (an all_machine_types model
    embeds every type's; per_id models their own ID's), and detectors are still fitted and chosen per machine type.

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

    models = unit_models(method_obj)
    method_obj = models[0][1]
    candidates = parse_candidates(detector_candidates(method_obj))
    train = _with_roles(_per_unit(prepared, models, "train", embed_dataset), split, "training")
    test = _with_roles(_per_unit(prepared, models, "test", embed_dataset), split, "test")
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
    """Score every test and training clip with the run's model(s), and report on the held-out test clips.

    ``method_obj``: the run's Method, or its ``[(unit, Method)]`` (:func:`unit_models`; per_id and
    all_machine_types runs): each clip is scored by the model of its unit. Whatever the scope, every choice below is
    made per machine type, on that type's validation clips.

    1. The split must have been made for exactly the ingested clips (else DataError).
    2. A method with score variants (:func:`has_score_variants`: AEGAN-AD, EGBAD) gets its variant chosen per machine
       type on the split's validation clips (:func:`choose_score_variant`); the choice goes to
       ``score_variant.json`` (a run of several machine types: one record per type under ``machine_types``) and
       ``method_obj`` scores with it from then on. The models are never rewritten:
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

    models = unit_models(method_obj)
    first = models[0][1]
    split.check_clips(prepared.clips(), f"the ingested {prepared.machine_type} clips")
    selection: dict | None = None
    detection: dict | None = None
    train_scores = None
    if uses_detector_stage(first):
        scores, train_scores, detection = detect_stage(prepared, run_dir, models, split)
    elif has_score_variants(first):
        variants = _per_unit(prepared, models, "test", score_all_variants)
        if variants.empty:
            raise DataError(f"no test clip of {prepared.machine_type!r} could be scored (all skipped at ingest?)")
        variants = _with_roles(variants, split, "test")
        train_variants = _with_roles(_per_unit(prepared, models, "train", score_all_variants), split, "training")
        per_type = {}
        variants["score"] = float("nan")
        train_variants["score"] = float("nan")
        for mt in sorted(set(variants["machine_type"])):
            rows, train_rows = variants["machine_type"] == mt, train_variants["machine_type"] == mt
            sel = choose_score_variant(variants[rows], split, configured=first.score_variant)
            if sel["reason"]:
                log.warning("%s: %s", mt, sel["reason"])
            column = VARIANT_COLUMN_PREFIX + sel["selected"]
            variants.loc[rows, "score"] = variants.loc[rows, column]
            train_variants.loc[train_rows, "score"] = train_variants.loc[train_rows, column]
            for unit, m in models:
                if unit is None or mt in unit.machine_types:
                    m.set_score_variant(sel["selected"])
            per_type[mt] = sel
            log.info("%s: score variant %r (%s)", mt, sel["selected"],
                     "chosen on %d validation clips" % sel["n_validation"] if not sel["reason"] else "kept")
        selection = next(iter(per_type.values())) if len(per_type) == 1 else {"machine_types": per_type}
        variants.to_parquet(run_dir / "score_variants.parquet")
        runs.write_score_variant(run_dir, selection)
        scores = variants[[c for c in (*META, "score", "role") if c in variants.columns]]
        train_scores = train_variants[[c for c in (*META, "score", "role") if c in train_variants.columns]]
    else:
        scores = _per_unit(prepared, models, "test", score_dataset)
        if scores.empty:
            raise DataError(f"no test clip of {prepared.machine_type!r} could be scored (all skipped at ingest?)")
        scores = _with_roles(scores, split, "test")
    scores.to_parquet(run_dir / runs.SCORES)
    if train_scores is None:
        train_scores = _with_roles(_per_unit(prepared, models, "train", score_dataset), split, "training")
    train_scores.to_parquet(run_dir / runs.TRAIN_SCORES)
    reported = scores[scores["path"].isin(set(split.reported()))]
    clips = covers(split, reported)
    if len(models) == 1 and models[0][0] is None:
        model_ref: Any = str(run_dir / runs.MODEL_DIR)
    else:
        model_ref = {u.name: str(run_dir / u.folder) for u, _ in models}
    metrics = evaluate(
        reported,
        run_dir,
        extra={
            "clips": clips,
            "method": first.name,
            "seed": meta.get("seed"),
            "input_spec_hashes": {k: v.hash() for k, v in first.inputs.items()},
            "model": model_ref,
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
    machine_type: str | list[str] = "slider",
    machine_ids: list[str] | None = None,
    method: str = "autoencoder",
    config: dict | None = None,
    scope: str | None = None,
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
    IDs/sections) or, in the all_machine_types scope, several at once; then publish the run to ``registry``, one
    one-member bundle per machine type (so the demo leaves a servable registry behind).

    Args:
        data_root: a DCASE tree (2020 or 2021-2024 layout).
        machine_type / machine_ids: what to train and evaluate; IDs as two-digit strings ("00"). For 2021+ data
            the same list selects sections. Several machine types only in the all_machine_types scope.
        method / config: a registered method and Config overrides (e.g. ``{"epochs": 20}``).
        scope: ``per_id`` | ``per_machine_type`` | ``all_machine_types`` (:mod:`stethoscope.scopes`); default: the
            method's ``default_scope``. One model is trained per training unit: per ID / section (``models/<type>/
            <id_XX>/``), for the machine type (``model/``), or over every selected type (``models/all/``).
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
        ConfigError: unknown method, bad config or feature parameter, no preset row for the machine type, an
            unknown scope or one the method cannot train in, several machine types outside all_machine_types.
    """
    from stethoscope.evaluation import format_table
    from stethoscope.scopes import resolve_scope

    scope = resolve_scope(method, scope)
    types = [machine_type] if isinstance(machine_type, str) else list(dict.fromkeys(machine_type))
    if len(types) > 1 and scope != "all_machine_types":
        raise ConfigError(f"a {scope} run covers one machine type, got {types}: run each type on its own (jobs/"
                          "pipeline.py does), or use scope all_machine_types")
    if preset and len(types) > 1:
        raise ConfigError("--preset gives per-machine-type values; a run over several machine types cannot use one")
    cfg, preset_rec = resolve_config(method, types[0], config, preset)
    spec = input_specs_for(method, cfg, feature_overrides)
    prepared = ingest_stage(
        data_root, spec, machine_type=types, machine_ids=machine_ids, store=store, lenient=lenient
    )
    split = split_stage(prepared, validation=validation,
                        train_validation_fraction=float(getattr(cfg, "val_fraction", 0.0)), split_from=split_from)
    units = scope_units(prepared, scope)
    run_dir = new_run_dir(runs_root, method, prepared.machine_type)
    log.info("run folder: %s (scope %s: %d training unit(s))", run_dir, scope, len(units))
    manifest = {
        "stage": "pipeline",
        "data_root": str(Path(data_root).resolve()),
        "machine_type": prepared.machine_type,
        "machine_types": prepared.machine_types,
        "scope": scope,
        "units": [u.to_dict() for u in units],
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
    train_kw = dict(method=method, config=cfg, spec=spec, split=split, seed=seed, num_workers=num_workers,
                    use_gpu=use_gpu)
    if scope == "per_machine_type":  # today's layout: model/ (old runs, bundles and tools read it)
        result = train_stage(prepared, run_dir, **train_kw)
        fitted, models, checkpoints = {units[0].name: result}, result.method, result.checkpoint_path
    else:
        fitted = train_units(prepared, run_dir, units, **train_kw)
        models = [(u, fitted[u.name].method) for u in units]
        checkpoints = {name: r.checkpoint_path for name, r in fitted.items()}
        result = next(iter(fitted.values()))
    metrics, scores = evaluate_stage(prepared, run_dir, models, {**result.meta, "seed": seed}, split,
                                     {"checkpoint": checkpoints, "scope": scope})
    manifest.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), checkpoint=checkpoints,
                    model=str(run_dir / runs.MODEL_DIR) if scope == "per_machine_type" else
                    {u.name: str(run_dir / u.folder) for u in units})
    storage.write_json(str(run_dir / runs.RUN_JSON), manifest)
    table, extra = format_table(metrics), {}
    if registry:
        from stethoscope.publishing import format_publish_table, publish_runs

        try:
            published = publish_runs([run_dir], registry, out_dir=run_dir / "publish")
        except StethoscopeError as exc:
            log.warning("%s: not published: %s", prepared.machine_type, exc)
            extra["publish_error"] = str(exc)
            manifest["published"] = {"registry": str(registry), "error": str(exc)}
            table += f"\n\nnot published to {registry}: {exc}"
        else:
            extra["publish"] = published[0] if len(published) == 1 else published
            extra["publish_by_type"] = {p.machine_type: p for p in published}
            records = [{"registry": str(registry), "machine_type": p.machine_type, "scope": p.scope,
                        "version": p.version} for p in published]
            manifest["published"] = records[0] if len(records) == 1 else records
            table += "\n\npublished to " + str(registry) + ":\n" + format_publish_table(published)
        storage.write_json(str(run_dir / runs.RUN_JSON), manifest)
    return PipelineResult(str(run_dir), metrics, scores, result.checkpoint_path, table, extra)


def scope_units(prepared: Prepared, scope: str) -> list:
    """The training units (:func:`stethoscope.scopes.training_units`) of ``prepared``'s training clips."""
    from stethoscope.scopes import training_units

    clips = prepared.clips()
    return training_units(scope, clips[clips["split"] == "train"])


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
    "scope_units",
    "train_stage",
    "train_units",
    "unit_models",
]
