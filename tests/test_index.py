"""Dataset index: both DCASE grammars on every real clip in ../shared/data, eval names, and errors."""

from __future__ import annotations

import pytest

from stethoscope.data.index import counts, index, parse_path, select
from stethoscope.errors import DataError, IndexParseError

# ../shared/data/README.md, DCASE 2020 table: (machine_type, split, label) -> count
README_2020 = {
    ("slider", "train", "normal"): 75,
    ("slider", "test", "normal"): 6,
    ("slider", "test", "anomaly"): 5,
    ("fan", "test", "normal"): 7,
    ("fan", "test", "anomaly"): 6,
    ("pump", "test", "normal"): 6,
    ("pump", "test", "anomaly"): 6,
    ("valve", "test", "normal"): 7,
    ("valve", "test", "anomaly"): 6,
    ("ToyCar", "test", "normal"): 6,
    ("ToyCar", "test", "anomaly"): 6,
    ("ToyConveyor", "test", "normal"): 8,
    ("ToyConveyor", "test", "anomaly"): 4,
}
README_2020_IDS = {
    "slider": {"00", "04", "06"}, "fan": {"00", "02", "06"}, "pump": {"00", "02", "04"},
    "valve": {"00", "02", "06"}, "ToyCar": {"01", "02", "04"}, "ToyConveyor": {"01", "02"},
}


def test_dcase2020_counts_match_readme(dcase2020_root):
    res = index(dcase2020_root)
    assert res.skipped == []
    assert counts(res.table) == README_2020
    rows = res.table.to_pylist()
    assert {r["dataset"] for r in rows} == {"dcase2020"}
    for mt, ids in README_2020_IDS.items():
        assert {r["machine_id"] for r in rows if r["machine_type"] == mt} == ids
    assert all(r["section"] is None and r["domain"] is None for r in rows)
    # slider id_00 is the only machine with training data: 75 train, 5 test normals, 4 test anomalies
    s00 = select(res.table, machine_type="slider", machine_ids=["00"])
    assert counts(s00) == {("slider", "train", "normal"): 75, ("slider", "test", "normal"): 5,
                           ("slider", "test", "anomaly"): 4}


def test_dcase2023_grammar_domains_and_attributes(dcase2023_root):
    rows = index(dcase2023_root).table.to_pylist()
    assert len(rows) == 28
    types = {"ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve"}
    assert {r["machine_type"] for r in rows} == types
    for mt in types:
        mine = [r for r in rows if r["machine_type"] == mt]
        assert sum(r["split"] == "train" for r in mine) == 2 and sum(r["split"] == "test" for r in mine) == 2
    assert sum(r["label"] == "anomaly" for r in rows) == 5
    assert all(r["dataset"] == "dcase2021+" and r["section"] == "00" and r["machine_id"] is None for r in rows)
    gear = next(r for r in rows if r["file_name"] == "section_00_target_test_anomaly_0040_volt_1.5_wt_130.wav")
    assert gear["domain"] == "target" and gear["label"] == "anomaly" and gear["clip_number"] == "0040"
    assert dict(gear["attributes"]) == {"volt": "1.5", "wt": "130"}
    toy = next(r for r in rows if r["file_name"].startswith("section_00_source_train_normal_0362"))
    assert dict(toy["attributes"]) == {"car": "C2", "spd": "31V", "mic": "1"}
    fan = next(r for r in rows if r["file_name"] == "section_00_source_test_anomaly_0022_m-n_W.wav")
    assert dict(fan["attributes"]) == {"m-n": "W"}


def test_eval_names_have_null_label(tmp_path):
    for rel in ("fan/test/id_02_00000123.wav", "gearbox/test/section_03_0042.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    rows = {r["file_name"]: r for r in index(tmp_path).table.to_pylist()}
    assert rows["id_02_00000123.wav"]["label"] is None and rows["id_02_00000123.wav"]["machine_id"] == "02"
    assert rows["section_03_0042.wav"]["label"] is None and rows["section_03_0042.wav"]["section"] == "03"
    assert rows["section_03_0042.wav"]["dataset"] == "dcase2021+"


def test_unparseable_names_listed_all_or_skipped_when_lenient(tmp_path):
    good = tmp_path / "fan/train/normal_id_00_00000001.wav"
    bad = [tmp_path / "fan/train/normal_00000001.wav", tmp_path / "fan/test/recording.wav",
           tmp_path / "fan/test/section_00_source_train_normal_0001.wav"]  # split in name disagrees with folder
    for p in [good, *bad]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    with pytest.raises(IndexParseError) as err:
        index(tmp_path)
    assert sorted(err.value.paths) == sorted(str(p.resolve()) for p in bad)
    for p in bad:
        assert str(p.resolve()) in str(err.value)
    res = index(tmp_path, lenient=True)
    assert res.table.num_rows == 1
    assert sorted(p for p, _ in res.skipped) == sorted(str(p.resolve()) for p in bad)


def test_missing_root_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        index(tmp_path / "nope")
    (tmp_path / "fan" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no .wav files"):
        index(tmp_path / "fan")


def test_parse_path_rejects_non_split_folder():
    assert parse_path("/x/fan/other/normal_id_00_00000001.wav") is None
    row = parse_path("/x/fan/source_test/section_01_source_test_normal_0001.wav")
    assert row["split"] == "test" and row["section"] == "01"
