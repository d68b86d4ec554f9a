"""Helpers shared by the HTTP endpoint tests (tests/test_serve*.py)."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from stethoscope.runtime import free_port  # noqa: F401  (re-exported: the tests import it from here)


def wav_bytes(wave: np.ndarray, sr: int) -> bytes:
    """``wave`` ([samples] or [samples, channels], float in [-1, 1] or int16) as 16-bit PCM WAV bytes at ``sr`` Hz."""
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()
