"""The run's one validation split (stethoscope.splits): made once from the ingested clips, written as
validation_split.json, and refused when it does not match the clips or was changed. Index only: no Ray."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from stethoscope.data.index import index, select
from stethoscope.errors import DataError
from stethoscope.splits import (
    PARTS,
    RunSplit,
    ValidationSpec,
    fingerprint,
    make_run_split,
    read_run_split,
    split_sha256,
    write_run_split,
)


@pytest.fixture(scope="module")
def slider(dcase2020_root) -> pd.DataFrame:
    return select(index(dcase2020_root).table, machine_type="slider", machine_ids=["00"]).to_pandas()


@pytest.fixture(scope="module")
def valve23(dcase2023_root) -> pd.DataFrame:
    return select(index(dcase2023_root).table, machine_type="valve").to_pandas()


def test_every_clip_gets_exactly_one_part_and_each_stratum_its_share(slider):
    split = make_run_split(slider, validation=ValidationSpec(fraction=0.5, seed=0), train_validation_fraction=0.1)
    parts = [set(split.part(p)) for p in PARTS]
    assert sum(len(p) for p in parts) == len(slider) == 84 and set().union(*parts) == set(slider["path"])
    # 75 training clips: round(7.5) = 8 held out for the validation loss; 9 labelled: per label, round(n/2) of n
    assert (len(split.train), len(split.train_validation)) == (67, 8)
    assert split.strata["validation"] == {"slider/id_00/anomaly": 2, "slider/id_00/normal": 2}
    assert split.strata["test"] == {"slider/id_00/anomaly": 2, "slider/id_00/normal": 3}
    assert split.unlabelled == [] and split.notes == [] and split.source == "stratified" and split.seed == 0
    assert split.fingerprint == fingerprint(slider) and split.reported() == split.test
    # the same inputs give the same split; another seed another one
    again = make_run_split(slider, validation=ValidationSpec(seed=0), train_validation_fraction=0.1)
    other = make_run_split(slider, validation=ValidationSpec(seed=1), train_validation_fraction=0.1)
    assert again.to_dict() == split.to_dict()
    assert other.validation != split.validation and other.train_validation != split.train_validation


def test_tiny_strata_are_noted_not_fatal(valve23):
    """DCASE 2023 sample: 2 training clips (source) and 2 test clips per machine type, each its own stratum."""
    split = make_run_split(valve23, train_validation_fraction=0.1)
    assert len(split.train) == 2 and split.train_validation == []  # one clip held out of two would be half the data
    assert split.validation == [] and len(split.test) == 2  # strata of one clip go to test
    text = " | ".join(split.notes)
    assert "no clip held out for the validation loss from valve/section_00/source (2 clips)" in text
    assert "strata of one clip went to test only" in text and "validation: no clips" in text


def test_all_and_file_list_sources(slider, tmp_path):
    everything = make_run_split(slider, validation=ValidationSpec(file="all"))
    assert everything.source == "all" and len(everything.validation) == 9 and everything.test == []
    assert everything.reported() == everything.validation
    listed = tmp_path / "val.txt"
    names = sorted(os.path.basename(p) for p in slider.loc[slider["split"] == "test", "path"])[:3]
    listed.write_text("# three clips\n" + "\n".join(names) + "\n")
    split = make_run_split(slider, validation=ValidationSpec(file=str(listed)))
    assert split.source == f"file:{listed}" and [os.path.basename(p) for p in split.validation] == names
    assert len(split.test) == 6
    (tmp_path / "bad.txt").write_text("anomaly_id_00_99999999.wav\n")
    with pytest.raises(DataError, match="names clips that are not in the data"):
        make_run_split(slider, validation=ValidationSpec(file=str(tmp_path / "bad.txt")))


def test_written_once_and_refused_when_changed_or_made_for_other_clips(slider, tmp_path):
    split = make_run_split(slider)
    uri, sha = write_run_split(split, tmp_path)
    assert sha == split_sha256((tmp_path / "validation_split.json").read_bytes())
    assert read_run_split(tmp_path, expected_sha256=sha).to_dict() == split.to_dict()
    # an edit (one validation clip moved to test) no longer has the hash the run recorded
    doc = json.loads((tmp_path / "validation_split.json").read_text())
    doc["test"].append(doc["validation"].pop())
    (tmp_path / "validation_split.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="was changed after the run wrote it"):
        read_run_split(tmp_path, expected_sha256=sha)
    # a clip set with one clip more (or less) does not match the fingerprint
    split.check_clips(slider)
    with pytest.raises(DataError, match=r"clips not in the split \[\], split clips not in the data \['anomaly_id_00"):
        split.check_clips(slider[slider["path"] != split.test[0]])
    # a file of the old layout (membership only) is refused with a reason
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "validation_split.json").write_text(json.dumps({"validation": [], "test": []}))
    with pytest.raises(DataError, match="older stethoscope"):
        read_run_split(tmp_path / "old")
    with pytest.raises(DataError, match="does not exist"):
        read_run_split(tmp_path / "missing")
    assert isinstance(RunSplit.from_dict(split.to_dict()), RunSplit)
