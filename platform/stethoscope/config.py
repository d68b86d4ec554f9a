"""Config dataclasses: validation with pydantic, and the one YAML reader of the package.

DESIGN.md: "Configs are validated when loaded, and an unknown key is an error." A method's ``Config`` is a plain
dataclass whose defaults are the paper's values; :func:`from_dict` validates a mapping against its field types with
pydantic (``TypeAdapter``, lax mode: ``"10"`` → 10, ``[0.5, 0.9]`` → a tuple) and then runs the dataclass's own
``__post_init__`` checks. Every error is a :class:`~stethoscope.errors.ConfigError` that names the key, the value and
what was expected.

YAML: PyYAML implements YAML 1.1, whose float rule needs a dot, so ``2e-4`` and ``1E5`` load as *strings*. Every
YAML this package reads — config files, presets, search spaces, ``--set KEY=VALUE`` — goes through :func:`load_yaml`,
whose loader also resolves ``2e-4``, ``1E5`` and ``.5`` to floats (the YAML 1.2 core schema's rule).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import IO, Any, Mapping, TypeVar

import yaml

from stethoscope.errors import ConfigError

T = TypeVar("T")


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``5E4`` / ``.5`` as floats (YAML 1.2; PyYAML's 1.1 rule makes them
    strings)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(stream: str | bytes | IO) -> Any:
    """Parse YAML text or a stream with :class:`YamlLoader`. Raises ``yaml.YAMLError`` on bad YAML."""
    return yaml.load(stream, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """Parse a YAML file with :class:`YamlLoader`.

    Raises:
        ConfigError: the file is missing/unreadable or not valid YAML (names the file).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return load_yaml(fh)
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from exc


def parse_scalar(text: str) -> Any:
    """A command-line value (``--set lr=2e-4``) as YAML: ``2e-4`` → 0.0002, ``true`` → True, ``[1, 2]`` → a list.

    Raises:
        ConfigError: the text is not valid YAML.
    """
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"value {text!r} is not valid YAML: {exc}") from exc


@functools.lru_cache(maxsize=None)
def _adapter(cls: type):
    import pydantic

    return pydantic.TypeAdapter(cls)


def _expected(err: dict) -> str:
    """pydantic's "Input should be a valid integer, unable to parse ..." → "a valid integer (unable to parse ...)"."""
    msg = str(err.get("msg") or "a valid value")
    for prefix in ("Input should be ", "Value error, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    main, _, detail = msg.partition(", ")
    if detail.startswith(("unable", "got", "input")):
        return f"{main} ({detail})"
    return msg


def from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``values``; missing fields take the dataclass defaults.

    Raises:
        ConfigError: an unknown key (the message lists the valid names), a value of the wrong type (names the key,
            the value and what was expected), or a check of the dataclass's ``__post_init__``.
    """
    import pydantic

    where = where or cls.__qualname__
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    try:
        return _adapter(cls).validate_python(values)
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            inner = (err.get("ctx") or {}).get("error")
            if isinstance(inner, ConfigError):
                raise inner from None
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            key = loc[0] if loc else "?"
            shown = values.get(key, err.get("input"))
            path = ".".join(loc) if len(loc) > 1 else key
            problems.append(f"field {path!r} = {shown!r}; expected {_expected(err)}")
        raise ConfigError(f"{where}: " + "; ".join(problems)) from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
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
    A sweep's record keys beside ``config`` (``inputs``, ``feature_spec``, ``metric``, ``value`` ...) are accepted and
    not returned: the run computes its inputs from the Config.

    Raises:
        ConfigError: the file is missing or not YAML, or it names another method than ``method``.
    """
    data = read_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r}: expected a mapping, got {type(data).__name__}")
    if "config" in data:
        named = data.get("method")
        if method and named and named != method:
            raise ConfigError(f"config file {path!r} is for method {named!r}, not {method!r}")
        extra = sorted(set(data) - {"method", "config", "inputs", "feature_spec", "machine_type", "seed", "metric",
                                    "mode", "value", "trial_id", "search_space", "validation_split", "preset"})
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
