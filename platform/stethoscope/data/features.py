"""Log-mel / STFT features, the waveform input, and the specs that key the feature cache.

A Method declares its inputs as named specs (``Method.input_specs``): :class:`FeatureSpec` (a log-mel or an STFT
spectrogram, in dB, natural log or linear units) and :class:`WaveformSpec` (the decoded mono waveform).

Defaults reproduce the DCASE 2020 Task 2 autoencoder baseline (Koizumi et al., "Description and discussion on
DCASE2020 Challenge Task2", arXiv:2006.05822, §4 and the baseline's ``baseline.yaml``): 16 kHz, n_fft 1024,
hop 512, 128 mels, power 2.0, ``dB = 10·log10(mel + eps)`` and 5 stacked frames (5 × 128 = 640-dim vectors).
The baseline computed its mel spectrogram with librosa, whose defaults are the Slaney mel scale and Slaney
area normalisation; we compute the same thing with torchaudio.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchaudio

from stethoscope.errors import ConfigError

#: Bumped whenever the feature *code* changes in a way that changes values, so old caches are not reused.
FEATURE_CODE_VERSION = 3


@dataclass(frozen=True)
class FeatureSpec:
    """Every parameter of a spectrogram front end. Frozen; :meth:`hash` is the feature-cache key.

    Fields (units):
        kind: "mel" (mel filterbank over the STFT, [n_mels, frames]) or "stft" (the STFT bins themselves,
            [n_fft // 2 + 1, frames]; AITHU DCASE 2022 Table 3's "STFT" input).
        scale: "db" (decibels, per ``db_ref``), "ln" (natural ``log(x + eps)``: FGASpecNet's
            F_LM = log(H_M·|STFT(x)|²)) or "linear" (no log: AITHU's STFT magnitude spectrogram).
        sample_rate: Hz. Clips at another rate are resampled to it on ingest.
        n_fft: STFT size in samples. win_length: window in samples (None = n_fft, Hann window).
        hop_length: samples between frames (512 at 16 kHz = 32 ms).
        n_mels: mel bands. f_min / f_max: Hz (f_max None = sample_rate / 2).
        power: 2.0 = power spectrogram. mel_scale / mel_norm: "slaney" as librosa (the DCASE baselines).
        db_ref: (scale "db") "absolute" → ``10/power·... = 10·log10(mel + eps)`` (DCASE 2020 baseline);
                "max" → ``10·log10(max(mel, amin) / max(mel))`` floored at ``-top_db`` dB
                 (librosa ``power_to_db(ref=np.max, top_db=80)``; JBCS 2024 Eq. 2-3);
                 "absolute_top_db" → ``10·log10(max(mel, amin))`` floored at ``top_db`` dB below the clip's maximum
                 (librosa ``power_to_db(ref=1.0, top_db=80)``; AEGAN-AD's reference code, before its min-max scaling).
        eps: added before the log in "absolute" dB mode and in "ln" scale (the baseline's ``sys.float_info.epsilon``).
        amin / top_db: floor and dynamic range in "max" mode.
        n_frames: frames stacked into one vector by :func:`frame_stack` (5 → 640 dims).

    Raises:
        ConfigError: on construction, for any out-of-range field (the message names the field and the value).
    """

    kind: Literal["mel", "stft"] = "mel"
    scale: Literal["db", "ln", "linear"] = "db"
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int | None = None
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    power: float = 2.0
    mel_scale: Literal["slaney", "htk"] = "slaney"
    mel_norm: Literal["slaney", "none"] = "slaney"
    db_ref: Literal["absolute", "max", "absolute_top_db"] = "absolute"
    eps: float = sys.float_info.epsilon
    amin: float = 1e-10
    top_db: float = 80.0
    n_frames: int = 5

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> None:
            raise ConfigError(f"FeatureSpec.{field} = {getattr(self, field)!r}; expected {expected}")

        if self.kind not in ("mel", "stft"):
            bad("kind", "'mel' (log-mel) or 'stft' (STFT bins)")
        if self.scale not in ("db", "ln", "linear"):
            bad("scale", "'db', 'ln' (natural log) or 'linear'")
        if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            bad("sample_rate", "a positive integer (Hz)")
        if not isinstance(self.n_fft, int) or self.n_fft <= 0:
            bad("n_fft", "a positive integer (samples)")
        if self.win_length is not None and not (0 < self.win_length <= self.n_fft):
            bad("win_length", f"None or an integer in 1..n_fft={self.n_fft}")
        if not isinstance(self.hop_length, int) or self.hop_length <= 0:
            bad("hop_length", "a positive integer (samples)")
        if self.hop_length > self.n_fft:
            bad("hop_length", f"at most n_fft={self.n_fft} (hop > n_fft skips samples)")
        if not isinstance(self.n_mels, int) or self.n_mels <= 0:
            bad("n_mels", "a positive integer")
        nyquist = self.sample_rate / 2
        if self.f_min < 0 or self.f_min >= (self.f_max or nyquist):
            bad("f_min", f"0 <= f_min < f_max (Hz)")
        if self.f_max is not None and not (0 < self.f_max <= nyquist):
            bad("f_max", f"None or in (0, {nyquist}] Hz (the Nyquist frequency)")
        if self.power <= 0:
            bad("power", "> 0 (1.0 magnitude, 2.0 power)")
        if self.mel_scale not in ("slaney", "htk"):
            bad("mel_scale", "'slaney' or 'htk'")
        if self.mel_norm not in ("slaney", "none"):
            bad("mel_norm", "'slaney' or 'none'")
        if self.db_ref not in ("absolute", "max", "absolute_top_db"):
            bad("db_ref", "'absolute' (DCASE 2020 baseline), 'max' (librosa ref=max, JBCS 2024) or 'absolute_top_db' "
                          "(librosa ref=1.0 with the top_db floor, AEGAN-AD)")
        if self.eps <= 0 or self.amin <= 0:
            bad("eps" if self.eps <= 0 else "amin", "> 0")
        if self.top_db <= 0:
            bad("top_db", "> 0 dB")
        if not isinstance(self.n_frames, int) or self.n_frames < 1:
            bad("n_frames", "an integer >= 1")

    # -- identity -------------------------------------------------------------------------------------------
    input_kind = "spectrogram"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "FeatureSpec":
        """Build a spec from a mapping. Raises ConfigError on unknown keys or bad values."""
        from stethoscope.config import from_dict

        values = {k: v for k, v in dict(values or {}).items() if k != "input_kind"}
        return from_dict(cls, values, "FeatureSpec")

    def hash(self) -> str:
        """12-hex-digit SHA-256 of every field plus :data:`FEATURE_CODE_VERSION`: the feature-cache key."""
        payload = json.dumps({"v": FEATURE_CODE_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def n_bins(self) -> int:
        """Rows of the spectrogram: n_mels ("mel") or n_fft // 2 + 1 ("stft")."""
        return self.n_mels if self.kind == "mel" else self.n_fft // 2 + 1

    @property
    def vector_dim(self) -> int:
        """Length of one stacked vector: n_frames × n_bins (640 for the baseline)."""
        return self.n_frames * self.n_bins

    def num_frames(self, num_samples: int) -> int:
        """STFT frames for a clip of ``num_samples`` (center=True): ``1 + num_samples // hop_length``."""
        return 1 + num_samples // self.hop_length


@functools.lru_cache(maxsize=8)
def _transform(spec: FeatureSpec) -> torch.nn.Module:
    """The torchaudio transform of ``spec`` (shared: callers must copy it before changing it)."""
    # torchaudio builds the mel filterbank and window in the default dtype; build them in float64 so that the
    # filter edges are exact (float32 frequency grids shift edge weights by ~1e-5, i.e. up to 5e-4 dB).
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _build_transform(spec)
    finally:
        torch.set_default_dtype(previous)


def _build_transform(spec: FeatureSpec) -> torch.nn.Module:
    if spec.kind == "stft":
        return torchaudio.transforms.Spectrogram(
            n_fft=spec.n_fft, win_length=spec.win_length, hop_length=spec.hop_length, power=spec.power,
            center=True, pad_mode="reflect",
        ).to(torch.float64)
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=spec.sample_rate,
        n_fft=spec.n_fft,
        win_length=spec.win_length,
        hop_length=spec.hop_length,
        f_min=spec.f_min,
        f_max=spec.f_max,
        n_mels=spec.n_mels,
        power=spec.power,
        center=True,
        pad_mode="reflect",
        norm=None if spec.mel_norm == "none" else "slaney",
        mel_scale=spec.mel_scale,
    ).to(torch.float64)


def spectrogram_transform(spec: FeatureSpec) -> torch.nn.Module:
    """A fresh copy of the torchaudio transform (MelSpectrogram or Spectrogram, float64 buffers) that
    :func:`spectrogram` applies for ``spec``: for modules that compute features on the fly (e.g. on a GPU) the same
    way ingest does. [..., samples] → [..., F, frames]."""
    import copy

    return copy.deepcopy(_transform(spec))


def spectrogram(waveform: np.ndarray | torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Mel (``kind="mel"``) or STFT (``kind="stft"``) spectrogram of mono clips, ``|STFT|^power``, before any log.

    Args:
        waveform: [samples] or [B, samples] float, at ``spec.sample_rate`` Hz (a batch shares one length).
    Returns:
        Tensor [F, frames] or [B, F, frames] float64 (F = :attr:`FeatureSpec.n_bins`,
        frames = 1 + samples // hop_length). Computed in float64 so that the low-energy bands keep their
        precision (float32 STFT errors reach ~5e-4 dB 70 dB below the peak).
    Raises:
        ValueError: waveform is not 1-D / 2-D or is shorter than n_fft samples.
    """
    wav = torch.as_tensor(waveform).to(torch.float64)
    if wav.ndim not in (1, 2):
        raise ValueError(f"waveform must be [samples] or [B, samples], got shape {tuple(wav.shape)}")
    if wav.shape[-1] < spec.n_fft:
        raise ValueError(f"waveform has {wav.shape[-1]} samples; need at least n_fft={spec.n_fft}")
    transform = _transform(spec)
    stft = transform if spec.kind == "stft" else transform.spectrogram
    with torch.no_grad():
        # torchaudio's own STFT (same padding, window, normalization) as complex values; the power is taken here as
        # (re² + im²)^(power / 2), which equals torchaudio's |X|^power to float64 rounding and skips its complex
        # abs() (hypot per bin), the largest single cost of a serving request's log-mel (issue 18).
        x = torchaudio.functional.spectrogram(wav, stft.pad, stft.window, stft.n_fft, stft.hop_length,
                                              stft.win_length, None, stft.normalized, stft.center, stft.pad_mode,
                                              stft.onesided)
        power = x.real.square() + x.imag.square()
        if spec.power != 2.0:
            power = power.pow(spec.power / 2.0)
        return power if spec.kind == "stft" else transform.mel_scale(power)


def mel_spectrogram(waveform: np.ndarray | torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """:func:`spectrogram` of one clip: [samples] → [n_bins, frames] float64 (kept for the log-mel callers).

    Raises:
        ValueError: waveform is not 1-D or is shorter than n_fft samples.
    """
    if torch.as_tensor(waveform).ndim != 1:
        raise ValueError(f"waveform must be 1-D [samples], got shape {tuple(torch.as_tensor(waveform).shape)}")
    return spectrogram(waveform, spec)


def power_to_db(mel: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Power [..., F, frames] → dB, per ``spec.db_ref`` (see :class:`FeatureSpec`). Same shape and dtype."""
    if spec.db_ref == "absolute":
        # DCASE 2020 baseline: 20 / power · log10(mel + eps); with power 2.0 this is 10·log10(mel + eps).
        return 20.0 / spec.power * torch.log10(mel + spec.eps)
    db = 10.0 * torch.log10(torch.clamp(mel, min=spec.amin))
    if spec.db_ref == "max":
        ref = torch.amax(mel, dim=(-2, -1), keepdim=True).clamp(min=spec.amin)
        db = db - 10.0 * torch.log10(ref)
    return torch.maximum(db, torch.amax(db, dim=(-2, -1), keepdim=True) - spec.top_db)


def apply_scale(power: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """A :func:`spectrogram` output in ``spec.scale`` units: dB (:func:`power_to_db`), natural log
    ``log(x + eps)``, or unchanged ("linear"). Same shape, float32."""
    if spec.scale == "db":
        out = power_to_db(power, spec)
    elif spec.scale == "ln":
        out = torch.log(power + spec.eps)
    else:
        out = power
    return out.to(torch.float32)


def compute(waveform: np.ndarray | torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """The feature ``spec`` describes: [samples] → [F, frames], or [B, samples] → [B, F, frames], float32
    (computed in float64). A 10 s clip at 16 kHz with the default spec gives [128, 313].

    Raises:
        ValueError: a waveform that is not 1-D / 2-D or is shorter than n_fft samples.
    """
    return apply_scale(spectrogram(waveform, spec), spec)


def log_mel(waveform: np.ndarray | torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Log-mel spectrogram of a mono clip (the default spec: dB): [samples] → [F, frames] float32
    (computed in float64). :func:`compute` for one clip.

    Raises:
        ValueError: a non-1-D or too-short waveform.
    """
    return apply_scale(mel_spectrogram(waveform, spec), spec)


@dataclass(frozen=True)
class WaveformSpec:
    """The decoded mono waveform as a Method input: float32 [samples] at ``sample_rate`` Hz (clips at another rate
    are resampled on ingest, and the ingest report says so). Frozen; :meth:`hash` keys the feature cache.

    Raises:
        ConfigError: a sample rate that is not a positive integer.
    """

    sample_rate: int = 16000
    input_kind = "waveform"

    def __post_init__(self) -> None:
        if not isinstance(self.sample_rate, int) or isinstance(self.sample_rate, bool) or self.sample_rate <= 0:
            raise ConfigError(f"WaveformSpec.sample_rate = {self.sample_rate!r}; expected a positive integer (Hz)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "WaveformSpec":
        from stethoscope.config import from_dict

        values = {k: v for k, v in dict(values or {}).items() if k != "input_kind"}
        return from_dict(cls, values, "WaveformSpec")

    def hash(self) -> str:
        """12-hex-digit SHA-256 of the fields, the kind and :data:`FEATURE_CODE_VERSION`."""
        payload = json.dumps({"v": FEATURE_CODE_VERSION, "input_kind": "waveform", **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def num_samples(self, num_samples: int) -> int:
        return num_samples


#: A Method input: a spectrogram or the waveform.
InputSpec = FeatureSpec | WaveformSpec


def input_spec_to_dict(spec: InputSpec) -> dict:
    """``{"input_kind": "spectrogram" | "waveform", **fields}`` (what checkpoints and bundles store)."""
    return {"input_kind": spec.input_kind, **spec.to_dict()}


def input_spec_from_dict(values: dict) -> InputSpec:
    """Inverse of :func:`input_spec_to_dict`; a mapping without ``input_kind`` is a FeatureSpec (old checkpoints).

    Raises:
        ConfigError: unknown kind, unknown keys or bad values.
    """
    kind = dict(values).get("input_kind", "spectrogram")
    if kind == "waveform":
        return WaveformSpec.from_dict(values)
    if kind == "spectrogram":
        return FeatureSpec.from_dict(values)
    raise ConfigError(f"input spec kind {kind!r}; expected 'spectrogram' or 'waveform'")


def input_specs_to_dict(inputs: Mapping[str, InputSpec]) -> dict[str, dict]:
    """A Method's declared inputs ``{name: spec}`` as plain dicts ``{name: input_spec_to_dict(spec)}`` (JSON / YAML /
    Ray task arguments)."""
    return {name: input_spec_to_dict(spec) for name, spec in inputs.items()}


def input_specs_from_dict(values: Mapping[str, Mapping]) -> dict[str, InputSpec]:
    """Inverse of :func:`input_specs_to_dict`.

    Raises:
        ConfigError: ``values`` is not a mapping of names to spec mappings, or a spec is bad (names the input).
    """
    if not hasattr(values, "items"):
        raise ConfigError(f"inputs = {values!r}; expected a mapping of input names to input specs")
    out = {}
    for name, spec in values.items():
        if not hasattr(spec, "items"):
            raise ConfigError(f"inputs.{name} = {spec!r}; expected a mapping of input spec fields")
        try:
            out[str(name)] = input_spec_from_dict(spec)
        except ConfigError as exc:
            raise ConfigError(f"inputs.{name}: {exc}") from None
    return out


def log_mel_spec(inputs: Mapping[str, InputSpec]) -> FeatureSpec | None:
    """The spectrogram input of a log-mel method: the one named ``log_mel``, else the only :class:`FeatureSpec`;
    None when there is none (a waveform-only method) or several and none is named ``log_mel``."""
    if isinstance(inputs.get("log_mel"), FeatureSpec):
        return inputs["log_mel"]
    specs = [s for s in inputs.values() if isinstance(s, FeatureSpec)]
    return specs[0] if len(specs) == 1 else None


def compute_input(waveform: np.ndarray | torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """One declared input of a clip (or a [B, samples] batch of equal-length clips): the waveform itself (float32)
    for a :class:`WaveformSpec`, :func:`compute` for a :class:`FeatureSpec`."""
    if isinstance(spec, WaveformSpec):
        return torch.as_tensor(waveform).to(torch.float32)
    return compute(waveform, spec)


def _stft_key(spec: FeatureSpec) -> tuple:
    """The fields the |STFT|^power of ``spec`` depends on (not the mel filterbank, not the log scale)."""
    return spec.n_fft, spec.win_length, spec.hop_length, spec.power


def _mel_key(spec: FeatureSpec) -> tuple:
    """The fields the spectrogram before the log (:func:`spectrogram`) depends on."""
    if spec.kind == "stft":
        return ("stft", *_stft_key(spec))
    return ("mel", *_stft_key(spec), spec.sample_rate, spec.n_mels, spec.f_min, spec.f_max, spec.mel_scale,
            spec.mel_norm)


def compute_many(waveform: np.ndarray | torch.Tensor, specs: list[InputSpec]) -> list[torch.Tensor]:
    """Every input of ``specs`` from one decoded clip, sharing the work they have in common.

    Specs that differ only in their log scale (``scale``, ``db_ref``, ``eps``, ``amin``, ``top_db``, ``n_frames``)
    share one :func:`spectrogram`; mel and STFT specs with the same ``n_fft``, ``win_length``, ``hop_length`` and
    ``power`` share one |STFT|^power, to which each mel spec applies its own filterbank (what torchaudio's
    ``MelSpectrogram`` does inside: ``mel_scale(spectrogram(x))``). The results are bit-identical to
    :func:`compute_input` for each spec alone.

    Args:
        waveform: [samples] float at the specs' sample rate (every spec must share it; ingest groups them by rate).
        specs: input specs (a :class:`WaveformSpec` gives the waveform itself as float32).
    Returns:
        One tensor per spec, in the order of ``specs``: float32 [F, frames] per FeatureSpec
        (F = :attr:`FeatureSpec.n_bins`), float32 [samples] per WaveformSpec.
    Raises:
        ValueError: the specs ask for different sample rates, or a waveform that :func:`spectrogram` refuses
            (not 1-D, or shorter than a spec's n_fft).
    """
    rates = {s.sample_rate for s in specs}
    if len(rates) > 1:
        raise ValueError(f"compute_many: the specs ask for several sample rates {sorted(rates)}; call it once per rate")
    wav = torch.as_tensor(waveform)
    if wav.ndim != 1:
        raise ValueError(f"waveform must be 1-D [samples], got shape {tuple(wav.shape)}")
    stft_users: dict[tuple, int] = {}
    for s in specs:
        if isinstance(s, FeatureSpec):
            stft_users[_stft_key(s)] = stft_users.get(_stft_key(s), 0) + 1
    stfts: dict[tuple, torch.Tensor] = {}
    before_log: dict[tuple, torch.Tensor] = {}
    out: list[torch.Tensor] = []
    for spec in specs:
        if isinstance(spec, WaveformSpec):
            out.append(compute_input(wav, spec))
            continue
        key = _mel_key(spec)
        if key not in before_log:
            skey = _stft_key(spec)
            if spec.kind == "mel" and stft_users[skey] > 1:
                if skey not in stfts:
                    stfts[skey] = spectrogram(wav, dataclasses.replace(spec, kind="stft"))
                with torch.no_grad():
                    before_log[key] = _transform(spec).mel_scale(stfts[skey])
            elif spec.kind == "stft" and skey in stfts:
                before_log[key] = stfts[skey]
            else:
                before_log[key] = spectrogram(wav, spec)
                if spec.kind == "stft":
                    stfts[skey] = before_log[key]
        out.append(apply_scale(before_log[key], spec))
    return out


def frame_stack(logmel: torch.Tensor | np.ndarray, n_frames: int) -> torch.Tensor:
    """Stack ``n_frames`` consecutive frames into vectors, as the DCASE 2020 baseline does.

    Args:
        logmel: [n_mels, frames].
    Returns:
        [frames - n_frames + 1, n_frames · n_mels]; row t is ``concat(logmel[:, t], ..., logmel[:, t+n_frames-1])``.
        A 10 s clip (313 frames) gives 309 vectors of 640 dims.
    Raises:
        ValueError: fewer than ``n_frames`` frames.
    """
    x = torch.as_tensor(logmel, dtype=torch.float32)
    n_mels, frames = x.shape
    if frames < n_frames:
        raise ValueError(f"log-mel has {frames} frames; need at least n_frames={n_frames}")
    # unfold → [n_mels, vectors, n_frames]; put frame offset before mel so each block of n_mels is one frame.
    win = x.unfold(1, n_frames, 1)
    return win.permute(1, 2, 0).reshape(frames - n_frames + 1, n_frames * n_mels).contiguous()
