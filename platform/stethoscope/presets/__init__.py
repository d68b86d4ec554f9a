"""Per-machine-type hyperparameter presets published with a paper, as Config override mappings.

Each ``*.yaml`` file in this package holds one method's presets::

    method: ganomaly                 # a registered method name
    source: {paper: ..., doi: ..., table: 4, common: ...}
    table_fields: [epochs, ...]      # the Config fields the paper's table gives per machine type
    common: {lr: 0.0002, ...}        # values the paper gives for every machine type (optional)
    labels: {slider: Slide Rail}     # the paper's name of each machine type (optional)
    machines:
      fan: {epochs: ..., ...}        # the table's row for this machine type, as Config overrides

:func:`load_preset` returns ``{**common, **machines[machine_type]}``. Shipped:

- ``ganomaly_jbcs2024.yaml``: JBCS 2024 Table 4 (GANomaly, best per label), and
- ``skip_ganomaly_jbcs2024.yaml``: JBCS 2024 Table 5 (Skip-GANomaly), for the DCASE 2020 machine types fan, pump,
  slider (the paper's "Slide Rail"), ToyCar, ToyConveyor and valve, each with the values common to every model;
- ``egbad_jbcs2024.yaml``: the common values only (the paper did not grid-search EGBAD);
- ``aegan_ad_aithu2022.yaml``: AEGAN-AD's per-machine choices for the DCASE 2022 machine types (AITHU report §3.3
  and the reference code's per-machine configs).

A machine type without a row is an error that lists the rows (:func:`load_preset`).

``cpu/<method>.yaml`` files are not paper presets but smaller settings of ours for training on a CPU, in the
``--config`` file format (``{method, config}``): :func:`cpu_preset_path` / :func:`cpu_preset`. Shipped:
``cpu/aegan_ad.yaml`` (half-width networks, a patch every 8 frames, batch 64), ``cpu/tldiffgan.yaml`` (half-width
networks, a 200-step DDPM, batch 64, 60 epochs) and ``cpu/imdn.yaml`` (4 windows per segment and step, one GRU per
stack, a window every 8 frames when scoring, 20 epochs); every value in them is ours.
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
        if not isinstance(doc.get("common", {}) or {}, dict):
            raise ConfigError(f"preset file {entry.name}: 'common' must be a mapping of Config fields")
        if doc["method"] in out:
            raise ConfigError(
                f"preset files {out[doc['method']]['file']} and {entry.name} both define method {doc['method']!r}"
            )
        out[doc["method"]] = {**doc, "common": dict(doc.get("common") or {}), "file": entry.name}
    return out


def available_presets() -> dict[str, list[str]]:
    """Method name → machine types with a preset, e.g. ``{"ganomaly": ["fan", "pump", ...], ...}``."""
    return {method: list(doc["machines"]) for method, doc in _load_all().items()}


def preset_info(method: str) -> dict[str, Any]:
    """Provenance of a method's presets: ``{"file", "source", "table_fields", "common", "labels", "missing"}``,
    where ``missing`` maps each machine type to the table fields its row lacks (none in the shipped files).

    Raises:
        ConfigError: no preset for ``method`` (the message lists the methods that have one).
    """
    doc = _doc(method)
    fields = list(doc.get("table_fields") or [])
    return {
        "file": doc["file"],
        "source": dict(doc.get("source") or {}),
        "table_fields": fields,
        "common": dict(doc["common"]),
        "labels": dict(doc.get("labels") or {}),
        "missing": {m: [f for f in fields if f not in values] for m, values in doc["machines"].items()},
    }


def _doc(method: str) -> dict[str, Any]:
    docs = _load_all()
    if method not in docs:
        raise ConfigError(f"no presets for method {method!r}; methods with presets: {', '.join(sorted(docs))}")
    return docs[method]


def load_preset(method: str, machine_type: str) -> dict[str, Any]:
    """The published hyperparameters of ``method`` for ``machine_type``, as a Config override mapping (pass it to
    ``methods.get(method).make_config``): the file's ``common`` values updated with the machine type's row.
    A fresh dict; the values are validated against the method's Config.

    Raises:
        ConfigError: unknown method, or a machine type without a row (the message lists the rows and the paper's
            label of each), or a preset value the method's Config rejects (names the file).
    """
    from stethoscope import methods  # late: keeps `import stethoscope.presets` light

    doc = _doc(method)
    if machine_type not in doc["machines"]:
        labels = doc.get("labels") or {}
        rows = ", ".join(f"{m} ({labels[m]})" if labels.get(m, m).lower() != m.lower() else m for m in doc["machines"])
        raise ConfigError(
            f"the {method!r} preset ({doc['file']}) has no row for machine type {machine_type!r}; its rows: {rows}. "
            "Train without --preset, or pass the values with --set"
        )
    values = {**doc["common"], **doc["machines"][machine_type]}
    try:
        methods.get(method).make_config(values)
    except ConfigError as exc:
        raise ConfigError(f"preset file {doc['file']}, machine {machine_type!r}: {exc}") from exc
    missing = [f for f in doc.get("table_fields") or [] if f not in doc["machines"][machine_type]]
    if missing:
        log.warning("%s preset for %s (%s) lacks %s: Config defaults apply", method, machine_type, doc["file"],
                    ", ".join(missing))
    return values


def preset_record(method: str, machine_type: str) -> dict[str, Any]:
    """What a run records about the preset it applied (``run.json["preset"]``): the file, its source (paper, DOI,
    table), the paper's label of the machine type, the table's row, the common values and the merged ``values``.

    Raises:
        ConfigError: as :func:`load_preset`.
    """
    values = load_preset(method, machine_type)
    doc = _doc(method)
    return {
        "method": method,
        "machine_type": machine_type,
        "file": doc["file"],
        "source": dict(doc.get("source") or {}),
        "label": (doc.get("labels") or {}).get(machine_type, machine_type),
        "row": dict(doc["machines"][machine_type]),
        "common": dict(doc["common"]),
        "values": values,
    }


def cpu_preset_path(method: str) -> str:
    """Path of ``method``'s CPU preset file (``presets/cpu/<method>.yaml``), for ``--config``.

    Raises:
        ConfigError: the method has no CPU preset (the message lists those that have one).
    """
    folder = resources.files(__name__) / "cpu"
    path = folder / f"{method}.yaml"
    if not path.is_file():
        have = sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"no CPU preset for method {method!r}; methods with one: {', '.join(have) or 'none'}")
    return str(path)


def cpu_preset(method: str) -> dict[str, Any]:
    """``method``'s CPU preset as Config overrides (validated against the method's Config).

    Raises:
        ConfigError: no CPU preset for ``method``, or a value its Config rejects (names the file).
    """
    from stethoscope import methods
    from stethoscope.config import load_config_file

    path = cpu_preset_path(method)
    values = load_config_file(path, method)
    try:
        methods.get(method).make_config(values)
    except ConfigError as exc:
        raise ConfigError(f"CPU preset {path}: {exc}") from exc
    return values
