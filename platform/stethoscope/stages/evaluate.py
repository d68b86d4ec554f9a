"""Evaluate stage (DESIGN.md step 6): score every test and training clip with the run's model(s) and report on the
held-out test clips (:func:`stethoscope.evaluation.evaluate`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from stethoscope import runs
from stethoscope.errors import DataError
from stethoscope.splits import RunSplit
from stethoscope.stages.detect import detect_stage, uses_detector_stage
from stethoscope.stages.ingest import Prepared
from stethoscope.stages.score import (VARIANT_COLUMN_PREFIX, choose_score_variant, has_score_variants, per_unit,
                                      score_all_variants, unit_models, with_roles)

log = logging.getLogger(__name__)


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


def evaluate_stage(prepared: Prepared, run_dir: Path, method_obj, meta: dict, split: RunSplit,
                   extra: dict | None = None):
    """Score every test and training clip with the run's model(s), and report on the held-out test clips.

    ``method_obj``: the run's Method, or its ``[(unit, Method)]`` (:func:`~stethoscope.stages.score.unit_models`;
    per_id and all_machine_types runs): each clip is scored by the model of its unit. Whatever the scope, every
    choice below is made per machine type, on that type's validation clips.

    1. The split must have been made for exactly the ingested clips (else DataError).
    2. A method with score variants (:func:`~stethoscope.stages.score.has_score_variants`: AEGAN-AD, EGBAD) gets
       its variant chosen per machine type on the split's validation clips
       (:func:`~stethoscope.stages.score.choose_score_variant`); the choice goes to
       ``score_variant.json`` (a run of several machine types: one record per type under ``machine_types``) and
       ``method_obj`` scores with it from then on. The models are never rewritten:
       :func:`stethoscope.runs.load_model` applies the choice when a later stage loads the run.
       An embedding method that names detector candidates (:func:`~stethoscope.stages.detect.uses_detector_stage`)
       is scored by the detector stage instead (:func:`~stethoscope.stages.detect.detect_stage`: the detector is
       chosen per machine type on the validation clips).
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
        variants = per_unit(prepared, models, "test", score_all_variants)
        if variants.empty:
            raise DataError(f"no test clip of {prepared.machine_type!r} could be scored (all skipped at ingest?)")
        variants = with_roles(variants, split, "test")
        train_variants = with_roles(per_unit(prepared, models, "train", score_all_variants), split, "training")
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
        scores = per_unit(prepared, models, "test", score_dataset)
        if scores.empty:
            raise DataError(f"no test clip of {prepared.machine_type!r} could be scored (all skipped at ingest?)")
        scores = with_roles(scores, split, "test")
    scores.to_parquet(run_dir / runs.SCORES)
    if train_scores is None:
        train_scores = with_roles(per_unit(prepared, models, "train", score_dataset), split, "training")
    train_scores.to_parquet(run_dir / runs.TRAIN_SCORES)
    reported = scores[scores["path"].isin(set(split.reported()))]
    clips = covers(split, reported)
    if len(models) == 1 and models[0][0] is None:  # location_of: the URI of a run staged for object storage
        model_ref: Any = runs.location_of(run_dir / runs.MODEL_DIR)
    else:
        model_ref = {u.name: runs.location_of(run_dir / u.folder) for u, _ in models}
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
            **({"notes": list(detection["notes"])} if detection and detection.get("notes") else {}),
            **(extra or {}),
        },
    )
    return metrics, scores



#: Folder of a run's anomaly-map figures (``jobs/evaluate.py --maps N``).
MAPS_DIR = "maps"


def write_anomaly_maps(prepared: Prepared, run_dir: Path, method_obj, count: int,
                       scores: pd.DataFrame | None = None) -> list[Path]:
    """Anomaly-map figures for the first ``count`` test clips of each machine type (anomalies and normals
    alternating, in file-name order), written to ``<run>/maps/<machine_type>/<file stem>.png``.

    A method with ``localization(batch)`` (TLDiffGAN) gets its panels (Fig. 3: reconstruction, training-mean log-mel,
    difference map); any other method that can localize gets its ``localize`` map. The title gives the clip's label
    and, from ``scores`` (the run's scores.parquet), its score.

    Returns:
        the written paths (none for a method that cannot localize).
    Raises:
        ValueError: count < 1.
    """
    import numpy as np

    from stethoscope.evaluation.plots import plot_anomaly_map
    from stethoscope.scoring import clip_batches

    if count < 1:
        raise ValueError(f"write_anomaly_maps: count = {count}; expected >= 1")
    written: list[Path] = []
    by_path = scores.set_index("path")["score"].to_dict() if scores is not None and "score" in scores else {}
    for unit, method in unit_models(method_obj):
        if not method.can_localize:
            log.info("%s cannot localize: no anomaly maps", method.name)
            continue
        spec = next((s for s in method.inputs.values() if hasattr(s, "hop_length")), None)
        frame_s = spec.hop_length / spec.sample_rate if spec is not None else None
        # choose the clips from the metadata first, then read only their features
        meta_all = prepared.clips()
        meta_all = meta_all[(meta_all["split"] == "test")
                            & (unit.mask(meta_all) if unit is not None else True)].sort_values("path")
        chosen_paths: list[str] = []
        for _, mine in meta_all.groupby("machine_type", sort=True):
            anomalies = mine.loc[mine["label"] == "anomaly", "path"].tolist()
            others = mine.loc[mine["label"] != "anomaly", "path"].tolist()
            order = [p for pair in zip(anomalies, others) for p in pair]
            order += anomalies[len(order) // 2:] + others[len(order) // 2:]
            chosen_paths += order[:count]
        if not chosen_paths:
            continue
        clips = []
        for tensors, meta in clip_batches(prepared.scoring_features("test", chosen_paths, unit=unit).iter_batches(
                batch_size=16, batch_format="numpy"), method):
            for i in range(len(meta["path"])):
                clips.append(({k: v[i:i + 1] for k, v in tensors.items()}, {k: v[i] for k, v in meta.items()}))
        rank = {p: i for i, p in enumerate(chosen_paths)}
        clips.sort(key=lambda c: rank[c[1]["path"]])
        method.eval()
        for mt in sorted({m["machine_type"] for _, m in clips}):
            out_dir = run_dir / MAPS_DIR / mt
            out_dir.mkdir(parents=True, exist_ok=True)
            for tensors, meta in (c for c in clips if c[1]["machine_type"] == mt):
                batch = {k: v.to(method.device) for k, v in tensors.items()}
                if hasattr(method, "localization"):
                    panels = {k: v[0].numpy() for k, v in method.localization(batch).items()}
                    panels = {"reconstruction": panels["reconstruction"], "training mean": panels["training_mean"],
                              "difference |x̂ − μ|": panels["difference"]}
                else:
                    panels = {"anomaly map": method.localize(batch)[0].detach().cpu().numpy()}
                score = by_path.get(meta["path"])
                title = f"{meta['file_name']} — {meta.get('label') or 'unlabelled'}"
                if score is not None and np.isfinite(score):
                    title += f", score {score:.4g}"
                path = out_dir / (Path(meta["file_name"]).stem + ".png")
                plot_anomaly_map(path, panels, title=title, frame_seconds=frame_s)
                written.append(path)
    return written


__all__ = ["MAPS_DIR", "covers", "evaluate_stage", "write_anomaly_maps"]
