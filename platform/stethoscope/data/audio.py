"""Audio decoding and validation (soundfile; torchaudio for resampling).

Policy (issue "Foundation", DCASE baselines):
- decode with soundfile; keep channel 0 of multi-channel audio (as the DCASE baselines do);
- resample a clip at another rate to the FeatureSpec rate with torchaudio, and say so in the ingest report;
- an empty, truncated, non-audio or too-short file raises :class:`~stethoscope.errors.AudioError` with a short reason,
  which ingest records in its report and skips.
"""

from __future__ import annotations

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


def _wav_truncation(path: str, size: int) -> str | None:
    """For RIFF/WAVE files: a message if the ``data`` chunk declares more bytes than the file holds, else None."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                available = size - (pos + 8)
                if csize > available and csize != 0xFFFFFFFF:
                    return f"data chunk declares {csize} bytes but the file holds {available}"
                return None
            pos += 8 + csize + (csize & 1)
    return None


def load_audio(path: str | os.PathLike, sample_rate: int, *, min_samples: int = 1) -> tuple[np.ndarray, AudioNotes]:
    """Decode one clip to mono float32 at ``sample_rate`` Hz.

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
        size = os.path.getsize(path)
    except OSError as exc:
        raise AudioError(path, "missing", str(exc)) from exc
    if size == 0:
        raise AudioError(path, "empty file", "0 bytes")
    trunc = _wav_truncation(path, size)
    if trunc:
        raise AudioError(path, "truncated", trunc)
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(path, "not audio", f"soundfile could not decode it: {exc}") from exc
    notes = AudioNotes(orig_sample_rate=int(sr), orig_channels=int(data.shape[1]))
    if data.shape[0] == 0:
        raise AudioError(path, "empty file", "0 samples")
    wav = data[:, 0]
    if data.shape[1] > 1:
        notes.notes.append(f"kept channel 0 of {data.shape[1]}")
    if not np.isfinite(wav).all():
        raise AudioError(path, "non-finite samples", "NaN or inf in the signal")
    if sr != sample_rate:
        wav = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(wav)), sr, sample_rate).numpy()
        notes.notes.append(f"resampled from {sr} Hz to {sample_rate} Hz")
    if wav.shape[0] < min_samples:
        raise AudioError(path, "too short", f"{wav.shape[0]} samples at {sample_rate} Hz; need >= {min_samples}")
    return np.ascontiguousarray(wav, dtype=np.float32), notes
