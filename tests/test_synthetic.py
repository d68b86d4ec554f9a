"""Tests for stethoscope.data.synthetic: the tree's layout and format, determinism, and that every anomaly kind
changes the sound in the way it claims to (measured on the signal, not read back from the generator's parameters)."""

from __future__ import annotations

import csv
import hashlib
import pathlib

import numpy as np
import pytest
import scipy.signal
import scipy.stats
import soundfile as sf
from sklearn.metrics import roc_auc_score

from stethoscope.data.synthetic import ANOMALY_KINDS, PEAK_LIMIT, machine_profile, make_dcase2020_tree, synthesize_clip
from stethoscope.errors import ConfigError, DataError

SR = 16000
MACHINE = ("pump", "00")  # f0 ≈ 194 Hz: well above the STFT resolutions used below


def _clip(anomaly=None, severity=1.0, seed=0, duration_s=4.0, machine=MACHINE):
    return synthesize_clip(*machine, anomaly=anomaly, severity=severity, duration_s=duration_s,
                           rng=np.random.default_rng(seed))


def _digests(dev: pathlib.Path) -> dict[str, str]:
    return {p.relative_to(dev).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dev.rglob("*"))
            if p.is_file()}


def _strong_harmonic(machine=MACHINE) -> float:
    """Nominal frequency (Hz) of the strongest of harmonics 1-3: its ±15 % neighbourhood holds no other harmonic."""
    prof = machine_profile(*machine)
    k = 1 + int(np.argmax(prof.harmonic_amplitudes[:3]))
    return k * prof.f0_hz


def _peak_hz(x: np.ndarray, lo: float, hi: float) -> float:
    f, p = scipy.signal.welch(x, fs=SR, nperseg=8192)
    band = (f >= lo) & (f <= hi)
    return float(f[band][np.argmax(p[band])])


# ---- layout and format -------------------------------------------------------------------------------------------


def test_tree_layout_names_counts_format_and_ground_truth(tmp_path):
    dev = make_dcase2020_tree(tmp_path, machine_types=("fan", "pump"), machine_ids=("00", "02"), n_train=3,
                              n_test_normal=2, n_test_anomaly=3, anomalies=("clicks", ("am", 0.5)), severity=0.75,
                              duration_s=1.5)
    assert dev == tmp_path / "dev_data"
    expected = set()
    for mt in ("fan", "pump"):
        expected |= {f"{mt}/train/normal_id_00_{i:08d}.wav" for i in range(0, 3)}
        expected |= {f"{mt}/train/normal_id_02_{i:08d}.wav" for i in range(3, 6)}
        expected |= {f"{mt}/test/normal_id_00_{i:08d}.wav" for i in (0, 1)}
        expected |= {f"{mt}/test/anomaly_id_00_{i:08d}.wav" for i in (2, 3, 4)}
        expected |= {f"{mt}/test/normal_id_02_{i:08d}.wav" for i in (5, 6)}
        expected |= {f"{mt}/test/anomaly_id_02_{i:08d}.wav" for i in (7, 8, 9)}
    wavs = {p.relative_to(dev).as_posix() for p in dev.rglob("*.wav")}
    assert wavs == expected
    assert {p.name for p in dev.iterdir()} == {"fan", "pump", "ground_truth.csv"}

    for rel in sorted(wavs):
        info = sf.info(dev / rel)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 1, "PCM_16", "WAV"), rel
        assert info.frames == 24000, rel
        x, _ = sf.read(dev / rel, dtype="float32")
        assert 0.0 < np.abs(x).max() <= PEAK_LIMIT + 1e-4, rel  # audible, and never clipped

    with open(dev / "ground_truth.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "machine_type", "machine_id", "split", "label", "anomaly", "severity"]
        rows = list(reader)
    assert {r["path"] for r in rows} == wavs and len(rows) == len(wavs)
    for r in rows:
        split, name = r["path"].split("/")[1:]
        assert r["machine_type"] == r["path"].split("/")[0] and r["split"] == split
        assert name.startswith(f"{r['label']}_id_{r['machine_id']}_")
        if r["label"] == "normal":
            assert (r["anomaly"], float(r["severity"])) == ("none", 0.0)
    anomalous = sorted((r["path"], r["anomaly"], float(r["severity"])) for r in rows if r["label"] == "anomaly")
    # Per machine_id the 3 anomalies cycle clicks@0.75 (the default severity), am@0.5, clicks@0.75.
    assert [(a, s) for _, a, s in anomalous[:3]] == [("clicks", 0.75), ("am", 0.5), ("clicks", 0.75)]
    assert sum(a == "am" for _, a, _ in anomalous) == 4


def test_tree_without_anomalies_and_stale_files(tmp_path):
    dev = make_dcase2020_tree(tmp_path, machine_types=("valve",), machine_ids=("04",), n_train=1, n_test_normal=1,
                              n_test_anomaly=0, anomalies=(), duration_s=0.5)
    assert sorted(p.name for p in (dev / "valve" / "test").iterdir()) == ["normal_id_04_00000000.wav"]
    # Re-running the same call is fine; a smaller call into the bigger tree would mix in stale clips: refused.
    make_dcase2020_tree(tmp_path, machine_types=("valve",), machine_ids=("04",), n_train=1, n_test_normal=1,
                        n_test_anomaly=0, anomalies=(), duration_s=0.5)
    (dev / "valve" / "train" / "normal_id_04_00000007.wav").write_bytes(b"")
    with pytest.raises(DataError, match="normal_id_04_00000007"):
        make_dcase2020_tree(tmp_path, machine_types=("valve",), machine_ids=("04",), n_train=1, n_test_normal=1,
                            n_test_anomaly=0, anomalies=(), duration_s=0.5)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"anomalies": ("squeak",)}, "anomalies[0]"),
        ({"anomalies": (("clicks", 1.5),)}, "anomalies[0][1]"),
        ({"severity": -0.1}, "severity"),
        ({"severity": float("nan")}, "severity"),
        ({"n_train": 0}, "n_train"),
        ({"n_test_normal": 0}, "n_test_normal"),
        ({"n_test_anomaly": -1}, "n_test_anomaly"),
        ({"n_train": 2.5}, "n_train"),
        ({"machine_ids": ("0",)}, "machine_ids[0]"),
        ({"machine_ids": ("00", "id_02")}, "machine_ids[1]"),
        ({"machine_ids": ("00", "00")}, "machine_ids"),
        ({"machine_types": ("fan/x",)}, "machine_types[0]"),
        ({"machine_types": ()}, "machine_types"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"sample_rate": 0}, "sample_rate"),
        ({"sample_rate": 4000}, "sample_rate"),
        ({"seed": -1}, "seed"),
        ({"anomalies": ()}, "anomalies"),
    ],
)
def test_tree_rejects_bad_arguments(tmp_path, kwargs, arg):
    with pytest.raises(ConfigError) as err:
        make_dcase2020_tree(tmp_path, **{"n_train": 1, "n_test_normal": 1, "n_test_anomaly": 1, **kwargs})
    assert str(err.value).startswith(f"{arg} = ")
    assert "expected" in str(err.value)
    assert not (tmp_path / "dev_data").exists()  # validation happens before anything is written


def test_synthesize_clip_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match=r"^anomaly = 'hum'.*'clicks'"):
        synthesize_clip("fan", "00", anomaly="hum", rng=rng)
    with pytest.raises(ConfigError, match=r"^severity = 2.0; expected"):
        synthesize_clip("fan", "00", anomaly="am", severity=2.0, rng=rng)
    with pytest.raises(ConfigError, match=r"^machine_id = '7'; expected a two-digit"):
        synthesize_clip("fan", "7", rng=rng)
    with pytest.raises(ConfigError, match=r"^rng = 0; expected a numpy.random.Generator"):
        synthesize_clip("fan", "00", rng=0)


# ---- determinism -------------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_clips_and_clips_independent_of_other_machines(tmp_path):
    kwargs = dict(machine_ids=("00", "02"), n_train=2, n_test_normal=1, n_test_anomaly=2,
                  anomalies=("clicks", "drift"), duration_s=1.0)
    a = _digests(make_dcase2020_tree(tmp_path / "a", machine_types=("fan", "pump"), seed=7, **kwargs))
    b = _digests(make_dcase2020_tree(tmp_path / "b", machine_types=("fan", "pump"), seed=7, **kwargs))
    c = _digests(make_dcase2020_tree(tmp_path / "c", machine_types=("fan", "pump"), seed=8, **kwargs))
    assert a == b
    wavs = [k for k in a if k.endswith(".wav")]
    assert len(wavs) == 20 and set(c) == set(a)
    assert all(a[k] != c[k] for k in wavs)
    assert len({a[k] for k in wavs}) == len(wavs)  # no two clips of a tree are the same
    # Dropping a machine type leaves the other type's clips byte-identical (per-clip child generators).
    d = _digests(make_dcase2020_tree(tmp_path / "d", machine_types=("pump",), seed=7, **kwargs))
    assert all(d[k] == a[k] for k in d if k.endswith(".wav")) and len([k for k in d if k.endswith(".wav")]) == 10


def test_workers_do_not_change_the_output(tmp_path):
    kwargs = dict(machine_types=("fan",), machine_ids=("00", "02"), n_train=2, n_test_normal=1, n_test_anomaly=1,
                  duration_s=0.5, seed=3)
    assert _digests(make_dcase2020_tree(tmp_path / "a", **kwargs)) == \
        _digests(make_dcase2020_tree(tmp_path / "b", workers=2, **kwargs))


def test_clip_shape_dtype_and_range():
    x = synthesize_clip("fan", "02", duration_s=1.25, sample_rate=8000, rng=np.random.default_rng(1))
    assert x.dtype == np.float32 and x.shape == (10000,)
    assert 0.0 < np.abs(x).max() <= PEAK_LIMIT
    assert not np.array_equal(x, synthesize_clip("fan", "02", duration_s=1.25, sample_rate=8000,
                                                  rng=np.random.default_rng(2)))


def test_peak_limiter_scales_loud_clips_down_as_a_whole_and_leaves_others():
    from stethoscope.data.synthetic import _limit_peak

    loud = np.array([0.5, -3.0, 1.5])
    np.testing.assert_allclose(_limit_peak(loud.copy()), loud * PEAK_LIMIT / 3.0)
    quiet = np.array([0.25, -0.5, 0.0])
    np.testing.assert_array_equal(_limit_peak(quiet.copy()), quiet)


# ---- anomalies ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_severity_zero_is_exactly_normal_and_severity_one_is_not(kind):
    normal = _clip()
    assert np.array_equal(_clip(kind, severity=0.0), normal)
    assert np.sqrt(np.mean((_clip(kind, severity=1.0) - normal) ** 2)) > 0.05 * np.sqrt(np.mean(normal**2))


def test_clicks_raise_kurtosis_monotonically_with_severity():
    for seed in range(3):
        kurt = [scipy.stats.kurtosis(_clip("clicks", severity=s, seed=seed)) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
        assert kurt[0] < 1.0  # normal clip: no heavy tails (the hum makes it slightly platykurtic)
        assert kurt[-1] > 10.0
        assert np.all(np.diff(kurt) > 0), kurt


def test_harmonic_adds_a_non_integer_partial_where_normal_has_little_energy():
    f0 = machine_profile(*MACHINE).f0_hz
    for seed in range(3):
        f, p_norm = scipy.signal.welch(_clip(seed=seed), fs=SR, nperseg=4096)
        _, p_anom = scipy.signal.welch(_clip("harmonic", seed=seed), fs=SR, nperseg=4096)
        gain_db = 10 * np.log10(p_anom / p_norm)
        i = int(np.argmax(gain_db))
        assert gain_db[i] > 10.0  # > 10 dB more energy at one frequency ...
        ratio = f[i] / f0
        assert 0.15 < ratio % 1.0 < 0.85, ratio  # ... which is not a harmonic of the fundamental
        # and the normal spectrum there is far below its strongest harmonic.
        assert 10 * np.log10(p_norm.max() / p_norm[i]) > 15.0


def test_drift_moves_the_spectral_peak_over_the_clip():
    fh = _strong_harmonic()
    lo, hi = 0.85 * fh, 1.18 * fh
    n1 = SR  # compare the first and the last second of a 4 s clip

    def shift(x):
        return _peak_hz(x[-n1:], lo, hi) / _peak_hz(x[:n1], lo, hi) - 1.0

    for seed in range(3):
        shifts = [shift(_clip("drift", severity=s, seed=seed)) for s in (0.0, 0.5, 1.0)]
        assert abs(shifts[0]) < 0.025, shifts  # normal: speed wander of about ±1 %
        assert abs(shifts[2]) > 0.07, shifts  # drift reaches 12 % at the end; 1 s windows 3 s apart see ~9 %
        assert abs(shifts[0]) < abs(shifts[1]) < abs(shifts[2]), shifts


def _hum_modulation_depth(x: np.ndarray) -> float:
    """std / mean of the short-time energy (32 ms frames) around the strongest low harmonic."""
    fh = _strong_harmonic()
    f, _, z = scipy.signal.stft(x, fs=SR, nperseg=512)
    energy = (np.abs(z[(f >= 0.85 * fh) & (f <= 1.18 * fh)]) ** 2).sum(axis=0)[2:-2]  # drop padded edge frames
    return float(energy.std() / energy.mean())


def test_am_raises_the_hum_envelope_modulation_depth_monotonically():
    for seed in range(3):
        depth = [_hum_modulation_depth(_clip("am", severity=s, seed=seed)) for s in (0.0, 0.25, 0.5, 1.0)]
        assert depth[0] < 0.3, depth
        assert depth[-1] > 2 * depth[0] and depth[-1] > 0.5, depth
        assert np.all(np.diff(depth) > 0), depth


# ---- machines ----------------------------------------------------------------------------------------------------


def test_machine_ids_of_one_type_differ_in_their_fundamental():
    p0, p2 = machine_profile("fan", "00"), machine_profile("fan", "02")
    assert machine_profile("fan", "00") == p0  # deterministic from the names
    assert abs(p2.f0_hz / p0.f0_hz - 1.0) > 0.05
    # Measured: each clip's fundamental peak sits at its own profile's f0 (±2 %), not at the other's.
    for prof in (p0, p2):
        x = _clip(machine=("fan", prof.machine_id))
        peak = _peak_hz(x, 0.9 * min(p0.f0_hz, p2.f0_hz), 1.1 * max(p0.f0_hz, p2.f0_hz))
        assert abs(peak / prof.f0_hz - 1.0) < 0.02, (prof.machine_id, peak, prof.f0_hz)
    # Every ID 00-24 of a type has its own fundamental.
    f0s = sorted(machine_profile("pump", f"{i:02d}").f0_hz for i in range(25))
    assert np.min(np.diff(np.log(f0s))) > 0.01


def test_trivial_log_mel_detector_separates_clicks_from_normals():
    """Distance of a clip's mean log-mel to the mean over training clips: clicks at severity 1 must score higher."""
    from stethoscope.data.features import FeatureSpec, log_mel

    spec = FeatureSpec()

    def embed(x):
        return log_mel(x, spec).mean(dim=1).numpy()

    train = np.mean([embed(_clip(seed=100 + i, duration_s=3.0)) for i in range(10)], axis=0)
    normals = [embed(_clip(seed=200 + i, duration_s=3.0)) for i in range(10)]
    clicks = [embed(_clip("clicks", seed=300 + i, duration_s=3.0)) for i in range(10)]
    scores = [np.linalg.norm(e - train) for e in normals + clicks]
    assert roc_auc_score([0] * 10 + [1] * 10, scores) > 0.9


# -- DCASE 2022-style sets: sections, source / target domains, attributes --------------------------------------------
def _fundamental(path: pathlib.Path, expected_hz: float) -> float:
    """The spectral peak of a clip within ±15 % of ``expected_hz`` (Hz)."""
    x, sr = sf.read(path, dtype="float64")
    f, p = scipy.signal.welch(x, sr, nperseg=8192)
    band = (f > 0.85 * expected_hz) & (f < 1.15 * expected_hz)
    return float(f[band][np.argmax(p[band])])


def test_dcase2022_tree_has_sections_domains_attributes_and_a_known_shift(tmp_path):
    from stethoscope.data.index import index
    from stethoscope.data.synthetic import make_dcase2022_tree

    kwargs = dict(machine_types=("gearbox",), sections=("00", "01"), n_train_source=3, n_train_target=1,
                  n_test_normal=2, n_test_anomaly=2, anomalies=("clicks",), duration_s=1.0, seed=4)
    raw = make_dcase2022_tree(tmp_path / "a", **kwargs)
    assert raw == tmp_path / "a" / "dev_data" / "raw"
    table = index(tmp_path / "a").table.to_pandas()
    assert set(table["dataset"]) == {"dcase2021+"} and len(table) == 2 * (3 + 1 + 2 * (2 + 2))
    counts = table.groupby(["section", "domain", "split", "label"]).size().to_dict()
    assert counts[("00", "source", "train", "normal")] == 3 and counts[("01", "target", "train", "normal")] == 1
    assert counts[("00", "target", "test", "anomaly")] == 2 and counts[("01", "source", "test", "normal")] == 2
    attrs = {r.file_name: dict(r.attributes) for r in table.itertuples()}
    assert attrs["section_00_source_train_normal_0001_speed_10_noise_A.wav"] == {"speed": "10", "noise": "A"}
    assert attrs["section_01_target_test_anomaly_0001_speed_14_noise_B.wav"] == {"speed": "14", "noise": "B"}
    with open(tmp_path / "a" / "dev_data" / "ground_truth.csv") as fh:
        truth = list(csv.DictReader(fh))
    assert len(truth) == len(table) and {r["anomaly"] for r in truth if r["label"] == "anomaly"} == {"clicks"}
    # the shift is the one the names say: the target domain's fundamental is the source's × speed ratio
    f0 = machine_profile("gearbox", "00").f0_hz
    train = raw / "gearbox" / "train"
    src = _fundamental(train / "section_00_source_train_normal_0001_speed_10_noise_A.wav", f0)
    tgt = _fundamental(train / "section_00_target_train_normal_0000_speed_13_noise_B.wav", 1.3 * f0)
    assert src == pytest.approx(f0, rel=0.02) and tgt / src == pytest.approx(1.3, rel=0.03)
    # seeded: the same call writes the same bytes
    again = make_dcase2022_tree(tmp_path / "b", **kwargs)
    some = sorted(raw.rglob("*.wav"))[:3]
    assert [p.read_bytes() for p in some] == [(again / p.relative_to(raw)).read_bytes() for p in some]
    with pytest.raises(ConfigError, match="target_speeds"):
        make_dcase2022_tree(tmp_path / "c", target_speeds=(50,))
    with pytest.raises(ConfigError, match="sections"):
        make_dcase2022_tree(tmp_path / "c", sections="00")
