"""Offline bulk scoring (issue 18 §3): jobs/score.py scores a folder or a bucket with the published bundles on a Ray
Data actor pool; its scores are the bundle's offline scores, its CSVs have the DCASE names and rows, and bad files
(corrupt, empty, unroutable, no bundle) are reported while every good file is scored."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from job_helpers import run_job  # tests/ is on sys.path (no __init__.py)

from stethoscope import storage
from stethoscope.errors import ConfigError

N_TEST = 6  # good test clips (normal and anomalous), and 2 training clips


@pytest.fixture(scope="module")
def registry(fan_runs, tmp_path_factory) -> Path:
    """The session's fan autoencoder run, published (machine-wide bundle, DCASE 2020, id_00)."""
    from stethoscope.publishing import publish_runs

    base = tmp_path_factory.mktemp("bulk_registry")
    publish_runs([fan_runs[0]], base / "registry", out_dir=base / "publish")
    return base / "registry"


@pytest.fixture(scope="module")
def tree(synthetic_clicks, tmp_path_factory) -> tuple[Path, list[Path], list[Path]]:
    """A DCASE tree to score: good test and train clips of fan id_00, a corrupt WAV and an empty file with valid
    names, a name that matches no grammar, and a machine type with no bundle. Returns (root, good test clips,
    good train clips)."""
    root = tmp_path_factory.mktemp("bulk_input")
    (root / "fan" / "test").mkdir(parents=True)
    (root / "fan" / "train").mkdir()
    (root / "pump" / "test").mkdir(parents=True)
    src = synthetic_clicks / "fan"
    tests = (sorted((src / "test").glob("normal_*.wav"))[:N_TEST // 2]
             + sorted((src / "test").glob("anomaly_*.wav"))[:N_TEST // 2])
    trains = sorted((src / "train").glob("*.wav"))[:2]
    for p in tests:
        shutil.copy(p, root / "fan" / "test" / p.name)
    for p in trains:
        shutil.copy(p, root / "fan" / "train" / p.name)
    (root / "fan" / "test" / "normal_id_00_99999999.wav").write_bytes(b"RIFF....WAVEfmt not really a wav" * 8)
    (root / "fan" / "test" / "anomaly_id_00_99999998.wav").write_bytes(b"")
    (root / "fan" / "test" / "recording 2024-05-01.wav").write_bytes(tests[0].read_bytes())
    (root / "pump" / "test" / "normal_id_00_00000000.wav").write_bytes(tests[0].read_bytes())
    (root / "fan" / "test" / "notes.txt").write_text("not audio, not matched by the glob\n")
    return root, [root / "fan" / "test" / p.name for p in tests], [root / "fan" / "train" / p.name for p in trains]


def _offline(registry: Path, files: list[Path], group: str = "id_00", scope: str = "all") -> dict[str, dict]:
    """The evaluate path: load_bundle + decode_audio + Bundle.score_waveforms in this process; by
    ``<folder>/<file name>`` (training and test clips share names)."""
    from stethoscope.data.audio import decode_audio
    from stethoscope.publishing import load_bundle

    bundle = load_bundle(registry, "fan", scope)
    waves = [decode_audio(f.read_bytes(), bundle.sample_rate, min_samples=bundle.min_samples)[0] for f in files]
    out = bundle.score_waveforms(waves, group)
    return {f"{f.parent.name}/{f.name}": {**s, "threshold": bundle.threshold.value, "version": bundle.version,
                                         "member": bundle.members[0].name} for f, s in zip(files, out)}


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_cli_scores_a_dcase_tree_like_the_bundle_offline_and_reports_bad_files(ray_session, registry, tree,
                                                                               tmp_path, capsys, monkeypatch):
    root, tests, trains = tree
    out = tmp_path / "out"
    code, stdout, _ = run_job("score.py", "--registry", str(registry), "--input", str(root), "--output", str(out),
                              "--actors", "2", "--batch-size", "3", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, stdout
    assert stdout.strip().splitlines()[-1].startswith(f"scored {N_TEST + 2} of {N_TEST + 6} file(s)")

    df = pd.read_parquet(out / "scores.parquet")
    assert len(df) == N_TEST + 6 and not any(df["path"].str.endswith(".txt"))
    by_name = df.set_index(df["path"].map(lambda p: str(Path(p).relative_to(root))))
    ref = _offline(registry, tests + trains)
    good = by_name[by_name["error"].isna()]
    assert sorted(good.index) == sorted(f"fan/{k}" for k in ref)
    for name, row in good.iterrows():
        r = ref[name.split("/", 1)[1]]
        assert row["score"] == pytest.approx(r["score"], abs=1e-5)
        assert row["threshold"] == pytest.approx(r["threshold"])
        assert bool(row["is_anomaly"]) == (row["score"] > row["threshold"]) == r["is_anomaly"]
        assert row[f"raw__{r['member']}"] == pytest.approx(r["raw"][0], abs=1e-5)
        assert row[f"z__{r['member']}"] == pytest.approx(r["standardized"][0], abs=1e-5)
        assert (row["machine_type"], row["machine_id"], row["scope"]) == ("fan", "00", "all")
        assert row["version"] == r["version"]
    assert good["is_anomaly"].astype(bool).any() and not good["is_anomaly"].astype(bool).all()

    errors = dict(zip(by_name.index, by_name["error"]))
    assert errors["fan/test/normal_id_00_99999999.wav"] == "not_audio"
    assert errors["fan/test/anomaly_id_00_99999998.wav"] == "empty_file"
    assert errors["fan/test/recording 2024-05-01.wav"] == "unroutable_name"
    assert errors["pump/test/normal_id_00_00000000.wav"] == "no_bundle"
    bad = by_name[by_name["error"].notna()]
    assert bad["score"].isna().all() and bad["error_message"].str.len().gt(0).all()

    report = json.loads((out / "report.json").read_text())
    assert (report["n_files"], report["n_scored"], report["n_errors"]) == (N_TEST + 6, N_TEST + 2, 4)
    assert {(Path(e["path"]).name, e["reason"]) for e in report["unreadable"]} == {
        ("normal_id_00_99999999.wav", "not_audio"), ("anomaly_id_00_99999998.wav", "empty_file")}
    assert {(Path(e["path"]).name, e["reason"]) for e in report["unroutable"]} == {
        ("recording 2024-05-01.wav", "unroutable_name"), ("normal_id_00_00000000.wav", "no_bundle")}
    assert report["machine_types"] == {
        "fan": {"files": N_TEST + 4, "scored": N_TEST + 2, "anomalies": int(good["is_anomaly"].astype(bool).sum()),
                "errors": 2},
        "pump": {"files": 1, "scored": 0, "anomalies": 0, "errors": 1},
        "(unknown)": {"files": 1, "scored": 0, "anomalies": 0, "errors": 1}}
    assert report["clips_per_s"] > 0 and report["actors"] == 2

    # DCASE CSVs: the test clips only (training clips share their names), sorted, no header
    assert report["csv_files"] == ["anomaly_score_fan_id_00.csv", "decision_result_fan_id_00.csv"]
    assert sorted(p.name for p in out.glob("*.csv")) == report["csv_files"]
    rows = _read_csv(out / "anomaly_score_fan_id_00.csv")
    assert [r[0] for r in rows] == sorted(p.name for p in tests)
    assert all(float(s) == pytest.approx(ref[f"test/{n}"]["score"], abs=1e-5) for n, s in rows)
    assert _read_csv(out / "decision_result_fan_id_00.csv") == [
        [p.name, str(int(ref[f"test/{p.name}"]["is_anomaly"]))] for p in sorted(tests)]


def test_arbitrary_names_in_a_bucket_scored_with_user_routing_into_the_bucket(ray_session, registry, tree,
                                                                               s3_bucket):
    from stethoscope.publishing.bulk import Routing, bulk_score

    _, tests, _ = tree
    fs, bucket = storage.resolve(s3_bucket)
    for i, p in enumerate(tests[:3]):
        with fs.open_output_stream(f"{bucket}/plant/line 3/mic{i}.wav") as fh:
            fh.write(p.read_bytes())
    with fs.open_output_stream(f"{bucket}/plant/line 3/mic9.wav") as fh:
        fh.write(b"")
    res = bulk_score(registry, f"{s3_bucket}/plant", f"{s3_bucket}/scored", routing=Routing("fan", machine_id="00"),
                     actors=1, batch_size=8)
    assert res.n_scored == 3, res.table[["path", "error", "error_message"]].to_dict("records")
    assert [(e["path"], e["reason"]) for e in res.report["unreadable"]] == [
        (f"{s3_bucket}/plant/line 3/mic9.wav", "empty_file")]
    df = pd.read_parquet(f"{bucket}/scored/scores.parquet", filesystem=fs)
    assert list(df["path"]) == [f"{s3_bucket}/plant/line 3/mic{i}.wav" for i in (0, 1, 2, 9)]
    ref = _offline(registry, tests[:3])
    good = df[df["error"].isna()]
    assert np.allclose(good["score"], [ref[f"test/{p.name}"]["score"] for p in tests[:3]], atol=1e-5)
    assert list(good["machine_id"]) == ["00"] * 3 and list(good["scope"]) == ["all"] * 3
    written = {i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/scored"))}
    assert written == {"scores.parquet", "report.json", "anomaly_score_fan_id_00.csv", "decision_result_fan_id_00.csv"}
    with fs.open_input_stream(f"{bucket}/scored/anomaly_score_fan_id_00.csv") as fh:
        assert [r.split(",")[0] for r in fh.read().decode().splitlines()] == ["mic0.wav", "mic1.wav", "mic2.wav"]


def test_a_group_field_the_bundle_lacks_routes_nothing_and_the_job_fails(ray_session, registry, tree, tmp_path,
                                                                          capsys, monkeypatch):
    _, tests, _ = tree
    flat = tmp_path / "incoming"
    flat.mkdir()
    shutil.copy(tests[0], flat / "mic0.wav")
    # a DCASE 2020 bundle is identified by machine_id: --section routes nothing, and the job exits non-zero
    code, stdout, _ = run_job("score.py", "--registry", str(registry), "--input", str(flat), "--output",
                              str(tmp_path / "out"), "--machine-type", "fan", "--section", "00",
                              capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1
    assert stdout.strip().splitlines()[-1].startswith("scored 0 of 1 file(s)")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [e["reason"] for e in report["unroutable"]] == ["missing_group"]
    assert "send machine_id" in report["unroutable"][0]["message"]
    code, _, err = run_job("score.py", "--registry", str(tmp_path / "nothing"), "--input", str(flat), "--output",
                           str(tmp_path / "out2"), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "does not exist" in err


def test_a_groups_own_bundle_wins_each_actor_loads_a_bundle_once_and_bad_bundles_or_clips_are_rows(
        registry, fan_runs, tree, tmp_path, monkeypatch):
    """Routing, and the actor's body in this process (no Ray): BundleScorer over two batches."""
    import pyarrow as pa
    import soundfile as sf

    from stethoscope.publishing import current_version, publish_runs
    from stethoscope.publishing import bulk

    _, tests, _ = tree
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    publish_runs([fan_runs[0]], reg, scope="id_00", out_dir=tmp_path / "publish")
    own, wide = current_version(reg, "fan", "id_00"), current_version(reg, "fan", "all")
    routed = bulk.route_files(["/x/fan/test/normal_id_00_00000001.wav", "/x/fan/test/normal_id_02_00000001.wav",
                               "s3://b/plant/fan/train/normal_id_00_00000002.wav"], bulk.published(reg))
    assert [(r["scope"], r["version"], r["group"]) for r in routed.to_pylist()] == [
        ("id_00", own, "id_00"), ("all", wide, "id_02"), ("id_00", own, "id_00")]

    short = tmp_path / "in" / "fan" / "test" / "normal_id_00_88888888.wav"
    short.parent.mkdir(parents=True)
    sf.write(short, np.zeros(100, dtype=np.float32), 16000)  # fewer samples than one STFT window
    rows = bulk.route_files([str(p) for p in tests[:3]] + [str(short)], bulk.published(reg)).to_pylist()
    loads = []
    real = bulk.load_bundle
    monkeypatch.setattr(bulk, "load_bundle", lambda *a, **k: loads.append(a[1:]) or real(*a, **k))
    scorer = bulk.BundleScorer(str(reg), str(tmp_path))
    first = scorer(pa.Table.from_pylist(rows[:2], schema=bulk.ROUTE_SCHEMA)).to_pylist()
    second = scorer(pa.Table.from_pylist(rows[2:], schema=bulk.ROUTE_SCHEMA)).to_pylist()
    assert loads == [("fan", "id_00", own)]
    got = first + second
    assert [r["error"] for r in got] == [None, None, None, "too_short"]
    assert all(r["version"] == own and r["threshold"] is not None for r in got[:3])
    ref = _offline(reg, tests[:3], scope="id_00")
    assert np.allclose([r["score"] for r in got[:3]], [ref[f"test/{p.name}"]["score"] for p in tests[:3]], atol=1e-5)

    # a bundle whose weights no longer match their hash: its clips are rows with bundle_unusable, once per actor
    (state,) = (reg / "fan" / "id_00" / own / "members").glob("*/state.pt")
    data = state.read_bytes()
    state.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    broken = bulk.BundleScorer(str(reg), str(tmp_path))(pa.Table.from_pylist(rows[:2], schema=bulk.ROUTE_SCHEMA))
    assert broken["error"].to_pylist() == ["bundle_unusable"] * 2
    assert "does not match its manifest hash" in broken["error_message"][0].as_py()


def test_listing_globs_and_routing_options(tmp_path):
    from stethoscope.publishing.bulk import Routing, list_wavs

    for rel in ("a.wav", "fan/test/b.wav", "fan/test/c.WAV", "fan/train/d.wav", "x.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    names = lambda paths: [str(Path(p).relative_to(tmp_path)) for p in paths]  # noqa: E731
    assert names(list_wavs(tmp_path)) == ["a.wav", "fan/test/b.wav", "fan/train/d.wav"]
    assert names(list_wavs(tmp_path, "*/test/*.wav")) == ["fan/test/b.wav"]
    assert list_wavs(tmp_path / "a.wav") == [str(tmp_path / "a.wav")]
    with pytest.raises(ConfigError):
        Routing(machine_id="00")
    with pytest.raises(ConfigError):
        Routing("fan", machine_id="00", section="00")
