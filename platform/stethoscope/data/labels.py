"""Clip labels as integer indices, and the vocabularies that map them (DESIGN.md, the Method contract).

Every clip has a machine type, a *group* — its machine_id (DCASE 2020) or section (DCASE 2021-2024) — and, on
2021+ data, a domain (source / target) and attributes parsed from its file name (``speed_6``, ``noise_low`` ...).
This module is the one place that names them:

- :func:`id_field` — which clip field names the group: ``machine_id`` (DCASE 2020) or ``section`` (2021+);
- :func:`local_group` — ``id_00`` / ``section_01``: the group within its machine type (bundle scopes, score files);
  :func:`group_of` builds it from a validated field and value, :func:`parse_group` takes it apart, and
  :func:`request_group` says which group a scoring request (machine_id or section) maps to;
- :func:`group_key` — ``fan/id_00``: the group across machine types (a machine-ID classifier over the 41 IDs of
  DCASE 2020 predicts this);
- :class:`Vocab` — the label vocabularies of a training set, saved in every checkpoint and bundle, and
  :meth:`Vocab.encode`, which turns clip metadata into the integer label arrays a batch carries:

  ============================  =========================  ==============================================
  batch key                     dtype, shape               meaning
  ============================  =========================  ==============================================
  ``machine_type``              int64 [B]                  index into ``vocab.machine_type``
  ``group``                     int64 [B]                  index into ``vocab.group`` (``fan/id_00``)
  ``domain``                    int64 [B]                  index into ``vocab.domain`` (source, target)
  ``attr:<name>``               int64 [B]                  index into ``vocab.attributes[name]``
  ``attr_value:<name>``         float32 [B]                numeric value (only for numeric attributes)
  ============================  =========================  ==============================================

A class that was not in the training set is never a silent −1: :meth:`Vocab.encode` raises a
:class:`~stethoscope.errors.DataError` naming the value, the clip and the known classes, unless the caller asks for
``unknown="flag"``, which maps it to the explicit :meth:`Vocab.unknown_index` (one past the last known index) and
adds a boolean ``<key>:unknown`` array, so a method that can handle it does so on purpose.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from stethoscope.errors import DataError

#: Label families a Method may train on (``Method.labels``).
LABEL_KEYS = ("machine_type", "group", "domain", "attributes")
ATTR_PREFIX = "attr:"
ATTR_VALUE_PREFIX = "attr_value:"
UNKNOWN_SUFFIX = ":unknown"


def local_group(machine_id: str | None, section: str | None) -> str:
    """The group of a clip within its machine type: ``id_XX`` (DCASE 2020 machine_id) or ``section_XX`` (2021+).

    Raises:
        DataError: neither is set.
    """
    if _present(machine_id):
        return f"id_{machine_id}"
    if _present(section):
        return f"section_{section}"
    raise DataError("a clip has neither a machine_id nor a section; cannot name its group")


def group_key(machine_type: str, machine_id: str | None, section: str | None) -> str:
    """``<machine_type>/<id_XX | section_XX>``: a group that is unique across machine types (e.g. ``fan/id_00``)."""
    return f"{machine_type}/{local_group(machine_id, section)}"


def join_group_key(machine_type: str, group: str) -> str:
    """``("fan", "id_00")`` → ``"fan/id_00"`` (:func:`group_key` from a group already named, e.g. a request's).

    Raises:
        DataError: ``group`` is not ``id_XX`` / ``section_XX`` (:func:`parse_group`).
    """
    parse_group(group)
    return f"{machine_type}/{group}"


def split_group_key(key: str) -> tuple[str, str]:
    """``"fan/id_00"`` → ``("fan", "id_00")``. Raises DataError for a key without one ``/``."""
    parts = key.split("/")
    if len(parts) != 2 or not all(parts):
        raise DataError(f"group key {key!r} is not <machine_type>/<id_XX | section_XX>")
    return parts[0], parts[1]


#: The clip fields that name a group within a machine type, and the prefix of the group's name.
ID_FIELDS = {"machine_id": "id", "section": "section"}
_TWO_DIGITS = re.compile(r"[0-9]{2}")


class MissingGroupError(DataError):
    """A scoring request does not name its group in the field its machine type is identified by."""


def id_field(dataset: str) -> str:
    """The clip field that names a group: ``"machine_id"`` for DCASE 2020 (``dataset == "dcase2020"``),
    ``"section"`` for every later grammar (``"dcase2021+"``)."""
    return "machine_id" if dataset == "dcase2020" else "section"


def group_of(id_name: str, value: Any) -> str:
    """``("machine_id", "00")`` → ``"id_00"``; ``("section", "01")`` → ``"section_01"``.

    Raises:
        DataError: an id field other than machine_id / section, or a value that is not two digits (the message names
            the field and the value).
    """
    if id_name not in ID_FIELDS:
        raise DataError(f"unknown id field {id_name!r}; expected 'machine_id' or 'section'")
    if not isinstance(value, str) or not _TWO_DIGITS.fullmatch(value):
        raise DataError(f"{id_name} {value!r} is not valid: expected two digits, e.g. '00'")
    return f"{ID_FIELDS[id_name]}_{value}"


def parse_group(group: str) -> tuple[str, str]:
    """``"id_00"`` → ``("machine_id", "00")``; ``"section_01"`` → ``("section", "01")`` (the inverse of
    :func:`group_of`).

    Raises:
        DataError: anything else (the message names the value and the two forms).
    """
    prefix, _, value = str(group).rpartition("_")
    for id_name, p in ID_FIELDS.items():
        if prefix == p and _TWO_DIGITS.fullmatch(value):
            return id_name, value
    raise DataError(f"group {group!r} is not valid: expected id_XX (DCASE 2020) or section_XX (2021+), "
                    "XX two digits")


def request_group(machine_type: str, id_name: str, machine_id: str | None = None, section: str | None = None) -> str:
    """The group (``id_XX`` / ``section_XX``) a scoring request for ``machine_type`` maps to, when that machine type
    is identified by ``id_name`` (its bundle's ``id_field``): the request's machine_id for DCASE 2020 bundles, its
    section for 2021+ ones. The other field is ignored.

    Raises:
        MissingGroupError: the request lacks ``id_name`` (the message says which field to send).
        DataError: ``id_name`` is not machine_id / section, or the value is not two digits.
    """
    if id_name not in ID_FIELDS:
        raise DataError(f"unknown id field {id_name!r}; expected 'machine_id' or 'section'")
    value = machine_id if id_name == "machine_id" else section
    if value is None:
        other = "section" if id_name == "machine_id" else "machine_id"
        sent_other = (section if id_name == "machine_id" else machine_id) is not None
        raise MissingGroupError(f"machine_type {machine_type!r} is identified by {id_name} (two digits, e.g. '00'); "
                                f"send {id_name}" + (f", not {other}" if sent_other else ""))
    return group_of(id_name, value)


def group_keys(clips: Mapping[str, Sequence[Any]]) -> list[str]:
    """The :func:`group_key` of every clip of a column mapping (``machine_type``, ``machine_id``, ``section``)."""
    mts = clips["machine_type"]
    n = len(mts)
    mids = clips.get("machine_id")
    secs = clips.get("section")
    mids = list(mids) if mids is not None else [None] * n
    secs = list(secs) if secs is not None else [None] * n
    return [group_key(mts[i], mids[i], secs[i]) for i in range(n)]


def attribute_pairs(value: Any) -> list[tuple[str, str]]:
    """One clip's attributes in any of the forms the index and the feature store give them (a dict, a list of
    ``(key, value)`` pairs, a list of ``{"key", "value"}`` dicts, a JSON object string, None) → a list of
    ``(name, value)`` strings."""
    if isinstance(value, (str, bytes)):
        value = json.loads(value) if value else {}
    elif not _present(value):
        return []
    if isinstance(value, Mapping):
        return [(str(k), str(v)) for k, v in value.items()]
    out = []
    for item in value:
        if isinstance(item, Mapping):
            out.append((str(item["key"]), str(item["value"])))
        else:
            k, v = item
            out.append((str(k), str(v)))
    return out


def _as_number(text: str) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _present(v: Any) -> bool:
    """False for None, NaN and pandas' NA (missing values in any column type)."""
    if v is None:
        return False
    try:
        return not bool(pd.isna(v))
    except (TypeError, ValueError):  # array-like values are present
        return True


@dataclass
class Vocab:
    """Label vocabularies of a training set (sorted, so the indices do not depend on clip order).

    Attributes:
        machine_type: machine types, e.g. ``["fan", "pump"]``.
        group: :func:`group_key` values, e.g. ``["fan/id_00", "fan/id_02", "pump/id_00"]``.
        domain: ``["source", "target"]`` (the domains present), or ``[]`` for data without domains (DCASE 2020).
        attributes: attribute name → its values (strings) in the training clips.
        numeric_attributes: the attribute names whose every training value is a finite number (these also get an
            ``attr_value:<name>`` float label, for regression heads such as MHCR's).
    """

    machine_type: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    domain: list[str] = field(default_factory=list)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    numeric_attributes: list[str] = field(default_factory=list)

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_clips(cls, clips: Mapping[str, Sequence[Any]]) -> "Vocab":
        """The vocabularies of a set of clips (a DataFrame or a column mapping with ``machine_type``,
        ``machine_id``, ``section`` and, when present, ``domain`` and ``attributes``).

        Raises:
            DataError: no clips, or a clip without machine_id and section.
        """
        mts = list(clips["machine_type"])
        if not mts:
            raise DataError("cannot build label vocabularies from zero clips")
        groups = group_keys(clips)
        domains = sorted({d for d in (clips["domain"] if "domain" in clips else []) if _present(d)})
        attrs: dict[str, set[str]] = {}
        if "attributes" in clips:
            for value in clips["attributes"]:
                for k, v in attribute_pairs(value):
                    attrs.setdefault(k, set()).add(v)
        numeric = sorted(k for k, vals in attrs.items() if vals and all(_as_number(v) is not None for v in vals))
        return cls(sorted(set(mts)), sorted(set(groups)), domains, {k: sorted(v) for k, v in sorted(attrs.items())},
                   numeric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (saved in checkpoint and bundle metadata)."""
        return {"machine_type": list(self.machine_type), "group": list(self.group), "domain": list(self.domain),
                "attributes": {k: list(v) for k, v in self.attributes.items()},
                "numeric_attributes": list(self.numeric_attributes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Vocab":
        data = dict(data or {})
        return cls(list(data.get("machine_type", [])), list(data.get("group", [])), list(data.get("domain", [])),
                   {k: list(v) for k, v in dict(data.get("attributes", {})).items()},
                   list(data.get("numeric_attributes", [])))

    # -- sizes ------------------------------------------------------------------------------------------------
    def size(self, key: str) -> int:
        """Number of known classes of a batch key (``group``, ``attr:speed`` ...)."""
        return len(self._values(key))

    def unknown_index(self, key: str) -> int:
        """The explicit index :meth:`encode` gives an unseen class with ``unknown="flag"``: ``size(key)``."""
        return self.size(key)

    def groups_of(self, machine_type: str) -> list[str]:
        """The groups of one machine type, e.g. ``groups_of("fan")`` → ``["fan/id_00", ...]``."""
        return [g for g in self.group if split_group_key(g)[0] == machine_type]

    def _values(self, key: str) -> list[str]:
        if key in ("machine_type", "group", "domain"):
            return getattr(self, key)
        if key.startswith(ATTR_PREFIX):
            return self.attributes.get(key[len(ATTR_PREFIX):], [])
        raise KeyError(f"unknown label key {key!r}; expected machine_type, group, domain or attr:<name>")

    def label_keys(self, families: Iterable[str]) -> list[str]:
        """The batch keys the label ``families`` (from :data:`LABEL_KEYS`) produce for this vocabulary.

        Raises:
            ValueError: an unknown family.
        """
        out: list[str] = []
        for fam in families:
            if fam not in LABEL_KEYS:
                raise ValueError(f"unknown label family {fam!r}; expected one of {list(LABEL_KEYS)}")
            if fam == "attributes":
                for name in self.attributes:
                    out.append(ATTR_PREFIX + name)
                    if name in self.numeric_attributes:
                        out.append(ATTR_VALUE_PREFIX + name)
            elif fam != "domain" or self.domain:
                out.append(fam)
        return out

    # -- encoding ---------------------------------------------------------------------------------------------
    def encode(
        self,
        clips: Mapping[str, Sequence[Any]],
        families: Iterable[str] = LABEL_KEYS,
        *,
        unknown: Literal["error", "flag"] = "error",
    ) -> dict[str, np.ndarray]:
        """Integer label arrays for clip metadata (see the module docstring for the keys).

        Args:
            clips: columns ``machine_type``, ``machine_id``, ``section`` (and ``domain``, ``attributes``, ``path``
                when present) of B clips.
            families: which label families to encode (a Method's ``labels``).
            unknown: "error" raises on a class the vocabulary lacks; "flag" gives it :meth:`unknown_index` and
                adds ``<key>:unknown`` (bool [B]).
        Returns:
            ``{batch key: array [B]}``.
        Raises:
            DataError: (unknown="error") a class not in the vocabulary: names the clip, the value and the known
                classes; a missing domain / attribute on a clip that must have one.
        """
        families = list(families)
        n = len(clips["machine_type"])
        paths = list(clips["path"]) if "path" in clips else [f"clip #{i}" for i in range(n)]
        out: dict[str, np.ndarray] = {}

        def put(key: str, values: list[Any]) -> None:
            known = self._values(key)
            index = {v: i for i, v in enumerate(known)}
            codes = np.empty(n, dtype=np.int64)
            flags = np.zeros(n, dtype=bool)
            for i, v in enumerate(values):
                code = index.get(v)
                if code is None:
                    if unknown != "flag":
                        shown = known if len(known) <= 12 else known[:12] + ["..."]
                        raise DataError(
                            f"{paths[i]}: {key} {v!r} was not in the training set (known: {shown}); the model "
                            "cannot label it")
                    code, flags[i] = len(known), True
                codes[i] = code
            out[key] = codes
            if unknown == "flag":
                out[key + UNKNOWN_SUFFIX] = flags

        if "machine_type" in families:
            put("machine_type", list(clips["machine_type"]))
        if "group" in families:
            put("group", group_keys(clips))
        if "domain" in families and self.domain:
            doms = list(clips["domain"]) if "domain" in clips else [None] * n
            put("domain", [d if _present(d) else None for d in doms])
        if "attributes" in families and self.attributes:
            pairs = [dict(attribute_pairs(v)) for v in (clips["attributes"] if "attributes" in clips else [None] * n)]
            for name in self.attributes:
                put(ATTR_PREFIX + name, [p.get(name) for p in pairs])
                if name in self.numeric_attributes:
                    vals = np.full(n, np.nan, dtype=np.float32)
                    for i, p in enumerate(pairs):
                        x = _as_number(p[name]) if name in p else None
                        if x is not None:
                            vals[i] = x
                    out[ATTR_VALUE_PREFIX + name] = vals
        return out
