"""Loaded bundles and how requests find them: :func:`load_bundle`, :class:`Bundle` (scoring clips with every
member and the ensemble), and scope resolution (:func:`scope_for`, :func:`resolve_scope`).

Which group a clip or a request belongs to (``id_XX`` for a DCASE 2020 machine_id, ``section_XX`` for a 2021+
section, ``<machine_type>/<group>`` across machine types) is named in one place, :mod:`stethoscope.data.labels`
(:func:`~stethoscope.data.labels.request_group`, :func:`~stethoscope.data.labels.parse_group`,
:func:`~stethoscope.data.labels.group_key`); this module decides which published scope serves a group: the group's
own bundle (``id_XX`` / ``section_XX``) if one is published, else the machine-wide one (``all``).

Checkpoints load with ``torch.load(weights_only=True)`` from bytes whose SHA-256 the store has checked
(:func:`stethoscope.publishing.store.read_bundle_files`); no pickled Python object ever runs.
"""

from __future__ import annotations

import io
import json
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from stethoscope.data.labels import join_group_key, parse_group
from stethoscope.errors import DataError, StethoscopeError
from stethoscope.evaluation.ensemble import Ensemble
from stethoscope.evaluation.threshold import GammaThreshold
from stethoscope.publishing.store import (
    SCOPE_ALL,
    BundleNotFound,
    RegistryError,
    machine_types,
    min_samples,
    published_scopes,
    read_bundle_files,
    read_manifest,
    rel,
    root_uri,
    summarize_manifest,
    validate_name,
)


# ---------------------------------------------------------------------------------------------------------------
# one in-memory copy of each model per process
# ---------------------------------------------------------------------------------------------------------------
#: Loaded models by (meta SHA-256, state SHA-256, score variant, device): an all_machine_types run publishes the same
#: checkpoint into every machine type's bundle, and a serving replica that loads several of those bundles keeps ONE
#: copy of the weights (issue 13: "serving loads the shared weights once"). Weak values: a model is freed when the
#: last bundle that holds it is evicted (``@serve.multiplexed``'s LRU).
_MODELS: "weakref.WeakValueDictionary[tuple, Any]" = weakref.WeakValueDictionary()
_MODELS_LOCK = threading.Lock()


def _load_model(meta_bytes: bytes, meta_sha: str, state_bytes: bytes, state_sha: str, score_variant: str | None,
                device: str | torch.device):
    """The Method in these verified checkpoint bytes, in eval mode on ``device``; the same object for the same bytes
    while any bundle holds it (models are read-only at inference: eval mode, no gradient)."""
    from stethoscope import checkpoint as ckpt_io

    key = (meta_sha, state_sha, score_variant or "", str(torch.device(device)))
    with _MODELS_LOCK:  # one build per key even when two bundles load at once (serve loads in threads)
        method = _MODELS.get(key)
        if method is None:
            method = ckpt_io.build(json.loads(meta_bytes))
            method.load_state_dict(torch.load(io.BytesIO(state_bytes), map_location=device, weights_only=True))
            if score_variant:
                method.set_score_variant(score_variant)  # chosen on validation by the member's run
            method.to(device)
            method.eval()
            _MODELS[key] = method
    return method


# ---------------------------------------------------------------------------------------------------------------
# scope resolution
# ---------------------------------------------------------------------------------------------------------------
def scope_for(scopes: Iterable[str], group: str | None) -> str | None:
    """The scope among the published ``scopes`` that serves ``group`` (``id_XX`` / ``section_XX``): the group's
    own scope if published, else ``all`` if published, else None. ``group`` None asks for ``all``."""
    scopes = set(scopes)
    for scope in ([group] if group else []) + [SCOPE_ALL]:
        if scope in scopes:
            return scope
    return None


def resolve_scope(root: str | os.PathLike, machine_type: str, group: str | None) -> str:
    """The scope that serves ``machine_type`` / ``group`` (``id_XX`` / ``section_XX``): that group's own bundle if
    one is published, else ``all``.

    Raises:
        BundleNotFound: neither exists (``known`` lists the published machine types).
    """
    root = root_uri(root)
    validate_name(machine_type, "machine type")
    scopes = published_scopes(root, machine_type)
    scope = scope_for(scopes, group)
    if scope is not None:
        return scope
    known = machine_types(root)
    if machine_type in known:
        raise BundleNotFound(
            f"machine type {machine_type!r} has no bundle for {group!r} and no machine-wide bundle; published: {scopes}",
            known,
        )
    raise BundleNotFound(f"unknown machine type {machine_type!r}; published machine types: {known}", known)


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
    #: per_id members: one Method per group (``id_XX`` / ``section_XX``); ``method`` is the first of them.
    group_methods: dict[str, Any] = field(default_factory=dict)

    def method_for(self, group: str | None):
        """The Method that scores clips of ``group``: the member's one model, or (per_id members) its group's.

        Raises:
            DataError: a per_id member asked for no group while it has several, or for a group it has no model of
                (the message lists the known groups).
        """
        if not self.group_methods:
            return self.method
        if group is None and len(self.group_methods) == 1:
            return next(iter(self.group_methods.values()))
        if group not in self.group_methods:
            raise DataError(f"member {self.name!r} holds one model per group; it has none for {group!r} "
                            f"(known groups: {sorted(self.group_methods)})")
        return self.group_methods[group]


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
        return max(min_samples(spec.to_dict()) for m in self.members for spec in m.method.inputs.values())

    def score_waveforms(
        self, waves: Sequence[np.ndarray], group: str | None = None, *, want_map: bool = False
    ) -> list[dict[str, Any]]:
        """Score mono waveforms at :attr:`sample_rate` Hz with every member and combine them.

        Each distinct input spec of the members is computed once per clip (members that share a spec share it).

        Args:
            waves: B arrays [samples] float32 (as :func:`stethoscope.data.audio.decode_audio` returns them).
            group: ``id_XX`` / ``section_XX`` of the clips, for members that read the group label. A group a member
                was not trained on is a DataError naming the known ones (unless the member's method handles
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
            id_name, value = parse_group(group)
            meta[id_name] = [value] * n
        for j, member in enumerate(self.members):
            method = member.method_for(group)
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
                        # AITHU's domain classifier: standardize with the predicted domain's training statistics
                        doms = [method.vocab.domain[k] for k in method.predict_domain(batch).tolist()] \
                            if getattr(method, "predicts_domain", False) else None
                        s = member.detector.decision_function(emb, [self._detector_key(member, group)] * len(idx),
                                                              doms)
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
        key = join_group_key(self.machine_type, group)
        if key not in member.detector.fitted and "*" not in member.detector.fitted:
            raise DataError(f"member {member.name!r} has no detector for group {group!r}; known groups: "
                            f"{[k.split('/', 1)[-1] for k in known]}")
        return key

    def describe(self) -> dict[str, Any]:
        """The public summary ``GET /v1/models`` lists (no file hashes)."""
        return summarize_manifest(self.manifest)


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

    root = root_uri(root)
    m = read_manifest(root, machine_type, scope, version)
    version = m["version"]
    blobs = read_bundle_files(root, m)
    members: list[Member] = []
    for entry in m.get("members", []):
        name = validate_name(entry.get("name"), "member name")
        member_dir = entry.get("path", rel("members", name))
        # per_id members: one model per group under members/<name>/<group>/ (``group_models``)
        model_rels = ({g: f"{member_dir}/{validate_name(g, 'group')}" for g in (entry.get("group_models") or {})}
                      or {None: member_dir})
        for mrel in model_rels.values():
            for need in (f"{mrel}/{ckpt_io.META_FILE}", f"{mrel}/{ckpt_io.STATE_FILE}"):
                if need not in blobs:
                    raise RegistryError(f"bundle {machine_type}/{scope}/{version}: member {name!r} lacks {need} in "
                                        "the manifest")
        try:
            group_methods = {}
            files = m.get("files") or {}
            for g, mrel in model_rels.items():
                meta_rel, state_rel = f"{mrel}/{ckpt_io.META_FILE}", f"{mrel}/{ckpt_io.STATE_FILE}"
                meta = json.loads(blobs[meta_rel])
                group_methods[g] = _load_model(blobs[meta_rel], files[meta_rel]["sha256"], blobs[state_rel],
                                               files[state_rel]["sha256"], entry.get("score_variant"), device)
            method = next(iter(group_methods.values()))
            detector = None
            if entry.get("detector"):
                from stethoscope.detectors.stage import GroupedDetector

                det_rel = f"{member_dir}/{entry['detector']['file']}"
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
        members.append(Member(name, method, meta, float(entry["weight"]), detector,
                              {g: m for g, m in group_methods.items() if g is not None}))
    ensemble = Ensemble.from_dict(m["ensemble"])
    if ensemble.members != [x.name for x in members]:
        raise RegistryError(f"bundle {machine_type}/{scope}/{version}: ensemble members {ensemble.members} do not "
                            f"match the member list {[x.name for x in members]}")
    threshold = GammaThreshold.from_dict(m["threshold"])
    return Bundle(root, machine_type, scope, version, m, members, ensemble, threshold)


__all__ = ["Bundle", "Member", "load_bundle", "resolve_scope", "scope_for"]
