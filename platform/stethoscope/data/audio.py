"""Audio decoding and validation (soundfile for decoding, soxr for resampling).

Policy (issue "Foundation", DCASE baselines; hardened in issue 11):
- decode with soundfile; keep channel 0 of multi-channel audio (as the DCASE baselines do), reading the file block by
  block so that only channel 0 is ever held in full (libsndfile cannot decode one channel alone);
- check the header before decoding anything: the sample rate (at most ``max_sample_rate``), the duration (at most
  ``max_seconds``) and the number of values to decode, frames × channels (at most ``max_samples``); the same limits
  are enforced while reading, for files whose header does not tell their length;
- resample a clip at another rate to the FeatureSpec rate with soxr (``quality="HQ"``, librosa's default resampler),
  whose cost grows with the clip's length and not with the ratio of the two rates (torchaudio's windowed-sinc kernel
  grows with the ratio's reduced numerator and denominator: gigabytes for 8001 → 16000 Hz), and say so in the notes;
- one policy for files and in-memory bytes (HTTP requests): :func:`load_audio` reads the file and calls
  :func:`decode_audio`;
- every failure raises :class:`~stethoscope.errors.AudioError` with a snake_case ``reason`` (:data:`REASONS`), which
  ingest records in its report and the HTTP endpoint turns into its error code.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from stethoscope.errors import AudioError

#: Highest sample rate accepted (Hz). Ours: the highest rate of common recorders and audio interfaces (192 kHz);
#: DCASE clips are 16 kHz.
MAX_SAMPLE_RATE = 192_000
#: Most values (frames × channels) one clip may decode to. Ours: 2**24 ≈ 16.8 M, e.g. 60 s of 48 kHz audio in
#: 5 channels, or 17 minutes of 16 kHz mono; decoding that many takes well under a second and 64 MiB at most.
MAX_SAMPLES = 2**24
#: Values per block read (frames × channels): one block of every channel is all that is held besides channel 0.
_BLOCK_VALUES = 2**20

#: ``AudioError.reason`` → what it means. The HTTP endpoint uses the reason as its error code.
REASONS = {
    "empty_file": "the file or body has 0 bytes or 0 samples",
    "truncated": "a WAV data chunk declares more bytes than the file holds",
    "not_audio": "libsndfile cannot decode it (not a WAV/FLAC/OGG/... file)",
    "unsupported_sample_rate": "the header's sample rate is not in 1..max_sample_rate Hz",
    "too_long": "longer than max_seconds",
    "too_many_samples": "frames × channels above max_samples",
    "non_finite_samples": "NaN or inf in the signal",
    "too_short": "fewer than min_samples samples after resampling",
    "decode_failed": "any other failure while decoding or resampling (the detail names it)",
    "missing": "load_audio: the file does not exist (any more)",
    "unreadable": "load_audio: the file exists but cannot be read (permissions, I/O error)",
    "not_a_file": "load_audio: a directory, FIFO, socket or device, not a regular file",
}


@dataclass
class AudioNotes:
    """What decoding changed: ``orig_sample_rate`` (Hz), ``orig_channels`` and human-readable ``notes``."""

    orig_sample_rate: int
    orig_channels: int
    notes: list[str] = field(default_factory=list)


def _wav_truncation(data: bytes) -> str | None:
    """For RIFF/WAVE bytes: a message if the ``data`` chunk declares more bytes than the file holds, else None."""
    size = len(data)
    if size < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= size:
        cid, csize = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"data":
            available = size - (pos + 8)
            if csize > available and csize != 0xFFFFFFFF:
                return f"data chunk declares {csize} bytes but the file holds {available}"
            return None
        pos += 8 + csize + (csize & 1)
    return None


def _check_size(name: str, frames: int, channels: int, sr: int, max_seconds: float | None, max_samples: int,
                what: str) -> None:
    if max_seconds is not None and frames / sr > max_seconds:
        raise AudioError(name, "too_long", f"{what} {frames / sr:.2f} s; the limit is {max_seconds:g} s")
    if frames * channels > max_samples:
        raise AudioError(name, "too_many_samples",
                         f"{what} {frames} frames × {channels} channels = {frames * channels} values at {sr} Hz; "
                         f"the limit is {max_samples}")


def _read_channel0(f: sf.SoundFile, name: str, max_seconds: float | None, max_samples: int) -> np.ndarray:
    """Channel 0 of an open file as float32 [frames], read in blocks of at most :data:`_BLOCK_VALUES` values."""
    channels, sr = f.channels, f.samplerate
    block = max(1, _BLOCK_VALUES // channels)
    parts, frames = [], 0
    while True:
        chunk = f.read(block, dtype="float32", always_2d=True)
        if chunk.shape[0] == 0:
            break
        frames += chunk.shape[0]
        _check_size(name, frames, channels, sr, max_seconds, max_samples, "decoding reached")
        parts.append(chunk[:, 0].copy() if channels > 1 else chunk[:, 0])
        if chunk.shape[0] < block:
            break
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def resample(wave: np.ndarray, orig_sr: int, sample_rate: int) -> np.ndarray:
    """Resample mono float32 [samples] from ``orig_sr`` to ``sample_rate`` Hz with soxr (``quality="HQ"``).

    Returns float32 [round(samples · sample_rate / orig_sr)]. Cost is linear in the clip's length for any pair of
    rates. Source: libsoxr (the SoX resampler), as ``librosa.resample(res_type="soxr_hq")``.
    """
    import soxr

    return np.asarray(soxr.resample(wave, orig_sr, sample_rate, quality="HQ"), dtype=np.float32)


def frame_windows(n_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows that score a long recording: every ``hop`` samples from 0, plus one window
    ending at the last sample when the hops do not reach it, so every sample is in some window.

    Args:
        n_samples: length of the recording (samples). window, hop: window and hop (samples), ``0 < hop <= window``.
    Returns:
        Start samples, increasing; ``[0]`` when the recording is not longer than one window.
    Raises:
        ValueError: ``hop`` or ``window`` not positive, or ``hop > window``.
    """
    if not (0 < hop <= window):
        raise ValueError(f"frame_windows: need 0 < hop <= window (hop {hop}, window {window})")
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return starts


def decode_audio(
    data: bytes,
    sample_rate: int,
    *,
    min_samples: int = 1,
    max_seconds: float | None = None,
    max_sample_rate: int = MAX_SAMPLE_RATE,
    max_samples: int = MAX_SAMPLES,
    name: str = "<bytes>",
) -> tuple[np.ndarray, AudioNotes]:
    """Decode an in-memory audio file (e.g. the body of an HTTP request) to mono float32 at ``sample_rate`` Hz.

    The one decoding policy of the package: :func:`load_audio` reads a file and calls this. The sample rate,
    duration and frames × channels are checked from the header before any sample is decoded.

    Args:
        data: the file's bytes (WAV, or anything libsndfile reads from memory: FLAC, OGG, ...).
        sample_rate: target rate in Hz; other rates are resampled with soxr (:func:`resample`).
        min_samples: minimum length after resampling (e.g. n_fft); shorter clips are rejected.
        max_seconds: maximum duration in seconds; None = no limit.
        max_sample_rate: highest sample rate accepted (Hz); default :data:`MAX_SAMPLE_RATE`.
        max_samples: most values (frames × channels) to decode; default :data:`MAX_SAMPLES`.
        name: how errors name the input (a path, or a request description).
    Returns:
        (waveform float32 [samples] in [-1, 1], AudioNotes).
    Raises:
        AudioError: ``reason`` one of ``empty_file``, ``truncated``, ``not_audio``, ``unsupported_sample_rate``,
            ``too_long``, ``too_many_samples``, ``non_finite_samples``, ``too_short``, ``decode_failed``
            (:data:`REASONS`). No other exception escapes.
    """
    try:
        return _decode(data, sample_rate, min_samples, max_seconds, max_sample_rate, max_samples, name)
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. MemoryError, a resampler error: still the documented error
        raise AudioError(name, "decode_failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _decode(data: bytes, sample_rate: int, min_samples: int, max_seconds: float | None, max_sample_rate: int,
            max_samples: int, name: str) -> tuple[np.ndarray, AudioNotes]:
    if len(data) == 0:
        raise AudioError(name, "empty_file", "0 bytes")
    trunc = _wav_truncation(data)
    if trunc:
        raise AudioError(name, "truncated", trunc)
    buffer = io.BytesIO(data)
    try:
        with sf.SoundFile(buffer) as f:
            sr, channels = int(f.samplerate), int(f.channels)
            if not 0 < sr <= max_sample_rate:
                raise AudioError(name, "unsupported_sample_rate",
                                 f"the header says {sr} Hz; accepted: 1 to {max_sample_rate} Hz")
            if f.frames > 0:  # 0 when the header does not say; then the limits apply while reading
                _check_size(name, int(f.frames), channels, sr, max_seconds, max_samples, "the header says")
            wav = _read_channel0(f, name, max_seconds, max_samples)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        detail = str(exc).replace(repr(buffer), name)  # libsndfile names the buffer object; name the input instead
        raise AudioError(name, "not_audio", f"soundfile could not decode it: {detail}") from exc
    notes = AudioNotes(orig_sample_rate=sr, orig_channels=channels)
    if wav.shape[0] == 0:
        raise AudioError(name, "empty_file", "0 samples")
    if channels > 1:
        notes.notes.append(f"kept channel 0 of {channels}")
    if not np.isfinite(wav).all():
        raise AudioError(name, "non_finite_samples", "NaN or inf in the signal")
    if sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
        notes.notes.append(f"resampled from {sr} Hz to {sample_rate} Hz")
    if wav.shape[0] < min_samples:
        raise AudioError(name, "too_short", f"{wav.shape[0]} samples at {sample_rate} Hz; need >= {min_samples}")
    return np.ascontiguousarray(wav, dtype=np.float32), notes


def load_audio(path: str | os.PathLike, sample_rate: int, *, min_samples: int = 1, **limits) -> tuple[np.ndarray, AudioNotes]:
    """Decode one clip to mono float32 at ``sample_rate`` Hz (reads the file, then :func:`decode_audio`).

    A path that is not a regular file (a directory, FIFO, socket, device, or a symlink to one) is refused
    without being opened: opening a FIFO would block until something writes to it.

    Args:
        path: audio file (WAV, or anything libsndfile reads).
        sample_rate: target rate in Hz; other rates are resampled (:func:`resample`).
        min_samples: minimum length after resampling (e.g. n_fft); shorter clips are rejected.
        limits: ``max_seconds``, ``max_sample_rate``, ``max_samples`` of :func:`decode_audio`.
    Returns:
        (waveform float32 [samples] in [-1, 1], AudioNotes).
    Raises:
        AudioError: ``reason`` ``missing`` (no such file, or a dangling symlink), ``unreadable`` (permissions,
            I/O error, symlink loop), ``not_a_file``, or any reason of :func:`decode_audio`.
    """
    path = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise AudioError(path, "missing", str(exc)) from exc
    except OSError as exc:
        raise AudioError(path, "unreadable", str(exc)) from exc
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(path, "not_a_file", f"it is a {file_kind(st.st_mode)}, not a regular file")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise AudioError(path, "missing", str(exc)) from exc
    except OSError as exc:
        raise AudioError(path, "unreadable", str(exc)) from exc
    return decode_audio(data, sample_rate, min_samples=min_samples, name=path, **limits)


def file_kind(mode: int) -> str:
    """``"directory"``, ``"FIFO"``, ``"socket"``, ``"character device"``, ``"block device"`` or ``"regular file"``
    for an ``st_mode``."""
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISREG, "regular file")):
        if test(mode):
            return kind
    return "special file"
