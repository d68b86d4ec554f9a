"""Training scopes and training units (issue 12 §1, DESIGN.md data flow step 4).

A run's **scope** says what one model is trained on:

==================  ==============================================  ==========================  ====================
scope               one model per (the *training unit*)             unit name                   model folder
==================  ==============================================  ==========================  ====================
per_id              machine_id (DCASE 2020) / section (2021+)       ``<machine_type>/<id_XX>``  ``models/<mt>/<id_XX>/``
per_machine_type    machine type                                    ``<machine_type>``          ``model/`` (one type per run)
all_machine_types   every selected machine type at once             ``all``                     ``models/all/``
==================  ==============================================  ==========================  ====================

A run covers one machine type in the per_id and per_machine_type scopes (a job over several types makes one run per
type) and every selected machine type in the all_machine_types scope. per_machine_type runs keep the ``model/``
folder of every run made before scopes existed, so old runs, bundles and tests load unchanged.

The scope is the method's ``default_scope`` unless the run asks for another (``--scope``); a method declares the
scopes it can train in (``Method.scopes``) and :func:`resolve_scope` refuses any other before anything is ingested.
Whatever the scope, evaluation, the detector stage and score-variant choice stay per machine type, and publishing
writes one bundle per machine type (see docs/architecture.md, "Scope").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

from stethoscope import methods
from stethoscope.data.labels import local_group
from stethoscope.errors import ConfigError, DataError
from stethoscope.methods.base import SCOPES

PER_ID, PER_MACHINE_TYPE, ALL_MACHINE_TYPES = SCOPES
#: Name (and folder under ``models/``) of the one unit of an all_machine_types run.
ALL_UNIT = "all"
#: Model folder of a per_machine_type run (today's layout, kept so that old runs load).
LEGACY_MODEL_DIR = "model"
#: Parent of the unit model folders of per_id and all_machine_types runs.
MODELS_DIR = "models"


@dataclass(frozen=True)
class Unit:
    """One training unit: the clips one model trains on (and scores).

    Attributes:
        name: ``all``, ``<machine_type>`` or ``<machine_type>/<id_XX | section_XX>`` (see the module table).
        machine_types: the machine types of its clips.
        group: for a per_id unit, the local group (``id_00`` / ``section_01``); None otherwise.
        folder: its model folder, relative to the run folder (``model``, ``models/all``, ``models/fan/id_00``).
    """

    name: str
    machine_types: tuple[str, ...]
    group: str | None = None
    folder: str = field(default=LEGACY_MODEL_DIR)

    def contains(self, machine_type: str, machine_id: Any = None, section: Any = None) -> bool:
        """True if a clip of this machine type and machine_id / section belongs to the unit."""
        if machine_type not in self.machine_types:
            return False
        return self.group is None or local_group(machine_id, section) == self.group

    def mask(self, clips: pd.DataFrame) -> pd.Series:
        """Boolean mask of the rows of ``clips`` (columns machine_type, machine_id and/or section) in the unit."""
        mids = clips["machine_id"] if "machine_id" in clips.columns else [None] * len(clips)
        secs = clips["section"] if "section" in clips.columns else [None] * len(clips)
        return pd.Series([self.contains(mt, a, b) for mt, a, b in zip(clips["machine_type"], mids, secs)],
                         index=clips.index, dtype=bool)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "machine_types": list(self.machine_types), "group": self.group,
                "folder": self.folder}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Unit":
        return cls(str(d["name"]), tuple(d["machine_types"]), d.get("group"), str(d["folder"]))


def supported_scopes(method_name: str) -> tuple[str, ...]:
    """The scopes ``method_name`` can train in (``Method.scopes``; every scope unless the method says otherwise)."""
    return tuple(getattr(methods.get(method_name), "scopes", SCOPES))


def resolve_scope(method_name: str, requested: str | None = None) -> str:
    """The run's scope: ``requested`` if given, else the method's ``default_scope``; checked before any work.

    Raises:
        ConfigError: an unknown method or scope name, or a scope the method cannot train in (e.g. a machine-ID
            classifier per ID, where it would have one class); the message lists the method's scopes.
    """
    cls = methods.get(method_name)
    scope = requested or cls.default_scope
    if scope not in SCOPES:
        raise ConfigError(f"scope {scope!r} is unknown; expected one of {list(SCOPES)}")
    allowed = supported_scopes(method_name)
    if scope not in allowed:
        why = getattr(cls, "scope_note", "") or ""
        raise ConfigError(f"method {method_name!r} cannot train in scope {scope!r}"
                          + (f" ({why})" if why else "") + f"; it trains in {list(allowed)}")
    return scope


def run_machine_types(scope: str, machine_types: Iterable[str]) -> list[list[str]]:
    """How a job's machine types split into runs: one run per type (per_id, per_machine_type) or one run over
    all of them (all_machine_types)."""
    types = list(dict.fromkeys(machine_types))
    if not types:
        raise DataError("no machine type selected")
    return [types] if scope == ALL_MACHINE_TYPES else [[t] for t in types]


def training_units(scope: str, clips: pd.DataFrame) -> list[Unit]:
    """The training units of a run over ``clips`` (its selection: columns machine_type, machine_id / section).

    Returns:
        per_id: one unit per (machine_type, group), sorted; per_machine_type: one unit (the run's one machine type);
        all_machine_types: one unit ``all`` over every machine type of ``clips``.
    Raises:
        ConfigError: an unknown scope. DataError: no clips, or a per_machine_type selection of several types (such
            a job makes one run per type: :func:`run_machine_types`).
    """
    if scope not in SCOPES:
        raise ConfigError(f"scope {scope!r} is unknown; expected one of {list(SCOPES)}")
    if clips.empty:
        raise DataError("no clips selected: nothing to train")
    types = tuple(sorted(set(clips["machine_type"])))
    if scope == ALL_MACHINE_TYPES:
        return [Unit(ALL_UNIT, types, None, f"{MODELS_DIR}/{ALL_UNIT}")]
    if scope == PER_MACHINE_TYPE:
        if len(types) != 1:
            raise DataError(f"a per_machine_type run covers one machine type; the selection holds {list(types)} "
                            "(make one run per type, or use scope all_machine_types)")
        return [Unit(types[0], types, None, LEGACY_MODEL_DIR)]
    mids = clips["machine_id"] if "machine_id" in clips.columns else [None] * len(clips)
    secs = clips["section"] if "section" in clips.columns else [None] * len(clips)
    pairs = sorted({(mt, local_group(a, b)) for mt, a, b in zip(clips["machine_type"], mids, secs)})
    return [Unit(f"{mt}/{g}", (mt,), g, f"{MODELS_DIR}/{mt}/{g}") for mt, g in pairs]


def unit_for(units: Iterable[Unit], machine_type: str, machine_id: Any = None, section: Any = None) -> Unit:
    """The unit whose model scores a clip. Raises DataError if none holds it (names the units)."""
    units = list(units)
    for u in units:
        if u.contains(machine_type, machine_id, section):
            return u
    raise DataError(f"no training unit of this run holds {machine_type} {local_group(machine_id, section)}; "
                    f"units: {[u.name for u in units]}")


__all__ = [
    "ALL_MACHINE_TYPES",
    "ALL_UNIT",
    "LEGACY_MODEL_DIR",
    "MODELS_DIR",
    "PER_ID",
    "PER_MACHINE_TYPE",
    "Unit",
    "resolve_scope",
    "run_machine_types",
    "supported_scopes",
    "training_units",
    "unit_for",
]
