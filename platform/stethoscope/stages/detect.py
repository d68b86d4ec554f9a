"""Detector stage (DESIGN.md step 5; issue 12 §2): embed every clip, fit the candidate detectors per group on the
training embeddings, and choose one per machine type on the split's validation clips."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stethoscope import runs, storage
from stethoscope.errors import DataError
from stethoscope.splits import RunSplit
from stethoscope.stages.ingest import Prepared
from stethoscope.stages.score import (VARIANT_COLUMN_PREFIX, VARIANT_CRITERION, choose_score_variant, per_unit,
                                      unit_models, with_roles)

log = logging.getLogger(__name__)


def detector_candidates(method_obj) -> list:
    """The detector candidates an embedding method's config names (``detectors``; empty → no detector stage).
    The entry :data:`~stethoscope.detectors.stage.OWN_SCORE` ("method") is the method's own ``score()``."""
    return list(getattr(method_obj.config, "detectors", None) or ())


def own_score_reason(models: list, machine_type: str) -> str | None:
    """Why the method's own score cannot be a candidate for ``machine_type`` (None when it can): the reason a model
    of that type gives in ``score_undefined_reason`` (e.g. a machine-ID classifier trained on one ID, whose
    −log p(y|x) is constant)."""
    for unit, m in models:
        if unit is None or machine_type in unit.machine_types:
            reason = getattr(m, "score_undefined_reason", None)
            if reason:
                return reason
    return None


def uses_detector_stage(method_obj) -> bool:
    """True for a method whose scores come from the detector stage: it has ``embed()`` and names candidates."""
    return bool(method_obj.can_embed and detector_candidates(method_obj))


def detect_stage(prepared: Prepared, run_dir: Path, method_obj, split: RunSplit
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The detector stage (issue 12 §2; ASDKit's extract + backend stages; TLDiffGAN Eq. 6): embed every clip, fit
    each candidate detector per group (and per domain on DCASE 2022+ data, scoring with the minimum) on the training
    embeddings, and choose one per machine type by mean(AUC, pAUC) on the split's validation clips. When the method's
    ``detectors`` name :data:`~stethoscope.detectors.stage.OWN_SCORE` ("method"), its own ``score()`` (e.g. −log p of
    a machine-ID classifier) is one more candidate, column ``variant:method``; a model that says its score is
    undefined (``score_undefined_reason``: one machine ID) has it dropped with that reason. When it is chosen no
    detector file is written, so publishing and serving score with the method itself.

    Artifacts in ``run_dir``: ``embeddings.parquet`` (every training and test clip: labels, ``role``, ``embedding``
    float32 [D]); ``detector_scores.parquet`` (every test clip, one ``variant:<detector>`` column per candidate);
    ``detect.json`` (per machine type: the candidates' validation AUC/pAUC, the choice and dropped candidates);
    ``detectors/<machine_type>.pt`` (the chosen :class:`~stethoscope.detectors.stage.GroupedDetector`'s state,
    ``torch.load(weights_only=True)``; none when the own score is chosen); ``umap_<machine_type>.png``.
    ``method_obj``: one Method, or the run's ``[(unit, Method)]`` (:func:`~stethoscope.stages.score.unit_models`):
    each unit's model embeds its own clips (an all_machine_types model embeds every type's; per_id models their own
    ID's), and detectors are still fitted and chosen per machine type.

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
    from stethoscope.detectors.stage import OWN_SCORE, fit_candidates, parse_candidates, split_own_score
    from stethoscope.evaluation.plots import plot_umap
    from stethoscope.scoring import META, embed_dataset, predict_domain_dataset, score_dataset

    models = unit_models(method_obj)
    method_obj = models[0][1]
    own, names = split_own_score(detector_candidates(method_obj))
    candidates = parse_candidates(names) if names else []
    train = with_roles(per_unit(prepared, models, "train", embed_dataset), split, "training")
    test = with_roles(per_unit(prepared, models, "test", embed_dataset), split, "test")
    if test.empty:
        raise DataError(f"no test clip of {prepared.machine_type!r} could be embedded (all skipped at ingest?)")
    emb = pd.concat([train, test], ignore_index=True)
    emb.to_parquet(run_dir / runs.EMBEDDINGS)
    (run_dir / runs.DETECTORS_DIR).mkdir(exist_ok=True)
    keep = [c for c in (*META, "role") if c in test.columns]
    if own and any(not getattr(m, "score_undefined_reason", None) for _, m in models):
        # the method's own score() of every clip, by path (aligned with the embeddings below)
        own_test = per_unit(prepared, models, "test", score_dataset).set_index("path")["score"]
        own_train = per_unit(prepared, models, "train", score_dataset).set_index("path")["score"]
    else:
        own_test = own_train = None
    # AITHU's domain classifier (a per-machine-type switch): each clip's predicted domain, by path
    with_domain = [(u, m) for u, m in models if getattr(m, "predicts_domain", False)]
    predicted = per_unit(prepared, with_domain, "test", predict_domain_dataset).set_index("path")["domain_pred"] \
        if with_domain else None
    labels = [OWN_SCORE] * own + [c.label for c in candidates]
    record: dict[str, Any] = {"candidates": labels, "criterion": VARIANT_CRITERION, "machine_types": {}}
    test_frames, train_frames = [], []
    for mt in sorted(set(train["machine_type"])):
        tr, te = train[train["machine_type"] == mt], test[test["machine_type"] == mt]
        if te.empty:
            continue
        keys_tr = [group_key(mt, a, b) for a, b in zip(tr["machine_id"], tr["section"])]
        keys_te = [group_key(mt, a, b) for a, b in zip(te["machine_id"], te["section"])]
        domains = tr["domain"].tolist() if "domain" in tr.columns else None
        dropped: dict[str, str] = {}
        own_here = own and not (reason := own_score_reason(models, mt))
        if own and not own_here:
            dropped[OWN_SCORE] = reason
        fitted: list = []
        if candidates:
            try:
                fitted, more = fit_candidates(candidates, np.stack(tr["embedding"].to_list()), keys_tr, domains)
            except DataError as exc:  # no detector could be fitted: the own score may still be chosen
                if not own_here:
                    raise
                fitted, more = [], {"detectors": str(exc)}
            dropped.update(more)
        if not (fitted or own_here):
            raise DataError(f"{mt}: no score variant to choose from: " + "; ".join(f"{k}: {v}" for k, v in
                                                                                    dropped.items()))
        x_te = np.stack(te["embedding"].to_list())
        table = te[keep].copy()
        if own_here:
            table[VARIANT_COLUMN_PREFIX + OWN_SCORE] = own_test.loc[table["path"]].to_numpy()
        pred = None
        if predicted is not None and te["path"].isin(predicted.index).any():
            pred = te["path"].map(predicted).tolist()
            table["domain_pred"] = pred
        for det in fitted:
            table[VARIANT_COLUMN_PREFIX + det.label] = det.decision_function(x_te, keys_te, pred)
        notes = input_notes(mt, tr, te)
        domain_record = None
        if pred is not None:
            domain_record = domain_classifier_record(te, pred, fitted[0].missing_domains(keys_te, pred)
                                                     if fitted else None)
            if domain_record.get("note"):
                notes.append(domain_record["note"])
        for note in notes:
            log.warning("%s", note)
        available = [OWN_SCORE] * own_here + [d.label for d in fitted]
        selection = choose_score_variant(table, split, configured=available[0])
        if selection["reason"]:
            log.warning("%s: %s", mt, selection["reason"])
        table["score"] = table[VARIANT_COLUMN_PREFIX + selection["selected"]]
        tr_scores = tr[[c for c in keep if c in tr.columns]].copy()
        det_file = run_dir / runs.DETECTORS_DIR / f"{mt}.pt"
        if selection["selected"] == OWN_SCORE:
            # no detector file: publishing and serving then score with the method itself (parity by construction)
            det_file.unlink(missing_ok=True)
            tr_scores["score"] = own_train.loc[tr_scores["path"]].to_numpy()
        else:
            chosen = fitted[[d.label for d in fitted].index(selection["selected"])]
            torch.save(chosen.state_dict(), det_file)
            tr_scores["score"] = chosen.train_scores_
        test_frames.append(table)
        train_frames.append(tr_scores)
        record["machine_types"][mt] = {**selection, "dropped": dropped,
                                       "file": None if selection["selected"] == OWN_SCORE else
                                       f"{runs.DETECTORS_DIR}/{mt}.pt",
                                       **({"domain_classifier": domain_record} if domain_record else {}),
                                       "notes": notes}
        record.setdefault("notes", []).extend(notes)
        log.info("%s: score variant %r chosen on %d validation clip(s)", mt, selection["selected"],
                 selection["n_validation"])
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


def input_notes(machine_type: str, train, test) -> list[str]:
    """The run report's notes on DCASE 2022+ inputs the detector stage handles by a documented fallback (issue 15,
    "Bad input"), one line each:

    - a section with no training clip of a domain its test clips have (e.g. no target-domain training clip): those
      test clips are scored against the section's other domain detector(s) (the minimum over the fitted domains);
    - an attribute value in the test clips that no training clip has: the scores come from the detectors on the
      embeddings, which do not read attributes, so the clips are scored as usual (MHCR flags the value for its
      attribute heads instead of refusing the clip).
    """
    from stethoscope.data.labels import attribute_pairs, group_key

    notes: list[str] = []
    if "domain" in train.columns and "domain" in test.columns:
        def domains(frame) -> dict[str, set]:
            out: dict[str, set] = {}
            for a, b, d in zip(frame["machine_id"], frame["section"], frame["domain"]):
                if isinstance(d, str) and d:
                    out.setdefault(group_key(machine_type, a, b), set()).add(d)
            return out

        have, need = domains(train), domains(test)
        for group in sorted(need):
            for d in sorted(need[group] - have.get(group, set())):
                n = int(sum(group_key(machine_type, a, b) == group and dom == d
                            for a, b, dom in zip(test["machine_id"], test["section"], test["domain"])))
                fitted = sorted(have.get(group, set())) or ["none"]
                notes.append(f"{group}: no {d}-domain training clip; its {n} {d}-domain test clip(s) are scored "
                             f"against the detector(s) of {fitted} (the minimum over the fitted domains)")
    if "attributes" in train.columns and "attributes" in test.columns:
        seen: dict[str, set] = {}
        for v in train["attributes"]:
            for k, x in attribute_pairs(v):
                seen.setdefault(k, set()).add(x)
        unseen: dict[tuple[str, str], int] = {}
        for v in test["attributes"]:
            for k, x in attribute_pairs(v):
                if x not in seen.get(k, set()):
                    unseen[(k, x)] = unseen.get((k, x), 0) + 1
        for (k, x), n in sorted(unseen.items()):
            known = sorted(seen.get(k, set()))
            notes.append(f"{machine_type}: attribute {k}={x} in {n} test clip(s) is not in the training clips "
                         f"(known: {known or 'none'}); the detectors score these clips as usual (they read the "
                         "embeddings, not the attributes)")
    return notes


def domain_classifier_record(test, predicted: list, missing) -> dict:
    """``detect.json``'s ``domain_classifier`` entry of a machine type: the accuracy of the predicted domains on the
    test clips whose domain the file names give (reported only, never used to choose anything), and how many clips
    fell back to the minimum because their predicted domain has no detector in their section."""
    truth = test["domain"].tolist() if "domain" in test.columns else [None] * len(predicted)
    known = [(t, p) for t, p in zip(truth, predicted) if isinstance(t, str) and t]
    out: dict = {"n_test": len(predicted),
                 "predicted": {d: int(sum(p == d for p in predicted)) for d in sorted(set(map(str, predicted)))}}
    if known:
        out["accuracy_test"] = float(np.mean([t == p for t, p in known]))
        out["n_with_domain"] = len(known)
    if missing is not None:
        out["fallback_min"] = int(np.sum(missing))
        if out["fallback_min"]:
            out["note"] = (f"{test['machine_type'].iloc[0]}: {out['fallback_min']} test clip(s) were predicted to "
                           "come from a domain without a detector in their section; they are scored with the minimum "
                           "over the section's detectors")
    return out


__all__ = ["detect_stage", "detector_candidates", "domain_classifier_record", "input_notes", "own_score_reason",
           "uses_detector_stage"]
