"""Publishing: build bundles from trained runs and write them to the store (DESIGN.md data-flow step 8).

:func:`publish_runs` picks, per machine type, the best ensemble of the given runs on the validation clips of their
shared ``validation_split.json`` (members and convex weights, :mod:`stethoscope.evaluation.ensemble`), fits the
decision threshold on the training normals (:mod:`stethoscope.evaluation.threshold`), and writes one bundle with
:func:`write_bundle`. It reads what each run stored (``scores.parquet``, ``train_scores.parquet``, ``model/`` or
``models/<unit>/``, ``detectors/``); it never re-ingests or re-scores a clip, and the test labels choose nothing.

Training scopes (:mod:`stethoscope.scopes`) all publish one bundle per machine type. A member from an
all_machine_types run is that run's one model (its weights copied into every type's bundle, so each bundle stays
self-contained and hash-checked; the manifest's ``training_scopes`` and the member's ``unit`` say where it came from)
plus the type's own detector. A member from a per_id run holds one model per group: ``group_models`` ({``id_XX`` /
``section_XX``: relative folder}), and a request is scored by the model of its group.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import torch

from stethoscope import storage
from stethoscope.data.features import input_spec_to_dict, input_specs_to_dict
from stethoscope.data.labels import group_of, id_field
from stethoscope.errors import DataError, StethoscopeError
from stethoscope.evaluation.ensemble import DEFAULT_MAX_MEMBERS, DEFAULT_STEP, Ensemble, fit_ensemble
from stethoscope.evaluation.threshold import DEFAULT_QUANTILE, GammaThreshold
from stethoscope.runs import location_of
from stethoscope.publishing.store import (
    FORMAT,
    FORMAT_VERSION,
    SCOPE_ALL,
    RegistryError,
    commit_bundle,
    file_entry,
    new_version,
    rel,
    root_uri,
    safe_name,
    validate_name,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# writing a bundle
# ---------------------------------------------------------------------------------------------------------------
def write_bundle(
    root: str | os.PathLike,
    *,
    machine_type: str,
    members: Sequence[tuple[str, str | os.PathLike]],
    ensemble: Ensemble,
    threshold: GammaThreshold,
    metrics: dict[str, Any],
    scope: str = SCOPE_ALL,
    dataset: str = "dcase2020",
    score_variants: dict[str, str] | None = None,
    detectors: dict[str, str | os.PathLike] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict:
    """Write a new bundle version and point ``CURRENT`` at it. Returns the manifest.

    Args:
        root: registry root (folder or URI).
        members: ``(name, checkpoint folder)`` pairs in ensemble order; each folder holds ``state.pt`` + ``meta.json``
            (:mod:`stethoscope.checkpoint`). The files are copied byte for byte and hashed. A per_id run's member
            gives ``{group: checkpoint folder}`` (``id_XX`` / ``section_XX``) instead: one model per group, copied to
            ``members/<name>/<group>/`` and listed in the entry's ``group_models``.
        ensemble / threshold: fitted on the members' scores (:func:`stethoscope.evaluation.ensemble.fit_ensemble`,
            :func:`stethoscope.evaluation.threshold.fit_gamma_threshold`).
        metrics: JSON-serializable (e.g. ``{"validation": {...}, "test_heldout": {...}}``).
        scope: ``all`` or ``id_XX`` / ``section_XX``. dataset: "dcase2020" (machine_id) or "dcase2021+" (section).
        score_variants: member name → the score variant it serves with (chosen on validation by its run,
            ``score_variant.json``); recorded per member and applied by :func:`load_bundle`.
        detectors: member name → the detector file its run's detector stage chose for this machine type
            (``detectors/<machine_type>.pt``); copied as ``members/<name>/detector.pt``, hashed, and used by
            :meth:`Bundle.score_waveforms` on the member's embeddings.
        A member whose method holds a frozen pretrained encoder (``encoder_ref``, e.g. TLDiffGAN's waveform branch)
        gets an ``encoder`` entry {name, path, SHA-256}; the encoder's weights are not in the bundle, and serving
        loads them from that path, refusing other files.
    Raises:
        RegistryError: unsafe names, members that do not match the ensemble, checkpoints that do not load with
            ``weights_only=True``, or members at different sample rates.
    """
    from stethoscope import checkpoint as ckpt_io
    from stethoscope.runs import apply_score_variant, git_commit

    root = root_uri(root)
    validate_name(machine_type, "machine type")
    validate_name(scope, "scope")
    names = [validate_name(n, "member name") for n, _ in members]
    if names != list(ensemble.members):
        raise RegistryError(f"members {names} do not match the ensemble's {list(ensemble.members)}")
    version = new_version()
    entries, specs, rates = [], [], set()
    with tempfile.TemporaryDirectory(prefix="stethoscope-bundle-") as tmp:
        stage = Path(tmp)
        files: dict[str, dict[str, Any]] = {}
        for (name, folder), weight, st in zip(members, ensemble.weights, ensemble.standardizers):
            variant = (score_variants or {}).get(name)
            by_group = ({validate_name(g, "group"): Path(f) for g, f in sorted(folder.items())}
                        if isinstance(folder, dict) else {None: Path(folder)})
            dest = stage / "members" / name
            dest.mkdir(parents=True)
            for g, src in by_group.items():
                try:
                    method, meta = ckpt_io.load(src)  # weights_only=True: proves the checkpoint is safe to serve
                    apply_score_variant(method, {"selected": variant} if variant else None)
                except StethoscopeError as exc:
                    raise RegistryError(f"member {name!r}: {exc}") from None
                gdest = dest if g is None else dest / g
                gdest.mkdir(exist_ok=True)
                for fname in (ckpt_io.STATE_FILE, ckpt_io.META_FILE):
                    shutil.copyfile(src / fname, gdest / fname)
                    files[rel("members", name, *([g] if g else []), fname)] = file_entry(gdest / fname)
            folder = next(iter(by_group.values()))
            det_src = (detectors or {}).get(name)
            det_entry = None
            if det_src is not None:
                from stethoscope.detectors.stage import GroupedDetector

                try:  # weights_only=True: proves the detector state is safe to serve
                    det = GroupedDetector.from_state(torch.load(det_src, map_location="cpu", weights_only=True))
                except Exception as exc:  # noqa: BLE001
                    raise RegistryError(f"member {name!r}: detector {det_src} cannot be loaded "
                                        f"({type(exc).__name__}: {exc})") from None
                shutil.copyfile(det_src, dest / "detector.pt")
                det_entry = {"file": "detector.pt", "label": det.label, "groups": sorted(det.fitted)}
                files[rel("members", name, "detector.pt")] = file_entry(dest / "detector.pt")
            specs.extend(method.inputs.values())
            rates.update(int(sp.sample_rate) for sp in method.inputs.values())
            entries.append({
                "name": name,
                "method": method.name,
                "path": rel("members", name),
                "weight": float(weight),
                "standardizer": st.to_dict(),
                "inputs": input_specs_to_dict(method.inputs),
                "input_spec_hashes": {k: v.hash() for k, v in method.inputs.items()},
                "groups": list(method.vocab.group),
                "labels": list(method.labels),
                "can_localize": bool(method.can_localize),
                "source": location_of(folder) if None in by_group else {
                    g: location_of(f) for g, f in by_group.items()},
                **({"group_models": {g: rel("members", name, g) for g in by_group}} if None not in by_group else {}),
                **({"unit": meta["unit"]} if isinstance(meta.get("unit"), dict) else {}),
                "seed": meta.get("seed"),
                **({"score_variant": variant} if variant else {}),
                **({"detector": det_entry} if det_entry else {}),
                # a frozen pretrained encoder is referenced (name, path, SHA-256), never copied (issue 14)
                **({"encoder": method.encoder_ref.to_dict()} if getattr(method, "encoder_ref", None) else {}),
            })
        if len(rates) != 1:
            raise RegistryError(f"bundle members' inputs have different sample rates {sorted(rates)} Hz; serve "
                                "decodes a request at one rate")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "machine_type": machine_type,
            "scope": scope,
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git_commit": git_commit(),
            "dataset": dataset,
            "id_field": id_field(dataset),
            "sample_rate": rates.pop(),
            "input_specs": sorted({sp.hash(): input_spec_to_dict(sp) for sp in specs}.items()),
            "members": entries,
            "ensemble": ensemble.to_dict(),
            "threshold": threshold.to_dict(),
            "metrics": metrics,
            "files": files,
            **(extra or {}),
        }
        written = commit_bundle(root, stage, manifest)
    log.info("published %s/%s version %s (%d member(s)) to %s", machine_type, scope, version, len(entries), root)
    return written



# ---------------------------------------------------------------------------------------------------------------
# publishing trained runs
# ---------------------------------------------------------------------------------------------------------------
def _clip_seconds(paths: Iterable[str]) -> dict[str, float]:
    """``{"clip_seconds": median duration (s)}`` of the runs' scored clips, from their WAV headers: the window
    serving scores long recordings with (issue 18). Empty when no clip can be read here (e.g. clips in a bucket)."""
    import soundfile as sf

    seconds = []
    for path in list(paths)[:64]:
        try:
            info = sf.info(str(path))
        except Exception:  # noqa: BLE001 - a clip that moved or lives in a bucket: serving falls back to its default
            continue
        seconds.append(info.frames / info.samplerate)
    return {"clip_seconds": round(float(np.median(seconds)), 3)} if seconds else {}


@dataclass
class RunInfo:
    """A complete, consistent run folder: ``run.json``, ``model/``, ``validation_split.json`` (the file run.json
    recorded), ``scores.parquet`` and ``train_scores.parquet`` whose roles match the split (:func:`read_run`)."""

    path: Path
    manifest: dict
    meta: dict
    split: Any = None  # stethoscope.splits.RunSplit
    name: str = ""

    @property
    def machine_type(self) -> str:
        """The run's machine type, or ``all`` for a run over several (see :attr:`machine_types`)."""
        return self.manifest["machine_type"]

    @property
    def machine_types(self) -> list[str]:
        """Every machine type the run covers (one, or several for an all_machine_types run)."""
        from stethoscope.runs import run_machine_types

        return run_machine_types(self.manifest)

    @property
    def scope(self) -> str:
        """The run's training scope (runs made before scopes: per_machine_type)."""
        return self.manifest.get("scope", "per_machine_type")

    def member_models(self, machine_type: str) -> Path | dict[str, Path]:
        """The model(s) that score ``machine_type`` in this run: one checkpoint folder (per_machine_type,
        all_machine_types), or ``{group: folder}`` for a per_id run (one model per ID / section)."""
        from stethoscope.runs import run_units

        units = [u for u in run_units(self.manifest) if machine_type in u.machine_types]
        if not units:
            raise RegistryError(f"run {self.path.name} has no model for machine type {machine_type!r}")
        if any(u.group is not None for u in units):
            return {u.group: self.path / u.folder for u in units}
        return self.path / units[0].folder


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    """Read a run folder written by the pipeline / train + evaluate jobs, and check its files against its split
    (:func:`stethoscope.runs.verify_run`). A run given as a URI (``s3://bucket/runs/<run>``) is downloaded into a
    local staging folder first (:func:`stethoscope.runs.local_run`, without Ray Train's ``train/`` storage).

    Raises:
        RegistryError: a missing file (run.json, model/, validation_split.json, scores.parquet,
            train_scores.parquet), a split file changed since the run wrote it, or scores whose clips or roles do not
            match the split (the message names the run and what disagrees).
    """
    from stethoscope import checkpoint as ckpt_io
    from stethoscope import runs

    try:  # a run under a URI (s3://bucket/runs/<run>) is read from a local copy
        p = runs.local_run(run_dir)
    except DataError as exc:
        raise RegistryError(str(exc)) from None
    if not (p / runs.RUN_JSON).is_file():
        raise RegistryError(f"{p} is not a complete run folder: missing {[runs.RUN_JSON]} (train and evaluate it first)")
    try:
        folders = [u.folder for u in runs.run_units(runs.read_manifest(p))]
    except (DataError, KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"run {p.name}: run.json is malformed ({exc})") from None
    missing = [f for f in (*[f"{d}/{n}" for d in folders for n in (ckpt_io.META_FILE, ckpt_io.STATE_FILE)],
                           runs.SCORES) if not (p / f).is_file()]
    if missing:
        raise RegistryError(f"{p} is not a complete run folder: missing {missing} (train and evaluate it first)")
    try:
        manifest = runs.read_manifest(p)
        split = runs.verify_run(p, manifest)
    except DataError as exc:
        raise RegistryError(f"run {p.name} cannot be published: {exc}") from None
    return RunInfo(p, manifest, ckpt_io.read_meta(p / folders[0]), split)


def discover_runs(roots: Iterable[str | os.PathLike]) -> tuple[list[RunInfo], list[tuple[str, str]]]:
    """Every complete run folder at or below ``roots`` (a folder holding ``run.json`` and ``model/``).

    Returns ``(runs, skipped)``; ``skipped`` lists ``(folder, reason)`` for incomplete or inconsistent ones (e.g. a
    crashed run, or one whose split file was edited).
    """
    runs, skipped, seen = [], [], set()
    for r in roots:
        if storage.is_uri(r):
            found, lost = _discover_uri(str(r))
            runs += found
            skipped += lost
            continue
        r = Path(r)
        if not r.exists():
            skipped.append((str(r), "does not exist"))
            continue
        candidates = [r] if (r / "run.json").is_file() else sorted(q.parent for q in r.rglob("run.json"))
        for c in candidates:
            c = c.resolve()
            if c in seen:
                continue
            seen.add(c)
            try:
                runs.append(read_run(c))
            except (RegistryError, ValueError, OSError) as exc:
                skipped.append((str(c), str(exc)))
    return runs, skipped


def _discover_uri(root: str) -> tuple[list[RunInfo], list[tuple[str, str]]]:
    """:func:`discover_runs` under a URI: ``root`` itself if it holds ``run.json``, else every folder below it that
    does (Ray Train's ``train/`` storage is not searched)."""
    if not storage.exists(root):
        return [], [(root, "does not exist")]
    if storage.exists(storage.join(root, "run.json")):
        candidates = [root.rstrip("/")]
    else:
        fs, path = storage.resolve(root)
        scheme = root.split("://", 1)[0]
        candidates = sorted(f"{scheme}://{info.path.rsplit('/', 1)[0]}"
                            for info in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                            if info.base_name == "run.json" and "/train/" not in info.path[len(path):])
    runs, skipped = [], []
    for c in candidates:
        try:
            runs.append(read_run(c))
        except (RegistryError, ValueError, OSError) as exc:
            skipped.append((c, str(exc)))
    return runs, skipped


@dataclass
class PublishResult:
    """What :func:`publish_runs` wrote for one machine type."""

    machine_type: str
    scope: str
    version: str
    manifest: dict
    ensemble: Ensemble
    threshold: GammaThreshold
    out_dir: str
    scores: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


def _split_metrics(y: np.ndarray, s: np.ndarray, max_fpr: float,
                   sections_domains: tuple[np.ndarray, np.ndarray] | None = None,
                   mask: np.ndarray | None = None) -> dict[str, Any]:
    """Pooled AUC / pAUC of one part of the clips and, for sectioned data (``sections_domains``: every clip's
    section and domain, cut by ``mask``), the DCASE 2022+ official score."""
    from stethoscope.evaluation.metrics import auc, official_score, pauc

    n_normal, n_anomaly = int((y == 0).sum()), int((y == 1).sum())
    out: dict[str, Any] = {"n_normal": n_normal, "n_anomaly": n_anomaly, "auc": None, "pauc": None, "reason": None}
    if sections_domains is not None:
        out["official_score"] = None
    if n_normal and n_anomaly:
        out["auc"], out["pauc"] = auc(y, s), pauc(y, s, max_fpr)
        if sections_domains is not None:
            out["official_score"] = official_score(y, s, sections_domains[0][mask], sections_domains[1][mask], max_fpr)
    else:
        out["reason"] = f"needs normal and anomalous clips (n_normal={n_normal}, n_anomaly={n_anomaly})"
    return out


def _shared_split(machine_type: str, group: Sequence[RunInfo], paths: set[str] | None = None):
    """The one split every run of ``group`` was made with, compared on ``paths`` (the machine type's clips; a run
    over several machine types also holds other types' clips); RegistryError naming the runs and clips that differ."""
    first = group[0]
    keep = (lambda x: x & paths) if paths is not None else (lambda x: x)
    for info in group[1:]:
        for part in ("validation", "test"):
            a, b = keep(set(first.split.part(part))), keep(set(info.split.part(part)))
            if a != b:
                only_a = sorted(os.path.basename(x) for x in a - b)[:5]
                only_b = sorted(os.path.basename(x) for x in b - a)[:5]
                raise RegistryError(
                    f"{machine_type}: runs {first.name} and {info.name} were made with different validation splits "
                    f"(their {part} parts differ: only in {first.name}: {only_a}, only in {info.name}: {only_b}; "
                    f"split seeds {first.split.seed} and {info.split.seed}, sources {first.split.source!r} and "
                    f"{info.split.source!r}). Runs published together must share one split: train them with the "
                    "same --split-seed and --val-fraction (or --validation-split), or publish them separately"
                )
    return first.split


def publish_runs(
    runs: Sequence[str | os.PathLike | RunInfo],
    registry: str | os.PathLike,
    *,
    scope: str | None = None,
    quantile: float = DEFAULT_QUANTILE,
    step: float = DEFAULT_STEP,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_fpr: float = 0.1,
    out_dir: str | os.PathLike | None = None,
    machine_types: Sequence[str] | None = None,
    objective: str = "auto",
    weights: str = "search",
) -> list[PublishResult]:
    """Build and publish one ensemble bundle per machine type from trained and evaluated runs.

    Publishing reads what each run stored and never re-ingests or re-scores a clip. For each machine type among
    ``runs``:

    1. Every run's files are checked against its ``validation_split.json`` (:func:`read_run`), and the runs must
       share one validation membership (same ``validation`` and ``test`` parts), else RegistryError says which runs
       and clips differ.
    2. The runs' test-clip scores (``scores.parquet``) are aligned on the split's clips; each clip's role
       (validation / test / unlabelled) is the split's, never drawn here.
    3. Each run's training-clip scores (``train_scores.parquet``, all normal) fit its standardizer.
    4. :func:`~stethoscope.evaluation.ensemble.fit_ensemble` keeps the best ``max_members`` runs on the validation
       clips and grid-searches convex weights on them only (``objective``: the DCASE 2022+ official score for
       sectioned data, (AUC + pAUC) / 2 for DCASE 2020); zero-weight members are dropped. Without both classes
       among the validation clips no search is possible and the manifest says so.
    5. The decision threshold is the gamma ``quantile`` of the ensemble's scores on the training normals
       (:func:`~stethoscope.evaluation.threshold.fit_threshold`; with fewer than 3 training clips, their largest
       score, and the manifest says so).
    6. ``out_dir/<machine_type>/`` receives the ensemble's score CSVs and ``decision_result_*.csv`` (test and
       unlabelled clips), ``metrics.json`` (the test clips; ``publish_metrics`` holds validation and held-out test),
       ``ensemble_scores.parquet`` (every clip's raw / standardized member scores, ensemble score, decision, role)
       and a copy of the shared ``validation_split.json``; the bundle goes to ``registry``. A member whose run
       chose a score variant on validation (``score_variant.json``) is published with it.

    Args:
        runs: run folders (or :class:`RunInfo`) from the pipeline / train + evaluate jobs.
        registry: registry root (folder or URI).
        scope: ``None``/``all`` for a machine-wide bundle, or ``id_XX`` / ``section_XX`` to publish (and validate
            on) one machine_id / section only (the split's membership restricted to it).
        quantile: decision threshold quantile (0.9). step / max_members / max_fpr: weight grid resolution,
            candidate cap, pAUC's FPR limit.
        out_dir: where the evaluation files go (default: a ``publish-<time>`` folder beside the first run).
        machine_types: publish only these machine types (default: every type the runs cover; a run over several
            types, from the all_machine_types scope, gives one bundle per type).
        objective: what chooses members and weights on the validation clips
            (:data:`stethoscope.evaluation.ensemble.OBJECTIVES`): "auto" takes the official score (h-mean over
            sections of source AUC, target AUC, pAUC) for DCASE 2021+ data and (AUC + pAUC) / 2 for DCASE 2020.
        weights: "search" (the grid search) or "uniform" (the ``max_members`` best runs on validation, equal
            weights: a fixed average, e.g. to serve every member whatever its validation figure).
    Returns:
        One :class:`PublishResult` per machine type, sorted by machine type.
    Raises:
        RegistryError: incomplete or inconsistent run folders (missing or changed split file, scores that do not
            match it), runs with different splits, unsafe names. DataError: no clips in the scope, scores that
            cannot be standardized. ConfigError: bad quantile, step.
    """
    from stethoscope import runs as run_files
    from stethoscope.evaluation import evaluate
    from stethoscope.evaluation.threshold import fit_threshold, write_decision_csvs
    from stethoscope.splits import write_run_split

    infos = [r if isinstance(r, RunInfo) else read_run(r) for r in runs]
    if not infos:
        raise RegistryError("nothing to publish: no run folders given")
    scope = scope or SCOPE_ALL
    validate_name(scope, "scope")
    out_uri = str(out_dir) if out_dir is not None else storage.join(
        location_of(infos[0].path).rstrip("/").rsplit("/", 1)[0], f"publish-{time.strftime('%Y%m%d-%H%M%S')}")
    # beside runs read from a URI (or to a URI --out) the files are written in a staging folder, uploaded at the end
    out_base = Path(storage.staging_folder("stethoscope-publish-")) if storage.is_uri(out_uri) else Path(out_uri)
    used: set[str] = set()
    for info in infos:
        if info.split is None:
            raise RegistryError(f"run {info.path} was not read with its split (use read_run)")
        base = safe_name(info.path.name)
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name)
        info.name = name
    by_machine: dict[str, list[RunInfo]] = {}
    for info in infos:  # a run over several machine types (all_machine_types) publishes a bundle for each
        for mt in info.machine_types:
            if machine_types is not None and mt not in machine_types:
                continue
            by_machine.setdefault(validate_name(mt, "machine type"), []).append(info)

    results = []
    for machine_type, group in sorted(by_machine.items()):
        frames = [_of_type(pd.read_parquet(info.path / run_files.SCORES), machine_type) for info in group]
        split = _shared_split(machine_type, group, set().union(*[set(f["path"]) for f in frames]))
        roles = split.roles()
        meta_cols = [c for c in ("path", "file_name", "dataset", "machine_type", "machine_id", "section", "domain",
                                 "split", "label") if c in frames[0].columns]
        clips = frames[0][meta_cols].copy()
        for f in frames[1:]:
            clips = clips[clips["path"].isin(set(f["path"]))]
        datasets = sorted(set(clips["dataset"]))
        if len(datasets) != 1:
            raise DataError(f"{machine_type}: runs mix dataset grammars {datasets}; publish them separately")
        dataset = datasets[0]
        id_name = id_field(dataset)
        if scope != SCOPE_ALL:
            clips = clips[[group_of(id_name, str(v)) == scope for v in clips[id_name]]]
        if clips.empty:
            raise DataError(f"{machine_type} ({scope}): the runs {[i.name for i in group]} share no scored test clips")
        clips = clips.sort_values("path").reset_index(drop=True)
        test_raw = np.stack([
            f.set_index("path").loc[clips["path"], "score"].to_numpy(dtype=np.float64) for f in frames], axis=1)
        role = np.array([roles[p] for p in clips["path"]], dtype=object)
        vmask = role == "validation"
        y_all = np.array([1 if lab == "anomaly" else 0 for lab in clips["label"]], dtype=np.int64)

        # training-normal scores of every candidate (stored by evaluation), aligned on the clips all of them scored
        train_frames = []
        for info in group:
            t = _of_type(pd.read_parquet(info.path / run_files.TRAIN_SCORES), machine_type)
            if scope != SCOPE_ALL:
                t = t[[group_of(id_name, str(v)) == scope for v in t[id_name]]]
            train_frames.append(t)
        common = set(train_frames[0]["path"])
        for f in train_frames[1:]:
            common &= set(f["path"])
        if not common:
            raise DataError(f"{machine_type} ({scope}): the runs share no training clips to fit standardizers and "
                            "the threshold")
        train_paths = sorted(common)
        train_raw = np.stack([f.set_index("path").loc[train_paths, "score"].to_numpy(dtype=np.float64)
                              for f in train_frames], axis=1)

        names = [i.name for i in group]
        sectioned = id_name == "section" and "domain" in clips.columns
        obj = objective if objective != "auto" else ("official_score" if sectioned else "auc_pauc")
        groups_all = clips[id_name].astype(str).to_numpy(dtype=object)
        domains_all = clips["domain"].to_numpy(dtype=object) if "domain" in clips.columns else None
        ensemble = fit_ensemble(names, [train_raw[:, j] for j in range(len(names))], test_raw[vmask],
                                y_all[vmask], step=step, max_members=max_members, max_fpr=max_fpr, objective=obj,
                                groups=groups_all[vmask] if obj == "official_score" else None,
                                domains=domains_all[vmask] if obj == "official_score" else None, weights=weights)
        cols = [names.index(n) for n in ensemble.members]
        train_ens = ensemble.score(train_raw[:, cols])
        threshold = fit_threshold(train_ens, quantile)
        if threshold.reason:
            log.warning("%s (%s): %s", machine_type, scope, threshold.reason)
        z = ensemble.standardize(test_raw[:, cols])
        score = z @ ensemble.weights
        tmask = role == "test"
        notes = list(split.notes)
        if ensemble.info.get("reason"):
            notes.append(f"ensemble: {ensemble.info['reason']}")
        if threshold.reason:
            notes.append(f"threshold: {threshold.reason}")
        if ensemble.info.get("objective_note"):
            notes.append(f"ensemble: {ensemble.info['objective_note']}")
        per_clip = (groups_all, domains_all) if sectioned else None
        metrics = {
            "objective": f"{ensemble.info['objective']} selects members and weights",
            "max_fpr": max_fpr,
            "validation": _split_metrics(y_all[vmask], score[vmask], max_fpr, per_clip, vmask),
            "test_heldout": {**_split_metrics(y_all[tmask], score[tmask], max_fpr, per_clip, tmask),
                             "note": "held-out clips, never used to choose members, weights or the threshold"},
            "candidates": ensemble.info.get("candidates", {}),
            "train_normal": {"n": len(train_paths), "threshold_exceedance": float(np.mean(train_ens > threshold.value))},
            "notes": notes,
        }

        out = out_base / machine_type
        out.mkdir(parents=True, exist_ok=True)
        table = clips.copy()
        for j, n in enumerate(ensemble.members):
            table[f"raw__{n}"] = test_raw[:, cols[j]]
            table[f"z__{n}"] = z[:, j]
        table["score"] = score
        table["decision"] = threshold.decide(score)
        table["role"] = role
        table.to_parquet(out / "ensemble_scores.parquet")
        _, split_sha = write_run_split(split, out)
        reported = table[role != "validation"] if (tmask.any() or (role == "unlabelled").any()) else table
        evaluate(reported, out, plots=False, extra={
            "clips": {"part": "test" if len(reported) < len(table) else "validation", "n": int(len(reported)),
                      "description": "the test (and unlabelled) clips of the runs' shared validation_split.json; the "
                                     "validation clips chose the members and weights and are not in these numbers"
                      if len(reported) < len(table) else
                      "the validation clips: the split holds nothing out, so these chose the members and weights"},
            "ensemble": ensemble.to_dict(), "threshold": threshold.to_dict(),
            "publish_metrics": {k: metrics[k] for k in ("validation", "test_heldout")},
        })
        write_decision_csvs(reported, threshold.value, out)

        members = [(n, group[names.index(n)].member_models(machine_type)) for n in ensemble.members]
        variants = {n: (run_files.read_score_variant(group[names.index(n)].path, machine_type) or {}).get("selected")
                    for n in ensemble.members}
        manifest = write_bundle(registry, machine_type=machine_type, members=members, ensemble=ensemble,
                                threshold=threshold, metrics=metrics, scope=scope, dataset=dataset,
                                score_variants={n: v for n, v in variants.items() if v},
                                detectors={n: str(f) for n in ensemble.members
                                           if (f := run_files.detector_file(group[names.index(n)].path,
                                                                            machine_type)) is not None},
                                extra={"training_scopes": {n: group[names.index(n)].scope for n in ensemble.members},
                                       "validation_split": {"sha256": split_sha, "fingerprint": split.fingerprint,
                                                            "source": split.source, "seed": split.seed,
                                                            "fractions": split.fractions,
                                                            "n_validation": int(vmask.sum()),
                                                            "n_test": int(tmask.sum())},
                                       "evaluation_dir": _out_location(out_uri, out_base, out),
                                       **_clip_seconds(clips["path"])})
        results.append(PublishResult(machine_type, scope, manifest["version"], manifest, ensemble, threshold,
                                     _out_location(out_uri, out_base, out), table))
    if storage.is_uri(out_uri):
        storage.copy_tree(out_base, out_uri)
        shutil.rmtree(out_base, ignore_errors=True)
    return results


def _out_location(out_uri: str, out_base: Path, out: Path) -> str:
    """Where ``out`` (a folder under ``out_base``) ends up: under ``out_uri`` when that is a URI."""
    if storage.is_uri(out_uri):
        return storage.join(out_uri, *out.relative_to(out_base).parts)
    return location_of(out)


def _of_type(frame: pd.DataFrame, machine_type: str) -> pd.DataFrame:
    """The rows of a run's score table that belong to ``machine_type``."""
    return frame[frame["machine_type"] == machine_type] if "machine_type" in frame.columns else frame


def format_publish_table(results: Sequence[PublishResult]) -> str:
    """machine → members, weights, threshold, validation AUC and pAUC (and held-out test AUC / pAUC; for DCASE
    2022+ data also the official score, the h-mean over sections, on validation and held-out test)."""

    def f(v: Any) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    official = any("official_score" in r.manifest["metrics"]["validation"] for r in results)
    head = ["machine", "members", "weights", "threshold", "val AUC", "val pAUC", "test AUC", "test pAUC",
            *(["val score", "test score"] if official else []), "version"]
    rows = []
    for r in results:
        v, t = r.manifest["metrics"]["validation"], r.manifest["metrics"]["test_heldout"]
        rows.append([
            f"{r.machine_type}/{r.scope}",
            ", ".join(r.ensemble.members),
            ", ".join(f"{w:.2f}" for w in r.ensemble.weights),
            f"{r.threshold.value:.4f}",
            f(v.get("auc")), f(v.get("pauc")), f(t.get("auc")), f(t.get("pauc")),
            *([f(v.get("official_score")), f(t.get("official_score"))] if official else []),
            r.version,
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


__all__ = [
    "PublishResult",
    "RunInfo",
    "discover_runs",
    "format_publish_table",
    "publish_runs",
    "read_run",
    "write_bundle",
]
