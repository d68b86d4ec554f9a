"""The one decode path (``stethoscope.data.audio``) on hostile inputs: awkward sample rates, a huge multi-channel
FLAC, unreadable and special files. Each case runs on real files written here; the costly ones run in a child
process under a memory cap, so a regression fails the test instead of taking memory from the machine."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoscope.data.audio import decode_audio, load_audio
from stethoscope.errors import AudioError

ROOT = Path(__file__).resolve().parents[1]


def _tone(sr: int, seconds: float = 2.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    wave = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def _wav(wave: np.ndarray, sr: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _big_flac() -> bytes:
    """8 channels at 655,350 Hz (FLAC's highest rate), 59 s of silence: ~39 M frames in a few hundred KB."""
    sr, frames = 655_350, 655_350 * 59
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=sr, channels=8, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((sr, 8), dtype=np.int16)
        for _ in range(frames // sr):
            f.write(block)
    return buf.getvalue()


def _run_capped(code: str, headroom_mb: int = 1200) -> dict:
    """Run ``code`` in a child Python with the audio modules imported, under an address-space cap of the
    child's size after the imports plus ``headroom_mb``. ``code`` sets ``out`` (JSON-able); returns it."""
    prog = f"""
import json, resource, sys
import numpy as np, soundfile as sf, torch, torchaudio
from stethoscope.data.audio import decode_audio
from stethoscope.errors import AudioError
vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom_mb} * 2**20, resource.RLIM_INFINITY))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {{}}
{code}
out['_peak_rss_growth_mb'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    proc = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("rate", [8001, 16001, 44101])
def test_a_rate_coprime_with_16k_resamples_within_a_memory_cap(rate):
    """torchaudio's resample built a kernel of gigabytes for these ratios (8001/16001 Hz: +2-4 GB; 44101 Hz:
    12 GB, or a RuntimeError under a cap). Now a 2 s clip decodes under a 1.2 GB cap with a modest peak."""
    out = _run_capped(f"""
sr = {rate}
t = np.arange(2 * sr) / sr
buf = __import__('io').BytesIO()
sf.write(buf, 0.3 * np.sin(2 * np.pi * 440.0 * t), sr, format='WAV', subtype='PCM_16')
try:
    wave, notes = decode_audio(buf.getvalue(), 16000, name='clip')
    out['n'] = int(wave.shape[0]); out['notes'] = notes.notes
    spec = np.abs(np.fft.rfft(wave)); out['peak_hz'] = float(np.argmax(spec) * 16000 / len(wave))
except AudioError as exc:
    out['error'] = exc.reason + ': ' + exc.detail
""")
    assert "error" not in out, out
    assert out["n"] == 32000 and out["notes"] == [f"resampled from {rate} Hz to 16000 Hz"]
    assert abs(out["peak_hz"] - 440.0) < 1.0  # the tone survives at its pitch
    assert out["_peak_rss_growth_mb"] < 300, out


def test_a_huge_multichannel_flac_is_refused_from_its_header():
    """8 channels × 655 kHz × 59 s = 310 M samples from ~400 KB: refused before decoding (the old path decoded
    every channel, 6 s and +1.6 GB, then kept channel 0)."""
    data = _big_flac()
    assert len(data) < 1_000_000
    with pytest.raises(AudioError) as err:
        decode_audio(data, 16000, max_seconds=60, name="big.flac")
    assert err.value.reason == "unsupported_sample_rate" and "655350 Hz" in err.value.detail
    # with the rate allowed, the frames × channels budget still refuses it from the header
    with pytest.raises(AudioError) as err:
        decode_audio(data, 16000, max_seconds=60, max_sample_rate=700_000, name="big.flac")
    assert err.value.reason == "too_many_samples" and "8 channels" in err.value.detail


def test_only_channel_0_is_kept_in_memory_when_a_big_multichannel_file_is_allowed(tmp_path):
    """With the limits raised, an 8-channel file decodes block by block, keeping channel 0: the peak stays near
    one channel's size (155 MB here), not eight (1.2 GB)."""
    (tmp_path / "big.flac").write_bytes(_big_flac())
    out = _run_capped(f"""
data = open({str(tmp_path / "big.flac")!r}, 'rb').read()
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    wave, notes = decode_audio(data, 16000, max_sample_rate=700_000, max_samples=10**9, name='big.flac')
    out['n'] = int(wave.shape[0]); out['notes'] = notes.notes
except AudioError as exc:
    out['error'] = exc.reason + ': ' + exc.detail
out['decode_growth_mb'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
""", headroom_mb=1000)
    assert "error" not in out, out
    assert out["n"] == 16000 * 59 and out["notes"][0] == "kept channel 0 of 8"
    assert out["decode_growth_mb"] < 600, out


def test_sample_values_are_unchanged_at_the_target_rate_and_channel_0_is_exact():
    wave = (_tone(16000, 1.0) * 32767).astype(np.int16)
    stereo = np.stack([wave, wave[::-1]], axis=1)
    got, notes = decode_audio(_wav(stereo, 16000), 16000)
    np.testing.assert_array_equal(got, wave.astype(np.float32) / 32768)
    assert notes.orig_channels == 2 and notes.notes == ["kept channel 0 of 2"]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"this is not audio\n" * 64, "not_audio"),
        (_wav(np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT"), "non_finite_samples"),
        (_wav(_tone(16000, 0.01), 16000), "too_short"),
        (_wav(_tone(16000, 3.0), 16000), "too_long"),
    ],
)
def test_every_refusal_is_a_snake_case_reason(data, reason):
    with pytest.raises(AudioError) as err:
        decode_audio(data, 16000, min_samples=1024, max_seconds=2.5)
    assert err.value.reason == reason


def test_a_missing_file_a_directory_and_a_fifo_get_their_true_reasons(tmp_path):
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "gone.wav", 16000)
    assert err.value.reason == "missing"
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "dir.wav", 16000)
    assert err.value.reason == "not_a_file" and "directory" in err.value.detail
    os.mkfifo(tmp_path / "fifo.wav")
    with pytest.raises(AudioError) as err:  # never opened: opening a FIFO would block until a writer comes
        load_audio(tmp_path / "fifo.wav", 16000)
    assert err.value.reason == "not_a_file" and "FIFO" in err.value.detail


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv to drop root's capabilities")
def test_an_unreadable_file_is_reported_as_unreadable_not_missing(tmp_path):
    """Tests run as root, which reads mode-000 files; the child drops CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH so the
    permission bits apply to it as to any user."""
    clip = tmp_path / "locked.wav"
    clip.write_bytes(_wav(_tone(16000, 1.0), 16000))
    clip.chmod(0)
    prog = (
        "import sys, json\nfrom stethoscope.data.audio import load_audio\nfrom stethoscope.errors import AudioError\n"
        "try:\n    load_audio(sys.argv[1], 16000); print(json.dumps({'reason': None}))\n"
        "except AudioError as e:\n    print(json.dumps({'reason': e.reason, 'detail': e.detail}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    proc = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", prog,
                           str(clip)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["reason"] == "unreadable" and "Permission denied" in out["detail"]
