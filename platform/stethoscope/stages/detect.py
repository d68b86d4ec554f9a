"""Detector stage (DESIGN.md step 5; issue 12 §2): embed every clip, fit the candidate detectors per group on the
training embeddings, and choose one per machine type on the split's validation clips."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from stethoscope import runs, storage
from stethoscope.errors import DataError
from stethoscope.splits import RunSplit
from stethoscope.stages.ingest import Prepared
from stethoscope.stages.score import (VARIANT_COLUMN_PREFIX, VARIANT_CRITERION, choose_score_variant, per_unit,
                                      unit_models, with_roles)

log = logging.getLogger(__name__)


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
    ``torch.load(weights_only=True)``); ``umap_<machine_type>.png``. ``method_obj``: one Method, or the run's
    ``[(unit, Method)]`` (:func:`~stethoscope.stages.score.unit_models`): each unit's model embeds its own clips
    (an all_machine_types model embeds every type's; per_id models their own ID's), and detectors are still fitted
    and chosen per machine type.

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
    train = with_roles(per_unit(prepared, models, "train", embed_dataset), split, "training")
    test = with_roles(per_unit(prepared, models, "test", embed_dataset), split, "test")
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


__all__ = ["detect_stage", "detector_candidates", "uses_detector_stage"]
