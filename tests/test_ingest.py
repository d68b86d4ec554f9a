"""Ray Data ingest: planted bad files are reported and skipped, good ones (44.1 kHz, stereo) are ingested."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoscope.data.features import FeatureSpec, WaveformSpec, log_mel, mel_spectrogram
from stethoscope.errors import DataError
from stethoscope.data.index import index
from stethoscope.data.ingest import ingest, read_features


@pytest.fixture(scope="module")
def planted_tree(tmp_path_factory, dcase2020_root):
    root = tmp_path_factory.mktemp("planted")
    train = root / "dev_data" / "slider" / "train"
    train.mkdir(parents=True)
    real = sorted((dcase2020_root / "dev_data" / "slider" / "train").glob("*.wav"))[:3]
    for i, src in enumerate(real):
        shutil.copy(src, train / f"normal_id_00_{i:08d}.wav")
    wav, sr = sf.read(real[0], dtype="float32")
    (train / "normal_id_00_00000100.wav").write_bytes(b"")  # empty
    data = real[1].read_bytes()
    (train / "normal_id_00_00000101.wav").write_bytes(data[: len(data) // 2])  # truncated
    (train / "normal_id_00_00000102.wav").write_text("this is not audio\n" * 50)  # text renamed .wav
    import torchaudio, torch

    wav44 = torchaudio.functional.resample(torch.from_numpy(wav), 16000, 44100).numpy()
    sf.write(train / "normal_id_00_00000103.wav", wav44, 44100, subtype="PCM_16")  # 44.1 kHz
    stereo = np.stack([wav, np.zeros_like(wav)], axis=1)
    sf.write(train / "normal_id_00_00000104.wav", stereo, 16000, subtype="PCM_16")  # stereo, channel 0 = real
    return root


def test_bad_files_are_reported_and_good_ones_ingested(ray_session, planted_tree, tmp_path):
    table = index(planted_tree).table
    assert table.num_rows == 8
    spec = FeatureSpec()
    res = ingest(table, str(tmp_path / "store"), spec)
    assert not res.cached
    reasons = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in res.skipped}
    assert reasons == {
        "normal_id_00_00000100.wav": "empty_file",
        "normal_id_00_00000101.wav": "truncated",
        "normal_id_00_00000102.wav": "not_audio",
    }
    assert res.report["n_ingested"] == 5 and res.report["n_skipped"] == 3
    notes = {c["path"].rsplit("/", 1)[1]: c["notes"] for c in res.report["changed"]}
    assert "resampled from 44100 Hz to 16000 Hz" in notes["normal_id_00_00000103.wav"]
    assert "kept channel 0 of 2" in notes["normal_id_00_00000104.wav"]

    col = res.column(spec)
    rows = {r["file_name"]: r for r in read_features(res).to_pandas().to_dict("records")}
    assert sorted(rows) == [f"normal_id_00_{i:08d}.wav" for i in (0, 1, 2, 103, 104)]
    for r in rows.values():
        assert np.asarray(r[col]).shape == (128, 313)
    # stereo: channel 0 is the real clip 0, so its features equal clip 0's
    np.testing.assert_allclose(rows["normal_id_00_00000104.wav"][col], rows["normal_id_00_00000000.wav"][col], atol=1e-2)
    # the report file is on disk next to the shards
    assert (Path(res.root) / "ingest_report.json").is_file() and Path(res.root).is_relative_to(tmp_path / "store")


def test_second_run_reuses_the_cache_and_spec_change_does_not(ray_session, dcase2020_root, tmp_path):
    from stethoscope.data.index import select

    table = select(index(dcase2020_root).table, machine_type="slider", machine_ids=["06"])
    store = str(tmp_path / "store")
    first = ingest(table, store, FeatureSpec())
    again = ingest(table, store, FeatureSpec())
    assert not first.cached and again.cached and again.features_path == first.features_path
    other = ingest(table, store, FeatureSpec(n_mels=64))
    assert not other.cached and other.features_path != first.features_path
    mel = read_features(other).to_pandas()[other.column(FeatureSpec(n_mels=64))].iloc[0]
    assert np.asarray(mel).shape == (64, 313)


def test_ingested_features_equal_direct_computation(ray_session, dcase2020_root, tmp_path):
    from stethoscope.data.index import select

    table = select(index(dcase2020_root).table, machine_type="ToyCar", machine_ids=["01"])
    res = ingest(table, str(tmp_path / "store"), FeatureSpec())
    frame = read_features(res).to_pandas()
    row = frame.iloc[0]
    wav, _ = sf.read(row["path"], dtype="float32")
    col = res.column(FeatureSpec())
    np.testing.assert_allclose(np.asarray(row[col]), log_mel(wav, FeatureSpec()).numpy(), atol=1e-5)
    assert np.asarray(row[col]).shape == (128, 344)  # ToyCar clips are 11 s


def test_several_inputs_in_one_pass_and_a_subset_reuses_the_entry(ray_session, dcase2020_root, tmp_path):
    """Waveform + two spectrogram specs (a log-mel in dB and FGASpecNet's natural-log one) are computed in one
    ingest from one decode; a later request for a subset of them is a cache hit on that entry."""
    from stethoscope.data.index import select

    table = select(index(dcase2020_root).table, machine_type="slider", machine_ids=["06"])
    store = str(tmp_path / "store")
    wave, db, ln = WaveformSpec(16000), FeatureSpec(), FeatureSpec(n_fft=2048, scale="ln")
    res = ingest(table, store, {"waveform": wave, "log_mel": db, "fga": ln})
    assert not res.cached and {s.hash() for s in res.specs} == {wave.hash(), db.hash(), ln.hash()}
    frame = read_features(res).to_pandas().sort_values("path")
    row = frame.iloc[0]
    audio, sr = sf.read(row["path"], dtype="float32")
    np.testing.assert_array_equal(np.asarray(row[res.column(wave)]), audio)
    np.testing.assert_allclose(np.asarray(row[res.column(db)]), log_mel(audio, db).numpy(), atol=1e-5)
    power = mel_spectrogram(audio, ln).numpy()
    np.testing.assert_allclose(np.asarray(row[res.column(ln)]), np.log(power + ln.eps), rtol=1e-5, atol=1e-5)
    assert json.loads(row["attributes"]) == {}

    # scoring reads a small store in this process: the same numpy batches as Ray Data's, filters included
    from stethoscope.data.ingest import LocalFeatures, scoring_features

    where = {"split": "test", "label": ["anomaly"]}
    local = scoring_features(res, **where)
    assert isinstance(local, LocalFeatures)
    assert not isinstance(scoring_features(res, max_bytes=0, **where), LocalFeatures)  # a large store: Ray Data
    ours = [b for b in local.iter_batches(batch_size=2, batch_format="numpy")]
    theirs = list(read_features(res, **where).iter_batches(batch_size=2, batch_format="numpy"))
    by_path = {p: (b, i) for b in theirs for i, p in enumerate(b["path"])}
    assert sorted(p for b in ours for p in b["path"]) == sorted(by_path)
    assert [Path(p).name for p in by_path] == ["anomaly_id_06_00000071.wav"]  # slider id_06's one anomaly
    assert list(scoring_features(res, split="test", label=["normal"]).iter_batches(batch_size=2)) == []
    (one,) = scoring_features(res, split="test", path=sorted(by_path)).iter_batches(batch_size=8)  # a path filter
    assert list(one["path"]) == sorted(by_path)
    for b in ours:
        assert set(b) == set(theirs[0])
        for i, p in enumerate(b["path"]):
            other, j = by_path[p]
            for k in b:
                assert type(b[k][i]) is type(other[k][j]) and np.array_equal(b[k][i], other[k][j]), k

    subset = ingest(table, store, [ln])
    assert subset.cached and subset.root == res.root
    with pytest.raises(DataError, match="not the requested input"):
        subset.column(FeatureSpec(n_mels=64))
    assert not ingest(table, store, FeatureSpec(n_mels=64)).cached


def test_every_entry_under_the_root_that_is_not_ingested_is_in_the_report(ray_session, dcase2020_root, tmp_path):
    """Symlink loops, a dangling symlink, a directory and a FIFO named *.wav, an unparseable name, a file that is
    not .wav, and a clip deleted between indexing and ingest: each is in ingest_report.json with its true reason,
    and the report accounts for every entry under the root."""
    import json
    import os

    from stethoscope.data.index import index

    root = tmp_path / "data"
    train = root / "slider" / "train"
    train.mkdir(parents=True)
    real = sorted((dcase2020_root / "dev_data" / "slider" / "train").glob("*.wav"))[:3]
    for i, src in enumerate(real):
        shutil.copy(src, train / f"normal_id_00_{i:08d}.wav")
    (train / "normal_id_00_00000010.wav").symlink_to(train / "gone.wav")
    (train / "normal_id_00_00000011.wav").symlink_to(train / "normal_id_00_00000011.wav")
    (train / "normal_id_00_00000012.wav").mkdir()
    os.mkfifo(train / "normal_id_00_00000013.wav")
    (train / "loop").symlink_to("..")
    (train / "recording.wav").write_bytes(real[0].read_bytes())
    (train / "notes.txt").write_text("not a clip")
    idx = index(root, lenient=True)
    (train / "normal_id_00_00000002.wav").unlink()  # gone before ingest reads it
    res = ingest(idx.table, str(tmp_path / "store"), FeatureSpec(), not_indexed=idx.skipped)
    report = json.loads((Path(res.root) / "ingest_report.json").read_text())
    reasons = {s["path"].rsplit("/", 1)[1]: (s["stage"], s["reason"]) for s in report["skipped"]}
    assert reasons == {
        "normal_id_00_00000002.wav": ("ingest", "missing"),
        "normal_id_00_00000010.wav": ("index", "dangling_symlink"),
        "normal_id_00_00000011.wav": ("index", "symlink_loop"),
        "normal_id_00_00000012.wav": ("index", "not_a_file"),
        "normal_id_00_00000013.wav": ("index", "not_a_file"),
        "loop": ("index", "symlink_loop"),
        "recording.wav": ("index", "unparseable_name"),
        "notes.txt": ("index", "not_wav"),
    }
    assert report["n_ingested"] == 2 and report["n_skipped"] == 8 and report["n_not_indexed"] == 7
    assert report["n_input"] == 3
    entries = {p.name for p in train.iterdir()}
    assert entries == set(reasons) - {"normal_id_00_00000002.wav"} | {"normal_id_00_00000000.wav",
                                                                       "normal_id_00_00000001.wav"}
    # a cache hit still reports what the index skipped this time
    (train / "notes.txt").unlink()
    again = ingest(idx.table, str(tmp_path / "store"), FeatureSpec(), not_indexed=index(root, lenient=True).skipped)
    assert again.cached and "notes.txt" not in {s["path"].rsplit("/", 1)[1] for s in again.skipped}
    assert "notes.txt" not in (Path(again.root) / "ingest_report.json").read_text()


def _tensor(table, column: str, i: int) -> np.ndarray:
    return np.asarray(table.column(column).combine_chunks().to_numpy()[i])


SEVERAL_SPECS = [
    FeatureSpec(),                                        # DCASE 2020 AE baseline: dB log-mel, n_fft 1024
    FeatureSpec(kind="stft", scale="linear", power=1.0),  # AITHU's STFT magnitude
    FeatureSpec(kind="stft", scale="db"),                 # shares its |STFT|^2 with the first spec
    FeatureSpec(n_fft=2048, scale="ln"),                  # FGASpecNet's natural-log mel
    WaveformSpec(16000),
    WaveformSpec(8000),                                   # a second rate: a second decode, resampled with soxr
]


def test_featurize_clips_equals_the_plain_computation_and_skips_a_bad_clip_in_place(dcase2023_root, tmp_path):
    """One task's body, without Ray: every spec of every good clip equals compute_input on load_audio's waveform
    bit for bit (clips of different lengths), the attributes come through, and a corrupt clip in the middle of
    the batch is reported and leaves the other rows in order."""
    import pyarrow as pa

    from stethoscope.data.audio import load_audio
    from stethoscope.data.features import compute_input
    from stethoscope.data.ingest import featurize_clips, input_column

    everything = index(dcase2023_root).table.to_pylist()
    rows = [everything[i] for i in (0, 1, 12, 20)]  # ToyCar 12 s, fan and slider 10 s
    bad = tmp_path / "section_00_source_test_normal_0001_car_C1_spd_28V_mic_1.wav"
    bad.write_text("not audio\n" * 20)
    rows.insert(2, {**rows[0], "path": str(bad), "file_name": bad.name})
    batch = pa.Table.from_pylist(rows, schema=index(dcase2023_root).table.schema)
    table, skipped = featurize_clips(batch, SEVERAL_SPECS)
    assert [s["path"] for s in skipped] == [str(bad)] and skipped[0]["reason"] == "not_audio"
    good = [r for r in rows if r["path"] != str(bad)]
    assert table.column("path").to_pylist() == [r["path"] for r in good]
    assert table.column("machine_type").to_pylist() == [r["machine_type"] for r in good]
    assert [json.loads(a) for a in table.column("attributes").to_pylist()] == [dict(r["attributes"]) for r in good]
    lengths = set()
    for i, r in enumerate(good):
        for spec in SEVERAL_SPECS:
            n_fft = getattr(spec, "n_fft", 1)
            wav, _ = load_audio(r["path"], spec.sample_rate, min_samples=n_fft if spec.sample_rate == 16000 else 1)
            np.testing.assert_array_equal(_tensor(table, input_column(spec), i), compute_input(wav, spec).numpy())
        lengths.add(table.column("num_samples")[i].as_py())
    assert lengths == {192000, 160000}  # clips of different lengths: variable-shaped tensor columns
    empty, all_bad = featurize_clips(batch.slice(2, 1), SEVERAL_SPECS)
    assert empty.num_rows == 0 and len(all_bad) == 1


def test_ray_ingest_writes_what_the_plain_loop_computes(ray_session, dcase2020_root, tmp_path):
    """Ray Data ingest of several specs at once gives, clip for clip, exactly featurize_clips' values; the store
    dictionary-encodes the waveform column (16-bit PCM: few distinct values) and not the spectrograms; and the
    resource setting ingest changes for its own dataset does not leak into Ray Data's global context."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    import ray

    from stethoscope.data.index import select
    from stethoscope.data.ingest import featurize_clips, input_column

    table = select(index(dcase2020_root).table, machine_type="ToyCar", machine_ids=["01", "02"])
    before = ray.data.DataContext.get_current().op_resource_reservation_enabled
    res = ingest(table, str(tmp_path / "store"), SEVERAL_SPECS, batch_size=2)
    assert ray.data.DataContext.get_current().op_resource_reservation_enabled == before
    stored = pads.dataset(res.features_path, format="parquet").to_table().sort_by("path")
    plain, skipped = featurize_clips(table, SEVERAL_SPECS)
    plain = plain.sort_by("path")
    assert not skipped and stored.num_rows == plain.num_rows == table.num_rows == 6
    for name in ["path", "machine_id", "split", "label", "attributes", "num_samples", "orig_sample_rate", "notes"]:
        assert stored.column(name).to_pylist() == plain.column(name).to_pylist(), name
    for spec in SEVERAL_SPECS:
        for i in range(plain.num_rows):
            np.testing.assert_array_equal(_tensor(stored, input_column(spec), i), _tensor(plain, input_column(spec), i))
    shard = pq.ParquetFile(sorted(Path(res.features_path).glob("*.parquet"))[0]).metadata.row_group(0)
    encodings = {shard.column(j).path_in_schema: shard.column(j).encodings for j in range(shard.num_columns)}
    wave = f"{input_column(WaveformSpec(16000))}.data.list.element"
    mel = f"{input_column(FeatureSpec())}.data.list.element"
    assert "RLE_DICTIONARY" in encodings[wave] and "RLE_DICTIONARY" not in encodings[mel]
    assert "RLE_DICTIONARY" in encodings["machine_type"]


def test_ingest_of_1000_clips_survives_files_that_vanish_or_break_after_indexing(ray_session, tmp_path):
    """Issue 17 §4: 1,000+ indexed clips of which some vanish (deleted), become directories, or turn into truncated
    or non-audio files between index and ingest (another process touching the data): ingest completes, every good
    clip is ingested, and the report lists each bad one with its reason."""
    from stethoscope.data.synthetic import make_dcase2020_tree

    root = make_dcase2020_tree(tmp_path / "big", machine_types=("fan",), machine_ids=("00",), n_train=1000,
                               n_test_normal=5, n_test_anomaly=5, duration_s=0.25, seed=1)
    table = index(root).table
    assert table.num_rows == 1010
    train = sorted((root / "fan" / "train").glob("*.wav"))
    broken = {}
    for p in train[10:16]:
        p.unlink()
        broken[p.name] = "missing"
    for p in train[500:503]:
        p.write_bytes(p.read_bytes()[:60])
        broken[p.name] = "truncated"
    for p in train[700:703]:
        p.write_text("not audio any more\n" * 20)
        broken[p.name] = "not_audio"
    for p in train[900:902]:
        p.unlink()
        p.mkdir()
        broken[p.name] = "not_a_file"
    res = ingest(table, str(tmp_path / "store"), FeatureSpec(n_mels=32))
    assert {r["path"].rsplit("/", 1)[1]: r["reason"] for r in res.skipped} == broken
    assert res.report["n_ingested"] == 1010 - len(broken) and res.report["n_skipped"] == len(broken)
    assert read_features(res).count() == 1010 - len(broken)
