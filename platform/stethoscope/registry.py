"""Published detector bundles: what serving loads (DESIGN.md data-flow steps 7 and 8).

A *bundle* is the detector for one machine type, or for one machine_id / section of it: one or more trained members
(Method checkpoints), their score standardizers and convex ensemble weights (:mod:`stethoscope.evaluation.ensemble`),
the decision threshold (:mod:`stethoscope.evaluation.threshold`), the validation metrics, the creation time, the git
commit and a format version. The registry root is a local folder or any pyarrow-filesystem URI (``s3://…``)::

    <root>/<machine_type>/<scope>/CURRENT                      {"version": "<version>"}, written last
    <root>/<machine_type>/<scope>/<version>/manifest.json       describes the bundle (below)
    <root>/<machine_type>/<scope>/<version>/members/<name>/state.pt, meta.json   one checkpoint per member

``scope`` is ``all`` (the whole machine type) or ``id_<XX>`` / ``section_<XX>``; a request for machine_id XX is
served by ``id_<XX>`` if it exists, else by ``all``. Publishing never overwrites: each publish writes a new version
folder and then moves ``CURRENT``, so a server reading the registry never sees a half-written bundle.

Safety: machine types, scopes, versions and member names must match ``[A-Za-z0-9_.-]+`` and may not be ``.`` or
``..``, so no name can leave the registry root. ``state.pt`` files load with ``torch.load(weights_only=True)`` (no
pickled Python objects run), and every file's SHA-256 must match the manifest before anything is loaded.

manifest.json (``format_version`` 2; version 1 bundles, with one ``feature_spec`` per member, still load)::

    {"format": "stethoscope-bundle", "format_version": 2, "machine_type", "scope", "version", "created" (UTC ISO 8601),
     "git_commit", "dataset" ("dcase2020" | "dcase2021+"), "id_field" ("machine_id" | "section"), "sample_rate" (Hz),
     "input_specs" ([[spec hash, input spec dict], ...]: every input any member reads, computed once per request),
     "members": [{"name", "method", "path", "weight", "standardizer": {"mean", "std", "n"},
     "inputs" ({input name: input spec dict}), "input_spec_hashes", "groups" (the member's group vocabulary,
     e.g. ["slider/id_00"]), "labels" (the label keys it reads), "can_localize", "source", "seed",
     "score_variant"?}], "ensemble": {...}, "threshold": {"method": "gamma" | "max_train_normal", "value",
     "quantile", "shape", "loc", "scale", "n", "reason"}, "metrics": {"validation": {...}, "test_heldout": {...},
     "notes": [...]}, "validation_split": {"sha256", "fingerprint", "source", "seed", ...},
     "files": {"<relative path>": {"sha256", "bytes"}}, ...}

A member's optional ``score_variant`` (the variant its run chose on validation) is applied when the bundle loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import torch

from stethoscope import storage
from stethoscope.data.features import input_spec_to_dict
from stethoscope.errors import DataError, StethoscopeError
from stethoscope.evaluation.ensemble import DEFAULT_MAX_MEMBERS, DEFAULT_STEP, Ensemble, fit_ensemble
from stethoscope.evaluation.threshold import DEFAULT_QUANTILE, GammaThreshold

log = logging.getLogger(__name__)

FORMAT = "stethoscope-bundle"
#: Bundle format versions this code reads. Bump when the layout or the manifest's meaning changes.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
SCOPE_ALL = "all"
#: What a machine type, scope, version or member name may contain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_NAME = 128
_GROUP = re.compile(r"[0-9]{2}")


class RegistryError(StethoscopeError):
    """A bundle is missing, incomplete, tampered with, of an unknown format, or a name is unsafe."""


class BundleNotFound(RegistryError):
    """No bundle serves the requested machine. ``known`` lists the published ``machine_type`` values."""

    def __init__(self, message: str, known: list[str]):
        self.known = list(known)
        super().__init__(message)


# ---------------------------------------------------------------------------------------------------------------
# names and paths
# ---------------------------------------------------------------------------------------------------------------
def validate_name(name: Any, what: str = "name") -> str:
    """``name`` if it matches ``[A-Za-z0-9_.-]+``, is at most 128 characters and is not ``.`` / ``..``.

    Raises:
        RegistryError: anything else (the message names the value and the rule).
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or set(name) == {"."} or len(name) > _MAX_NAME:
        raise RegistryError(
            f"{what} {name!r} is not allowed: use 1-{_MAX_NAME} characters from [A-Za-z0-9_.-], not '.' or '..'"
        )
    return name


def safe_name(text: str) -> str:
    """Turn any text into a valid name (unsafe characters → ``_``); raises RegistryError if nothing is left."""
    return validate_name(re.sub(r"[^A-Za-z0-9_.-]", "_", str(text)).strip(".")[:_MAX_NAME] or "_", "name")


def group_scope(id_field: str, value: str) -> str:
    """``("machine_id", "00")`` → ``"id_00"``; ``("section", "01")`` → ``"section_01"``.

    Raises:
        RegistryError: an unknown id field or a value that is not two digits.
    """
    if not isinstance(value, str) or not _GROUP.fullmatch(value):
        raise RegistryError(f"{id_field} {value!r} is not valid: expected two digits such as '00'")
    if id_field == "machine_id":
        return f"id_{value}"
    if id_field == "section":
        return f"section_{value}"
    raise RegistryError(f"unknown id field {id_field!r}; expected 'machine_id' or 'section'")


def _rel(*parts: str) -> str:
    return "/".join(parts)


def _bundle_dir(root: str, machine_type: str, scope: str, version: str | None = None) -> str:
    parts = [validate_name(machine_type, "machine type"), validate_name(scope, "scope")]
    if version is not None:
        parts.append(validate_name(version, "version"))
    return storage.join(str(root), *parts)


def _root(root: str | os.PathLike) -> str:
    root = str(root)
    return root if "://" in root else os.path.abspath(root)


def _read_bytes(uri: str) -> bytes:
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# loaded bundles
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Member:
    """One loaded member: its name, the Method (eval mode), its checkpoint meta and its place in the ensemble."""

    name: str
    method: Any
    meta: dict
    weight: float
    #: The detector stage's chosen GroupedDetector (scores = detector(method.embed(x))), or None.
    detector: Any = None



@dataclass
class Bundle:
    """A loaded, verified bundle. ``score_waveforms`` is the scoring path serving uses."""

    root: str
    machine_type: str
    scope: str
    version: str
    manifest: dict
    members: list[Member]
    ensemble: Ensemble
    threshold: GammaThreshold

    @property
    def key(self) -> str:
        return f"{self.machine_type}/{self.scope}"

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["sample_rate"])

    @property
    def min_samples(self) -> int:
        """Shortest waveform (samples) every member can score: see :func:`_min_samples`."""
        return max(_min_samples(spec.to_dict()) for m in self.members for spec in m.method.inputs.values())

    def score_waveforms(
        self, waves: Sequence[np.ndarray], group: str | None = None, *, want_map: bool = False
    ) -> list[dict[str, Any]]:
        """Score mono waveforms at :attr:`sample_rate` Hz with every member and combine them.

        Each distinct input spec of the members is computed once per clip (members that share a spec share it).

        Args:
            waves: B arrays [samples] float32 (as :func:`stethoscope.data.audio.decode_audio` returns them).
            group: ``id_XX`` / ``section_XX`` of the clips, for members that read the group label. A group a member
                was not trained on is a RegistryError naming the known ones (unless the member's method handles
                unknown groups explicitly).
            want_map: also return the [F, frames] anomaly map of each member that can localize.
        Returns:
            One dict per clip: ``score`` (ensemble), ``is_anomaly`` (score > threshold), ``raw`` [M] and
            ``standardized`` [M] member scores, and ``maps`` ({member: ndarray [F, frames]}) if asked.
        Raises:
            ValueError: a waveform shorter than a member's n_fft. DataError: a group a member cannot label.
        """
        from stethoscope.data.features import compute_input
        from stethoscope.scoring import encode_labels

        n = len(waves)
        raw = np.zeros((n, len(self.members)), dtype=np.float64)
        maps: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        computed: dict[str, list[torch.Tensor]] = {}
        # arrays that arrive through Ray's object store are read-only; torch wants writable memory
        waves = [w if w.flags.writeable else w.copy() for w in waves]
        meta = {"machine_type": [self.machine_type] * n, "machine_id": [None] * n, "section": [None] * n}
        if group is not None:
            kind, _, number = group.partition("_")
            meta["machine_id" if kind == "id" else "section"] = [number] * n
        for j, member in enumerate(self.members):
            method = member.method
            per_input = {}
            for name, spec in method.inputs.items():
                key = spec.hash()
                if key not in computed:
                    computed[key] = [compute_input(w, spec) for w in waves]
                per_input[name] = computed[key]
            labels = encode_labels(method, meta) if method.labels else {}
            by_shape: dict[tuple, list[int]] = {}
            for i in range(n):
                by_shape.setdefault(tuple(tuple(v[i].shape) for v in per_input.values()), []).append(i)
            for idx in by_shape.values():
                batch = {name: torch.stack([v[i] for i in idx]).to(method.device) for name, v in per_input.items()}
                for k, v in labels.items():
                    batch[k] = torch.as_tensor(v[idx], device=method.device)
                with torch.no_grad():
                    if member.detector is not None:
                        emb = method.embed(batch).detach().cpu().numpy()
                        s = member.detector.decision_function(emb, [self._detector_key(member, group)] * len(idx))
                    else:
                        s = method.score(batch).detach().cpu().numpy().astype(np.float64)
                    raw[idx, j] = s
                    if want_map and method.can_localize:
                        loc = method.localize(batch).detach().cpu().numpy()
                        for r, i in enumerate(idx):
                            maps[i][member.name] = loc[r]
        z = self.ensemble.standardize(raw)
        score = z @ self.ensemble.weights
        out = []
        for i in range(n):
            row = {
                "score": float(score[i]),
                "is_anomaly": bool(score[i] > self.threshold.value),
                "raw": [float(v) for v in raw[i]],
                "standardized": [float(v) for v in z[i]],
            }
            if want_map:
                row["maps"] = maps[i]
            out.append(row)
        return out

    def _detector_key(self, member: Member, group: str | None) -> str:
        """The detector's group key (``<machine_type>/<id_XX | section_XX>``) for a request's ``group``.

        Raises:
            DataError: no group given while the detector has several, or a group it was not fitted on.
        """
        known = sorted(member.detector.fitted)
        if group is None:
            if len(known) == 1:
                return known[0]
            raise DataError(f"member {member.name!r} scores per group; name the clips' group (one of "
                            f"{[k.split('/', 1)[-1] for k in known]})")
        key = f"{self.machine_type}/{group}"
        if key not in member.detector.fitted and "*" not in member.detector.fitted:
            raise DataError(f"member {member.name!r} has no detector for group {group!r}; known groups: "
                            f"{[k.split('/', 1)[-1] for k in known]}")
        return key

    def describe(self) -> dict[str, Any]:
        """The public summary ``GET /v1/models`` lists (no file hashes)."""
        return summarize_manifest(self.manifest)


def _min_samples(spec: dict) -> int:
    """Samples needed for one STFT window and ``n_frames`` frames: max(n_fft, (n_frames - 1) · hop_length)."""
    return max(int(spec.get("n_fft", 1)), (int(spec.get("n_frames", 1)) - 1) * int(spec.get("hop_length", 1)), 1)


def _member_specs(entry: dict) -> list[dict]:
    """A manifest member's input spec dicts (``inputs``; older manifests: ``feature_spec``)."""
    if entry.get("inputs"):
        return list(entry["inputs"].values())
    return [entry["feature_spec"]] if entry.get("feature_spec") else [{}]


def summarize_manifest(m: dict) -> dict[str, Any]:
    """Machine, scope, version, sample rate (Hz), shortest scorable clip (``min_samples``, samples), members
    (name, method, weight), threshold and metrics of a manifest."""
    return {
        "machine_type": m["machine_type"],
        "scope": m["scope"],
        "version": m["version"],
        "created": m.get("created"),
        "git_commit": m.get("git_commit"),
        "dataset": m.get("dataset"),
        "id_field": m.get("id_field"),
        "sample_rate": m.get("sample_rate"),
        "min_samples": max((_min_samples(spec) for x in m.get("members", []) for spec in _member_specs(x)),
                           default=1),
        "members": [
            {"name": x["name"], "method": x["method"], "weight": x["weight"], "can_localize": x.get("can_localize")}
            for x in m.get("members", [])
        ],
        "threshold": m.get("threshold", {}).get("value"),
        "metrics": m.get("metrics", {}),
    }


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------
def current_version(root: str | os.PathLike, machine_type: str, scope: str = SCOPE_ALL) -> str:
    """The version ``CURRENT`` points to. Raises BundleNotFound (with the known machine types) if there is none."""
    root = _root(root)
    uri = storage.join(_bundle_dir(root, machine_type, scope), CURRENT)
    if not storage.exists(uri):
        raise BundleNotFound(
            f"no bundle is published for machine type {machine_type!r} (scope {scope!r}) under {root}",
            machine_types(root),
        )
    try:
        version = json.loads(storage.read_text(uri))["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{uri} is malformed ({exc!r}); expected {{\"version\": \"...\"}}") from None
    return validate_name(version, "version")


def read_manifest(root: str | os.PathLike, machine_type: str, scope: str = SCOPE_ALL,
                  version: str | None = None) -> dict:
    """The manifest of a bundle (``CURRENT`` version unless given), with its format checked. No hashes checked.

    Raises:
        BundleNotFound: nothing published for that machine type / scope.
        RegistryError: the manifest is missing or malformed, of another format, or of an unknown format version.
    """
    root = _root(root)
    version = version or current_version(root, machine_type, scope)
    uri = storage.join(_bundle_dir(root, machine_type, scope, version), MANIFEST)
    if not storage.exists(uri):
        raise RegistryError(f"bundle {machine_type}/{scope}/{version} has no {MANIFEST} (looked for {uri})")
    try:
        m = json.loads(storage.read_text(uri))
    except ValueError as exc:
        raise RegistryError(f"{uri} is not valid JSON: {exc}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise RegistryError(f"{uri} is not a {FORMAT} manifest (format = {m.get('format') if isinstance(m, dict) else m!r})")
    if m.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
        raise RegistryError(
            f"{uri}: unknown bundle format_version {m.get('format_version')!r}; this code reads "
            f"{list(SUPPORTED_FORMAT_VERSIONS)} (publish the bundle again, or upgrade stethoscope)"
        )
    for k, want in (("machine_type", machine_type), ("scope", scope), ("version", version)):
        if m.get(k) != want:
            raise RegistryError(f"{uri}: manifest says {k} = {m.get(k)!r} but it is stored under {want!r}")
    return m


def load_bundle(
    root: str | os.PathLike,
    machine_type: str,
    scope: str = SCOPE_ALL,
    version: str | None = None,
    device: str | torch.device = "cpu",
) -> Bundle:
    """Load and verify a bundle: manifest format, every listed file's SHA-256, then each member's checkpoint.

    Checkpoints load with ``torch.load(weights_only=True)`` from the verified bytes (never re-read from disk).

    Raises:
        BundleNotFound: nothing published for that machine type / scope.
        RegistryError: a missing file, a hash mismatch, an unknown format version, an unsafe name, or a member
            whose method is unknown or whose state does not fit it.
    """
    from stethoscope import checkpoint as ckpt_io

    root = _root(root)
    m = read_manifest(root, machine_type, scope, version)
    version = m["version"]
    base = _bundle_dir(root, machine_type, scope, version)
    files = m.get("files") or {}
    blobs: dict[str, bytes] = {}
    for rel, info in sorted(files.items()):
        parts = rel.split("/")
        for p in parts:
            validate_name(p, f"path component of {rel!r}")
        uri = storage.join(base, *parts)
        if not storage.exists(uri):
            raise RegistryError(f"bundle {machine_type}/{scope}/{version} is incomplete: {rel} is missing ({uri})")
        data = _read_bytes(uri)
        if _sha256(data) != info.get("sha256"):
            raise RegistryError(
                f"bundle {machine_type}/{scope}/{version}: {rel} does not match its manifest hash "
                f"(sha256 {_sha256(data)[:16]}… ≠ {str(info.get('sha256'))[:16]}…); the file was changed or corrupted"
            )
        blobs[rel] = data
    members: list[Member] = []
    for entry in m.get("members", []):
        name = validate_name(entry.get("name"), "member name")
        rel = entry.get("path", _rel("members", name))
        meta_rel, state_rel = f"{rel}/{ckpt_io.META_FILE}", f"{rel}/{ckpt_io.STATE_FILE}"
        for need in (meta_rel, state_rel):
            if need not in blobs:
                raise RegistryError(f"bundle {machine_type}/{scope}/{version}: member {name!r} lacks {need} in the manifest")
        try:
            meta = json.loads(blobs[meta_rel])
            method = ckpt_io.build(meta)
            state = torch.load(io.BytesIO(blobs[state_rel]), map_location=device, weights_only=True)
            method.load_state_dict(state)
            if entry.get("score_variant"):
                method.set_score_variant(entry["score_variant"])  # chosen on validation by the member's run
            detector = None
            if entry.get("detector"):
                from stethoscope.detectors.stage import GroupedDetector

                det_rel = f"{rel}/{entry['detector']['file']}"
                if det_rel not in blobs:
                    raise RegistryError(f"bundle {machine_type}/{scope}/{version}: member {name!r} lacks {det_rel} "
                                        "in the manifest")
                detector = GroupedDetector.from_state(
                    torch.load(io.BytesIO(blobs[det_rel]), map_location="cpu", weights_only=True))
        except StethoscopeError as exc:
            raise RegistryError(f"bundle {machine_type}/{scope}/{version}: member {name!r} cannot be loaded: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - torch's unpickler errors, bad state shapes: report, never run
            raise RegistryError(
                f"bundle {machine_type}/{scope}/{version}: member {name!r} cannot be loaded "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        method.to(device)
        method.eval()
        members.append(Member(name, method, meta, float(entry["weight"]), detector))
    ensemble = Ensemble.from_dict(m["ensemble"])
    if ensemble.members != [x.name for x in members]:
        raise RegistryError(f"bundle {machine_type}/{scope}/{version}: ensemble members {ensemble.members} do not "
                            f"match the member list {[x.name for x in members]}")
    threshold = GammaThreshold.from_dict(m["threshold"])
    return Bundle(root, machine_type, scope, version, m, members, ensemble, threshold)


def machine_types(root: str | os.PathLike) -> list[str]:
    """Machine types with at least one published bundle (any scope), sorted."""
    root = _root(root)
    out = []
    for mt in storage.listdir(root):
        if not NAME_PATTERN.fullmatch(mt) or set(mt) == {"."}:
            continue
        if any(storage.exists(storage.join(root, mt, sc, CURRENT)) for sc in storage.listdir(storage.join(root, mt))):
            out.append(mt)
    return sorted(out)


def _check_summary(summary: dict[str, Any], where: str) -> dict[str, Any]:
    """``summary`` if it holds what serving needs (a positive integer ``sample_rate``, an ``id_field``, at least
    one member with a name, method and numeric weight, a numeric threshold), else RegistryError naming the field."""
    def bad(field_: str, expected: str) -> RegistryError:
        return RegistryError(f"{where}: manifest field {field_!r} = {summary.get(field_)!r}; expected {expected}")

    sr = summary.get("sample_rate")
    if isinstance(sr, bool) or not isinstance(sr, int) or sr <= 0:
        raise bad("sample_rate", "a positive integer (Hz)")
    if summary.get("id_field") not in ("machine_id", "section"):
        raise bad("id_field", "'machine_id' or 'section'")
    members = summary.get("members")
    if not members or not all(isinstance(x.get("weight"), (int, float)) and x.get("name") and x.get("method")
                              for x in members):
        raise bad("members", "a non-empty list of {name, method, weight}")
    th = summary.get("threshold")
    if isinstance(th, bool) or not isinstance(th, (int, float)) or not math.isfinite(th):
        raise bad("threshold", "a finite number (threshold.value)")
    return summary


def list_bundles(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Summaries (:func:`summarize_manifest`) of every current bundle, sorted by machine type and scope.

    A bundle whose ``CURRENT`` or manifest cannot be read, or whose manifest lacks what serving needs
    (:func:`_check_summary`), is listed as ``{"machine_type", "scope", "error"}`` instead, so a broken bundle is
    reported rather than dropped.

    Raises:
        RegistryError: ``root`` does not exist or is not a folder (a vanished registry is not an empty one).
    """
    root = _root(root)
    fs, path = storage.resolve(root)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise RegistryError(f"the registry {root} does not exist (was it moved or deleted?)")
    if kind != pafs.FileType.Directory:
        raise RegistryError(f"the registry {root} is not a folder")
    out = []
    folders = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.Directory)
    for mt in folders:
        if not NAME_PATTERN.fullmatch(mt) or set(mt) == {"."}:
            continue
        for sc in storage.listdir(storage.join(root, mt)):
            if not storage.exists(storage.join(root, mt, sc, CURRENT)):
                continue
            try:
                m = read_manifest(root, mt, sc)
                out.append(_check_summary(summarize_manifest(m), f"bundle {mt}/{sc}/{m['version']}"))
            except (RegistryError, KeyError, TypeError, AttributeError, ValueError) as exc:
                detail = str(exc) if isinstance(exc, RegistryError) else f"malformed manifest ({type(exc).__name__}: {exc})"
                out.append({"machine_type": mt, "scope": sc, "error": detail})
    return out


def resolve_scope(root: str | os.PathLike, machine_type: str, group: str | None) -> str:
    """The scope that serves ``machine_type`` / ``group`` (``id_XX`` / ``section_XX``): that group's own bundle if
    one is published, else ``all``.

    Raises:
        BundleNotFound: neither exists (``known`` lists the published machine types).
    """
    root = _root(root)
    validate_name(machine_type, "machine type")
    for scope in ([group] if group else []) + [SCOPE_ALL]:
        if storage.exists(storage.join(_bundle_dir(root, machine_type, scope), CURRENT)):
            return scope
    known = machine_types(root)
    if machine_type in known:
        scopes = [sc for sc in storage.listdir(storage.join(root, machine_type))
                  if storage.exists(storage.join(root, machine_type, sc, CURRENT))]
        raise BundleNotFound(
            f"machine type {machine_type!r} has no bundle for {group!r} and no machine-wide bundle; published: {scopes}",
            known,
        )
    raise BundleNotFound(f"unknown machine type {machine_type!r}; published machine types: {known}", known)


# ---------------------------------------------------------------------------------------------------------------
# writing
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
            (:mod:`stethoscope.checkpoint`). The files are copied byte for byte and hashed.
        ensemble / threshold: fitted on the members' scores (:func:`stethoscope.evaluation.ensemble.fit_ensemble`,
            :func:`stethoscope.evaluation.threshold.fit_gamma_threshold`).
        metrics: JSON-serializable (e.g. ``{"validation": {...}, "test_heldout": {...}}``).
        scope: ``all`` or ``id_XX`` / ``section_XX``. dataset: "dcase2020" (machine_id) or "dcase2021+" (section).
        score_variants: member name → the score variant it serves with (chosen on validation by its run,
            ``score_variant.json``); recorded per member and applied by :func:`load_bundle`.
        detectors: member name → the detector file its run's detector stage chose for this machine type
            (``detectors/<machine_type>.pt``); copied as ``members/<name>/detector.pt``, hashed, and used by
            :meth:`Bundle.score_waveforms` on the member's embeddings.
    Raises:
        RegistryError: unsafe names, members that do not match the ensemble, checkpoints that do not load with
            ``weights_only=True``, or members at different sample rates.
    """
    from stethoscope import checkpoint as ckpt_io
    from stethoscope.runs import apply_score_variant, git_commit

    root = _root(root)
    validate_name(machine_type, "machine type")
    validate_name(scope, "scope")
    names = [validate_name(n, "member name") for n, _ in members]
    if names != list(ensemble.members):
        raise RegistryError(f"members {names} do not match the ensemble's {list(ensemble.members)}")
    version = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    entries, specs, rates = [], [], set()
    with tempfile.TemporaryDirectory(prefix="stethoscope-bundle-") as tmp:
        stage = Path(tmp)
        files: dict[str, dict[str, Any]] = {}
        for (name, folder), weight, st in zip(members, ensemble.weights, ensemble.standardizers):
            folder = Path(folder)
            variant = (score_variants or {}).get(name)
            try:
                method, meta = ckpt_io.load(folder)  # weights_only=True: proves the checkpoint is safe to serve
                apply_score_variant(method, {"selected": variant} if variant else None)
            except StethoscopeError as exc:
                raise RegistryError(f"member {name!r}: {exc}") from None
            dest = stage / "members" / name
            dest.mkdir(parents=True)
            for fname in (ckpt_io.STATE_FILE, ckpt_io.META_FILE):
                shutil.copyfile(folder / fname, dest / fname)
                data = (dest / fname).read_bytes()
                files[_rel("members", name, fname)] = {"sha256": _sha256(data), "bytes": len(data)}
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
                data = (dest / "detector.pt").read_bytes()
                files[_rel("members", name, "detector.pt")] = {"sha256": _sha256(data), "bytes": len(data)}
            specs.extend(method.inputs.values())
            rates.update(int(sp.sample_rate) for sp in method.inputs.values())
            entries.append({
                "name": name,
                "method": method.name,
                "path": _rel("members", name),
                "weight": float(weight),
                "standardizer": st.to_dict(),
                "inputs": {k: input_spec_to_dict(v) for k, v in method.inputs.items()},
                "input_spec_hashes": {k: v.hash() for k, v in method.inputs.items()},
                "groups": list(method.vocab.group),
                "labels": list(method.labels),
                "can_localize": bool(method.can_localize),
                "source": str(folder),
                "seed": meta.get("seed"),
                **({"score_variant": variant} if variant else {}),
                **({"detector": det_entry} if det_entry else {}),
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
            "id_field": "machine_id" if dataset == "dcase2020" else "section",
            "sample_rate": rates.pop(),
            "input_specs": sorted({sp.hash(): input_spec_to_dict(sp) for sp in specs}.items()),
            "members": entries,
            "ensemble": ensemble.to_dict(),
            "threshold": threshold.to_dict(),
            "metrics": metrics,
            "files": files,
            **(extra or {}),
        }
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False, default=_json_default) + "\n"
        (stage / MANIFEST).write_text(text)
        dest_uri = _bundle_dir(root, machine_type, scope, version)
        _copy_tree(stage, dest_uri)
    storage.write_json(storage.join(_bundle_dir(root, machine_type, scope), CURRENT), {"version": version})
    log.info("published %s/%s version %s (%d member(s)) to %s", machine_type, scope, version, len(entries), root)
    return json.loads(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _copy_tree(local: Path, dest_uri: str) -> None:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(dest_uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


# ---------------------------------------------------------------------------------------------------------------
# publishing trained runs
# ---------------------------------------------------------------------------------------------------------------
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
        return self.manifest["machine_type"]


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    """Read a run folder written by the pipeline / train + evaluate jobs, and check its files against its split
    (:func:`stethoscope.runs.verify_run`).

    Raises:
        RegistryError: a missing file (run.json, model/, validation_split.json, scores.parquet,
            train_scores.parquet), a split file changed since the run wrote it, or scores whose clips or roles do not
            match the split (the message names the run and what disagrees).
    """
    from stethoscope import checkpoint as ckpt_io
    from stethoscope import runs

    p = Path(run_dir).resolve()
    missing = [f for f in (runs.RUN_JSON, f"{runs.MODEL_DIR}/{ckpt_io.META_FILE}",
                           f"{runs.MODEL_DIR}/{ckpt_io.STATE_FILE}", runs.SCORES) if not (p / f).is_file()]
    if missing:
        raise RegistryError(f"{p} is not a complete run folder: missing {missing} (train and evaluate it first)")
    try:
        manifest = runs.read_manifest(p)
        split = runs.verify_run(p, manifest)
    except DataError as exc:
        raise RegistryError(f"run {p.name} cannot be published: {exc}") from None
    return RunInfo(p, manifest, ckpt_io.read_meta(p / runs.MODEL_DIR), split)


def discover_runs(roots: Iterable[str | os.PathLike]) -> tuple[list[RunInfo], list[tuple[str, str]]]:
    """Every complete run folder at or below ``roots`` (a folder holding ``run.json`` and ``model/``).

    Returns ``(runs, skipped)``; ``skipped`` lists ``(folder, reason)`` for incomplete or inconsistent ones (e.g. a
    crashed run, or one whose split file was edited).
    """
    runs, skipped, seen = [], [], set()
    for r in roots:
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


def _split_metrics(y: np.ndarray, s: np.ndarray, max_fpr: float) -> dict[str, Any]:
    from stethoscope.evaluation.metrics import auc, pauc

    n_normal, n_anomaly = int((y == 0).sum()), int((y == 1).sum())
    out: dict[str, Any] = {"n_normal": n_normal, "n_anomaly": n_anomaly, "auc": None, "pauc": None, "reason": None}
    if n_normal and n_anomaly:
        out["auc"], out["pauc"] = auc(y, s), pauc(y, s, max_fpr)
    else:
        out["reason"] = f"needs normal and anomalous clips (n_normal={n_normal}, n_anomaly={n_anomaly})"
    return out


def _shared_split(machine_type: str, group: Sequence[RunInfo]):
    """The one split every run of ``group`` was made with; RegistryError naming the runs and clips that differ."""
    first = group[0]
    for info in group[1:]:
        for part in ("validation", "test"):
            a, b = set(first.split.part(part)), set(info.split.part(part))
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
       clips and grid-searches convex weights on them only; zero-weight members are dropped. Without both classes
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
    out_base = Path(out_dir) if out_dir is not None else (
        infos[0].path.parent / f"publish-{time.strftime('%Y%m%d-%H%M%S')}")
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
    for info in infos:
        by_machine.setdefault(validate_name(info.machine_type, "machine type"), []).append(info)

    results = []
    for machine_type, group in sorted(by_machine.items()):
        split = _shared_split(machine_type, group)
        roles = split.roles()
        frames = [pd.read_parquet(info.path / run_files.SCORES) for info in group]
        meta_cols = [c for c in ("path", "file_name", "dataset", "machine_type", "machine_id", "section", "domain",
                                 "split", "label") if c in frames[0].columns]
        clips = frames[0][meta_cols].copy()
        for f in frames[1:]:
            clips = clips[clips["path"].isin(set(f["path"]))]
        datasets = sorted(set(clips["dataset"]))
        if len(datasets) != 1:
            raise DataError(f"{machine_type}: runs mix dataset grammars {datasets}; publish them separately")
        dataset = datasets[0]
        id_field = "machine_id" if dataset == "dcase2020" else "section"
        if scope != SCOPE_ALL:
            clips = clips[[group_scope(id_field, str(v)) == scope for v in clips[id_field]]]
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
            t = pd.read_parquet(info.path / run_files.TRAIN_SCORES)
            if scope != SCOPE_ALL:
                t = t[[group_scope(id_field, str(v)) == scope for v in t[id_field]]]
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
        ensemble = fit_ensemble(names, [train_raw[:, j] for j in range(len(names))], test_raw[vmask],
                                y_all[vmask], step=step, max_members=max_members, max_fpr=max_fpr)
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
        metrics = {
            "objective": "validation (AUC + pAUC) / 2 selects members and weights",
            "max_fpr": max_fpr,
            "validation": _split_metrics(y_all[vmask], score[vmask], max_fpr),
            "test_heldout": {**_split_metrics(y_all[tmask], score[tmask], max_fpr),
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

        members = [(n, str(group[names.index(n)].path / run_files.MODEL_DIR)) for n in ensemble.members]
        variants = {n: (run_files.read_score_variant(group[names.index(n)].path) or {}).get("selected")
                    for n in ensemble.members}
        manifest = write_bundle(registry, machine_type=machine_type, members=members, ensemble=ensemble,
                                threshold=threshold, metrics=metrics, scope=scope, dataset=dataset,
                                score_variants={n: v for n, v in variants.items() if v},
                                detectors={n: str(f) for n in ensemble.members
                                           if (f := run_files.detector_file(group[names.index(n)].path,
                                                                            machine_type)) is not None},
                                extra={"validation_split": {"sha256": split_sha, "fingerprint": split.fingerprint,
                                                            "source": split.source, "seed": split.seed,
                                                            "fractions": split.fractions,
                                                            "n_validation": int(vmask.sum()),
                                                            "n_test": int(tmask.sum())},
                                       "evaluation_dir": str(out)})
        results.append(PublishResult(machine_type, scope, manifest["version"], manifest, ensemble, threshold,
                                     str(out), table))
    return results


def format_publish_table(results: Sequence[PublishResult]) -> str:
    """machine → members, weights, threshold, validation AUC and pAUC (and held-out test AUC / pAUC)."""

    def f(v: Any) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    head = ["machine", "members", "weights", "threshold", "val AUC", "val pAUC", "test AUC", "test pAUC", "version"]
    rows = []
    for r in results:
        v, t = r.manifest["metrics"]["validation"], r.manifest["metrics"]["test_heldout"]
        rows.append([
            f"{r.machine_type}/{r.scope}",
            ", ".join(r.ensemble.members),
            ", ".join(f"{w:.2f}" for w in r.ensemble.weights),
            f"{r.threshold.value:.4f}",
            f(v.get("auc")), f(v.get("pauc")), f(t.get("auc")), f(t.get("pauc")),
            r.version,
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


__all__ = [
    "Bundle",
    "BundleNotFound",
    "FORMAT_VERSION",
    "Member",
    "PublishResult",
    "RegistryError",
    "RunInfo",
    "SCOPE_ALL",
    "current_version",
    "discover_runs",
    "format_publish_table",
    "group_scope",
    "list_bundles",
    "load_bundle",
    "machine_types",
    "publish_runs",
    "read_manifest",
    "read_run",
    "resolve_scope",
    "safe_name",
    "validate_name",
    "write_bundle",
]

