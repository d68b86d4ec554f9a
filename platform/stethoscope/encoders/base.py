"""The encoder interface, the name → loader registry, weight references (SHA-256) and input checks.

An :class:`Encoder` is a frozen pretrained network that maps a batch of waveforms to embeddings. It is a plain
Python object that *holds* a torch module (it is not an ``nn.Module`` itself), so a Method or an ``nn.Module``
that keeps an encoder as an attribute never copies the encoder's weights into its ``state_dict``: what gets
stored instead is an :class:`EncoderRef` (name, path, SHA-256 of the weight files), and loading a reference
whose files changed is refused (:func:`load_ref`, :meth:`Encoder.verify`).

Weights come from a local path only; nothing is downloaded at run time. Each loader names the files it needs
(:meth:`Encoder.weight_files`) and a missing one is an :class:`EncoderError` that says which file to put where.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
import torchaudio

from stethoscope.errors import StethoscopeError

log = logging.getLogger(__name__)

#: Bumped whenever encoder *code* changes embeddings (front ends, pooling), so cached embeddings are not reused.
ENCODER_CODE_VERSION = 1

#: Modules that register encoders (imported on the first registry look-up).
_LOADER_MODULES = ("stethoscope.encoders.hf", "stethoscope.encoders.beats", "stethoscope.encoders.eat",
                   "stethoscope.encoders.aisfx")
_REGISTRY: dict[str, type["Encoder"]] = {}
_DISCOVERED = False


class EncoderError(StethoscopeError):
    """An encoder name is unknown, its files are missing or hold another model, or they do not match a reference."""


class EncoderInputError(EncoderError, ValueError):
    """A waveform batch the encoder cannot take. ``reason``: ``"bad shape"``, ``"non-finite"`` or ``"too short"``."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


# -- references and hashes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderRef:
    """What a checkpoint or bundle stores instead of frozen encoder weights.

    Fields:
        name: registry name (``encoders.names()``), e.g. ``"beats"``.
        path: the local file or folder the weights were loaded from (a hint: :func:`load_ref` can take another).
        sha256: :func:`weights_sha256` of the weight files (64 hex digits).
    """

    name: str
    path: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "EncoderRef":
        """Build a reference from a mapping (e.g. a bundle manifest).

        Raises:
            EncoderError: a key is missing or unknown, or ``sha256`` is not 64 hex digits.
        """
        values = dict(values or {})
        expected = {"name", "path", "sha256"}
        if set(values) != expected:
            missing, unknown = sorted(expected - set(values)), sorted(set(values) - expected)
            raise EncoderError(f"encoder reference {values!r}: missing keys {missing}, unknown keys {unknown}; "
                               "expected exactly name, path, sha256")
        sha = str(values["sha256"]).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise EncoderError(f"encoder reference sha256 = {values['sha256']!r}; expected 64 hex digits")
        return cls(name=str(values["name"]), path=str(values["path"]), sha256=sha)


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of one file, remembered per (path, size, mtime) within the process."""
    path = os.path.realpath(path)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def weights_sha256(files: list[Path], root: Path | None = None) -> str:
    """The SHA-256 recorded in an :class:`EncoderRef`.

    One file: that file's SHA-256 (what ``sha256sum`` prints). Several files (a ``transformers`` folder: config
    plus weights): the SHA-256 of the text ``"<name relative to root>  <file sha256>\\n"`` over the files sorted by
    name, so renaming, adding or changing any of them changes it.
    """
    if len(files) == 1:
        return file_sha256(files[0])
    lines = sorted(f"{Path(f).relative_to(root) if root else Path(f).name}  {file_sha256(f)}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# -- the encoder interface -------------------------------------------------------------------------------------
class Encoder(abc.ABC):
    """A frozen pretrained waveform encoder (weights from a local path; see :func:`load`).

    Attributes (set by the loader):
        name: registry name. sample_rate: the rate the network takes (Hz); other rates are resampled
        (:meth:`conversion`). min_samples: the shortest input at ``sample_rate`` (samples); shorter clips raise
        :class:`EncoderInputError`. max_samples: longer inputs are cut to this many samples (None = no limit).
        embed_dim: D. frame_hop: samples at ``sample_rate`` between two frames of :meth:`frames` (approximate for
        encoders whose frames overlap). path / files / sha256: where the weights came from and their digest.
        model: the torch module (eval mode, ``requires_grad`` off).
    Class attributes: ``poolings`` the pooling names :meth:`embed` takes; ``default_pooling``.
    """

    name: ClassVar[str]
    poolings: ClassVar[tuple[str, ...]] = ("mean", "max")
    default_pooling: ClassVar[str] = "mean"
    #: For error messages: which files the loader needs, where (one line).
    expected_files: ClassVar[str]

    def __init__(self, model: torch.nn.Module, *, path: str, files: list[Path], sha256: str, sample_rate: int,
                 min_samples: int, embed_dim: int, frame_hop: int, max_samples: int | None = None):
        self.model = model.eval().requires_grad_(False)
        self.path = str(path)
        self.files = [Path(f) for f in files]
        self.sha256 = sha256
        self.sample_rate = int(sample_rate)
        self.min_samples = int(min_samples)
        self.max_samples = None if max_samples is None else int(max_samples)
        self.embed_dim = int(embed_dim)
        self.frame_hop = int(frame_hop)
        self._logged: set[tuple] = set()

    # -- loading (implemented by each loader) -----------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def weight_files(cls, path: Path) -> list[Path]:
        """The files under ``path`` that define the model (hashed into the reference).

        Raises:
            EncoderError: ``path`` or a needed file is missing (the message says which file to put where).
        """

    @classmethod
    @abc.abstractmethod
    def from_files(cls, path: Path, files: list[Path], sha256: str, device: torch.device) -> "Encoder":
        """Build the encoder from :meth:`weight_files`. Raises EncoderError if the files hold another model."""

    # -- the forward passes (implemented by each loader) ------------------------------------------------------
    @abc.abstractmethod
    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, samples] float32 at ``sample_rate`` on the model's device → [B, T, D]."""

    def _pool(self, wave: torch.Tensor, pooling: str) -> torch.Tensor:
        """[B, samples] → [B, D]. Default: mean or max of :meth:`_frames` over T. Loaders add e.g. ``"cls"``."""
        frames = self._frames(wave)
        return frames.mean(dim=1) if pooling == "mean" else frames.amax(dim=1)

    # -- public API -----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "Encoder":
        """Move the network to ``device`` (in place); returns self."""
        self.model.to(device)
        return self

    def reference(self) -> EncoderRef:
        """The :class:`EncoderRef` to store in checkpoints and bundles instead of the weights."""
        return EncoderRef(name=self.name, path=self.path, sha256=self.sha256)

    def verify(self, ref: EncoderRef | Mapping[str, Any]) -> None:
        """Check that this encoder is the one ``ref`` describes (same registry name and weight digest).

        Raises:
            EncoderError: the name or the SHA-256 differs (the message gives both digests and the path).
        """
        ref = ref if isinstance(ref, EncoderRef) else EncoderRef.from_dict(ref)
        if ref.name != self.name:
            raise EncoderError(f"the reference is for encoder '{ref.name}', but '{self.name}' is loaded "
                               f"(from {self.path})")
        if ref.sha256 != self.sha256:
            raise EncoderError(
                f"encoder '{self.name}' weights at {self.path} have SHA-256 {self.sha256}, but the reference "
                f"(recorded from {ref.path}) expects {ref.sha256}: these are not the weights the model was trained "
                "with. Put the original file(s) back, or retrain with these.")

    def conversion(self, sample_rate: int, num_samples: int | None = None) -> list[str]:
        """What :meth:`prepare` does to a clip of ``num_samples`` at ``sample_rate`` Hz before the network sees it.

        Returns human-readable notes (empty when the clip is taken as is), e.g.
        ``["resampled from 16000 Hz to 44100 Hz (torchaudio.functional.resample)"]``. Ingest records them.
        """
        notes = []
        if sample_rate != self.sample_rate:
            notes.append(f"resampled from {sample_rate} Hz to {self.sample_rate} Hz (torchaudio.functional.resample)")
        if num_samples is not None and self.max_samples is not None:
            resampled = math.ceil(num_samples * self.sample_rate / sample_rate)
            if resampled > self.max_samples:
                notes.append(f"cut to the first {self.max_samples} samples ({self.max_samples / self.sample_rate:.2f} s)"
                             f" of {resampled}: the encoder's maximum input")
        return notes

    def check_length(self, num_samples: int, sample_rate: int) -> None:
        """Raise :class:`EncoderInputError` (``"too short"``) if a clip of ``num_samples`` at ``sample_rate`` Hz is
        shorter than :attr:`min_samples` after resampling; the message names the minimum in samples and seconds."""
        need = math.ceil(self.min_samples * sample_rate / self.sample_rate)
        if num_samples < need:
            raise EncoderInputError(
                "too short",
                f"encoder '{self.name}' needs at least {self.min_samples} samples at {self.sample_rate} Hz "
                f"({self.min_samples / self.sample_rate:.3f} s; {need} samples at {sample_rate} Hz); got "
                f"{num_samples} samples at {sample_rate} Hz ({num_samples / sample_rate:.3f} s)")

    def prepare(self, wave: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Validate a waveform batch and bring it to the encoder's rate, length limit and device.

        Args:
            wave: [B, samples] (or [samples]) float waveform in [-1, 1], at ``sample_rate`` Hz.
            sample_rate: Hz of ``wave``; None = the encoder's own rate.
        Returns:
            [B, samples'] float32 at :attr:`sample_rate` on the model's device.
        Raises:
            EncoderInputError: not 1-D/2-D (``"bad shape"``), NaN/inf (``"non-finite"``) or shorter than the minimum
                (``"too short"``; the message names the minimum in samples and seconds at both rates).
        """
        x = torch.as_tensor(wave)
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if x.ndim != 2 or x.shape[0] == 0:
            raise EncoderInputError("bad shape", f"encoder '{self.name}' takes a waveform batch [B, samples]; got "
                                                 f"shape {tuple(x.shape)}")
        x = x.to(torch.float32)
        sr = self.sample_rate if sample_rate is None else int(sample_rate)
        self.check_length(x.shape[1], sr)
        if not torch.isfinite(x).all():
            raise EncoderInputError("non-finite", f"encoder '{self.name}': the waveform has NaN or inf samples")
        x = x.to(self.device)
        if sr != self.sample_rate:
            self._log_once(("resample", sr), "encoder %s: resampling %d Hz input to %d Hz", self.name, sr,
                           self.sample_rate)
            x = resample(x, sr, self.sample_rate)
        if self.max_samples is not None and x.shape[1] > self.max_samples:
            self._log_once(("cut", x.shape[1]), "encoder %s: cutting %d-sample input to its maximum of %d samples",
                           self.name, x.shape[1], self.max_samples)
            x = x[:, : self.max_samples]
        return x

    @torch.no_grad()
    def frames(self, wave: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Frame-level embeddings.

        Args:
            wave: [B, samples] float32 at ``sample_rate`` Hz (None = :attr:`sample_rate`).
        Returns:
            [B, T, D] float32 on the model's device; T grows with the clip length (about samples / frame_hop).
        Raises:
            EncoderInputError: see :meth:`prepare`.
        """
        return self._frames(self.prepare(wave, sample_rate)).float()

    @torch.no_grad()
    def embed(self, wave: Any, sample_rate: int | None = None, pooling: str | None = None) -> torch.Tensor:
        """Clip-level embeddings.

        Args:
            wave: [B, samples] float32 at ``sample_rate`` Hz (None = :attr:`sample_rate`).
            pooling: one of :attr:`poolings` (None = :attr:`default_pooling`).
        Returns:
            [B, D] float32 on the model's device.
        Raises:
            EncoderInputError: see :meth:`prepare`. EncoderError: unknown pooling.
        """
        pooling = self.default_pooling if pooling is None else pooling
        if pooling not in self.poolings:
            raise EncoderError(f"encoder '{self.name}' has no pooling '{pooling}'; choose one of {list(self.poolings)}")
        return self._pool(self.prepare(wave, sample_rate), pooling).float()

    def _log_once(self, key: tuple, msg: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.info(msg, *args)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, path={self.path!r}, sample_rate={self.sample_rate}, "
                f"embed_dim={self.embed_dim}, sha256={self.sha256[:12]}…)")


def resample(wave: torch.Tensor, orig_hz: int, new_hz: int) -> torch.Tensor:
    """[B, samples] at ``orig_hz`` → [B, ceil(samples · new_hz / orig_hz)] at ``new_hz`` (torchaudio's windowed-sinc
    resampler, the one ``stethoscope.data.audio`` uses on decode; it runs on the tensor's device)."""
    return torchaudio.functional.resample(wave, int(orig_hz), int(new_hz))


# -- helpers for loaders ---------------------------------------------------------------------------------------
def require_path(name: str, path: str | os.PathLike | None, expected: str) -> Path:
    """``path`` as a Path if it exists, else an EncoderError that says which files to put where."""
    if path is None or str(path) == "":
        raise EncoderError(f"encoder '{name}' needs a local path to its weights: {expected}")
    p = Path(path).expanduser()
    if not p.exists():
        raise EncoderError(f"encoder '{name}': {p} does not exist. {expected}")
    return p


def single_file(name: str, path: Path, patterns: tuple[str, ...], expected: str) -> Path:
    """A checkpoint file: ``path`` itself, or the one file in folder ``path`` matching ``patterns``."""
    if path.is_file():
        return path
    found = sorted({f for pattern in patterns for f in path.glob(pattern) if f.is_file()})
    if len(found) == 1:
        return found[0]
    if not found:
        raise EncoderError(f"encoder '{name}': no checkpoint ({', '.join(patterns)}) in {path}. {expected}")
    raise EncoderError(f"encoder '{name}': {len(found)} checkpoints in {path} ({', '.join(f.name for f in found)}); "
                       "pass the file itself as the path")


def _safe_globals() -> list:
    """Plain data objects that official checkpoints pickle beside their tensors: numpy scalars and dtypes (configs,
    metadata) and ``argparse.Namespace`` (the ``args`` of older fairseq checkpoints). None of them runs code."""
    import argparse

    import numpy as np

    dtypes = [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]
    return [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np._core.multiarray.scalar, np.dtype,
            *dtypes, argparse.Namespace]


def load_checkpoint(name: str, file: Path) -> Any:
    """``torch.load(file, weights_only=True)`` on CPU, allowing the plain objects official checkpoints contain.

    Nothing in the file is executed: a checkpoint that pickles other Python objects is refused.

    Raises:
        EncoderError: the file is not a torch checkpoint or pickles objects other than tensors, containers and
            the objects of :func:`_safe_globals` (the message names the object and how to re-save the file).
    """
    import pickle

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise EncoderError(
            f"encoder '{name}': {file} holds pickled Python objects, which are never executed here ({detail}). "
            "If you trust the file, re-save its tensors and config as plain containers: python -c \"import torch; "
            "c = torch.load('IN', weights_only=False); torch.save({'cfg': dict(c['cfg']), 'model': c['model']}, 'OUT')\""
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise EncoderError(f"encoder '{name}': {file} is not a readable torch checkpoint ({exc})") from exc


# -- registry --------------------------------------------------------------------------------------------------
def register(cls: type[Encoder]) -> type[Encoder]:
    """Class decorator: add an Encoder subclass to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"encoder name '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if not _DISCOVERED:
        for module in _LOADER_MODULES:
            importlib.import_module(module)
        _DISCOVERED = True


def names() -> list[str]:
    """Every registered encoder name, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> type[Encoder]:
    """The Encoder class registered as ``name``. Raises EncoderError (listing the known names) if there is none."""
    _discover()
    if name not in _REGISTRY:
        raise EncoderError(f"unknown encoder '{name}'; known encoders: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def load(name: str, path: str | os.PathLike | None, device: str | torch.device = "cpu", *,
         sha256: str | None = None) -> Encoder:
    """Load encoder ``name`` from local ``path`` onto ``device``. Nothing is downloaded.

    Args:
        name: registry name (:func:`names`).
        path: the weights' file or folder (what each encoder expects: docs/encoders.md; aisfx: None = the
            installed package's own weights).
        device: torch device for the network.
        sha256: if given, the files must have this digest (checked *before* they are unpickled).
    Returns:
        the Encoder (eval mode, gradients off).
    Raises:
        EncoderError: unknown name; missing path or file (says which file goes where); the files hold another
            model; the digest differs from ``sha256``.
    """
    cls = get(name)
    root = Path(path).expanduser() if path not in (None, "") else None
    files = cls.weight_files(root)
    digest = weights_sha256(files, root if root is not None and root.is_dir() else None)
    if sha256 is not None and digest != sha256:
        raise EncoderError(
            f"encoder '{name}' weights at {path} have SHA-256 {digest}, but {sha256} was expected: these are not "
            "the weights the model was trained with. Put the original file(s) back, or retrain with these.")
    encoder = cls.from_files(root, files, digest, torch.device(device))
    return encoder.to(device)


def reference(name: str, path: str | os.PathLike | None) -> EncoderRef:
    """The :class:`EncoderRef` of encoder ``name``'s weights at local ``path``, without loading them: the files are
    found and hashed only (a cheap early check before a long run; :func:`load_ref` loads them later).

    ``path`` None (aisfx: the installed package's own weights) is recorded as ``"package:<name>"``.
    Raises:
        EncoderError: unknown name, or a missing path or file (says which file goes where).
    """
    cls = get(name)
    root = Path(path).expanduser() if path not in (None, "") else None
    files = cls.weight_files(root)
    digest = weights_sha256(files, root if root is not None and root.is_dir() else None)
    return EncoderRef(name=name, path=str(root) if root is not None else f"package:{name}", sha256=digest)


def load_ref(ref: EncoderRef | Mapping[str, Any], device: str | torch.device = "cpu", *,
             path: str | os.PathLike | None = None) -> Encoder:
    """Load the encoder a checkpoint or bundle refers to, refusing files whose SHA-256 differs.

    Args:
        ref: an :class:`EncoderRef` (or its dict).
        path: where the weights are on this machine, if not at ``ref.path``.
    Raises:
        EncoderError: see :func:`load`; the digest check happens before anything is unpickled.
    """
    ref = ref if isinstance(ref, EncoderRef) else EncoderRef.from_dict(ref)
    return load(ref.name, ref.path if path is None else path, device, sha256=ref.sha256)


def verify(ref: EncoderRef | Mapping[str, Any], path: str | os.PathLike | None = None) -> None:
    """Re-hash the files ``ref`` points to (or ``path``) without loading them. Raises EncoderError on a mismatch."""
    ref = ref if isinstance(ref, EncoderRef) else EncoderRef.from_dict(ref)
    root = path if path is not None else ref.path
    root = Path(root).expanduser() if root not in (None, "") else None
    cls = get(ref.name)
    files = cls.weight_files(root)
    digest = weights_sha256(files, root if root is not None and root.is_dir() else None)
    if digest != ref.sha256:
        raise EncoderError(
            f"encoder '{ref.name}' weights at {root} have SHA-256 {digest}, but the reference expects {ref.sha256}: "
            "these are not the weights the model was trained with. Put the original file(s) back, or retrain.")
