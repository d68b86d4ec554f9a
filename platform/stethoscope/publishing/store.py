"""The bundle store: where published bundles live, how they are named, listed, read, verified and written.

A *bundle* is the detector for one machine type, or for one machine_id / section of it (:mod:`.bundle` loads and
scores it; :mod:`.publish` builds it). The store root (``--registry``) is a local folder or any pyarrow-filesystem
URI (``s3://…``)::

    <root>/<machine_type>/<scope>/CURRENT                      {"version": "<version>"}, written last
    <root>/<machine_type>/<scope>/<version>/manifest.json       describes the bundle (below)
    <root>/<machine_type>/<scope>/<version>/members/<name>/state.pt, meta.json[, detector.pt]   one per member

``scope`` is ``all`` (the whole machine type) or ``id_<XX>`` / ``section_<XX>``
(:func:`stethoscope.data.labels.group_of`). Publishing never overwrites: each publish writes a new version folder
and then moves ``CURRENT`` (:func:`commit_bundle`), so a server reading the store never sees a half-written bundle.

Safety: machine types, scopes, versions and member names must match ``[A-Za-z0-9_.-]+`` and may not be ``.`` or
``..``, so no name can leave the store root. Every file's SHA-256 must match the manifest before anything is
loaded (:func:`read_bundle_files`).

manifest.json (``format_version`` 2; version 1 bundles, with one ``feature_spec`` per member, still load)::

    {"format": "stethoscope-bundle", "format_version": 2, "machine_type", "scope", "version", "created" (UTC ISO 8601),
     "git_commit", "dataset" ("dcase2020" | "dcase2021+"), "id_field" ("machine_id" | "section"), "sample_rate" (Hz),
     "input_specs" ([[spec hash, input spec dict], ...]: every input any member reads, computed once per request),
     "members": [{"name", "method", "path", "weight", "standardizer": {"mean", "std", "n"},
     "inputs" ({input name: input spec dict}), "input_spec_hashes", "groups" (the member's group vocabulary,
     e.g. ["slider/id_00"]), "labels" (the label keys it reads), "can_localize", "source", "seed",
     "score_variant"?, "detector"? ({"file", "label", "groups"})}], "ensemble": {...},
     "threshold": {"method": "gamma" | "max_train_normal", "value", "quantile", "shape", "loc", "scale", "n", "reason"},
     "metrics": {"validation": {...}, "test_heldout": {...}, "notes": [...]},
     "validation_split": {"sha256", "fingerprint", "source", "seed", ...},
     "files": {"<relative path>": {"sha256", "bytes"}}, ...}
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from stethoscope import storage
from stethoscope.errors import StethoscopeError

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


def rel(*parts: str) -> str:
    """A bundle-relative path (``members/ae/state.pt``)."""
    return "/".join(parts)


def bundle_dir(root: str, machine_type: str, scope: str, version: str | None = None) -> str:
    """URI of ``<root>/<machine_type>/<scope>[/<version>]``; every part checked by :func:`validate_name`."""
    parts = [validate_name(machine_type, "machine type"), validate_name(scope, "scope")]
    if version is not None:
        parts.append(validate_name(version, "version"))
    return storage.join(str(root), *parts)


def root_uri(root: str | os.PathLike) -> str:
    """The store root as given if it is a URI, else as an absolute local path."""
    root = str(root)
    return root if "://" in root else os.path.abspath(root)


def read_bytes(uri: str) -> bytes:
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the manifest's ``files`` digests)."""
    return hashlib.sha256(data).hexdigest()


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of a local file (a manifest ``files`` entry)."""
    data = Path(path).read_bytes()
    return {"sha256": sha256(data), "bytes": len(data)}


# ---------------------------------------------------------------------------------------------------------------
# manifests
# ---------------------------------------------------------------------------------------------------------------
def min_samples(spec: dict) -> int:
    """Samples needed for one STFT window and ``n_frames`` frames: max(n_fft, (n_frames - 1) · hop_length)."""
    return max(int(spec.get("n_fft", 1)), (int(spec.get("n_frames", 1)) - 1) * int(spec.get("hop_length", 1)), 1)


def _member_specs(entry: dict) -> list[dict]:
    """A manifest member's input spec dicts (``inputs``; older manifests: ``feature_spec``)."""
    if entry.get("inputs"):
        return list(entry["inputs"].values())
    return [entry["feature_spec"]] if entry.get("feature_spec") else [{}]


def summarize_manifest(m: dict) -> dict[str, Any]:
    """Machine, scope, version, sample rate (Hz), shortest scorable clip (``min_samples``, samples), members
    (name, method, weight), the groups of this machine type the members were trained on (``groups``: ``id_XX`` /
    ``section_XX``, sorted), threshold and metrics of a manifest."""
    return {
        "machine_type": m["machine_type"],
        "scope": m["scope"],
        "version": m["version"],
        "created": m.get("created"),
        "git_commit": m.get("git_commit"),
        "dataset": m.get("dataset"),
        "id_field": m.get("id_field"),
        "sample_rate": m.get("sample_rate"),
        "clip_seconds": m.get("clip_seconds"),
        "min_samples": max((min_samples(spec) for x in m.get("members", []) for spec in _member_specs(x)),
                           default=1),
        "members": [
            {"name": x["name"], "method": x["method"], "weight": x["weight"], "can_localize": x.get("can_localize")}
            for x in m.get("members", [])
        ],
        "groups": sorted({g.partition("/")[2] for x in m.get("members", []) for g in x.get("groups") or []
                          if g.partition("/")[0] == m["machine_type"]}),
        "threshold": m.get("threshold", {}).get("value"),
        "metrics": m.get("metrics", {}),
    }


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------
def current_version(root: str | os.PathLike, machine_type: str, scope: str = SCOPE_ALL) -> str:
    """The version ``CURRENT`` points to. Raises BundleNotFound (with the known machine types) if there is none."""
    root = root_uri(root)
    uri = storage.join(bundle_dir(root, machine_type, scope), CURRENT)
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
    root = root_uri(root)
    version = version or current_version(root, machine_type, scope)
    uri = storage.join(bundle_dir(root, machine_type, scope, version), MANIFEST)
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


def read_bundle_files(root: str | os.PathLike, manifest: dict) -> dict[str, bytes]:
    """Every file the manifest lists, read into memory after checking its name and its SHA-256.

    Args:
        root: store root. manifest: as :func:`read_manifest` returned it.
    Returns:
        bundle-relative path → bytes (callers load from these verified bytes, never from disk again).
    Raises:
        RegistryError: an unsafe path component, a missing file, or a hash mismatch.
    """
    machine_type, scope, version = manifest["machine_type"], manifest["scope"], manifest["version"]
    base = bundle_dir(root_uri(root), machine_type, scope, version)
    blobs: dict[str, bytes] = {}
    for rel_path, info in sorted((manifest.get("files") or {}).items()):
        parts = rel_path.split("/")
        for p in parts:
            validate_name(p, f"path component of {rel_path!r}")
        uri = storage.join(base, *parts)
        if not storage.exists(uri):
            raise RegistryError(f"bundle {machine_type}/{scope}/{version} is incomplete: {rel_path} is missing ({uri})")
        data = read_bytes(uri)
        if sha256(data) != info.get("sha256"):
            raise RegistryError(
                f"bundle {machine_type}/{scope}/{version}: {rel_path} does not match its manifest hash "
                f"(sha256 {sha256(data)[:16]}… ≠ {str(info.get('sha256'))[:16]}…); the file was changed or corrupted"
            )
        blobs[rel_path] = data
    return blobs


def machine_types(root: str | os.PathLike) -> list[str]:
    """Machine types with at least one published bundle (any scope), sorted."""
    root = root_uri(root)
    out = []
    for mt in storage.listdir(root):
        if not NAME_PATTERN.fullmatch(mt) or set(mt) == {"."}:
            continue
        if any(storage.exists(storage.join(root, mt, sc, CURRENT)) for sc in storage.listdir(storage.join(root, mt))):
            out.append(mt)
    return sorted(out)


def published_scopes(root: str | os.PathLike, machine_type: str) -> list[str]:
    """The scopes of ``machine_type`` that have a ``CURRENT`` bundle, sorted (``[]`` if none)."""
    root = root_uri(root)
    base = storage.join(root, validate_name(machine_type, "machine type"))
    return sorted(sc for sc in storage.listdir(base) if storage.exists(storage.join(base, sc, CURRENT)))


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
    root = root_uri(root)
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


# ---------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------
def new_version() -> str:
    """A fresh version name: ``<UTC time>-<8 hex digits>`` (sorts by time; never reused)."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def commit_bundle(root: str | os.PathLike, stage: Path, manifest: dict) -> dict:
    """Write ``manifest`` into the local folder ``stage`` (which holds the files it lists), copy the folder to
    ``<root>/<machine_type>/<scope>/<version>/``, then point ``CURRENT`` at it. Returns the manifest as written.

    Raises:
        RegistryError: an unsafe machine type, scope or version. ValueError: a manifest that is not JSON (NaN).
    """
    root = root_uri(root)
    machine_type, scope, version = manifest["machine_type"], manifest["scope"], manifest["version"]
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False, default=_json_default) + "\n"
    (stage / MANIFEST).write_text(text)
    _copy_tree(stage, bundle_dir(root, machine_type, scope, version))
    storage.write_json(storage.join(bundle_dir(root, machine_type, scope), CURRENT), {"version": version})
    return json.loads(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _copy_tree(local: Path, dest_uri: str) -> None:
    fs, path = storage.resolve(dest_uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


__all__ = [
    "BundleNotFound",
    "CURRENT",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "RegistryError",
    "SCOPE_ALL",
    "SUPPORTED_FORMAT_VERSIONS",
    "bundle_dir",
    "commit_bundle",
    "current_version",
    "file_entry",
    "list_bundles",
    "machine_types",
    "min_samples",
    "new_version",
    "published_scopes",
    "read_bundle_files",
    "read_manifest",
    "root_uri",
    "safe_name",
    "sha256",
    "summarize_manifest",
    "validate_name",
]
