"""FeatureSpec and log-mel features against a float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from stethoscope.data.features import FeatureSpec, frame_stack, log_mel
from stethoscope.errors import ConfigError


def _slaney_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, hz / f_sp)


def _slaney_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def reference_log_mel(wav: np.ndarray, sr=16000, n_fft=1024, hop=512, n_mels=128) -> np.ndarray:
    """Float64 NumPy log-mel: centred reflect-padded STFT, periodic Hann, power 2, Slaney mel filters with Slaney
    area normalisation (librosa's defaults, as the DCASE 2020 baseline used), 10·log10(mel + eps)."""
    x = np.pad(wav.astype(np.float64), n_fft // 2, mode="reflect")
    frames = 1 + (len(x) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2  # [frames, n_fft/2+1]
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = _slaney_hz(np.linspace(_slaney_mel(0.0), _slaney_mel(sr / 2), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m] = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
        fb[m] *= 2.0 / (hi - lo)
    mel = fb @ spec.T
    return 10.0 * np.log10(mel + np.finfo(np.float64).eps)


def test_ten_second_clip_shape_and_values_match_float64_reference(dcase2020_root):
    path = next((dcase2020_root / "dev_data" / "slider" / "train").glob("*.wav"))
    wav, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and wav.shape == (160000,)
    got = log_mel(wav, FeatureSpec()).numpy()
    assert got.shape == (128, 313)
    ref = reference_log_mel(wav)
    assert ref.shape == (128, 313)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_db_max_reference_floor():
    spec = FeatureSpec(db_ref="max", top_db=80.0)
    rng = np.random.default_rng(0)
    wav = np.concatenate([rng.standard_normal(16000), np.zeros(16000)]).astype(np.float32)  # half silence
    db = log_mel(wav, spec).numpy()
    assert db.max() == pytest.approx(0.0, abs=1e-5)
    assert db.min() == pytest.approx(-80.0, abs=1e-4)  # the silent half is floored at -top_db


def test_frame_stack_gives_640_dim_vectors_in_baseline_order():
    x = torch.arange(128 * 313, dtype=torch.float32).reshape(128, 313)
    v = frame_stack(x, 5)
    assert v.shape == (309, 640)
    # row t = [frame t (128 mels), frame t+1, ..., frame t+4]
    torch.testing.assert_close(v[10, 128 * 2 : 128 * 3], x[:, 12])
    torch.testing.assert_close(v[308, 512:], x[:, 312])


@pytest.mark.parametrize(
    "kwargs, field",
    [({"n_mels": 0}, "n_mels"), ({"n_mels": -3}, "n_mels"), ({"hop_length": 2048}, "hop_length"),
     ({"n_fft": 0}, "n_fft"), ({"db_ref": "peak"}, "db_ref"), ({"f_max": 9000.0}, "f_max")],
)
def test_bad_feature_parameters_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"FeatureSpec.{field}"):
        FeatureSpec(**kwargs)


def test_spec_hash_covers_every_field_and_rejects_unknown_keys():
    base = FeatureSpec()
    assert base.hash() == FeatureSpec().hash()
    assert FeatureSpec(db_ref="max").hash() != base.hash()
    assert FeatureSpec(n_mels=64).hash() != base.hash()
    assert FeatureSpec.from_dict(base.to_dict()) == base
    with pytest.raises(ConfigError, match="unknown key"):
        FeatureSpec.from_dict({"n_melz": 64})


def test_compute_many_shares_stfts_and_equals_each_spec_alone_bit_for_bit(dcase2020_root):
    """Specs that share an STFT (same n_fft / window / hop / power) or a whole spectrogram (differing only in the
    log scale) are computed once by compute_many; each result equals compute_input of that spec alone exactly."""
    from stethoscope.data.features import WaveformSpec, compute_input, compute_many

    path = sorted((dcase2020_root / "dev_data" / "ToyCar" / "test").glob("*.wav"))[0]  # 11 s
    wav, sr = sf.read(path, dtype="float32")
    specs = [
        FeatureSpec(),                                        # dB log-mel (AE baseline)
        FeatureSpec(scale="ln"),                              # same spectrogram, natural log
        FeatureSpec(db_ref="max"),                            # same spectrogram, librosa ref=max
        FeatureSpec(kind="stft", scale="db"),                 # the |STFT|^2 the three mels above start from
        FeatureSpec(kind="stft", scale="linear", power=1.0),  # AITHU's magnitude: its own STFT
        FeatureSpec(n_fft=2048, scale="ln"),                  # FGASpecNet: alone on its STFT
        FeatureSpec(n_mels=64, f_max=7000.0),                 # shares the n_fft 1024 STFT, other filterbank
        WaveformSpec(16000),
    ]
    got = compute_many(wav, specs)
    assert len(got) == len(specs)
    for spec, x in zip(specs, got):
        alone = compute_input(wav, spec)
        assert x.dtype == torch.float32 and x.shape == alone.shape
        assert torch.equal(x, alone), spec
    assert got[3].shape == (513, 1 + wav.shape[0] // 512)  # the STFT spec
    assert got[6].shape == (64, 1 + wav.shape[0] // 512)  # the 64-band mel
    with pytest.raises(ValueError, match="several sample rates"):
        compute_many(wav, [FeatureSpec(), WaveformSpec(8000)])
    with pytest.raises(ValueError, match="n_fft=2048"):
        compute_many(wav[:1000], [FeatureSpec(n_fft=2048)])
