"""Seeded synthetic machine sounds, written as a DCASE 2020 Task 2 development-set tree.

The real clips in ``../shared/data`` are far too few for tests and benchmarks, so this module makes as many as needed.
It is not a model of any real machine. It only has the structure that ASD methods exploit (Koizumi et al., DCASE 2020
Task 2 description, arXiv:2006.05822, §2: stationary machine sound plus background noise, anomalies being
small deviations from it):

* **normal sound** = a harmonic hum whose fundamental wanders slowly (speed wander, about ±1 %), plus broadband noise
  shaped into a band and slowly amplitude-modulated (airflow, friction), plus pink background noise (the factory);
* every ``(machine_type, machine_id)`` has its own :class:`MachineProfile` (fundamental, harmonic amplitudes, noise
  band, levels), derived deterministically from its names, so machine IDs are distinguishable from one another;
* four anomaly kinds (:data:`ANOMALY_KINDS`), each scaled by a ``severity`` in [0, 1]:
  ``"clicks"`` (impulsive resonant clicks, e.g. a damaged bearing), ``"harmonic"`` (an extra partial at a non-integer
  multiple of the fundamental), ``"drift"`` (the fundamental drifts away from its nominal speed over the clip) and
  ``"am"`` (amplitude modulation of the hum, e.g. an unbalanced or loose part).
  Severity 0 gives exactly the normal clip drawn from the same generator; severity 1 is obvious.

Every clip is a pure function of its arguments and its generator's state. :func:`make_dcase2020_tree` seeds one child
generator per clip from ``(seed, machine_type, machine_id, split, label, index)``, so the same call writes
byte-identical files and adding a machine type or ID leaves every other clip unchanged.

Levels: a normal clip has an RMS of about -30 dBFS, ±4 dB per machine (the real DCASE 2020 clips in
``../shared/data`` measure about -40 dBFS for MIMII and -34 to -23 dBFS for ToyADMOS). Clips are *not* normalised
one by one (that would make the level depend on the anomaly); a clip is only scaled down, as a whole, if its peak
would exceed :data:`PEAK_LIMIT` — so no sample ever clips.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import logging
import math
import multiprocessing
import pathlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
import soundfile as sf

from stethoscope.errors import ConfigError, DataError

__all__ = [
    "ANOMALY_KINDS",
    "PEAK_LIMIT",
    "MachineProfile",
    "machine_profile",
    "synthesize_clip",
    "clip_rng",
    "make_dcase2020_tree",
    "domain_profile",
    "make_dcase2022_tree",
]

logger = logging.getLogger(__name__)

#: The anomaly kinds :func:`synthesize_clip` can add (see the module docstring).
ANOMALY_KINDS = ("clicks", "harmonic", "drift", "am")

#: Largest absolute sample value written; a clip whose peak would exceed it is scaled down as a whole.
PEAK_LIMIT = 0.98

_MACHINE_ID = re.compile(r"^[0-9]{2}$")
_TABLE_SIZE = 4096  # samples in one period of the hum's wavetable
_CONTROL_RATE = 100.0  # Hz; slow envelopes (speed wander, noise envelope) are drawn at this rate, then interpolated
_NOMINAL_RMS = 10 ** (-30 / 20)  # -30 dBFS
# Anomaly strengths at severity 1 (all scale linearly with severity).
_CLICK_RATE_HZ = 4.0  # clicks per second
_CLICK_PEAK_RE_RMS = 15.0  # click peak amplitude relative to the normal clip's RMS
_PARTIAL_RE_HUM = 0.6  # extra partial's amplitude relative to the hum's RMS
_DRIFT_FRACTION = 0.12  # fundamental is 12 % off nominal at the end of the clip
_AM_DEPTH = 0.9  # modulation index of the hum's amplitude
_NUM_HARMONICS = 12


@dataclass(frozen=True)
class MachineProfile:
    """The characteristic sound of one ``(machine_type, machine_id)``; see :func:`machine_profile`.

    Fields (units):
        f0_hz: nominal fundamental of the hum (Hz), before per-clip speed wander.
        harmonic_amplitudes: relative amplitude of harmonics 1..K (linear, max 1); harmonics that would come within
            10 % of the Nyquist frequency (after the largest possible drift) are zero.
        noise_center_hz / noise_bandwidth_oct: centre (Hz) and Gaussian width (octaves, one standard deviation) of the
            band-shaped broadband noise.
        noise_to_hum_db / background_to_hum_db: RMS of the band noise / pink background noise re the hum's RMS (dB).
        noise_envelope_depth: depth (0..1) of the band noise's slow amplitude envelope.
        wander_fraction: standard deviation of the slow speed wander, as a fraction of ``f0_hz``.
        level_db: RMS of a normal clip (dBFS).
    """

    machine_type: str
    machine_id: str
    f0_hz: float
    harmonic_amplitudes: tuple[float, ...]
    noise_center_hz: float
    noise_bandwidth_oct: float
    noise_to_hum_db: float
    background_to_hum_db: float
    noise_envelope_depth: float
    wander_fraction: float
    level_db: float


# --------------------------------------------------------------------------------------------------------------------
# validation


def _check_name(arg: str, value: object) -> str:
    if not isinstance(value, str) or not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ConfigError(f"{arg} = {value!r}; expected a non-empty name usable as a folder name (no '/' or '\\')")
    return value


def _check_machine_id(arg: str, value: object) -> str:
    if not isinstance(value, str) or not _MACHINE_ID.match(value):
        raise ConfigError(f"{arg} = {value!r}; expected a two-digit string such as '00' or '02' (DCASE 2020 ids)")
    return value


def _check_severity(arg: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"{arg} = {value!r}; expected a number in [0, 1]")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ConfigError(f"{arg} = {value!r}; expected a number in [0, 1] (0 = like normal, 1 = obvious)")
    return value


def _check_kind(arg: str, value: object) -> str:
    if value not in ANOMALY_KINDS:
        raise ConfigError(f"{arg} = {value!r}; expected one of {', '.join(map(repr, ANOMALY_KINDS))}")
    return value  # type: ignore[return-value]


def _check_names(arg: str, values: object, what: str, check) -> None:
    """A non-empty sequence (not a string) of distinct values, each passing ``check(f"{arg}[i]", value)``."""
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ConfigError(f"{arg} = {values!r}; expected a non-empty sequence of {what}")
    for i, v in enumerate(values):
        check(f"{arg}[{i}]", v)
    if len(set(values)) != len(values):
        raise ConfigError(f"{arg} = {tuple(values)!r}; expected no duplicates")


def _check_count(arg: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{arg} = {value!r}; expected an integer >= {minimum}")
    return int(value)


def _check_signal(duration_s: object, sample_rate: object) -> int:
    """Validate duration and rate; return the number of samples."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 8000:
        raise ConfigError(f"sample_rate = {sample_rate!r}; expected an integer >= 8000 (Hz)")
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float, np.floating, np.integer)) or not (
        math.isfinite(duration_s) and duration_s > 0
    ):
        raise ConfigError(f"duration_s = {duration_s!r}; expected a positive number of seconds")
    n = int(round(float(duration_s) * int(sample_rate)))
    if n < 1:
        raise ConfigError(f"duration_s = {duration_s!r}; shorter than one sample at {sample_rate} Hz")
    return n


# --------------------------------------------------------------------------------------------------------------------
# machine profiles


def _name_rng(*parts: str) -> np.random.Generator:
    """A generator seeded from a stable hash of ``parts`` (Python's ``hash`` is salted per process, so not it)."""
    digest = hashlib.sha256("\x1f".join(("stethoscope.synthetic", *parts)).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def machine_profile(machine_type: str, machine_id: str) -> MachineProfile:
    """The deterministic characteristic sound of one machine (no generator needed: it depends on the names only).

    The machine type fixes a base fundamental (log-uniform in 60-300 Hz), a harmonic roll-off and a noise band;
    the machine ID moves the fundamental by one of 25 half-semitone steps in [-6, +6] semitones chosen by the ID
    number (``(7·id mod 25 - 12) / 2`` semitones, so IDs 00-24 of one type all have different fundamentals, at least
    ~2.9 % apart) and perturbs the harmonic amplitudes (±6 dB), the noise band (±0.5 octave) and the levels.

    Args:
        machine_type: any folder-safe name ("fan", "pump", ...). machine_id: two digits ("00").
    Returns:
        a frozen :class:`MachineProfile`.
    Raises:
        ConfigError: a bad machine_type or machine_id.
    """
    _check_name("machine_type", machine_type)
    _check_machine_id("machine_id", machine_id)
    type_rng = _name_rng("type", machine_type)
    base_f0 = float(np.exp(type_rng.uniform(np.log(60.0), np.log(300.0))))
    rolloff = type_rng.uniform(0.6, 1.4)  # amplitude ∝ k^-rolloff
    base_center = float(np.exp(type_rng.uniform(np.log(600.0), np.log(4000.0))))
    base_noise_db = type_rng.uniform(-12.0, -3.0)

    id_rng = _name_rng("id", machine_type, machine_id)
    step = (7 * int(machine_id)) % 25 - 12  # -12..12 half-semitones
    f0 = base_f0 * 2.0 ** ((step / 2.0 + id_rng.uniform(-0.1, 0.1)) / 12.0)
    k = np.arange(1, _NUM_HARMONICS + 1)
    amps = k ** -rolloff * 10 ** (id_rng.uniform(-6.0, 6.0, size=k.size) / 20)
    amps /= amps.max()
    center = base_center * 2.0 ** id_rng.uniform(-0.5, 0.5)
    return MachineProfile(
        machine_type=machine_type,
        machine_id=machine_id,
        f0_hz=float(f0),
        harmonic_amplitudes=tuple(float(a) for a in amps),
        noise_center_hz=float(center),
        noise_bandwidth_oct=float(id_rng.uniform(0.5, 1.2)),
        noise_to_hum_db=float(base_noise_db + id_rng.uniform(-2.0, 2.0)),
        background_to_hum_db=float(id_rng.uniform(-24.0, -18.0)),
        noise_envelope_depth=float(id_rng.uniform(0.2, 0.5)),
        wander_fraction=float(id_rng.uniform(0.003, 0.005)),
        level_db=float(-30.0 + id_rng.uniform(-4.0, 4.0)),
    )


def domain_profile(profile: MachineProfile, speed: float = 1.0, noise_db: float = 0.0) -> MachineProfile:
    """``profile`` at another operating condition: the fundamental scaled by ``speed`` (the machine runs faster or
    slower) and the band noise raised by ``noise_db`` dB (a noisier site). DCASE 2022-style sets
    (:func:`make_dcase2022_tree`) use it for their source / target domain shift.

    Raises:
        ConfigError: speed outside (0.25, 4] or a non-finite noise_db.
    """
    if not (isinstance(speed, (int, float)) and 0.25 < float(speed) <= 4.0):
        raise ConfigError(f"speed = {speed!r}; expected a factor in (0.25, 4]")
    if not (isinstance(noise_db, (int, float)) and math.isfinite(noise_db)):
        raise ConfigError(f"noise_db = {noise_db!r}; expected a finite number of dB")
    return dataclasses.replace(profile, f0_hz=profile.f0_hz * float(speed),
                               noise_to_hum_db=profile.noise_to_hum_db + float(noise_db))


# --------------------------------------------------------------------------------------------------------------------
# synthesis


def _slow_signal(
    rng: np.random.Generator, n: int, sample_rate: int, fmin: float, fmax: float, parts: int
) -> np.ndarray:
    """Zero-mean, unit-std slow random signal [n]: a sum of ``parts`` sinusoids with random frequencies in
    [fmin, fmax] Hz and phases, evaluated at the control rate and linearly interpolated to ``sample_rate``."""
    duration = n / sample_rate
    m = int(math.ceil(duration * _CONTROL_RATE)) + 2
    tc = np.arange(m) / _CONTROL_RATE
    freqs = rng.uniform(fmin, fmax, size=(parts, 1))
    phases = rng.uniform(0.0, 2 * np.pi, size=(parts, 1))
    weights = rng.uniform(0.5, 1.0, size=(parts, 1))
    ctrl = (weights * np.sin(2 * np.pi * freqs * tc + phases)).sum(axis=0)
    ctrl /= np.sqrt(0.5 * (weights**2).sum())  # expected std of the sum → 1
    t = np.arange(n) / sample_rate
    return np.interp(t, tc, ctrl)


def _shaped_noise(spectrum: np.ndarray, gains: np.ndarray, n: int) -> np.ndarray:
    """Coloured Gaussian noise [r, n] float32, each row at unit RMS.

    ``spectrum`` [r, 2, n//2+1] holds i.i.d. standard normal real and imaginary parts: the rFFT of white Gaussian
    noise is (up to scale) exactly that, so shaping it by the real gains [r, n//2+1] and inverting is the same as
    filtering white noise, at the cost of one inverse FFT instead of two transforms.
    """
    y = scipy.fft.irfft((spectrum[:, 0] + 1j * spectrum[:, 1]) * gains, n=n, axis=-1)
    rms = np.sqrt(np.mean(np.square(y, dtype=np.float64), axis=-1, keepdims=True))
    return (y / np.maximum(rms, 1e-12)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _noise_gains(profile: MachineProfile, n: int, sample_rate: int) -> np.ndarray:
    """Real rFFT gains [2, n//2+1] float32 (read-only): row 0 the machine's noise band (Gaussian in log-frequency),
    row 1 pink background noise (power ∝ 1/f above 20 Hz, nothing below)."""
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    safe_f = np.maximum(freqs, 1.0)
    center = min(profile.noise_center_hz, 0.35 * sample_rate)
    band_gain = np.exp(-0.5 * (np.log2(safe_f / center) / profile.noise_bandwidth_oct) ** 2)
    pink_gain = np.where(freqs >= 20.0, 1.0 / np.sqrt(safe_f), 0.0)
    gains = np.stack([band_gain, pink_gain]).astype(np.float32)
    gains.flags.writeable = False
    return gains


def synthesize_clip(
    machine_type: str,
    machine_id: str,
    *,
    anomaly: str | None = None,
    severity: float = 1.0,
    duration_s: float = 10.0,
    sample_rate: int = 16000,
    rng: np.random.Generator,
    profile: MachineProfile | None = None,
) -> np.ndarray:
    """One synthetic clip of ``machine_type`` / ``machine_id``, normal or with one anomaly.

    The normal part is drawn from ``rng`` first and the anomaly's own randomness after it, so with two generators in
    the same state, ``anomaly=k, severity=0`` returns exactly the normal clip, and ``severity`` only scales the
    anomaly added to that same clip (clicks: amplitude; harmonic: partial's amplitude; drift: final frequency offset,
    up to 12 %; am: modulation index, up to 0.9).

    Args:
        machine_type / machine_id: the machine (see :func:`machine_profile`); machine_id is two digits.
        anomaly: None (normal) or one of :data:`ANOMALY_KINDS`.
        severity: in [0, 1]; ignored when ``anomaly`` is None.
        duration_s: seconds. sample_rate: Hz (>= 8000, so every machine's hum and partials fit below Nyquist).
        rng: the generator all randomness is drawn from (advanced by the call).
        profile: the machine's sound instead of :func:`machine_profile` ``(machine_type, machine_id)``, e.g. one
            shifted to another operating condition (:func:`domain_profile`).
    Returns:
        float32 [samples] in [-PEAK_LIMIT, PEAK_LIMIT], samples = round(duration_s · sample_rate).
    Raises:
        ConfigError: an unknown anomaly kind, a severity outside [0, 1], a bad machine name/id, duration or rate,
        or ``rng`` not a ``numpy.random.Generator``.
    """
    if profile is None:
        profile = machine_profile(machine_type, machine_id)
    elif not isinstance(profile, MachineProfile):
        raise ConfigError(f"profile = {profile!r}; expected a MachineProfile (machine_profile / domain_profile)")
    if anomaly is not None:
        _check_kind("anomaly", anomaly)
    severity = _check_severity("severity", severity)
    n = _check_signal(duration_s, sample_rate)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng = {rng!r}; expected a numpy.random.Generator (np.random.default_rng(seed))")
    sr = int(sample_rate)
    nyquist = sr / 2
    t = np.arange(n) / sr

    # ---- normal part: every draw from rng happens here, in a fixed order --------------------------------------------
    speed = 1.0 + rng.normal(0.0, 0.003)  # per-clip operating point (±0.3 %)
    wander = _slow_signal(rng, n, sr, 0.03, 0.4, parts=4) * profile.wander_fraction
    harm_jitter = 10 ** (rng.normal(0.0, 1.0, size=_NUM_HARMONICS) / 20)  # ±1 dB per clip
    harm_phase = rng.uniform(0.0, 2 * np.pi, size=_NUM_HARMONICS)
    hum_wobble = _slow_signal(rng, n, sr, 0.05, 0.5, parts=3)  # small natural amplitude variation of the hum
    noise_env = _slow_signal(rng, n, sr, 0.2, 3.0, parts=4)
    spectrum = rng.standard_normal((2, 2, n // 2 + 1), dtype=np.float32)
    level = 10 ** ((profile.level_db + rng.normal(0.0, 0.5)) / 20)
    # ---- anomaly draws (after all normal draws, so severity 0 reproduces the normal clip) ---------------------------
    anomaly_severity = severity if anomaly is not None else 0.0

    # Fundamental trajectory f(t) in Hz (speed wander, plus drift if asked).
    f_inst = profile.f0_hz * speed * (1.0 + wander)
    if anomaly == "drift":
        direction = 1.0 if rng.random() < 0.5 else -1.0
        ramp = t / max(t[-1], 1e-12) if n > 1 else np.zeros(1)
        f_inst = f_inst * (1.0 + direction * anomaly_severity * _DRIFT_FRACTION * ramp)

    # Harmonic hum from a one-period wavetable (cost independent of the number of harmonics). Harmonics that could
    # come within 10 % of Nyquist at the highest possible speed (wander, drift) are dropped, so nothing aliases.
    f_max_possible = profile.f0_hz * (1.0 + _DRIFT_FRACTION + 0.05)
    k = np.arange(1, _NUM_HARMONICS + 1)
    amps = np.asarray(profile.harmonic_amplitudes) * harm_jitter * (k * f_max_possible < 0.9 * nyquist)
    theta = 2 * np.pi * np.arange(_TABLE_SIZE + 1) / _TABLE_SIZE
    table = (amps[:, None] * np.sin(k[:, None] * theta[None, :] + harm_phase[:, None])).sum(axis=0)
    cycles = np.cumsum(f_inst / sr)  # fundamental periods elapsed, float64
    pos = (cycles % 1.0) * _TABLE_SIZE
    i0 = pos.astype(np.int64)
    frac = pos - i0
    hum = table[i0] * (1.0 - frac) + table[i0 + 1] * frac
    hum *= 1.0 + 0.03 * hum_wobble
    hum_rms = np.sqrt(0.5 * np.sum(amps**2))  # RMS of the nominal wavetable

    if anomaly == "harmonic":
        # A partial at a non-integer multiple r of the fundamental that follows the speed (like a bearing defect
        # frequency): r = integer + fraction in [0.3, 0.7], kept below 90 % of Nyquist.
        r_max = max(1.5, 0.9 * nyquist / f_max_possible)
        whole = rng.integers(1, max(2, min(6, int(r_max))), endpoint=True)
        r = min(float(whole) + rng.uniform(0.3, 0.7), r_max)
        phase = rng.uniform(0.0, 2 * np.pi)
        hum = hum + anomaly_severity * _PARTIAL_RE_HUM * hum_rms * np.sqrt(2.0) * np.sin(2 * np.pi * r * cycles + phase)
    elif anomaly == "am":
        f_am = rng.uniform(2.0, 8.0)
        phase = rng.uniform(0.0, 2 * np.pi)
        hum = hum * (1.0 + anomaly_severity * _AM_DEPTH * np.sin(2 * np.pi * f_am * t + phase))

    # Band noise (Gaussian in log-frequency, slowly amplitude-modulated) and pink background noise (1/f power).
    noise = _shaped_noise(spectrum, _noise_gains(profile, n, sr), n)
    band = noise[0] * (1.0 + profile.noise_envelope_depth * np.clip(noise_env, -2.0, 2.0) / 2.0)

    x = (
        hum / hum_rms
        + 10 ** (profile.noise_to_hum_db / 20) * band
        + 10 ** (profile.background_to_hum_db / 20) * noise[1]
    )
    # Nominal RMS of the normal mixture → the machine's level (a constant, so anomalies change the level honestly).
    nominal_rms = np.sqrt(1.0 + 10 ** (profile.noise_to_hum_db / 10) + 10 ** (profile.background_to_hum_db / 10))
    x *= level / nominal_rms

    if anomaly == "clicks":
        count = max(1, int(rng.poisson(_CLICK_RATE_HZ * n / sr)))
        starts = rng.integers(0, n, size=count)
        amp = anomaly_severity * _CLICK_PEAK_RE_RMS * level * 10 ** (rng.uniform(-3.0, 3.0, size=count) / 20)
        f_res = rng.uniform(1500.0, min(6000.0, 0.4 * sr), size=count)
        tau = rng.uniform(0.001, 0.003, size=count)  # s, decay time constant
        signs = np.where(rng.random(count) < 0.5, -1.0, 1.0)
        length = int(math.ceil(0.015 * sr))  # 15 ms = at least 5 time constants
        tk = np.arange(length) / sr
        bursts = (amp * signs)[:, None] * np.exp(-tk[None, :] / tau[:, None]) * np.cos(2 * np.pi * f_res[:, None] * tk)
        for start, burst in zip(starts, bursts):
            stop = min(n, start + length)
            x[start:stop] += burst[: stop - start]

    return _limit_peak(x).astype(np.float32)


def _limit_peak(x: np.ndarray) -> np.ndarray:
    """Scale ``x`` [samples] down as a whole (in place) if its peak exceeds :data:`PEAK_LIMIT`; else leave it."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > PEAK_LIMIT:
        x *= PEAK_LIMIT / peak
    return x


# --------------------------------------------------------------------------------------------------------------------
# DCASE 2020 tree


def clip_rng(seed: int, machine_type: str, machine_id: str, split: str, label: str, index: int) -> np.random.Generator:
    """The child generator of one clip in :func:`make_dcase2020_tree`.

    Seeded from ``SeedSequence(seed, spawn_key=(sha256 words of machine_type, machine_id, split, label), index)``, so
    each clip depends only on its own coordinates, never on how many other machines or clips are generated.
    """
    digest = hashlib.sha256("\x1f".join((machine_type, machine_id, split, label)).encode()).digest()
    words = tuple(int(w) for w in np.frombuffer(digest[:16], dtype=np.uint32))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(*words, int(index))))


@dataclass(frozen=True)
class _Job:
    path: pathlib.Path
    relpath: str
    machine_type: str
    machine_id: str
    split: str
    label: str
    index: int
    anomaly: str | None
    severity: float
    speed: float = 1.0  # operating condition (DCASE 2022-style sets): f0 factor and extra band noise (dB)
    noise_db: float = 0.0
    rng_split: str = ""  # the split's key in clip_rng (default: split)


def _write_clip(job: _Job, seed: int, duration_s: float, sample_rate: int) -> None:
    rng = clip_rng(seed, job.machine_type, job.machine_id, job.rng_split or job.split, job.label, job.index)
    profile = None
    if job.speed != 1.0 or job.noise_db != 0.0:
        profile = domain_profile(machine_profile(job.machine_type, job.machine_id), job.speed, job.noise_db)
    clip = synthesize_clip(
        job.machine_type,
        job.machine_id,
        anomaly=job.anomaly,
        severity=job.severity,
        duration_s=duration_s,
        sample_rate=sample_rate,
        rng=rng,
        profile=profile,
    )
    sf.write(job.path, clip, sample_rate, subtype="PCM_16", format="WAV")


def _write_chunk(jobs: list[_Job], seed: int, duration_s: float, sample_rate: int) -> int:
    for job in jobs:
        _write_clip(job, seed, duration_s, sample_rate)
    return len(jobs)


def _parse_anomalies(anomalies: object, severity: float) -> list[tuple[str, float]]:
    if isinstance(anomalies, str):  # a single kind given bare
        anomalies = (anomalies,)
    if not isinstance(anomalies, Sequence):
        raise ConfigError(f"anomalies = {anomalies!r}; expected a sequence of kinds or (kind, severity) pairs")
    out = []
    for i, item in enumerate(anomalies):
        if isinstance(item, str):
            out.append((_check_kind(f"anomalies[{i}]", item), severity))
        elif isinstance(item, Sequence) and len(item) == 2:
            out.append((_check_kind(f"anomalies[{i}][0]", item[0]), _check_severity(f"anomalies[{i}][1]", item[1])))
        else:
            raise ConfigError(
                f"anomalies[{i}] = {item!r}; expected a kind ({', '.join(ANOMALY_KINDS)}) or a (kind, severity) pair"
            )
    return out


def _write_jobs(dev: pathlib.Path, jobs: list[_Job], seed: int, duration_s: float, sample_rate: int,
                workers: int) -> None:
    """Refuse stale .wav files in the target folders (DataError), create the folders, write every clip (in
    ``workers`` spawned processes when > 1; the output does not depend on it)."""
    planned = {job.path for job in jobs}
    stale = sorted(
        str(p) for folder in {job.path.parent for job in jobs} if folder.is_dir()
        for p in folder.glob("*.wav") if p not in planned
    )
    if stale:
        shown = "\n  ".join(stale[:20]) + (f"\n  ... and {len(stale) - 20} more" if len(stale) > 20 else "")
        raise DataError(
            f"{len(stale)} .wav file(s) already in the target folders would not be written by this call "
            f"(pass an empty root, or remove them):\n  {shown}"
        )
    for folder in sorted({job.path.parent for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    logger.info("writing %d synthetic clips (%d workers) under %s", len(jobs), workers, dev)
    if workers == 1:
        _write_chunk(jobs, seed, duration_s, sample_rate)
    else:
        chunks = [jobs[i::workers] for i in range(workers)]
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch / Ray threads exist
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_write_chunk, c, seed, duration_s, sample_rate) for c in chunks if c]
            for future in futures:
                future.result()
    elapsed = time.perf_counter() - started
    logger.info("wrote %d clips in %.1f s (%.1f ms per clip)", len(jobs), elapsed, 1000 * elapsed / len(jobs))


def make_dcase2020_tree(
    root,
    *,
    machine_types: Sequence[str] = ("fan", "pump"),
    machine_ids: Sequence[str] = ("00", "02"),
    n_train: int = 20,
    n_test_normal: int = 10,
    n_test_anomaly: int = 10,
    anomalies: Sequence[str | tuple[str, float]] = ("clicks",),
    severity: float = 1.0,
    duration_s: float = 10.0,
    sample_rate: int = 16000,
    seed: int = 0,
    workers: int = 1,
) -> pathlib.Path:
    """Write a synthetic DCASE 2020 Task 2 development set and return ``root/dev_data``.

    Layout (the DCASE 2020 grammar, Koizumi et al. arXiv:2006.05822 §3)::

        root/dev_data/<machine_type>/train/normal_id_<XX>_<NNNNNNNN>.wav           n_train per machine_id
        root/dev_data/<machine_type>/test/normal_id_<XX>_<NNNNNNNN>.wav            n_test_normal per machine_id
        root/dev_data/<machine_type>/test/anomaly_id_<XX>_<NNNNNNNN>.wav           n_test_anomaly per machine_id
        root/dev_data/ground_truth.csv

    Clip numbers NNNNNNNN count up from 00000000 within each folder (across IDs and labels, in the order IDs are
    given), so every number is unique in its folder. Test anomalies of one machine_id cycle through ``anomalies``
    (clip i gets ``anomalies[i % len(anomalies)]``). Each clip's generator is :func:`clip_rng` ``(seed, machine_type,
    machine_id, split, label, index)``, with ``index`` counted per (machine_id, split, label), so the same arguments
    give byte-identical files and adding machine types or IDs leaves the other clips unchanged.

    ``ground_truth.csv`` has one row per clip with columns ``path`` (relative to ``root/dev_data``, '/'-separated),
    ``machine_type``, ``machine_id``, ``split`` (train/test), ``label`` (normal/anomaly), ``anomaly`` (a kind, or
    ``none`` for normals) and ``severity`` (0.0 for normals).

    Files are 16-bit PCM mono WAV at ``sample_rate`` Hz, ``duration_s`` long (see :func:`synthesize_clip`). Existing
    files of the same names are overwritten.

    Args:
        root: folder to write into (created if missing).
        machine_types: folder-safe names. machine_ids: two-digit strings.
        n_train / n_test_normal: clips per machine_id, >= 1. n_test_anomaly: per machine_id, >= 0.
        anomalies: kinds from :data:`ANOMALY_KINDS` (each at ``severity``) or ``(kind, severity)`` pairs.
        severity: in [0, 1]. duration_s: seconds. sample_rate: Hz. seed: integer >= 0.
        workers: processes writing clips (1 = in this process). The output does not depend on it. Workers are
            *spawned*, so a script calling this with workers > 1 needs the usual ``if __name__ == "__main__":`` guard.
    Returns:
        ``pathlib.Path(root) / "dev_data"``.
    Raises:
        ConfigError: any invalid argument (the message names it and what was expected).
        DataError: a wave folder to be written already holds .wav files this call would not write (a stale tree
            from another call would otherwise mix in silently).
    """
    _check_names("machine_types", machine_types, "names", _check_name)
    _check_names("machine_ids", machine_ids, "two-digit strings", _check_machine_id)
    n_train = _check_count("n_train", n_train, 1)
    n_test_normal = _check_count("n_test_normal", n_test_normal, 1)
    n_test_anomaly = _check_count("n_test_anomaly", n_test_anomaly, 0)
    severity = _check_severity("severity", severity)
    kinds = _parse_anomalies(anomalies, severity)
    if n_test_anomaly > 0 and not kinds:
        raise ConfigError(f"anomalies = {anomalies!r}; expected at least one kind when n_test_anomaly > 0")
    _check_signal(duration_s, sample_rate)
    seed = _check_count("seed", seed, 0)
    workers = _check_count("workers", workers, 1)

    dev = pathlib.Path(root) / "dev_data"
    jobs: list[_Job] = []
    for mt in machine_types:
        for split, groups in (
            ("train", (("normal", n_train),)),
            ("test", (("normal", n_test_normal), ("anomaly", n_test_anomaly))),
        ):
            number = 0
            folder = dev / mt / split
            for mid in machine_ids:
                for label, count in groups:
                    for index in range(count):
                        kind, sev = kinds[index % len(kinds)] if label == "anomaly" else (None, 0.0)
                        name = f"{label}_id_{mid}_{number:08d}.wav"
                        rel = f"{mt}/{split}/{name}"
                        jobs.append(_Job(folder / name, rel, mt, mid, split, label, index, kind, sev))
                        number += 1

    _write_jobs(dev, jobs, seed, duration_s, sample_rate, workers)
    with open(dev / "ground_truth.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "machine_type", "machine_id", "split", "label", "anomaly", "severity"])
        for job in jobs:
            writer.writerow(
                [job.relpath, job.machine_type, job.machine_id, job.split, job.label, job.anomaly or "none",
                 repr(float(job.severity))]
            )
    return dev


#: The operating conditions of :func:`make_dcase2022_tree`'s two domains, as file-name attributes: ``speed`` (the
#: fundamental is scaled by speed / 10) cycles through the domain's values clip by clip; ``noise`` is the site's
#: band-noise level (A: the machine's own, B: +``target_noise_db`` dB).
SOURCE_SPEEDS = (9, 10, 11)
TARGET_SPEEDS = (13, 14)


def make_dcase2022_tree(
    root,
    *,
    machine_types: Sequence[str] = ("fan",),
    sections: Sequence[str] = ("00", "01", "02"),
    n_train_source: int = 20,
    n_train_target: int = 2,
    n_test_normal: int = 5,
    n_test_anomaly: int = 5,
    anomalies: Sequence[str | tuple[str, float]] = ("clicks",),
    severity: float = 1.0,
    source_speeds: Sequence[int] = SOURCE_SPEEDS,
    target_speeds: Sequence[int] = TARGET_SPEEDS,
    target_noise_db: float = 6.0,
    duration_s: float = 10.0,
    sample_rate: int = 16000,
    seed: int = 0,
    workers: int = 1,
) -> pathlib.Path:
    """Write a synthetic DCASE 2022-2024 Task 2 development set (sections, source / target domains, attributes in
    the file names) whose domain shift and anomalies are known, and return ``root/dev_data/raw``.

    Layout (the DCASE 2022-2024 development-set grammar, which :func:`stethoscope.data.index.index` parses)::

        root/dev_data/raw/<machine_type>/train/section_<SS>_<source|target>_train_normal_<NNNN>_speed_<v>_noise_<A|B>.wav
        root/dev_data/raw/<machine_type>/test/section_<SS>_<source|target>_test_<normal|anomaly>_<NNNN>_speed_<v>_noise_<A|B>.wav
        root/dev_data/ground_truth.csv

    Each section is its own machine (:func:`machine_profile` with the section number as the ID). The **source**
    domain runs at ``speed`` ∈ ``source_speeds`` with the machine's own noise (``noise_A``); the **target** domain at
    ``speed`` ∈ ``target_speeds`` (the fundamental scaled by speed / 10: a known shift) with the band noise raised by
    ``target_noise_db`` (``noise_B``), and has only ``n_train_target`` training clips (DCASE 2022: 990 source and 10
    target training clips per section). Speeds cycle clip by clip through the domain's values. Test clips:
    ``n_test_normal`` normal and ``n_test_anomaly`` anomalous ones per section and domain, the anomalies cycling
    through ``anomalies`` in both domains. Clip numbers NNNN count from 0000 per (section, domain, split, label).
    Each clip's generator is :func:`clip_rng` ``(seed, machine_type, section, "<domain>_<split>", label, index)``, so
    the same call writes byte-identical files.

    ``ground_truth.csv``: one row per clip: ``path`` (relative to ``root/dev_data/raw``), ``machine_type``,
    ``section``, ``domain``, ``split``, ``label``, ``anomaly`` (kind or ``none``), ``severity``, ``speed``, ``noise``.

    Args:
        root: folder to write into. machine_types: folder-safe names. sections: two-digit strings.
        n_train_source >= 1, n_train_target >= 0, n_test_normal >= 1, n_test_anomaly >= 0: clips per section.
        anomalies / severity: as :func:`make_dcase2020_tree`.
        source_speeds / target_speeds: non-empty integer speeds in 3 … 40 (the fundamental × speed / 10).
        target_noise_db: extra band noise of the target domain (dB, finite).
        duration_s, sample_rate, seed, workers: as :func:`make_dcase2020_tree`.
    Returns:
        ``pathlib.Path(root) / "dev_data" / "raw"``.
    Raises:
        ConfigError: any invalid argument (named). DataError: stale .wav files in a folder to be written.
    """
    _check_names("machine_types", machine_types, "names", _check_name)
    _check_names("sections", sections, "two-digit strings", _check_machine_id)
    n_train_source = _check_count("n_train_source", n_train_source, 1)
    n_train_target = _check_count("n_train_target", n_train_target, 0)
    n_test_normal = _check_count("n_test_normal", n_test_normal, 1)
    n_test_anomaly = _check_count("n_test_anomaly", n_test_anomaly, 0)
    kinds = _parse_anomalies(anomalies, _check_severity("severity", severity))
    if n_test_anomaly > 0 and not kinds:
        raise ConfigError(f"anomalies = {anomalies!r}; expected at least one kind when n_test_anomaly > 0")
    for name, speeds in (("source_speeds", source_speeds), ("target_speeds", target_speeds)):
        if (not isinstance(speeds, Sequence) or not speeds
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 3 <= v <= 40
                           for v in speeds)):
            raise ConfigError(f"{name} = {speeds!r}; expected a non-empty sequence of integer speeds in 3 … 40")
    if isinstance(target_noise_db, bool) or not isinstance(target_noise_db, (int, float)) or not math.isfinite(
            target_noise_db):
        raise ConfigError(f"target_noise_db = {target_noise_db!r}; expected a finite number of dB")
    _check_signal(duration_s, sample_rate)
    seed = _check_count("seed", seed, 0)
    workers = _check_count("workers", workers, 1)

    raw = pathlib.Path(root) / "dev_data" / "raw"
    domains = {"source": (tuple(source_speeds), "A", 0.0), "target": (tuple(target_speeds), "B", float(target_noise_db))}
    jobs: list[_Job] = []
    truth: list[list] = []
    for mt in machine_types:
        for sec in sections:
            for domain, (speeds, noise, noise_db) in domains.items():
                n_train = n_train_source if domain == "source" else n_train_target
                for split, label, count in (("train", "normal", n_train), ("test", "normal", n_test_normal),
                                            ("test", "anomaly", n_test_anomaly)):
                    for index in range(count):
                        kind, sev = kinds[index % len(kinds)] if label == "anomaly" else (None, 0.0)
                        speed = int(speeds[index % len(speeds)])
                        name = f"section_{sec}_{domain}_{split}_{label}_{index:04d}_speed_{speed}_noise_{noise}.wav"
                        rel = f"{mt}/{split}/{name}"
                        jobs.append(_Job(raw / mt / split / name, rel, mt, sec, split, label, index, kind, sev,
                                         speed=speed / 10.0, noise_db=noise_db, rng_split=f"{domain}_{split}"))
                        truth.append([rel, mt, sec, domain, split, label, kind or "none", repr(float(sev)), speed,
                                      noise])
    _write_jobs(raw, jobs, seed, duration_s, sample_rate, workers)
    gt = pathlib.Path(root) / "dev_data" / "ground_truth.csv"
    with open(gt, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "machine_type", "section", "domain", "split", "label", "anomaly", "severity",
                         "speed", "noise"])
        writer.writerows(truth)
    return raw
