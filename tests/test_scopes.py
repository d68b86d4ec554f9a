"""Training scopes (issue 12 §1): unit enumeration, scope validation before any work, the run layout (models/<unit>/
beside today's model/), per-type score-variant records, and the per-type validation objective. No Ray here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stethoscope import runs
from stethoscope.errors import ConfigError, DataError
from stethoscope.scopes import Unit, resolve_scope, run_machine_types, training_units, unit_for

CLIPS = pd.DataFrame({
    "path": [f"/d/{mt}/train/normal_id_{i}_{k}.wav" for mt in ("fan", "pump") for i in ("00", "02") for k in (0, 1)],
    "machine_type": [mt for mt in ("fan", "pump") for _ in range(4)],
    "machine_id": [i for _ in ("fan", "pump") for i in ("00", "02") for _ in (0, 1)],
    "section": [None] * 8,
})


def test_units_of_each_scope_name_their_clips_and_folders():
    (all_unit,) = training_units("all_machine_types", CLIPS)
    assert (all_unit.name, all_unit.machine_types, all_unit.group, all_unit.folder) == (
        "all", ("fan", "pump"), None, "models/all")
    assert all_unit.mask(CLIPS).all()

    per_id = training_units("per_id", CLIPS)
    assert [u.name for u in per_id] == ["fan/id_00", "fan/id_02", "pump/id_00", "pump/id_02"]
    assert [u.folder for u in per_id] == ["models/fan/id_00", "models/fan/id_02", "models/pump/id_00",
                                          "models/pump/id_02"]
    # every clip is in exactly one per_id unit, and the unit is its own ID's
    masks = np.stack([u.mask(CLIPS).to_numpy() for u in per_id])
    assert (masks.sum(axis=0) == 1).all()
    assert unit_for(per_id, "pump", "02").name == "pump/id_02"
    with pytest.raises(DataError, match="no training unit of this run holds pump id_04"):
        unit_for(per_id, "pump", "04")

    fan = CLIPS[CLIPS["machine_type"] == "fan"]
    (mt_unit,) = training_units("per_machine_type", fan)
    assert (mt_unit.name, mt_unit.folder) == ("fan", "model")  # today's layout: old runs keep loading
    with pytest.raises(DataError, match="a per_machine_type run covers one machine type"):
        training_units("per_machine_type", CLIPS)
    with pytest.raises(ConfigError, match="scope 'per_type' is unknown"):
        training_units("per_type", CLIPS)


def test_sections_make_section_units():
    clips = pd.DataFrame({"machine_type": ["fan", "fan"], "machine_id": [None, None], "section": ["00", "01"]})
    assert [u.name for u in training_units("per_id", clips)] == ["fan/section_00", "fan/section_01"]


def test_scope_defaults_and_refusals_come_from_the_method():
    assert resolve_scope("mel_classifier") == "all_machine_types"
    assert resolve_scope("autoencoder") == "per_machine_type"
    assert resolve_scope("autoencoder", "per_id") == "per_id"
    with pytest.raises(ConfigError, match=r"method 'mel_classifier' cannot train in scope 'per_id' \(a classifier "
                                          r"over groups .*\); it trains in \['per_machine_type', 'all_machine_types'\]"):
        resolve_scope("mel_classifier", "per_id")
    with pytest.raises(ConfigError, match="scope 'everything' is unknown"):
        resolve_scope("autoencoder", "everything")


def test_a_job_makes_one_run_per_type_except_over_all_types():
    assert run_machine_types("per_machine_type", ["fan", "pump", "fan"]) == [["fan"], ["pump"]]
    assert run_machine_types("per_id", ["fan", "pump"]) == [["fan"], ["pump"]]
    assert run_machine_types("all_machine_types", ["fan", "pump"]) == [["fan", "pump"]]


def test_pipeline_job_refuses_a_scope_the_method_cannot_train_in_before_any_work(tmp_path, capsys, monkeypatch):
    import runpy
    import sys

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(sys, "argv", ["pipeline.py", "--method", "mel_classifier", "--scope", "per_id",
                                      "--data-root", str(tmp_path / "missing"), "--runs", str(tmp_path / "runs")])
    monkeypatch.syspath_prepend(str(root / "jobs"))
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(root / "jobs" / "pipeline.py"), run_name="__main__")
    err = capsys.readouterr().err
    # the scope error, not the missing data root: nothing was indexed or ingested
    assert stop.value.code == 2 and "cannot train in scope 'per_id'" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def _save_tiny_model(folder: Path, seed: int, unit: Unit | None = None) -> None:
    import torch

    from stethoscope import checkpoint as ckpt_io
    from stethoscope import methods

    torch.manual_seed(seed)
    cls = methods.get("autoencoder")
    m = cls(cls.make_config({"epochs": 1}))
    ckpt_io.save(m, folder, {"epoch": 1, "seed": seed, **({"unit": unit.to_dict()} if unit else {})})


def test_run_layout_old_runs_and_unit_runs_load(tmp_path):
    # a run made before scopes: run.json without scope / units, the model in model/
    old = tmp_path / "old"
    _save_tiny_model(old / "model", 0)
    (old / "run.json").write_text(json.dumps({"machine_type": "fan"}))
    assert [(u.name, u.folder) for u in runs.run_units(runs.read_manifest(old))] == [("fan", "model")]
    method, meta = runs.load_model(old)
    assert meta["seed"] == 0 and method.name == "autoencoder"

    # a per_id run: one model per unit under models/<type>/<id>/
    new = tmp_path / "new"
    units = training_units("per_id", CLIPS[CLIPS["machine_type"] == "fan"])
    for k, u in enumerate(units):
        _save_tiny_model(new / u.folder, seed=10 + k, unit=u)
    (new / "run.json").write_text(json.dumps({"machine_type": "fan", "machine_types": ["fan"], "scope": "per_id",
                                              "units": [u.to_dict() for u in units]}))
    assert runs.unit_model_dirs(new) == {"fan/id_00": new / "models/fan/id_00", "fan/id_02": new / "models/fan/id_02"}
    a, meta_a = runs.load_model(new, unit="fan/id_00")
    b, meta_b = runs.load_model(new, unit="fan/id_02")
    assert (meta_a["seed"], meta_b["seed"]) == (10, 11) and meta_a["unit"]["group"] == "id_00"
    wa = next(iter(a.modules().values())).state_dict()
    wb = next(iter(b.modules().values())).state_dict()
    assert any(not np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)  # two models, not one copied
    with pytest.raises(DataError, match="one model per training unit"):
        runs.load_model(new)
    with pytest.raises(DataError, match="no training unit 'fan/id_04'"):
        runs.load_model(new, unit="fan/id_04")


def test_score_variant_record_per_machine_type(tmp_path):
    runs.write_score_variant(tmp_path, {"machine_types": {"fan": {"selected": "a"}, "pump": {"selected": "b"}}})
    assert runs.read_score_variant(tmp_path, "pump")["selected"] == "b"
    with pytest.raises(DataError, match="per machine type"):
        runs.read_score_variant(tmp_path)
    runs.write_score_variant(tmp_path, {"selected": "c"})  # a one-type run: today's record
    assert runs.read_score_variant(tmp_path, "fan")["selected"] == "c"


def test_validation_objective_is_the_mean_over_machine_types():
    from sklearn.metrics import roc_auc_score

    from stethoscope.training.trainer import validation_auc

    frame = pd.DataFrame({
        "machine_type": ["fan"] * 4 + ["pump"] * 4,
        "label": ["normal", "normal", "anomaly", "anomaly", "normal", "anomaly", "normal", "anomaly"],
        "score": [0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0],
    })
    out = validation_auc(frame)
    # fan separates perfectly (AUC 1); pump: anomalies at 1 and 3 beat normals 0, 2 in 3 of 4 pairs (AUC 0.75)
    assert out["val_auc"] == pytest.approx((1.0 + 0.75) / 2)
    pump = frame[frame["machine_type"] == "pump"]
    pauc_pump = roc_auc_score((pump["label"] == "anomaly").astype(int), pump["score"], max_fpr=0.1)
    assert out["val_pauc"] == pytest.approx((1.0 + pauc_pump) / 2)
    assert out["val_auc_pauc_mean"] == pytest.approx((out["val_auc"] + out["val_pauc"]) / 2)
    # one machine type: exactly the pooled metric a sweep used before scopes
    assert validation_auc(pump)["val_auc"] == roc_auc_score((pump["label"] == "anomaly").astype(int), pump["score"])
    # a type with one class does not count; none with both → no metric
    assert validation_auc(frame[frame["label"] == "normal"]) == {}


@pytest.mark.parametrize("kwargs, expected", [
    ({"machine_type": ["fan", "pump"]}, "a per_machine_type sweep trains one machine type"),
    ({"machine_type": "fan", "scope": "per_id"}, "a per_id sweep trains one ID / section"),
    ({"machine_type": ["fan", "pump"], "scope": "all_machine_types", "preset": True}, "--preset gives per-machine"),
])
def test_sweep_scope_errors_come_before_any_work(kwargs, expected, tmp_path):
    from stethoscope.tuning.runner import run_sweep

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ConfigError, match=expected):
        run_sweep(root / "search_spaces" / "autoencoder.yaml", data_root=tmp_path / "missing",
                  storage_root=str(tmp_path / "tune"), **kwargs)
    assert not (tmp_path / "tune").exists()


def test_tune_job_names_one_per_id_sweep_per_machine_id_or_section(dcase2020_root, dcase2023_root, monkeypatch):
    """jobs/tune.py --scope per_id: one sweep per group, named by data.labels (id_XX on DCASE 2020, section_XX on
    2021+ data), from the training clips of each machine type."""
    import argparse
    import runpy

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "jobs"))
    sweeps = runpy.run_path(str(root / "jobs" / "tune.py"))["_sweeps"]
    args = argparse.Namespace(machine_type=["slider"], ids=None, data_root=str(dcase2020_root), lenient=False)
    got = sweeps(args, "per_id")
    assert got and all(name.startswith("slider-id_") and ids == [name[-2:]] for mt, ids, name in got)
    from stethoscope.data.index import index

    table = index(dcase2023_root).table.to_pandas()
    mt = sorted(table["machine_type"])[0]
    sections = sorted(set(table[(table["machine_type"] == mt) & (table["split"] == "train")]["section"]))
    args = argparse.Namespace(machine_type=[mt], ids=None, data_root=str(dcase2023_root), lenient=False)
    assert sweeps(args, "per_id") == [(mt, [s], f"{mt}-section_{s}") for s in sections]
    assert sweeps(argparse.Namespace(**{**vars(args), "ids": ["00"]}), "per_machine_type") == [(mt, ["00"], mt)]
