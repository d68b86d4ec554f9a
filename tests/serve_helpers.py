"""Helpers shared by the HTTP endpoint tests (tests/test_serve*.py)."""

from __future__ import annotations

import io
import socket

import numpy as np
import soundfile as sf


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wav_bytes(wave: np.ndarray, sr: int) -> bytes:
    """``wave`` ([samples] or [samples, channels], float in [-1, 1] or int16) as 16-bit PCM WAV bytes at ``sr`` Hz."""
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()
