"""The run folder: the names of its files, and reading them back consistently.

A run folder (written by ``pipeline.run``, ``jobs/train.py`` + ``jobs/evaluate.py``, or kept from a sweep trial)::

    run.json                 arguments, seed, preset, FeatureSpec, git commit, and the split it was made with
                             (``validation_split``: file, sha256, fingerprint, source, seed, counts)
    validation_split.json    the run's one split (stethoscope.splits.RunSplit), written once, before training
    model/                   per_machine_type runs (and every run made before scopes): the trained Method
                             (state.pt + meta.json); evaluation never rewrites it. train_history.json, train/ beside it
    models/<unit>/           per_id and all_machine_types runs: one trained Method per training unit
                             (``models/all/``, ``models/<machine_type>/<id_XX | section_XX>/``), each with its
                             state.pt, meta.json, train_history.json and Ray Train's train/ (stethoscope.scopes)
    score_variant.json       for methods with score variants: the variant chosen on the validation clips (a run of
                             several machine types: ``{"machine_types": {<type>: choice}}``, one choice per type)
    scores.parquet           every test clip's score, with its ``role`` in the split (validation/test/unlabelled)
    train_scores.parquet     every training clip's score (``role`` train/train_validation): standardizers and
                             decision thresholds are fitted on these, so publishing never re-scores
    metrics.json, results.md, anomaly_score_*.csv, plots/   the report on the held-out test clips

``run.json`` records the run's ``scope``, its ``machine_types`` and its ``units`` (name, machine types, group,
folder); a run without them (made before scopes) is one per_machine_type unit in ``model/`` (:func:`run_units`).

:func:`load_model` is how every later stage loads the run's model: the checkpoint in ``model/`` with the chosen
score variant (``score_variant.json``) applied. :func:`verify_run` checks a run's files against each other before
publishing reads them.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd

from stethoscope import storage
from stethoscope.errors import DataError
from stethoscope.splits import PARTS, SPLIT_FILE, RunSplit, read_run_split

RUN_JSON = "run.json"
#: The model folder of a per_machine_type run (and of every run made before scopes).
MODEL_DIR = "model"
#: The parent of the unit model folders of per_id and all_machine_types runs (``models/<unit>/``).
MODELS_DIR = "models"
TRAIN_HISTORY = "train_history.json"
SCORES = "scores.parquet"
TRAIN_SCORES = "train_scores.parquet"
SCORE_VARIANT = "score_variant.json"
#: Detector stage artifacts (embedding methods, issue 12 §2): every clip's embedding with its labels, every
#: candidate detector's scores, the choice per machine type, and the chosen detector's state per machine type.
EMBEDDINGS = "embeddings.parquet"
DETECTOR_SCORES = "detector_scores.parquet"
DETECT_JSON = "detect.json"
DETECTORS_DIR = "detectors"
METRICS = "metrics.json"


def git_commit() -> str | None:
    """The git commit of the code (``git rev-parse HEAD`` beside this file), or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def new_run_dir(runs_root: str | os.PathLike, method: str, machine_type: str) -> Path:
    """Make and return a new run folder, ``<runs_root>/<YYYYmmdd-HHMMSS>-<method>-<machine_type>`` (suffixed
    ``-2``, ``-3`` ... if it already exists).

    ``runs_root`` may be a URI (``s3://bucket/runs``): the run is then written in a local staging folder
    (:func:`stethoscope.storage.staging_folder`) and uploaded to ``<runs_root>/<name>`` by :func:`sync_run`
    (:func:`remote_uri` gives that URI); Ray Train writes its checkpoints straight to ``<that URI>/.../train``.

    Raises:
        StorageError: the URI's bucket does not exist or cannot be reached (:func:`stethoscope.storage.check_access`).
    """
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{machine_type}"
    if storage.is_uri(runs_root):
        storage.check_access(runs_root, "runs root")
        taken = set(storage.listdir(str(runs_root)))
        final, n = name, 1
        while final in taken:
            n += 1
            final = f"{name}-{n}"
        path = Path(storage.staging_folder("stethoscope-run-")) / final
        path.mkdir()
        _REMOTE[path] = storage.join(str(runs_root), final)
        return path
    base = Path(runs_root).resolve() / name
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


#: Local staging folder → the URI it is uploaded to (runs made under a URI runs root, or downloaded by local_run).
_REMOTE: dict[Path, str] = {}


def remote_uri(run_dir: str | os.PathLike) -> str | None:
    """The URI a staged run folder is uploaded to (:func:`new_run_dir`, :func:`local_run`), or None for a run that
    lives in a local folder."""
    return _REMOTE.get(Path(run_dir))


def location(run_dir: str | os.PathLike) -> str:
    """Where the run lives: its URI if it is staged for one, else its local folder."""
    return remote_uri(run_dir) or str(run_dir)


def location_of(path: str | os.PathLike) -> str:
    """Where a file or folder inside a run lives: its URI if the run is staged for one (``/tmp/.../<run>/model`` →
    ``s3://bucket/runs/<run>/model``), else the local path. Records that outlive the staging folder (bundle
    manifests, reports) name this."""
    p = Path(path)
    for local, remote in _REMOTE.items():
        if p == local or local in p.parents:
            return storage.join(remote, *p.relative_to(local).parts)
    return str(path)


def sync_run(run_dir: str | os.PathLike, *, done: bool = False) -> str:
    """Upload a staged run folder to its URI (every file; Ray Train's checkpoints are already there) and return
    :func:`location`. ``done``: the stage has finished with the run; its staging folder is removed after the upload.
    A local run is left as it is.

    Raises:
        StorageError: an upload failed (the message names the file's folder and the URI; the staging folder stays).
    """
    remote = remote_uri(run_dir)
    if remote is not None:
        storage.copy_tree(str(run_dir), remote)
        if done:
            shutil.rmtree(Path(run_dir).parent, ignore_errors=True)
    return location(run_dir)


def local_run(run_ref: str | os.PathLike) -> Path:
    """A local folder for a run given as a folder or a URI: the folder itself, or the URI's run downloaded into a
    staging folder (without Ray Train's ``train/`` folders, which only resuming reads), which :func:`sync_run`
    uploads back. The copy is removed when the process exits.

    Raises:
        DataError: the URI holds no ``run.json``. StorageError: it cannot be read.
    """
    if not storage.is_uri(run_ref):
        return Path(run_ref).resolve()
    uri = str(run_ref).rstrip("/")
    if not storage.exists(storage.join(uri, RUN_JSON)):
        raise DataError(f"{uri} is not a run folder: {RUN_JSON} is missing")
    local = Path(storage.staging_folder("stethoscope-run-")) / uri.rsplit("/", 1)[-1]
    atexit.register(shutil.rmtree, local.parent, True)  # a copy: the run stays at its URI
    storage.download_tree(uri, local, skip_dirs=("train",))
    _REMOTE[local] = uri
    return local


def split_record(split: RunSplit, sha256: str) -> dict[str, Any]:
    """What ``run.json`` records about the split the run was made with (``run.json["validation_split"]``)."""
    return {"file": SPLIT_FILE, "sha256": sha256, "fingerprint": split.fingerprint, "source": split.source,
            "seed": split.seed, "fractions": dict(split.fractions),
            "counts": {name: len(split.part(name)) for name in PARTS}, "notes": list(split.notes)}


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` of a run folder. Raises DataError if it is missing or not JSON."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise DataError(f"{run_dir} is not a run folder: {RUN_JSON} is missing")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None


def run_split(run_dir: str | os.PathLike, manifest: dict | None = None) -> RunSplit:
    """The run's ``validation_split.json``, checked against the hash ``run.json`` recorded when it was written.

    Raises:
        DataError: no split recorded in run.json (a run from before the one-split layout), the file is missing,
            or it was changed after the run wrote it.
    """
    manifest = manifest if manifest is not None else read_manifest(run_dir)
    record = manifest.get("validation_split")
    if not isinstance(record, dict) or "sha256" not in record:
        raise DataError(
            f"{run_dir}: run.json records no validation split (a run made before every stage read one "
            f"{SPLIT_FILE}); train the run again"
        )
    return read_run_split(Path(run_dir) / record.get("file", SPLIT_FILE), expected_sha256=record["sha256"])


def write_score_variant(run_dir: str | os.PathLike, record: dict[str, Any]) -> str:
    """Write the score-variant choice (``{"selected", "configured", "criterion", "validation", ...}``)."""
    uri = storage.join(str(run_dir), SCORE_VARIANT)
    storage.write_json(uri, record)
    return uri


def read_score_variant(run_dir: str | os.PathLike, machine_type: str | None = None) -> dict[str, Any] | None:
    """The run's score-variant choice for ``machine_type`` (a run of several types keeps one per type; None: the
    only one), or None if the method has none (or the run was never evaluated).

    Raises:
        DataError: the run chose per machine type and ``machine_type`` is None.
    """
    path = Path(run_dir) / SCORE_VARIANT
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    per_type = record.get("machine_types") if "selected" not in record else None
    if per_type is None:
        return record
    if machine_type is None:
        if len(per_type) != 1:
            raise DataError(f"{path} holds a score variant per machine type {sorted(per_type)}; name one")
        return next(iter(per_type.values()))
    return per_type.get(machine_type)


def apply_score_variant(method, record: dict[str, Any] | None) -> None:
    """Make ``method`` score with the variant chosen in ``record`` (no-op without a record)."""
    if record and record.get("selected") and callable(getattr(method, "set_score_variant", None)):
        method.set_score_variant(record["selected"])


def detector_file(run_dir: str | os.PathLike, machine_type: str) -> Path | None:
    """The detector the run's detect stage chose for ``machine_type`` (``detectors/<machine_type>.pt``), or None
    when the run has no detector stage."""
    path = Path(run_dir) / DETECTORS_DIR / f"{machine_type}.pt"
    return path if path.is_file() else None


def run_machine_types(manifest: dict[str, Any]) -> list[str]:
    """The machine types a run covers (``machine_types`` in run.json; older runs: ``[machine_type]``)."""
    return list(manifest.get("machine_types") or [manifest["machine_type"]])


def run_units(manifest: dict[str, Any]):
    """The run's training units (:class:`stethoscope.scopes.Unit`) from run.json. A run made before scopes is one
    per_machine_type unit whose model is ``model/``."""
    from stethoscope.scopes import Unit

    if manifest.get("units"):
        return [Unit.from_dict(u) for u in manifest["units"]]
    mt = manifest["machine_type"]
    return [Unit(mt, (mt,), None, MODEL_DIR)]


def unit_model_dirs(run_dir: str | os.PathLike, manifest: dict[str, Any] | None = None,
                    machine_type: str | None = None) -> dict[str, Path]:
    """``{unit name: model folder}`` of the run (only the units holding ``machine_type``, if given)."""
    manifest = manifest if manifest is not None else read_manifest(run_dir)
    return {u.name: Path(run_dir) / u.folder for u in run_units(manifest)
            if machine_type is None or machine_type in u.machine_types}


def load_model(run_dir: str | os.PathLike, device: str = "cpu", *, unit: str | None = None,
               machine_type: str | None = None):
    """The run's trained Method, as every later stage must load it: the unit's checkpoint
    (``torch.load(weights_only=True)``; ``model/`` for a per_machine_type run) with the score variant chosen on
    validation for ``machine_type`` (``score_variant.json``) applied. Returns ``(method, meta)``.

    Args:
        unit: the training unit's name (default: the run's only unit). machine_type: whose score variant to apply
            (default: the run's only machine type).
    Raises:
        StethoscopeError: the model folder is not a complete checkpoint. DataError: ``unit`` is not a unit of the
            run, or the run has several and none was named.
    """
    from stethoscope import checkpoint as ckpt_io

    run_dir = Path(run_dir)
    if (run_dir / RUN_JSON).is_file():
        manifest = read_manifest(run_dir)
        dirs = unit_model_dirs(run_dir, manifest)
        types = run_machine_types(manifest)
    else:  # a folder with model/ but no run.json
        dirs, types = {MODEL_DIR: run_dir / MODEL_DIR}, []
    if unit is None:
        if len(dirs) != 1:
            raise DataError(f"{run_dir} holds one model per training unit {sorted(dirs)}; name the unit")
        folder = next(iter(dirs.values()))
    elif unit in dirs:
        folder = dirs[unit]
    else:
        raise DataError(f"{run_dir} has no training unit {unit!r}; units: {sorted(dirs)}")
    method, meta = ckpt_io.load(folder, device)
    mt = machine_type or (types[0] if len(types) == 1 else None)
    if mt is not None or len(types) <= 1:
        apply_score_variant(method, read_score_variant(run_dir, mt))
    return method, meta


def _role_mismatch(frame: pd.DataFrame, roles: dict[str, str], what: str, run_dir) -> None:
    if "role" not in frame.columns:
        raise DataError(f"{run_dir}/{what} has no 'role' column: it was written before the one-split layout; "
                        "evaluate the run again (jobs/evaluate.py)")
    wrong = [(os.path.basename(p), r, roles.get(p)) for p, r in zip(frame["path"], frame["role"]) if roles.get(p) != r]
    if wrong:
        raise DataError(
            f"{run_dir}/{what} does not match its validation split: {len(wrong)} clip(s) have another role "
            f"(file name, role in {what}, role in the split): {wrong[:10]}"
        )


def verify_run(run_dir: str | os.PathLike, manifest: dict | None = None) -> RunSplit:
    """Check that a run's files agree with its split, and return the split.

    - ``validation_split.json`` exists and is the file the run recorded (sha256 in run.json);
    - every clip of ``scores.parquet`` has the role the split gives it, and every validation / test clip of the
      split was scored;
    - ``train_scores.parquet`` holds exactly the split's ``train`` and ``train_validation`` clips.

    Raises:
        DataError: the first disagreement found (the message names the file and up to 10 clips).
    """
    split = run_split(run_dir, manifest)
    roles = split.roles()
    for name in (SCORES, TRAIN_SCORES):
        if not (Path(run_dir) / name).is_file():
            raise DataError(f"{run_dir} lacks {name}: evaluate the run (jobs/evaluate.py) before publishing it")
    scores = pd.read_parquet(Path(run_dir) / SCORES, columns=None)
    _role_mismatch(scores, roles, SCORES, run_dir)
    unscored = sorted(set(split.validation + split.test) - set(scores["path"]))
    if unscored:
        raise DataError(f"{run_dir}/{SCORES} lacks {len(unscored)} clip(s) of its validation split: "
                        f"{[os.path.basename(p) for p in unscored[:10]]}")
    train = pd.read_parquet(Path(run_dir) / TRAIN_SCORES, columns=["path", "role"])
    _role_mismatch(train, roles, TRAIN_SCORES, run_dir)
    if set(train["path"]) != set(split.train + split.train_validation):
        missing = sorted(set(split.train + split.train_validation) - set(train["path"]))
        raise DataError(f"{run_dir}/{TRAIN_SCORES} lacks {len(missing)} training clip(s) of its split: "
                        f"{[os.path.basename(p) for p in missing[:10]]}")
    return split


__all__ = [
    "METRICS",
    "MODEL_DIR",
    "MODELS_DIR",
    "RUN_JSON",
    "TRAIN_HISTORY",
    "SCORES",
    "SCORE_VARIANT",
    "TRAIN_SCORES",
    "apply_score_variant",
    "git_commit",
    "load_model",
    "local_run",
    "location",
    "location_of",
    "new_run_dir",
    "read_manifest",
    "read_score_variant",
    "remote_uri",
    "run_machine_types",
    "run_units",
    "unit_model_dirs",
    "run_split",
    "split_record",
    "sync_run",
    "verify_run",
    "write_score_variant",
]
