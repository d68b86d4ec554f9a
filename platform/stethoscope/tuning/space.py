"""Search-space files (``search_spaces/*.yaml``): load, validate against the method's Config, resolve per machine.

The schema is documented in ``search_spaces/README.md``. In short::

    method: ganomaly                 # a registered method (stethoscope.methods.names())
    metric: val_auc_pauc_mean        # a validation metric reported every epoch (see METRICS)
    mode: max                        # max | min
    sampler: tpe                     # tpe → optuna TPESampler; grid → optuna GridSampler
    num_samples: 60                  # trials (grid: defaults to the grid size)
    seed: 0                          # sampler seed
    scheduler: {type: asha, grace_period: 2, reduction_factor: 3}   # or: none
    resources: {num_workers: 1, cpus_per_worker: 0.5, gpus_per_worker: auto, trial_cpus: 0,
                max_concurrent_trials: 1}
    fixed: {val_fraction: 0.1}       # Config overrides applied to every trial
    space:
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      latent_dim: {choice: [8, 16, 100]}
      epochs: {int: [10, 90]}
      dropout: {uniform: [0.0, 0.5]}
    machine_types:                   # optional per-machine-type overrides of the keys above
      slider: {num_samples: 30, space: {batch_size: {choice: [64, 128]}}}

Every mistake is a :class:`~stethoscope.errors.ConfigError` whose message starts with the file name and names the key
(and, for an unknown key, lists the valid names).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from stethoscope.config import load_yaml
from stethoscope.errors import ConfigError

#: Validation metrics a search space may optimise (reported by the Train loop every epoch) and their natural mode.
#: ``val_auc`` / ``val_pauc`` / ``val_auc_pauc_mean`` are scored on the labelled validation split;
#: ``val_loss`` is the method's loss on held-out *training* clips (``val_fraction``).
#: The key under which every trial's config carries the sweep's training seed.
SEED_KEY = "seed"
METRICS = {"val_auc_pauc_mean": "max", "val_auc": "max", "val_pauc": "max", "val_loss": "min"}
SAMPLERS = ("grid", "tpe")
PARAM_KINDS = ("choice", "uniform", "loguniform", "int")
TOP_KEYS = ("method", "metric", "mode", "sampler", "num_samples", "seed", "scheduler", "resources", "fixed", "space",
            "machine_types", "description")
#: Keys a ``machine_types.<machine>`` entry may override.
OVERRIDE_KEYS = ("sampler", "num_samples", "seed", "scheduler", "resources", "fixed", "space")
ASHA_KEYS = ("type", "grace_period", "reduction_factor", "max_t", "brackets")
RESOURCE_KEYS = ("num_workers", "cpus_per_worker", "gpus_per_worker", "trial_cpus", "max_concurrent_trials")
DEFAULT_TPE_SAMPLES = 20


# -- YAML -------------------------------------------------------------------------------------------------------
def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file with :class:`stethoscope.config.YamlLoader` (``1e-3`` is a float). Raises ConfigError if it
    is missing or not YAML."""
    try:
        with open(path) as fh:
            return load_yaml(fh)
    except OSError as exc:
        raise ConfigError(f"search space {str(path)!r}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {str(path)!r} is not valid YAML: {exc}") from exc


# -- the resolved objects ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched Config field.

    ``kind``: "choice" (``values``), "uniform" / "loguniform" (floats in [low, high]) or "int" (integers in
    [low, high] with ``step``; ``log`` samples on a log scale).
    """

    name: str
    kind: str
    values: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    step: int = 1
    log: bool = False

    @property
    def is_discrete(self) -> bool:
        return self.kind in ("choice", "int")

    def grid_values(self) -> list:
        """Every value of a choice or int parameter (grid search). Raises ConfigError for continuous ones."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        raise ConfigError(f"parameter {self.name!r} is {self.kind}; a grid needs choice or int parameters")

    def probe_values(self) -> list:
        """Values to validate against the Config: every choice, or the two bounds."""
        return list(self.values) if self.kind == "choice" else [self.low, self.high]

    def tune_domain(self):
        """The matching ``ray.tune`` search-space domain. OptunaSearch converts it to the Optuna distribution
        (choice → CategoricalDistribution, uniform / loguniform → FloatDistribution, int → IntDistribution with
        ``high`` inclusive)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.log:
            return tune.lograndint(int(self.low), int(self.high) + 1)
        if self.step != 1:
            return tune.qrandint(int(self.low), int(self.high), int(self.step))
        return tune.randint(int(self.low), int(self.high) + 1)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {list(self.values)}"
        extra = f", step {self.step}" if self.kind == "int" and self.step != 1 else ""
        return f"{self.kind} [{self.low}, {self.high}{extra}]"


@dataclass(frozen=True)
class Asha:
    """ASHA (``ray.tune.schedulers.ASHAScheduler``) on the per-epoch ``epoch`` counter the Train loop reports.

    ``max_t`` None → the largest ``epochs`` any trial can have.
    """

    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None
    brackets: int = 1


@dataclass(frozen=True)
class Resources:
    """Per trial: ``num_workers`` Ray Train workers with ``cpus_per_worker`` CPUs each (fractions allowed) and
    ``gpus_per_worker`` 0, 1 or "auto" (1 if the cluster has GPUs); ``trial_cpus`` for the trial's own process
    (it only drives the Train run and must be > 0 for Ray; 0.01 by default); at most ``max_concurrent_trials``
    trials at once."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: int | str = "auto"
    trial_cpus: float = 0.01
    max_concurrent_trials: int = 1

    @property
    def use_gpu(self) -> bool | None:
        return None if self.gpus_per_worker == "auto" else bool(self.gpus_per_worker)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space, resolved for one machine type (``machine_type`` None = no override applied)."""

    path: str
    method: str
    metric: str
    mode: str
    sampler: str
    num_samples: int | None
    seed: int
    scheduler: Asha | None
    resources: Resources
    fixed: dict[str, Any]
    params: dict[str, Param]
    machine_type: str | None = None
    machine_types: tuple[str, ...] = ()
    description: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def grid_size(self) -> int | None:
        """Number of grid points (product of the choice / int sizes); None if a parameter is continuous."""
        if not all(p.is_discrete for p in self.params.values()):
            return None
        return math.prod(len(p.grid_values()) for p in self.params.values())

    def trials(self, num_samples: int | None = None) -> int:
        """Trials to run: ``num_samples`` (CLI), else the file's, else the grid size (grid) or 20 (tpe).
        A grid never runs more trials than it has points."""
        n = num_samples or self.num_samples
        if self.sampler == "grid":
            size = self.grid_size
            return min(n, size) if n else size
        return n or DEFAULT_TPE_SAMPLES

    def max_epochs(self) -> int:
        """The largest ``epochs`` a trial can get (searched, fixed, or the Config default)."""
        if "epochs" in self.params:
            p = self.params["epochs"]
            return int(max(p.values) if p.kind == "choice" else p.high)
        if "epochs" in self.fixed:
            return int(self.fixed["epochs"])
        from stethoscope import methods

        return int(getattr(methods.get(self.method).make_config({}), "epochs"))

    def tune_space(self) -> dict:
        """``{name: ray.tune domain}`` for the Tuner's ``param_space`` (OptunaSearch converts it)."""
        return {name: p.tune_domain() for name, p in self.params.items()}

    def grid(self) -> dict[str, list]:
        """``{name: values}`` for ``optuna.samplers.GridSampler``."""
        return {name: p.grid_values() for name, p in self.params.items()}

    def to_dict(self) -> dict:
        """A JSON/YAML-friendly record of the resolved space (what the sweep ran)."""
        return {
            "path": self.path, "method": self.method, "metric": self.metric, "mode": self.mode,
            "sampler": self.sampler, "num_samples": self.num_samples, "seed": self.seed,
            "scheduler": None if self.scheduler is None else {"type": "asha", **dataclasses.asdict(self.scheduler)},
            "resources": dataclasses.asdict(self.resources), "fixed": self.fixed,
            "space": {n: dataclasses.asdict(p) for n, p in self.params.items()},
            "machine_type": self.machine_type,
        }


# -- validation -------------------------------------------------------------------------------------------------
def _close(name: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _check_keys(where: str, mapping: dict, valid: tuple | list, what: str) -> None:
    unknown = [k for k in mapping if k not in valid]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{where}: unknown {what} {k!r}{_close(str(k), list(valid))}; valid names: {list(valid)}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(where: str, kind: str, spec: Any) -> tuple[Any, Any, dict]:
    """``[low, high]`` or ``{low, high, step?, log?}`` → (low, high, extras)."""
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise ConfigError(f"{where}: {kind} expects [low, high], got {spec!r}")
        return spec[0], spec[1], {}
    if isinstance(spec, dict):
        allowed = ("low", "high", "step", "log") if kind == "int" else ("low", "high")
        _check_keys(where, spec, allowed, f"{kind} key")
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: {kind} needs both 'low' and 'high', got {spec!r}")
        return spec["low"], spec["high"], {k: spec[k] for k in ("step", "log") if k in spec}
    raise ConfigError(f"{where}: {kind} expects [low, high] or {{low: .., high: ..}}, got {spec!r}")


def _field_type(hints: dict, name: str) -> Any:
    """The Config annotation with Optional stripped."""
    ann = hints[name]
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else ann
    return ann


def _parse_param(where: str, name: str, spec: Any, hints: dict) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where}: expected a mapping with exactly one of {list(PARAM_KINDS)} (e.g. {{choice: [1, 2]}}), got "
            f"{spec!r}; to hold a field constant, put it under 'fixed:'"
        )
    (kind, body), = spec.items()
    if kind not in PARAM_KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}{_close(str(kind), list(PARAM_KINDS))}; "
                          f"valid names: {list(PARAM_KINDS)}")
    ftype = _field_type(hints, name)
    if kind == "choice":
        if not isinstance(body, (list, tuple)):
            raise ConfigError(f"{where}: choice expects a list of values, got {body!r}")
        if not body:
            raise ConfigError(f"{where}: empty choice; give at least one value")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in body):
            raise ConfigError(f"{where}: choice values must be scalars (numbers, strings, true/false, null), "
                              f"got {list(body)!r}")
        values = tuple(body)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: choice has repeated values {list(body)!r}")
        return Param(name, "choice", values=values)
    low, high, extra = _bounds(where, kind, body)
    if kind in ("uniform", "loguniform"):
        if ftype is not float:
            raise ConfigError(f"{where}: {kind} draws floats but {name!r} is a {getattr(ftype, '__name__', ftype)} "
                              f"field; use {'int: [low, high]' if ftype is int else 'choice: [...]'}")
        if not (_is_number(low) and _is_number(high)):
            raise ConfigError(f"{where}: {kind} bounds must be numbers, got [{low!r}, {high!r}]")
        if not low < high:
            raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
        return Param(name, kind, low=float(low), high=float(high))
    # int
    if ftype is not int:
        raise ConfigError(f"{where}: int draws integers but {name!r} is a {getattr(ftype, '__name__', ftype)} "
                          f"field; use {'uniform/loguniform' if ftype is float else 'choice: [...]'}")
    step, log = extra.get("step", 1), extra.get("log", False)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step)):
        raise ConfigError(f"{where}: int bounds and step must be integers, got low={low!r}, high={high!r}, "
                          f"step={step!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: int 'log' must be true or false, got {log!r}")
    if not low <= high or step < 1:
        raise ConfigError(f"{where}: int needs low <= high and step >= 1, got low={low}, high={high}, step={step}")
    if log and (low < 1 or step != 1):
        raise ConfigError(f"{where}: int with log: true needs low >= 1 and step 1")
    return Param(name, "int", low=low, high=high, step=step, log=log)


def _parse_scheduler(where: str, spec: Any) -> Asha | None:
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "fifo")):
        return None
    if isinstance(spec, str) and spec.lower() == "asha":
        return Asha()
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected 'none' or a mapping {{type: asha, grace_period: .., ...}}, got {spec!r}")
    _check_keys(where, spec, ASHA_KEYS, "scheduler key")
    kind = str(spec.get("type", "asha")).lower()
    if kind in ("none", "fifo"):
        return None
    if kind != "asha":
        raise ConfigError(f"{where}: type {kind!r} is not supported; valid names: ['asha', 'none']")
    grace, rf = spec.get("grace_period", 1), spec.get("reduction_factor", 2)
    max_t, brackets = spec.get("max_t"), spec.get("brackets", 1)
    if not (isinstance(grace, int) and not isinstance(grace, bool) and grace >= 1):
        raise ConfigError(f"{where}: grace_period = {grace!r}; expected an integer >= 1 (epochs)")
    if not (_is_number(rf) and rf > 1):
        raise ConfigError(f"{where}: reduction_factor = {rf!r}; expected a number > 1")
    if max_t is not None and not (isinstance(max_t, int) and not isinstance(max_t, bool) and max_t >= grace):
        raise ConfigError(f"{where}: max_t = {max_t!r}; expected an integer >= grace_period (epochs) or null")
    if not (isinstance(brackets, int) and not isinstance(brackets, bool) and brackets >= 1):
        raise ConfigError(f"{where}: brackets = {brackets!r}; expected an integer >= 1")
    return Asha(grace, float(rf), max_t, brackets)


def _parse_resources(where: str, spec: Any) -> Resources:
    if spec is None:
        return Resources()
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping of {list(RESOURCE_KEYS)}, got {spec!r}")
    _check_keys(where, spec, RESOURCE_KEYS, "resources key")
    r = {**dataclasses.asdict(Resources()), **spec}
    if not (isinstance(r["num_workers"], int) and not isinstance(r["num_workers"], bool) and r["num_workers"] >= 1):
        raise ConfigError(f"{where}: num_workers = {r['num_workers']!r}; expected an integer >= 1")
    if not (_is_number(r["cpus_per_worker"]) and r["cpus_per_worker"] > 0):
        raise ConfigError(f"{where}: cpus_per_worker = {r['cpus_per_worker']!r}; expected a number > 0")
    if r["gpus_per_worker"] not in (0, 1, "auto") or isinstance(r["gpus_per_worker"], bool):
        raise ConfigError(f"{where}: gpus_per_worker = {r['gpus_per_worker']!r}; expected 0, 1 or auto")
    if not (_is_number(r["trial_cpus"]) and r["trial_cpus"] > 0):
        raise ConfigError(f"{where}: trial_cpus = {r['trial_cpus']!r}; expected a number > 0 (e.g. 0.01)")
    mct = r["max_concurrent_trials"]
    if not (isinstance(mct, int) and not isinstance(mct, bool) and mct >= 1):
        raise ConfigError(f"{where}: max_concurrent_trials = {mct!r}; expected an integer >= 1")
    return Resources(r["num_workers"], float(r["cpus_per_worker"]), r["gpus_per_worker"], float(r["trial_cpus"]), mct)


def _merge(base: dict, override: dict) -> dict:
    """Apply one ``machine_types`` entry: ``space`` / ``fixed`` / ``resources`` / ``scheduler`` merge per key
    (a ``space`` entry set to null removes that parameter); other keys replace."""
    out = dict(base)
    for key, value in override.items():
        if key in ("space", "fixed", "resources") and isinstance(value, dict) and isinstance(base.get(key), dict):
            merged = {**base[key], **value}
            out[key] = {k: v for k, v in merged.items() if not (key == "space" and v is None)}
        elif key == "scheduler" and isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


def load_space(path: str | os.PathLike, machine_type: str | None = None, *, data: dict | None = None,
               overrides: dict | None = None) -> SearchSpace:
    """Read and validate a search-space file, applying ``machine_types.<machine_type>`` overrides if present.

    Every parameter name (in ``space`` and ``fixed``) is checked against the method's Config; every choice value
    and both bounds of a range are checked by building the Config with them (so out-of-range values such as a
    negative lr fail here, not in a trial).

    Args:
        path: the YAML file (used in every message).
        machine_type: the machine type the sweep is for (None → the base space only).
        data: the already-parsed mapping (instead of reading ``path``).
        overrides: top-level keys to replace after the machine-type overrides (e.g. ``{"sampler": "grid",
            "scheduler": None}`` from the command line); same keys as a ``machine_types`` entry.
    Returns:
        The resolved :class:`SearchSpace`.
    Raises:
        ConfigError: anything wrong; the message starts with the file name and names the key, e.g.
            ``search_spaces/x.yaml: space.lerning_rate: not a field of the ganomaly Config (did you mean 'lr'?);
            valid names: [...]``.
    """
    from stethoscope import methods
    from stethoscope.config import from_dict

    src = str(path)
    raw = read_yaml(path) if data is None else data
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: expected a mapping with keys {list(TOP_KEYS)}, got {type(raw).__name__}")
    _check_keys(src, raw, TOP_KEYS, "top-level key")
    for key in ("method", "metric", "space"):
        if key not in raw or raw[key] in (None, "", {}):
            hint = {"method": f"one of {methods.names()}", "metric": f"one of {list(METRICS)}",
                    "space": "a mapping of Config fields to {choice|uniform|loguniform|int: ...}"}[key]
            raise ConfigError(f"{src}: missing required key {key!r} ({hint})")
    machine_types = raw.get("machine_types") or {}
    if not isinstance(machine_types, dict):
        raise ConfigError(f"{src}: machine_types: expected a mapping machine_type → overrides, got {machine_types!r}")
    for mt, override in machine_types.items():
        if not isinstance(override, dict):
            raise ConfigError(f"{src}: machine_types.{mt}: expected a mapping of overrides, got {override!r}")
        _check_keys(f"{src}: machine_types.{mt}", override, OVERRIDE_KEYS, "override key")
    resolved = raw
    if machine_type is not None and machine_type in machine_types:
        resolved = _merge(raw, machine_types[machine_type])
    if overrides:
        _check_keys(f"{src}: overrides", overrides, OVERRIDE_KEYS, "override key")
        resolved = {**resolved, **overrides}

    method = resolved["method"]
    if not isinstance(method, str):
        raise ConfigError(f"{src}: method: expected a method name, got {method!r}")
    try:
        cls = methods.get(method)
    except ConfigError as exc:
        raise ConfigError(f"{src}: method: {exc}") from exc
    metric = resolved["metric"]
    if metric not in METRICS:
        raise ConfigError(f"{src}: metric: unknown metric {metric!r}{_close(str(metric), list(METRICS))}; "
                          f"valid names: {list(METRICS)}")
    if "mode" not in resolved:
        raise ConfigError(f"{src}: missing required key 'mode' ('max' or 'min'; {metric} is usually "
                          f"{METRICS[metric]})")
    mode = resolved["mode"]
    if mode not in ("max", "min"):
        raise ConfigError(f"{src}: mode: {mode!r}; expected 'max' or 'min'")
    sampler = resolved.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError(f"{src}: sampler: unknown sampler {sampler!r}; valid names: {list(SAMPLERS)}")
    num_samples = resolved.get("num_samples")
    if num_samples is not None and not (isinstance(num_samples, int) and not isinstance(num_samples, bool)
                                        and num_samples >= 1):
        raise ConfigError(f"{src}: num_samples = {num_samples!r}; expected an integer >= 1")
    seed = resolved.get("seed", 0)
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ConfigError(f"{src}: seed = {seed!r}; expected an integer >= 0")
    scheduler = _parse_scheduler(f"{src}: scheduler", resolved.get("scheduler"))
    resources = _parse_resources(f"{src}: resources", resolved.get("resources"))

    fields = [f.name for f in dataclasses.fields(cls.Config)]
    hints = typing.get_type_hints(cls.Config)
    fixed = resolved.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{src}: fixed: expected a mapping of {method} Config fields, got {fixed!r}")
    for name in fixed:
        if name not in fields:
            raise ConfigError(f"{src}: fixed.{name}: not a field of the {method} Config{_close(str(name), fields)}; "
                              f"valid names: {fields}")
    try:
        base_cfg = from_dict(cls.Config, fixed, f"{src}: fixed")
    except ConfigError as exc:
        raise (exc if str(exc).startswith(src) else ConfigError(f"{src}: fixed: {exc}")) from None
    space = resolved["space"]
    if not isinstance(space, dict):
        raise ConfigError(f"{src}: space: expected a mapping of {method} Config fields, got {space!r}")
    params: dict[str, Param] = {}
    for name, spec in space.items():
        where = f"{src}: space.{name}"
        if name not in fields:
            raise ConfigError(f"{where}: not a field of the {method} Config{_close(str(name), fields)}; "
                              f"valid names: {fields}")
        if name in fixed:
            raise ConfigError(f"{where}: also set under 'fixed'; a field is either searched or fixed")
        param = _parse_param(where, name, spec, hints)
        for value in param.probe_values():
            try:
                from_dict(cls.Config, {**fixed, name: value}, where)
            except ConfigError as exc:
                msg = str(exc) if str(exc).startswith(src) else f"{where}: {exc}"
                raise ConfigError(f"{msg} (value {value!r} of {param.describe()})") from exc
        params[name] = param
    if sampler == "grid":
        continuous = [n for n, p in params.items() if not p.is_discrete]
        if continuous:
            raise ConfigError(f"{src}: sampler grid needs every parameter to be a choice or an int range; "
                              f"{continuous} {'is' if len(continuous) == 1 else 'are'} continuous")
    if metric == "val_loss":
        vf = fixed.get("val_fraction", getattr(base_cfg, "val_fraction", 0.0))
        if "val_fraction" not in params and not vf:
            raise ConfigError(f"{src}: metric val_loss needs held-out training clips; set fixed.val_fraction > 0")
    _check_inputs(src, cls, fixed, params)
    return SearchSpace(
        path=src, method=method, metric=metric, mode=mode, sampler=sampler, num_samples=num_samples, seed=seed,
        scheduler=scheduler, resources=resources, fixed=dict(fixed), params=params, machine_type=machine_type,
        machine_types=tuple(machine_types), description=str(resolved.get("description") or ""), raw=raw,
    )


def _input_changes(base: dict, other: dict) -> list[str]:
    """How the declared inputs ``other`` differ from ``base`` (``{name: InputSpec}`` each), in words."""
    from stethoscope.data.features import input_spec_to_dict

    out = []
    for name in sorted(set(base) | set(other)):
        if name not in other:
            out.append(f"drops input {name!r}")
        elif name not in base:
            out.append(f"adds input {name!r}")
        elif base[name] != other[name]:
            a, b = input_spec_to_dict(base[name]), input_spec_to_dict(other[name])
            diff = ", ".join(f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b))
                             if a.get(k) != b.get(k))
            out.append(f"input {name!r}: {diff}")
    return out


#: Most distinct input sets one sweep ingests (each is one feature store; see :func:`input_variants`).
MAX_INPUT_VARIANTS = 8


def input_variants(cls, fixed: Mapping[str, Any], params: Mapping[str, "Param"], src: str = "search space"
                   ) -> list[dict]:
    """The distinct input sets (``{name: InputSpec}``, ``Method.input_specs``) the trials of a space can declare.

    A sweep ingests each once (a feature store per set) and every trial reads the store of its own inputs, so a
    ``choice`` may change the inputs (SC's ``feature: {choice: [stft, log_mel]}``: AITHU issue 15 lets Tune choose the
    feature on validation). A continuous or integer range may not (each value would be a new feature store).

    Returns:
        the input sets, the fixed values' first (at most :data:`MAX_INPUT_VARIANTS`).
    Raises:
        ConfigError: ``<src>: space.<name>: ... changes the method's inputs`` for a range, or more than
            MAX_INPUT_VARIANTS input sets.
    """
    base = dict(cls.input_specs(cls.make_config(dict(fixed))))
    changing = []
    for name, p in params.items():
        for value in p.probe_values():
            changes = _input_changes(base, dict(cls.input_specs(cls.make_config({**fixed, name: value}))))
            if not changes:
                continue
            if p.kind != "choice":
                raise ConfigError(
                    f"{src}: space.{name}: value {value!r} changes the method's inputs ({'; '.join(changes)}); only a "
                    "choice may change them (each input set is ingested once per sweep), so use a choice, or hold it "
                    "under 'fixed:' and run one sweep per value")
            changing.append(name)
            break
    variants = [base]
    for combo in itertools.product(*(params[n].values for n in changing)):
        inputs = dict(cls.input_specs(cls.make_config({**fixed, **dict(zip(changing, combo))})))
        if inputs not in variants:
            variants.append(inputs)
    if len(variants) > MAX_INPUT_VARIANTS:
        raise ConfigError(f"{src}: the choices of {changing} give {len(variants)} input sets; a sweep ingests at most "
                          f"{MAX_INPUT_VARIANTS} (one feature store each): split it into several sweeps")
    return variants


def _check_inputs(src: str, cls, fixed: dict, params: dict[str, Param]) -> None:
    """Searched values may change the method's declared inputs only through a ``choice`` (:func:`input_variants`).

    Raises:
        ConfigError: see :func:`input_variants`.
    """
    input_variants(cls, fixed, params, src)


def space_files(folder: str | os.PathLike) -> list[Path]:
    """Every ``*.yaml`` search space in ``folder`` (sorted)."""
    return sorted(Path(folder).glob("*.yaml"))
