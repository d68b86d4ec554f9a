"""The Method contract v2 (DESIGN.md; docs/architecture.md) and the name → class registry.

A Method is pure PyTorch and knows nothing of Ray. It declares:

- its **inputs**: :meth:`Method.input_specs` → ``{name: spec}``, each a
  :class:`~stethoscope.data.features.FeatureSpec` (log-mel or STFT, any n_fft / hop / n_mels / scale) or a
  :class:`~stethoscope.data.features.WaveformSpec` (float32 [samples] at a sample rate). Ingest computes exactly these,
  once, and every batch carries them under these names;
- the **labels** it trains on: ``labels`` ⊆ ("machine_type", "group", "domain", "attributes") — encoded as integer
  arrays by :class:`~stethoscope.data.labels.Vocab` (saved in every checkpoint); only these are encoded for it;
- its default **scope**: ``default_scope`` = "per_id" | "per_machine_type" | "all_machine_types" (what one model is
  trained on: :mod:`stethoscope.scopes`), and the ``scopes`` it can train in (default: all three).

The generic training loop (``stethoscope.training``) drives it:

1. ``examples(clips)`` turns a clip batch (numpy: the declared inputs and the label arrays) into training examples
   (e.g. 640-dim frame vectors). It runs inside Ray Data ``map_batches``: a pure function of config, inputs and vocab.
2. ``fit_statistics(batches)`` (optional) sees the training examples once before epoch 1.
3. ``training_step(batch)`` does its own backward passes and optimizer steps (GANs alternate G and D) through
   :meth:`Method.optimize`: mixed precision on CUDA, gradient clipping, and one bucketed all-reduce of the gradients
   over the Ray Train workers per step.
4. ``validation_step(batch)`` returns losses on held-out examples; ``on_epoch_end(epoch, metrics)`` steps the LR
   schedulers (:meth:`make_scheduler`).
5. ``fit_detector(clip_batches)`` (optional) runs once after training on the training clips.
6. Inference: ``score(batch)`` → [B] (higher = more anomalous); optional ``embed(batch)`` → [B, D] (what the
   detector stage fits KNN / LOF / GMM / SOS ... on), ``localize(batch)`` → [B, F, T], ``score_variants(batch)``.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import logging
import pkgutil
import time
import warnings
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist

from stethoscope.config import from_dict, to_dict
from stethoscope.data.features import FeatureSpec, InputSpec, WaveformSpec, log_mel_spec
from stethoscope.data.labels import Vocab
from stethoscope.errors import ConfigError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type["Method"]] = {}
_DISCOVERED = False
#: Method modules that failed to import: module name → error message (reported by :func:`get`).
IMPORT_ERRORS: dict[str, str] = {}
SCOPES = ("per_id", "per_machine_type", "all_machine_types")


class Method(abc.ABC):
    """Base class of every ASD method. Subclasses set ``name`` and ``Config`` and implement the abstract methods.

    Args:
        config: an instance of ``cls.Config`` (a dataclass whose defaults are the paper's values).
        inputs: ``{name: InputSpec}`` the features were computed with (default: :meth:`input_specs` of
            ``config``). A single FeatureSpec means ``{"log_mel": spec}``.
        vocab: the label vocabularies of the training set (default: empty — a method without labels).
    Raises:
        ConfigError: a config of the wrong class, or inputs that differ from the declared names.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    #: "per_id" | "per_machine_type" | "all_machine_types": what one model is trained on unless the run says otherwise.
    default_scope: ClassVar[str] = "per_machine_type"
    #: The scopes the method can train in (``stethoscope.scopes.resolve_scope`` refuses others before any work);
    #: ``scope_note`` says why a scope is missing.
    scopes: ClassVar[tuple[str, ...]] = SCOPES
    scope_note: ClassVar[str] = ""
    #: Label families the method trains on and scores with (subset of stethoscope.data.labels.LABEL_KEYS).
    labels: ClassVar[tuple[str, ...]] = ()
    #: What scoring a clip of a group not seen in training does: "error" (a clear DataError) or "flag" (the
    #: method gets the explicit unknown index and a ``group:unknown`` mask, and handles it; documented per method).
    unknown_group: ClassVar[str] = "error"
    #: Attribute names of frozen pretrained modules (encoders): excluded from state_dict, checkpoints and bundles.
    frozen: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, inputs: Mapping[str, InputSpec] | FeatureSpec | None = None,
                 vocab: Vocab | None = None):
        if not isinstance(config, self.Config):
            raise ConfigError(f"{type(self).__name__} expects a {self.Config.__qualname__}, got {type(config).__name__}")
        self.config = config
        declared = type(self).input_specs(config)
        if inputs is None:
            inputs = declared
        elif isinstance(inputs, (FeatureSpec, WaveformSpec)):
            inputs = {next(iter(declared)) if len(declared) == 1 else "log_mel": inputs}
        inputs = dict(inputs)
        if set(inputs) != set(declared):
            raise ConfigError(f"{self.name}: inputs {sorted(inputs)} differ from the declared {sorted(declared)}")
        self.inputs: dict[str, InputSpec] = inputs
        self.vocab = vocab if vocab is not None else Vocab()
        self.device = torch.device("cpu")
        self.mixed_precision = False
        self._scaler: torch.amp.GradScaler | None = None

    # -- construction helpers ---------------------------------------------------------------------------------
    @classmethod
    def make_config(cls, values: Mapping[str, Any] | None = None) -> Any:
        """``Config`` from a mapping; raises ConfigError on unknown keys or wrong types (names the key)."""
        return from_dict(cls.Config, values, f"{cls.name} config")

    @classmethod
    def input_specs(cls, config: Any) -> dict[str, InputSpec]:
        """The inputs this method reads, by batch name. Default: ``{"log_mel": default_feature_spec(config)}``."""
        return {"log_mel": cls.default_feature_spec(config)}

    @classmethod
    def default_feature_spec(cls, config: Any) -> FeatureSpec:
        """The log-mel spec of a one-input method (its paper's). Default: the DCASE 2020 baseline's."""
        return FeatureSpec()

    @property
    def feature_spec(self) -> FeatureSpec:
        """The spec of the ``log_mel`` input (or of the only spectrogram input) of a log-mel method.

        Raises:
            AttributeError: the method has no spectrogram input, or several without one named ``log_mel``.
        """
        spec = log_mel_spec(self.inputs)
        if spec is None:
            n = sum(isinstance(s, FeatureSpec) for s in self.inputs.values())
            raise AttributeError(f"{self.name} has {n} spectrogram inputs; name one of {sorted(self.inputs)}")
        return spec

    @property
    def num_classes(self) -> int:
        """Number of groups (machine IDs / sections) in the vocabulary (at least 1)."""
        return max(1, self.vocab.size("group"))

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.config)

    # -- data -------------------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Examples per optimizer step (``config.batch_size``)."""
        return int(getattr(self.config, "batch_size"))

    def label_keys(self) -> list[str]:
        """The label arrays this method's batches carry (from ``labels`` and the vocabulary)."""
        return self.vocab.label_keys(self.labels)

    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Clip batch (numpy: each declared input, [B, ...] or an object array of ragged arrays, plus the label
        arrays) → example batch (numpy arrays sharing their first dimension). Default: the clips themselves."""
        keys = list(self.inputs) + self.label_keys()
        return {k: clips[k] for k in keys if k in clips}

    def fit_statistics(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Optional pass over the training examples before epoch 1. Default: nothing."""

    # -- training ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step (or one G step + one D step). Returns scalar losses for logging."""

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Losses on held-out examples, computed under ``torch.no_grad()`` in eval mode. Default: none."""
        return {}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Called by the loop after each epoch (1-based ``epoch``). Default: step every LR scheduler, and let the next
        epoch draw a new :meth:`epoch_rng`."""
        for sched in self.schedulers().values():
            sched.step()
        self._epoch_rng = None

    def epoch_rng(self) -> np.random.Generator:
        """This epoch's numpy Generator for a method's own random draws in training (mixup λ, TMixup τ ...): made on
        first use from the global numpy state (which the train loop seeds per epoch from the run seed: ``seed *
        100003 + epoch``) and the worker's rank, so a run, and a resumed run, replays the same draws while the Ray
        Train workers draw different ones. :meth:`on_epoch_end` starts the next epoch's."""
        rng = getattr(self, "_epoch_rng", None)
        if rng is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            rng = self._epoch_rng = np.random.default_rng([int(np.random.randint(0, 2**31 - 1)), rank])
        return rng

    def fit_detector(self, clip_batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Optional pass over the training clips after training (e.g. fit a detector on embeddings)."""
        return {}

    # -- inference --------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Anomaly score per clip: Tensor [B] float32, higher = more anomalous."""

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - optional
        """Optional clip embedding [B, D] (the detector stage fits its detectors on these)."""
        raise NotImplementedError(f"method {self.name!r} has no embed()")

    def localize(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - optional
        """Optional time-frequency anomaly map [B, F, T]."""
        raise NotImplementedError(f"method {self.name!r} has no localize()")

    @property
    def can_localize(self) -> bool:
        return type(self).localize is not Method.localize

    @property
    def can_embed(self) -> bool:
        return type(self).embed is not Method.embed

    # -- state ------------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """Every trainable torch module, by attribute name (frozen encoders excluded)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.nn.Module) and k not in self.frozen}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.lr_scheduler.LRScheduler)}

    def extra_state(self) -> dict[str, Any]:
        """Non-module state (tensors, numbers, strings, lists, dicts only: it must load with weights_only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: module weights, optimizer and scheduler states and extra state."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers().items()},
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
        for k, sch in self.schedulers().items():
            if k in state.get("schedulers", {}):
                sch.load_state_dict(state["schedulers"][k])
        self.load_extra_state(state.get("extra", {}))

    def to(self, device: torch.device | str) -> "Method":
        self.device = torch.device(device)
        for k, v in vars(self).items():
            if isinstance(v, torch.nn.Module):
                v.to(self.device)
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
    def enable_mixed_precision(self, enabled: bool = True) -> None:
        """Turn on torch.autocast (float16) + a GradScaler for training steps; only on CUDA (no-op on the CPU)."""
        self.mixed_precision = bool(enabled) and self.device.type == "cuda"
        self._scaler = torch.amp.GradScaler("cuda") if self.mixed_precision else None

    def autocast(self):
        """Context for a forward pass: ``torch.autocast("cuda", float16)`` with mixed precision, else nothing."""
        if self.mixed_precision:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def make_scheduler(self, optimizer: torch.optim.Optimizer, kind: str, **kwargs: Any):
        """An LR scheduler stepped once per epoch by :meth:`on_epoch_end`.

        kind: "cosine" (CosineAnnealingLR, ``T_max`` = epochs by default, ``eta_min``), "step" (StepLR:
        ``step_size`` epochs, ``gamma``) or "none" (returns None).
        Raises:
            ConfigError: an unknown kind.
        """
        if kind == "none":
            return None
        if kind == "cosine":
            kwargs.setdefault("T_max", max(1, int(getattr(self.config, "epochs", 1))))
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **kwargs)
        if kind == "step":
            kwargs.setdefault("step_size", 1)
            return torch.optim.lr_scheduler.StepLR(optimizer, **kwargs)
        raise ConfigError(f"{self.name}: unknown LR scheduler {kind!r}; expected 'cosine', 'step' or 'none'")

    def optimize(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, *,
                 clip_grad_norm: float | None = None) -> None:
        """zero_grad → backward (scaled under mixed precision) → average the gradients over the
        ``torch.distributed`` workers in one flat all-reduce → clip their norm (if asked) → step.

        Every worker runs the same number of steps (Ray Train splits the data equally), so the all-reduce never
        waits on a worker that has stopped. A parameter without a gradient on this step contributes zeros, so every
        worker reduces the same buffer.
        """
        optimizer.zero_grad(set_to_none=True)
        if self._scaler is not None:
            self._scaler.scale(loss).backward()
        else:
            loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        allreduce_gradients(params)
        if self._scaler is not None:
            if clip_grad_norm:
                self._scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            self._scaler.step(optimizer)
            self._scaler.update()
            return
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()

    def to_tensors(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Numeric numpy arrays → tensors on ``self.device`` (strings and object arrays are dropped).

        A read-only array (Ray's object store hands those out, zero-copy) is wrapped without a copy, as Ray's own
        ``iter_torch_batches`` does; training steps never write into their batch."""
        out = {}
        for k, v in batch.items():
            if torch.is_tensor(v):
                out[k] = v.to(self.device)
            elif isinstance(v, np.ndarray) and v.dtype.kind in "fiub":
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                    out[k] = torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
        return out


class CommStats:
    """Time this process spent in :func:`allreduce_gradients` (seconds, calls, float32 values reduced), summed since
    it started; the training loop reports the per-epoch difference as ``allreduce_seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.values = 0


#: This process's all-reduce counters (one per process: each Ray Train worker is its own process).
COMM_STATS = CommStats()


def allreduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ``torch.distributed`` workers with ONE all-reduce of a flat
    buffer (no-op with one worker). A parameter without a gradient contributes zeros (and gets them), so every
    worker reduces buffers of the same layout. The time spent here is added to :data:`COMM_STATS`."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not params:
        return
    t0 = time.perf_counter()
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
    COMM_STATS.seconds += time.perf_counter() - t0
    COMM_STATS.calls += 1
    COMM_STATS.values += int(flat.numel())


def standardisation(values: Iterable[torch.Tensor], owner: str, device: torch.device) -> tuple[float, float]:
    """Mean and (population) standard deviation, in the values' units, of every element of ``values`` (tensors of
    any shape); the count, sum and sum of squares are summed over the ``torch.distributed`` workers when initialised
    (on ``device`` with NCCL), so every worker standardises alike.

    Raises:
        DataError: no values, non-finite values, or a constant (standardisation undefined); names ``owner``.
    """
    from stethoscope.errors import DataError

    acc = torch.zeros(3, dtype=torch.float64)
    for v in values:
        v = v.detach().to("cpu", torch.float64)
        acc += torch.stack([torch.tensor(float(v.numel()), dtype=torch.float64), v.sum(), v.square().sum()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = acc.to(device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        acc = t.cpu()
    n, s1, s2 = acc.tolist()
    if n == 0:
        raise DataError(f"{owner}: no training values to compute the standardisation from")
    mean, var = s1 / n, s2 / n - (s1 / n) ** 2
    if not (np.isfinite(mean) and np.isfinite(var)):
        raise DataError(f"{owner}: the training values are not all finite")
    if var <= 1e-12:
        raise DataError(f"{owner}: every training value is {mean:.3f}; standardisation is undefined")
    return mean, float(np.sqrt(var))


def clip_arrays(log_mel: Any) -> list[np.ndarray]:
    """A batch's ``log_mel`` column → list of [n_mels, frames_i] float32 arrays (handles ragged batches)."""
    if isinstance(log_mel, np.ndarray) and log_mel.dtype != object:
        return [np.asarray(x, dtype=np.float32) for x in log_mel]
    if torch.is_tensor(log_mel):
        return [x.numpy().astype(np.float32) for x in log_mel.cpu()]
    return [np.asarray(x, dtype=np.float32) for x in log_mel]


def crop_starts(n_frames_clip: int, crop: int, hop: int) -> list[int]:
    """Start frames of a clip's crops: every ``hop`` frames while a whole crop fits, plus one aligned to the clip's
    end when the hop misses its tail; ``[0]`` for a clip of at most ``crop`` frames (:func:`crop_clip` tiles it).

    Raises:
        DataError: a clip of 0 frames.
    """
    from stethoscope.errors import DataError

    if n_frames_clip <= 0:
        raise DataError("a spectrogram clip has 0 frames")
    if n_frames_clip <= crop:
        return [0]
    starts = list(range(0, n_frames_clip - crop + 1, hop))
    if starts[-1] != n_frames_clip - crop:
        starts.append(n_frames_clip - crop)
    return starts


def crop_clip(spec: np.ndarray, crop: int, hop: int) -> np.ndarray:
    """A clip's spectrogram [F, T] → its crops [P, F, crop] at :func:`crop_starts` (a clip shorter than ``crop``
    is tiled from its start), float32."""
    t = spec.shape[1]
    starts = crop_starts(t, crop, hop)
    if t < crop:
        spec = np.tile(spec, (1, -(-crop // t)))[:, :crop]
    return np.stack([spec[:, s:s + crop] for s in starts]).astype(np.float32)


class FrozenEncoder:
    """A method's frozen pretrained encoder (:mod:`stethoscope.encoders`; TLDiffGAN's waveform branch, SC-wav2vec).

    The reference to its local weights (:class:`~stethoscope.encoders.EncoderRef`: name, path, SHA-256) is made when
    the method is built, so a missing file fails before anything trains; the network is loaded on first use with its
    SHA-256 checked before anything is unpickled; checkpoints and bundles keep the reference, never the weights.

    Args:
        owner: the method's name (for messages). name / path: the encoder's registry name and its local weights
            (None = weights packaged with stethoscope, for an encoder that has them).
    Raises:
        EncoderError: an unknown encoder or missing weights (the message says which file goes where).
    """

    def __init__(self, owner: str, name: str, path: str | None):
        from stethoscope import encoders

        self.owner = owner
        self.ref = encoders.reference(name, path)
        self._encoder = None

    def load(self, device: torch.device) -> Any:
        """The :class:`~stethoscope.encoders.Encoder`, loaded once (on ``device``). Raises EncoderError when the
        files changed since the reference was made, or do not load as that encoder."""
        from stethoscope import encoders

        if self._encoder is None:
            ref = self.ref
            path = None if ref.path == f"package:{ref.name}" else ref.path
            self._encoder = encoders.load(ref.name, path, device, sha256=ref.sha256)
        return self._encoder

    def to(self, device: torch.device) -> None:
        if self._encoder is not None:
            self._encoder.to(device)

    def check(self, saved: Mapping[str, Any]) -> None:
        """Refuse a checkpoint whose encoder (``saved``: an EncoderRef dict) is not this one.

        Raises:
            EncoderError: another encoder, or other weights (the message gives both digests and paths).
        """
        from stethoscope import encoders

        ref = encoders.EncoderRef.from_dict(saved)
        if (ref.name, ref.sha256) != (self.ref.name, self.ref.sha256):
            raise encoders.EncoderError(
                f"{self.owner}: the checkpoint's encoder '{ref.name}' had weights with SHA-256 {ref.sha256} (from "
                f"{ref.path}); '{self.ref.name}' at {self.ref.path} has {self.ref.sha256}: these are not the weights "
                "the model was trained with. Put the original file(s) back, or retrain.")
        self._encoder = None


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
