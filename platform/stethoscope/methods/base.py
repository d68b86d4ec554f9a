"""The Method contract (DESIGN.md) and the name → class registry.

A Method is pure PyTorch and knows nothing of Ray. The generic training loop (``stethoscope.training``) drives it:

1. ``examples(clips)`` turns a batch of clips (numpy, from the feature store) into training examples
   (e.g. 640-dim frame vectors). It runs inside Ray Data ``map_batches``, so it must be a pure function of
   the config and the FeatureSpec.
2. ``fit_statistics(batches)`` (optional) sees the training examples once before epoch 1 (e.g. min-max stats).
3. ``training_step(batch)`` does its own backward passes and optimizer steps (GANs alternate G and D) through
   :meth:`Method.optimize`, which averages gradients over workers when ``torch.distributed`` is initialised.
4. ``validation_step(batch)`` returns losses on held-out examples without updating anything.
5. ``fit_detector(clip_batches)`` (optional) runs once after training on the training clips (e.g. to fit a
   KNN on embeddings). ``score(clip_batch)`` returns one score per clip: higher = more anomalous.

Clip batches are dicts: ``log_mel`` Tensor [B, n_mels, frames] (float32, dB) and, when the set has more than one
machine_id/section, ``class_index`` LongTensor [B]. Example batches are whatever ``examples`` produced, as tensors.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist

from stethoscope.config import from_dict, to_dict
from stethoscope.data.features import FeatureSpec
from stethoscope.errors import ConfigError

_REGISTRY: dict[str, type["Method"]] = {}
_DISCOVERED = False
#: Method modules that failed to import: module name → error message (reported by :func:`get`).
IMPORT_ERRORS: dict[str, str] = {}


class Method(abc.ABC):
    """Base class of every ASD method. Subclasses set ``name`` and ``Config`` and implement the abstract methods.

    Args:
        config: an instance of ``cls.Config`` (a dataclass whose defaults are the paper's values).
        feature_spec: the FeatureSpec the features were computed with.
        num_classes: number of machine_ids / sections in the training set (classifiers use it; others ignore it).
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any, feature_spec: FeatureSpec, num_classes: int = 1):
        if not isinstance(config, self.Config):
            raise ConfigError(f"{type(self).__name__} expects a {self.Config.__qualname__}, got {type(config).__name__}")
        self.config = config
        self.feature_spec = feature_spec
        self.num_classes = int(num_classes)
        self.device = torch.device("cpu")

    # -- construction helpers ---------------------------------------------------------------------------------
    @classmethod
    def make_config(cls, values: Mapping[str, Any] | None = None) -> Any:
        """``Config`` from a mapping; raises ConfigError on unknown keys or wrong types (names the key)."""
        return from_dict(cls.Config, values, f"{cls.name} config")

    @classmethod
    def default_feature_spec(cls, config: Any) -> FeatureSpec:
        """The FeatureSpec this method's paper used. Override where it differs from the DCASE 2020 baseline."""
        return FeatureSpec()

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.config)

    # -- data -------------------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Examples per optimizer step (``config.batch_size``)."""
        return int(getattr(self.config, "batch_size"))

    @abc.abstractmethod
    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Clip batch (numpy: ``log_mel`` [B, n_mels, frames] or an object array of [n_mels, frames_i]) →
        example batch (numpy arrays sharing their first dimension)."""

    def fit_statistics(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Optional pass over the training examples before epoch 1. Default: nothing."""

    # -- training ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step (or one G step + one D step). Returns scalar losses for logging."""

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Losses on held-out examples, computed under ``torch.no_grad()`` in eval mode. Default: none."""
        return {}

    def fit_detector(self, clip_batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Optional pass over the training clips after training (e.g. fit a detector on embeddings)."""
        return {}

    # -- inference --------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Anomaly score per clip: Tensor [B] float32, higher = more anomalous."""

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - optional
        """Optional clip embedding [B, D]."""
        raise NotImplementedError(f"method {self.name!r} has no embed()")

    def localize(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - optional
        """Optional time-frequency anomaly map [B, n_mels, frames]."""
        raise NotImplementedError(f"method {self.name!r} has no localize()")

    @property
    def can_localize(self) -> bool:
        return type(self).localize is not Method.localize

    # -- state ------------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """Every torch module, by attribute name (the default finds them on ``self``)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.nn.Module)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def extra_state(self) -> dict[str, Any]:
        """Non-module state (tensors, numbers, strings, lists, dicts only: it must load with weights_only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: module weights, optimizer states and extra state."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mods = self.modules()
        missing = sorted(set(mods) - set(state.get("modules", {})))
        if missing:
            raise ConfigError(f"checkpoint for {self.name!r} lacks module state for {missing}")
        for k, m in mods.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers().items():
            if k in state.get("optimizers", {}):
                o.load_state_dict(state["optimizers"][k])
        self.load_extra_state(state.get("extra", {}))

    def to(self, device: torch.device | str) -> "Method":
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        for opt in self.optimizers().values():
            for st in opt.state.values():
                for k, v in st.items():
                    if torch.is_tensor(v):
                        st[k] = v.to(self.device)
        return self

    def train(self, mode: bool = True) -> "Method":
        for m in self.modules().values():
            m.train(mode)
        return self

    def eval(self) -> "Method":
        return self.train(False)

    # -- helpers for subclasses -------------------------------------------------------------------------------
    def optimize(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """zero_grad → backward → average gradients over ``torch.distributed`` workers (if any) → step.

        Every worker runs the same number of steps (Ray Train splits the data equally), so the all-reduce
        never waits on a worker that has stopped.
        """
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= world
        optimizer.step()

    def to_tensors(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Numeric numpy arrays → tensors on ``self.device`` (strings and object arrays are dropped)."""
        out = {}
        for k, v in batch.items():
            if torch.is_tensor(v):
                out[k] = v.to(self.device)
            elif isinstance(v, np.ndarray) and v.dtype.kind in "fiub":
                out[k] = torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
        return out


def clip_arrays(log_mel: Any) -> list[np.ndarray]:
    """A batch's ``log_mel`` column → list of [n_mels, frames_i] float32 arrays (handles ragged batches)."""
    if isinstance(log_mel, np.ndarray) and log_mel.dtype != object:
        return [np.asarray(x, dtype=np.float32) for x in log_mel]
    if torch.is_tensor(log_mel):
        return [x.numpy().astype(np.float32) for x in log_mel.cpu()]
    return [np.asarray(x, dtype=np.float32) for x in log_mel]


# -- registry -------------------------------------------------------------------------------------------------
def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``methods.get(cls.name)``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__qualname__} needs a class attribute 'name'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"method name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import stethoscope.methods as pkg

    import logging

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base",) and not info.name.startswith("_"):
            try:
                importlib.import_module(f"stethoscope.methods.{info.name}")
            except Exception as exc:  # noqa: BLE001 - one broken method must not hide the others
                IMPORT_ERRORS[info.name] = f"{type(exc).__name__}: {exc}"
                logging.getLogger(__name__).warning("method module %s failed to import: %s", info.name, exc)
    _DISCOVERED = True


def names() -> list[str]:
    """Every registered method name, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> type[Method]:
    """The Method class registered as ``name``.

    Raises:
        ConfigError: unknown name; the message lists the known names.
    """
    _discover()
    if name not in _REGISTRY:
        broken = f" (modules that failed to import: {IMPORT_ERRORS})" if IMPORT_ERRORS else ""
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}{broken}")
    return _REGISTRY[name]
