"""Config dataclass helpers: build a dataclass from a mapping, rejecting unknown keys and wrong types.

DESIGN.md: "Configs are validated when loaded, and an unknown key is an error."
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

from stethoscope.errors import ConfigError

T = TypeVar("T")


def _coerce(name: str, value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: field {name!r} = {value!r} does not match {annotation}")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: field {name!r} = {value!r}; expected one of {list(allowed)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: field {name!r} = {value!r}; expected a list")
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        items = [_coerce(name, v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: field {name!r} = {value!r}; expected true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: field {name!r} = {value!r}; expected an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: field {name!r} = {value!r}; expected a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: field {name!r} = {value!r}; expected a string")
        return value
    return value


def from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``values``; missing fields take the dataclass defaults.

    Raises:
        ConfigError: an unknown key (the message lists the valid names) or a value of the wrong type.
    """
    where = where or cls.__qualname__
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    coerced = {k: _coerce(k, v, hints[k], where) for k, v in values.items()}
    try:
        return cls(**coerced)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → plain dict (tuples become lists, so the result is JSON/YAML friendly)."""
    out = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def load_config_file(path: str, method: str | None = None) -> dict[str, Any]:
    """Read a YAML config file for a method: either ``{method: NAME, config: {...}}`` (what Tune exports) or a
    flat mapping of Config fields. Returns the Config overrides (validated later against the method's Config).

    Raises:
        ConfigError: the file is missing or not YAML, or it names another method than ``method``.
    """
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ConfigError(f"config file {path!r}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r}: expected a mapping, got {type(data).__name__}")
    if "config" in data:
        named = data.get("method")
        if method and named and named != method:
            raise ConfigError(f"config file {path!r} is for method {named!r}, not {method!r}")
        extra = sorted(set(data) - {"method", "config", "feature_spec", "machine_type", "seed", "metric", "mode",
                                    "value", "trial_id", "search_space", "validation_split", "preset"})
        if extra:
            raise ConfigError(f"config file {path!r}: unknown top-level key(s) {extra}")
        return dict(data["config"] or {})
    return dict(data)


def config_file_split(path: str) -> dict[str, str | None] | None:
    """The validation split a config file exported by a sweep points to, as ``{"file", "sha256"}`` (``file``: the
    sweep's ``validation_split.json``, a path or URI; a relative path is taken from the config file's folder;
    ``sha256``: the hash of that file when the sweep wrote it, or None), or None if the file names no split.

    Raises:
        ConfigError: the file cannot be read, or ``validation_split`` is neither a path nor ``{file, sha256}``.
    """
    import os

    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path!r}: {exc}") from exc
    value = data.get("validation_split") if isinstance(data, dict) else None
    if value is None:
        return None
    if isinstance(value, str):
        value = {"file": value, "sha256": None}
    if not isinstance(value, dict) or not isinstance(value.get("file"), str):
        raise ConfigError(f"config file {path!r}: validation_split = {value!r}; expected the path of a "
                          "validation_split.json, or {file: ..., sha256: ...}")
    file = value["file"]
    if "://" not in file and not os.path.isabs(file):
        file = os.path.join(os.path.dirname(os.path.abspath(path)), file)
    return {"file": file, "sha256": value.get("sha256")}
