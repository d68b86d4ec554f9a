"""Dataset index: both DCASE grammars on every real clip in ../shared/data, eval names, and errors."""

from __future__ import annotations

import pytest

from stethoscope.data.index import counts, index, parse_path, select, select_ids
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


def test_select_ids_filters_by_the_grammars_id_field(dcase2020_root, dcase2023_root):
    """select_ids reads the field from the table's dataset: machine_id for DCASE 2020, section for 2021+."""
    slider = select(index(dcase2020_root).table, machine_type="slider")
    assert {r["machine_id"] for r in select_ids(slider, ["04", "06"]).to_pylist()} == {"04", "06"}
    assert select_ids(slider, None).num_rows == slider.num_rows == 86
    with pytest.raises(DataError, match=r"machine_id \['01'\] not found.*found \['00', '04', '06'\]"):
        select_ids(slider, ["01"])
    valve = select(index(dcase2023_root).table, machine_type="valve")
    assert select_ids(valve, ["00"]).num_rows == 4
    with pytest.raises(DataError, match=r"section \['01'\] not found"):
        select_ids(valve, ["01"])


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
    assert sorted(s["path"] for s in res.skipped) == sorted(str(p.resolve()) for p in bad)
    assert {s["reason"] for s in res.skipped} == {"unparseable_name"}


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


def _hostile_tree(root):
    """A DCASE tree with every kind of entry that cannot be indexed, beside two good clip names."""
    import os

    train = root / "fan" / "train"
    train.mkdir(parents=True)
    for n in (1, 2):
        (train / f"normal_id_00_0000000{n}.wav").write_bytes(b"x")
    (train / "normal_id_00_00000003.wav").symlink_to(train / "gone.wav")  # dangling
    (train / "normal_id_00_00000004.wav").symlink_to(train / "normal_id_00_00000004.wav")  # a loop of one
    (train / "normal_id_00_00000005.wav").symlink_to(train / "normal_id_00_00000006.wav")  # a loop of two
    (train / "normal_id_00_00000006.wav").symlink_to(train / "normal_id_00_00000005.wav")
    (train / "normal_id_00_00000007.wav").mkdir()  # a directory named *.wav
    os.mkfifo(train / "normal_id_00_00000008.wav")  # a FIFO named *.wav
    (train / "again").symlink_to("..")  # a folder loop: fan/train/again → fan
    (train / "notes.txt").write_text("not a clip")
    (train / "recording.wav").write_bytes(b"x")  # a name no grammar parses
    return train


def test_every_entry_that_is_not_indexed_is_listed_with_its_true_reason(tmp_path):
    train = _hostile_tree(tmp_path)
    res = index(tmp_path, lenient=True)
    assert sorted(res.table.column("file_name").to_pylist()) == ["normal_id_00_00000001.wav", "normal_id_00_00000002.wav"]
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in res.skipped}
    assert reasons == {
        "normal_id_00_00000003.wav": "dangling_symlink",
        "normal_id_00_00000004.wav": "symlink_loop",
        "normal_id_00_00000005.wav": "symlink_loop",
        "normal_id_00_00000006.wav": "symlink_loop",
        "normal_id_00_00000007.wav": "not_a_file",
        "normal_id_00_00000008.wav": "not_a_file",
        "again": "symlink_loop",
        "notes.txt": "not_wav",
        "recording.wav": "unparseable_name",
    }
    details = {s["path"].rsplit("/", 1)[1]: s["detail"] for s in res.skipped}
    assert "directory" in details["normal_id_00_00000007.wav"] and "FIFO" in details["normal_id_00_00000008.wav"]
    assert all(s["path"].startswith(str(train.resolve())) for s in res.skipped)
    # only the unparseable name is an error without lenient; broken entries are reported either way
    with pytest.raises(IndexParseError) as err:
        index(tmp_path)
    assert err.value.paths == [str(train.resolve() / "recording.wav")]
    (train / "recording.wav").unlink()
    assert {s["path"].rsplit("/", 1)[1] for s in index(tmp_path).skipped} == set(reasons) - {"recording.wav"}


@pytest.mark.skipif(__import__("shutil").which("setpriv") is None,
                    reason="needs util-linux setpriv to drop root's capabilities")
def test_an_unreadable_folder_is_listed_not_dropped(tmp_path):
    """Tests run as root, which lists mode-000 folders; the child drops CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH so
    the permission bits apply to it as to any user."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    for rel in ("fan/train/normal_id_00_00000001.wav", "fan/test/normal_id_00_00000002.wav",
                "fan/test/anomaly_id_00_00000003.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "fan" / "test").chmod(0)
    prog = ("import sys, json\nfrom stethoscope.data.index import index\nr = index(sys.argv[1])\n"
            "print(json.dumps({'clips': r.table.column('file_name').to_pylist(), 'skipped': r.skipped}))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "platform")}
    proc = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", prog,
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    (tmp_path / "fan" / "test").chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["clips"] == ["normal_id_00_00000001.wav"]
    (entry,) = out["skipped"]
    assert entry["path"] == str((tmp_path / "fan" / "test").resolve()) and entry["reason"] == "unreadable_directory"
    assert "Permission denied" in entry["detail"]
