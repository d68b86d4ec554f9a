"""Audio decoding and validation (soundfile; torchaudio for resampling).

Policy (issue "Foundation", DCASE baselines):
- decode with soundfile; keep channel 0 of multi-channel audio (as the DCASE baselines do);
- resample a clip at another rate to the FeatureSpec rate with torchaudio, and say so in the ingest report;
- one policy for files and in-memory bytes (HTTP requests): :func:`load_audio` reads the file and calls
  :func:`decode_audio`;
- an empty, truncated, non-audio or too-short file raises :class:`~stethoscope.errors.AudioError` with a short reason,
  which ingest records in its report and skips.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch
import torchaudio

from stethoscope.errors import AudioError


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


def decode_audio(
    data: bytes,
    sample_rate: int,
    *,
    min_samples: int = 1,
    max_seconds: float | None = None,
    name: str = "<bytes>",
) -> tuple[np.ndarray, AudioNotes]:
    """Decode an in-memory audio file (e.g. the body of an HTTP request) to mono float32 at ``sample_rate`` Hz.

    The one decoding policy of the package: :func:`load_audio` reads a file and calls this.

    Args:
        data: the file's bytes (WAV, or anything libsndfile reads from memory: FLAC, OGG, ...).
        sample_rate: target rate in Hz; other rates are resampled with ``torchaudio.functional.resample``.
        min_samples: minimum length after resampling (e.g. n_fft); shorter clips are rejected.
        max_seconds: maximum duration in seconds (read from the header, before decoding); None = no limit.
        name: how errors name the input (a path, or a request description).
    Returns:
        (waveform float32 [samples] in [-1, 1], AudioNotes).
    Raises:
        AudioError: reason one of ``"empty file"``, ``"truncated"``, ``"not audio"``, ``"too long"``,
            ``"too short"``, ``"non-finite samples"``.
    """
    if len(data) == 0:
        raise AudioError(name, "empty file", "0 bytes")
    trunc = _wav_truncation(data)
    if trunc:
        raise AudioError(name, "truncated", trunc)
    buffer = io.BytesIO(data)
    try:
        if max_seconds is not None:
            info = sf.info(buffer)
            buffer.seek(0)
            if info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
                raise AudioError(
                    name, "too long", f"{info.frames / info.samplerate:.2f} s; the limit is {max_seconds:g} s"
                )
        samples, sr = sf.read(buffer, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        detail = str(exc).replace(repr(buffer), name)  # libsndfile names the buffer object; name the input instead
        raise AudioError(name, "not audio", f"soundfile could not decode it: {detail}") from exc
    notes = AudioNotes(orig_sample_rate=int(sr), orig_channels=int(samples.shape[1]))
    if samples.shape[0] == 0:
        raise AudioError(name, "empty file", "0 samples")
    wav = samples[:, 0]
    if samples.shape[1] > 1:
        notes.notes.append(f"kept channel 0 of {samples.shape[1]}")
    if not np.isfinite(wav).all():
        raise AudioError(name, "non-finite samples", "NaN or inf in the signal")
    if sr != sample_rate:
        wav = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(wav)), sr, sample_rate).numpy()
        notes.notes.append(f"resampled from {sr} Hz to {sample_rate} Hz")
    if wav.shape[0] < min_samples:
        raise AudioError(name, "too short", f"{wav.shape[0]} samples at {sample_rate} Hz; need >= {min_samples}")
    return np.ascontiguousarray(wav, dtype=np.float32), notes


def load_audio(path: str | os.PathLike, sample_rate: int, *, min_samples: int = 1) -> tuple[np.ndarray, AudioNotes]:
    """Decode one clip to mono float32 at ``sample_rate`` Hz (reads the file, then :func:`decode_audio`).

    Args:
        path: audio file (WAV, or anything libsndfile reads).
        sample_rate: target rate in Hz; other rates are resampled with ``torchaudio.functional.resample``.
        min_samples: minimum length after resampling (e.g. n_fft); shorter clips are rejected.
    Returns:
        (waveform float32 [samples] in [-1, 1], AudioNotes).
    Raises:
        AudioError: reason one of ``"missing"``, ``"empty file"``, ``"truncated"``, ``"not audio"``,
            ``"too short"``, ``"non-finite samples"``.
    """
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise AudioError(path, "missing", str(exc)) from exc
    return decode_audio(data, sample_rate, min_samples=min_samples, name=path)
