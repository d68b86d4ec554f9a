"""Per-machine-type hyperparameter presets published with a paper, as Config override mappings.

Each ``*.yaml`` file in this package holds one method's presets::

    method: ganomaly                 # a registered method name
    source: {paper: ..., doi: ..., table: 4}
    table_fields: [epochs, ...]      # the Config fields the paper's table gives per machine type
    machines:
      fan: {epochs: ..., ...}        # Config overrides; a field of table_fields missing here was not sourced

Shipped: ``ganomaly_jbcs2024.yaml`` (JBCS 2024 Table 4) and ``skip_ganomaly_jbcs2024.yaml`` (Table 5), for the
DCASE 2020 machine types fan, pump, slider (the paper's "Slide Rail"), ToyCar, ToyConveyor and valve. Their values
are not filled in yet (see the files' headers): :func:`load_preset` then returns ``{}`` and logs a warning.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources
from typing import Any

import yaml

from stethoscope.config import load_yaml
from stethoscope.errors import ConfigError

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _load_all() -> dict[str, dict[str, Any]]:
    """method name → parsed preset file (plus its file name under ``"file"``). Raises ConfigError on a bad file."""
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
        if not entry.name.endswith((".yaml", ".yml")):
            continue
        try:
            doc = load_yaml(entry.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"preset file {entry.name}: not valid YAML ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
            raise ConfigError(f"preset file {entry.name}: expected a mapping with a 'method' name")
        machines = doc.get("machines")
        if not isinstance(machines, dict) or not all(isinstance(v, dict) for v in machines.values()):
            raise ConfigError(f"preset file {entry.name}: 'machines' must map machine types to mappings")
        if doc["method"] in out:
            raise ConfigError(
                f"preset files {out[doc['method']]['file']} and {entry.name} both define method {doc['method']!r}"
            )
        out[doc["method"]] = {**doc, "file": entry.name}
    return out


def available_presets() -> dict[str, list[str]]:
    """Method name → machine types with a preset, e.g. ``{"ganomaly": ["fan", "pump", ...], ...}``."""
    return {method: list(doc["machines"]) for method, doc in _load_all().items()}


def preset_info(method: str) -> dict[str, Any]:
    """Provenance of a method's presets: ``{"file", "source", "table_fields", "missing"}``, where ``missing`` maps
    each machine type to the table fields its preset lacks (not sourced).

    Raises:
        ConfigError: no preset for ``method`` (the message lists the methods that have one).
    """
    doc = _doc(method)
    fields = list(doc.get("table_fields") or [])
    return {
        "file": doc["file"],
        "source": dict(doc.get("source") or {}),
        "table_fields": fields,
        "missing": {m: [f for f in fields if f not in values] for m, values in doc["machines"].items()},
    }


def _doc(method: str) -> dict[str, Any]:
    docs = _load_all()
    if method not in docs:
        raise ConfigError(f"no presets for method {method!r}; methods with presets: {', '.join(sorted(docs))}")
    return docs[method]


def load_preset(method: str, machine_type: str) -> dict[str, Any]:
    """The published per-machine hyperparameters of ``method`` for ``machine_type``, as a Config override mapping
    (pass it to ``methods.get(method).make_config``). A fresh dict; values are validated against the method's Config.

    Logs a warning when some of the paper's table fields were not sourced (they keep the Config defaults).

    Raises:
        ConfigError: unknown method or machine type (the message lists the valid names), or a preset value the
            method's Config rejects (names the file).
    """
    from stethoscope import methods  # late: keeps `import stethoscope.presets` light

    doc = _doc(method)
    if machine_type not in doc["machines"]:
        raise ConfigError(
            f"no {method!r} preset for machine type {machine_type!r}; machine types with one: "
            f"{', '.join(doc['machines'])}"
        )
    values = dict(doc["machines"][machine_type])
    try:
        methods.get(method).make_config(values)
    except ConfigError as exc:
        raise ConfigError(f"preset file {doc['file']}, machine {machine_type!r}: {exc}") from exc
    missing = [f for f in doc.get("table_fields") or [] if f not in values]
    if missing:
        log.warning(
            "%s preset for %s (%s) lacks %s: not sourced yet, Config defaults apply",
            method, machine_type, doc["file"], ", ".join(missing),
        )
    return values
