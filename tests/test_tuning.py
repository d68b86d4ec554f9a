"""Ray Tune + Optuna sweeps (issue 4): search-space validation, grid and TPE/ASHA sweeps, resume, best-config export.

Data: a seeded synthetic DCASE 2020 tree (fan id 00, 12 training clips and 8 + 8 labelled test clips of 2 s, severe
clicks as anomalies); the sweep writes one split (half / half, seeded, stratified) into validation and held-out
clips. The tiny spaces search the autoencoder baseline's learning rate between two values that both train, 0.01 and
0.0001: at 3 epochs the first learns the clips (validation AUC 1.0 when measured in one process) while the second
only starts to (its loss falls by about 4 %, and a barely trained AE ranks the loud click clips *below* the normal
ones: validation AUC 0.0). Ray Train start-up dominates each trial, so the sweeps share one ingest and one Ray
runtime (the subprocess jobs join it through RAY_ADDRESS).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from job_helpers import run_job  # tests/ is on sys.path (no __init__.py)
from stethoscope.errors import ConfigError
from stethoscope.splits import split_sha256
from stethoscope.tuning import ValidationSpec, load_space, make_split

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
EPOCHS = 3
GOOD_LR, BAD_LR = 0.01, 0.0001

GRID_SPACE = {  # the sweep the Ray tests run: grid over lr x batch size, ASHA on, one trial at a time
    "method": "autoencoder", "metric": "val_auc_pauc_mean", "mode": "max", "sampler": "grid", "seed": 3,
    "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
    # 1 CPU per Train worker, as the GAN spaces: one leaked placement group then leaves too little for the next
    # trial's Ray Data read on 2 CPUs, which is how a reported sweep stalled (issue 10); see test_sweep_frees_...
    "resources": {"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "max_concurrent_trials": 1},
    "fixed": {"epochs": EPOCHS, "val_fraction": 0.0},
    "space": {"lr": {"choice": [BAD_LR, GOOD_LR]}, "batch_size": {"choice": [16, 32]}},
}
ALL_KINDS = {
    "method": "autoencoder", "metric": "val_auc", "mode": "max", "sampler": "tpe", "seed": 0,
    "space": {"lr": {"loguniform": [1e-4, 1e-2]}, "val_fraction": {"uniform": [0.05, 0.2]},
              "latent_dim": {"int": [4, 16]}, "hidden_dim": {"int": {"low": 32, "high": 128, "step": 32}},
              "num_hidden": {"int": {"low": 1, "high": 4, "log": True}}, "shuffle": {"choice": [True, False]}},
}


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


# -- search-space files -----------------------------------------------------------------------------------------
def test_jbcs_table3_grid_is_reproduced_by_the_gan_spaces():
    table3 = {  # JBCS GAN-audio paper, Table 3 (as listed in issue 4), with our Config names
        "epochs": [10, 20, 30, 90], "lr": [0.0002, 0.001, 0.005], "latent_dim": [8, 16, 100],
        "dropout": [0.0, 0.25, 0.5], "init": ["glorot_uniform", "normal"], "beta1": [0.3, 0.5],
        "num_hidden": [3, 4], "lambda_adv": [1.0, 50.0], "lambda_con": [1.0, 50.0], "lambda_enc": [1.0, 50.0],
        "batch_size": [8, 16, 32, 128, 512, 1024],
    }
    for name in ("ganomaly", "skip_ganomaly"):
        space = load_space(SPACES / f"{name}.yaml", "slider")
        assert space.method == name and space.metric == "val_auc_pauc_mean" and space.mode == "max"
        assert space.grid() == table3
        assert space.grid_size == math.prod(len(v) for v in table3.values()) == 41_472
        # the practical default is a budgeted TPE search with ASHA; --sampler grid runs every point
        assert space.sampler == "tpe" and space.scheduler is not None and space.trials() < space.grid_size
        full = load_space(SPACES / f"{name}.yaml", overrides={"sampler": "grid", "scheduler": None,
                                                             "num_samples": None})
        assert full.trials() == 41_472 and full.scheduler is None


def test_every_space_file_validates_against_its_method_config():
    from stethoscope import methods

    files = sorted(SPACES.glob("*.yaml"))
    assert {f.stem for f in files} >= {"autoencoder", "ganomaly", "skip_ganomaly", "egbad", "aegan_ad"}
    for f in files:
        space = load_space(f, "slider")
        cls = methods.get(space.method)
        assert space.params, f
        # every point of every parameter builds a valid Config (choices, and both ends of ranges)
        for name, p in space.params.items():
            for value in p.probe_values():
                cls.make_config({**space.fixed, name: value})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["space"].update(learning_rate={"choice": [0.1]}),
         r"bad\.yaml: space\.learning_rate: not a field of the autoencoder Config; valid names: \[.*'lr'.*\]"),
        (lambda d: d["space"].update(latent_dims={"choice": [4]}),
         r"bad\.yaml: space\.latent_dims: not a field of the autoencoder Config \(did you mean 'latent_dim'\?\)"),
        (lambda d: d["space"].update(batch_size={"uniform": [16, 64]}),
         r"bad\.yaml: space\.batch_size: uniform draws floats but 'batch_size' is a int field; use int: \[low, high\]"),
        (lambda d: d["space"].update(batch_size={"choice": ["many"]}),
         r"bad\.yaml: space\.batch_size: field 'batch_size' = 'many'; expected a valid integer"),
        (lambda d: d["space"].update(lr={"choice": []}), r"bad\.yaml: space\.lr: empty choice"),
        (lambda d: d.pop("metric"), r"bad\.yaml: missing required key 'metric' \(one of \['val_auc_pauc_mean'"),
        (lambda d: d.update(metric="val_accuracy"),
         r"bad\.yaml: metric: unknown metric 'val_accuracy'.*valid names: \['val_auc_pauc_mean'"),
        (lambda d: d.update(sampler="random"), r"bad\.yaml: sampler: unknown sampler 'random'; valid names"),
        (lambda d: d.update(schedular="none"),
         r"bad\.yaml: unknown top-level key 'schedular' \(did you mean 'scheduler'\?\); valid names"),
        (lambda d: d["space"].update(lr={"loguniform": [1e-4, 1e-2]}),
         r"bad\.yaml: sampler grid needs every parameter to be a choice or an int range; \['lr'\] is continuous"),
        (lambda d: d["space"].update(lr={"choice": [-0.1]}),
         r"bad\.yaml: space\.lr: autoencoder config: lr = -0\.1; expected >= 0"),
        (lambda d: d["resources"].update(cpus=1), r"bad\.yaml: resources: unknown resources key 'cpus'"),
    ],
    ids=["unknown-parameter", "mistyped-parameter", "wrong-type-range", "wrong-type-value", "empty-choice",
         "missing-metric", "unknown-metric", "unknown-sampler", "unknown-top-level-key", "grid-continuous",
         "invalid-value", "unknown-resource"],
)
def test_invalid_space_files_give_the_documented_error(tmp_path, edit, message):
    data = json.loads(json.dumps(GRID_SPACE))
    edit(data)
    path = _write(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError, match=message):
        load_space(path)


def test_yaml_exponents_are_numbers_and_machine_type_overrides_merge(tmp_path):
    text = """
method: autoencoder
metric: val_auc
mode: max
space:
  lr: {loguniform: [1e-4, 1e-2]}
  latent_dim: {choice: [4, 8]}
machine_types:
  slider:
    num_samples: 7
    fixed: {epochs: 2}
    space: {latent_dim: {choice: [16]}, lr: null, batch_size: {int: {low: 32, high: 128, step: 32}}}
"""
    path = _write(tmp_path / "s.yaml", text)
    base = load_space(path, "fan")  # no override for fan
    assert base.params["lr"].low == 1e-4 and base.params["lr"].high == 1e-2
    assert base.trials() == 20 and base.fixed == {}
    slider = load_space(path, "slider")
    assert set(slider.params) == {"latent_dim", "batch_size"} and slider.params["latent_dim"].values == (16,)
    assert slider.params["batch_size"].grid_values() == [32, 64, 96, 128]
    assert slider.trials() == 7 and slider.fixed == {"epochs": 2} and slider.max_epochs() == 2


def test_a_preset_is_the_first_trial_of_a_sweep(tmp_path):
    """jobs/tune.py --preset: the JBCS Table 4 slider row is enqueued (OptunaSearch points_to_evaluate, i.e. Optuna's
    enqueue_trial), so the searcher's first suggestion is exactly that point of the Table 3 grid, for TPE and grid."""
    from stethoscope.presets import load_preset
    from stethoscope.tuning.runner import SEED_KEY, _searcher, preset_start

    row = load_preset("ganomaly", "slider")
    for sampler in ("tpe", "grid"):
        space = load_space(SPACES / "ganomaly.yaml", "slider", overrides={"sampler": sampler})
        point, fixed, record = preset_start(space, "slider")
        assert point == row and set(point) == set(space.params)  # the paper's point covers the whole grid
        assert fixed == space.fixed and record["row"]["batch_size"] == 16 and record["source"]["table"] == 4
        searcher = _searcher(space, [point])
        searcher.set_search_properties(space.metric, space.mode, {SEED_KEY: 0, **space.tune_space()})
        first = searcher.suggest("t0")
        assert {k: first[k] for k in point} == point
        second = searcher.suggest("t1")
        assert {k: second[k] for k in point} != point
    # a preset value outside the searched choices, or a machine type without a row, is a clear error
    narrow = load_space(_write(tmp_path / "narrow.yaml", {
        "method": "ganomaly", "metric": "val_auc", "mode": "max", "space": {"batch_size": {"choice": [64, 128]}}}))
    with pytest.raises(ConfigError, match=r"batch_size = 16, which is not among the searched choices \[64, 128\]"):
        preset_start(narrow, "slider")
    with pytest.raises(ConfigError, match=r"no row for machine type 'bearing'"):
        preset_start(narrow, "bearing")
    # values of parameters the space does not search are held fixed (the space's own fixed values win)
    point, fixed, _ = preset_start(load_space(_write(tmp_path / "part.yaml", {
        "method": "ganomaly", "metric": "val_auc", "mode": "max", "fixed": {"epochs": 2},
        "space": {"batch_size": {"choice": [16, 64]}}})), "fan")
    assert point == {"batch_size": 16}
    assert fixed == {**{k: v for k, v in load_preset("ganomaly", "fan").items() if k != "batch_size"}, "epochs": 2}


def test_seeded_half_half_split_of_the_real_labelled_clips(dcase2020_root):
    from stethoscope.data.index import index, select

    table = select(index(dcase2020_root).table, machine_type="slider").to_pandas()
    labelled = table[table["split"] == "test"]
    a = make_split(labelled, ValidationSpec(fraction=0.5, seed=0))
    b = make_split(labelled, ValidationSpec(fraction=0.5, seed=0))
    c = make_split(labelled, ValidationSpec(fraction=0.5, seed=1))
    assert a.validation == b.validation and a.validation != c.validation
    assert not set(a.validation) & set(a.test)
    assert sorted(a.validation + a.test) == sorted(labelled["path"])
    # stratified: each (ID, label) stratum of n >= 2 clips puts round(n/2) clips in validation
    val = labelled[labelled["path"].isin(a.validation)]
    for (mid, label), group in labelled.groupby(["machine_id", "label"]):
        n, k = len(group), int((val["machine_id"].eq(mid) & val["label"].eq(label)).sum())
        if n >= 2:
            assert k == min(max(round(n / 2), 1), n - 1), (mid, label)


def test_optuna_search_draws_every_kind_of_parameter_and_grid_visits_each_point_once(tmp_path):
    """The Tune domains of a space convert to Optuna distributions (OptunaSearch) and draw inside their ranges."""
    from stethoscope.tuning.runner import SEED_KEY, _searcher

    def searcher(data, path):
        space = load_space(_write(path, data))
        s = _searcher(space)
        s.set_search_properties(space.metric, space.mode, {SEED_KEY: 0, **space.tune_space()})
        return s

    tpe = searcher(ALL_KINDS, tmp_path / "all.yaml")
    drawn = []
    for i in range(12):
        c = tpe.suggest(f"t{i}")
        drawn.append(c)
        assert 1e-4 <= c["lr"] <= 1e-2 and 0.05 <= c["val_fraction"] <= 0.2
        assert c["latent_dim"] in range(4, 17) and c["hidden_dim"] in (32, 64, 96, 128)
        assert c["num_hidden"] in range(1, 5) and c["shuffle"] in (True, False)
        tpe.on_trial_complete(f"t{i}", {"val_auc": 0.5, "training_iteration": 1})
    assert len({c["lr"] for c in drawn}) == 12 and {c["shuffle"] for c in drawn} == {True, False}
    grid = searcher(GRID_SPACE, tmp_path / "grid.yaml")
    points = []
    for i in range(4):
        c = grid.suggest(f"g{i}")
        points.append((c["lr"], c["batch_size"]))
        grid.on_trial_complete(f"g{i}", {"val_auc_pauc_mean": 0.5, "training_iteration": 1})
    assert sorted(points) == sorted(itertools.product([BAD_LR, GOOD_LR], [16, 32]))


def test_asha_rungs_survive_a_restore(tmp_path):
    """Tune restores the searcher but not the scheduler; ResumableASHA reloads its rungs, so a trial below the
    cutoff set by trials that finished before the interrupt is still stopped."""
    from types import SimpleNamespace as Trial

    from ray.tune.schedulers import TrialScheduler

    from stethoscope.tuning.runner import ResumableASHA

    kw = dict(time_attr="epoch", metric="m", mode="max", max_t=3, grace_period=2, reduction_factor=2,
              stop_last_trials=False)
    before = ResumableASHA(state_path=str(tmp_path / "asha.pkl"), **kw)
    for tid, value in (("t1", 0.8), ("t2", 0.9)):
        before.on_trial_add(None, Trial(trial_id=tid))
        assert before.on_trial_result(None, Trial(trial_id=tid), {"epoch": 2, "m": value}) == TrialScheduler.CONTINUE
        before.on_trial_complete(None, Trial(trial_id=tid), {"epoch": 3, "m": value})
    for state, expected in (("asha.pkl", TrialScheduler.STOP), ("none.pkl", TrialScheduler.CONTINUE)):
        after = ResumableASHA(state_path=str(tmp_path / state), **kw)  # as Tuner.restore unpickles it
        after.on_trial_add(None, Trial(trial_id="t3"))
        assert after.on_trial_result(None, Trial(trial_id="t3"), {"epoch": 2, "m": 0.2}) == expected


def test_tune_job_reports_a_bad_space_file_in_one_line(tmp_path):
    data = json.loads(json.dumps(GRID_SPACE))
    data["space"]["lr"] = {"choice": []}
    path = _write(tmp_path / "bad.yaml", data)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "tune.py"), "--space", str(path), "--machine-type",
                           "fan"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {path}: space.lr: empty choice; give at least one value"


# -- declared inputs (issue 12 §1): a sweep ingests every input the method declares, once --------------------
def test_only_a_choice_may_change_a_declared_input_and_each_input_set_is_listed(tmp_path, monkeypatch):
    """A sweep ingests each input set its choices give once (``input_variants``), and every trial reads its own; a
    range that changes an input (a FeatureSpec field, the waveform's sample rate, an input added or dropped) is the
    documented ConfigError, and so are more than MAX_INPUT_VARIANTS input sets."""
    from stethoscope import methods
    from stethoscope.data.features import FeatureSpec, WaveformSpec
    from stethoscope.tuning.space import MAX_INPUT_VARIANTS, input_variants

    mel = {"method": "mel_classifier", "metric": "val_auc", "mode": "max"}  # its log-mel has config.n_mels mels
    cls = methods.get("mel_classifier")
    space = load_space(_write(tmp_path / "mel.yaml", {**mel, "space": {"n_mels": {"choice": [64, 128]}}}))
    sets = input_variants(cls, space.fixed, space.params)
    assert [s["log_mel"].n_mels for s in sets] == [64, 128]  # the fixed values' set first
    refused = r"changes the method's inputs \(input 'log_mel': n_mels 64 → 32\); only a choice may change them"
    with pytest.raises(ConfigError, match=r"mel_int\.yaml: space\.n_mels: value 32 " + refused):
        load_space(_write(tmp_path / "mel_int.yaml", {**mel, "space": {"n_mels": {"int": [32, 64]}}}))
    many = list(range(32, 32 + 8 * (MAX_INPUT_VARIANTS + 1), 8))
    with pytest.raises(ConfigError, match=f"give {MAX_INPUT_VARIANTS + 1} input sets"):
        load_space(_write(tmp_path / "many.yaml", {**mel, "space": {"n_mels": {"choice": many}}}))
    held = load_space(_write(tmp_path / "mel_fixed.yaml", {**mel, "fixed": {"n_mels": 128},
                                                            "space": {"lr": {"choice": [1e-3, 1e-2]}}}))
    assert held.fixed == {"n_mels": 128} and list(held.params) == ["lr"]
    assert len(input_variants(cls, held.fixed, held.params)) == 1

    def wave_and_log_mel(cls, config):  # a waveform at latent_dim kHz up to 16, plus the baseline log-mel
        specs = {"log_mel": FeatureSpec()}
        if config.latent_dim <= 16:
            specs["waveform"] = WaveformSpec(sample_rate=1000 * config.latent_dim)
        return specs

    monkeypatch.setattr(methods.get("autoencoder"), "input_specs", classmethod(wave_and_log_mel))
    ae = {"method": "autoencoder", "metric": "val_auc", "mode": "max"}  # latent_dim 8 by default: 8 kHz
    wave = load_space(_write(tmp_path / "wave.yaml", {**ae, "space": {"latent_dim": {"choice": [8, 16]}}}))
    assert [s["waveform"].sample_rate for s in input_variants(methods.get("autoencoder"), {}, wave.params)] \
        == [8000, 16000]
    drop = load_space(_write(tmp_path / "drop.yaml", {**ae, "space": {"latent_dim": {"choice": [8, 32]}}}))
    assert [sorted(s) for s in input_variants(methods.get("autoencoder"), {}, drop.params)] \
        == [["log_mel", "waveform"], ["log_mel"]]
    with pytest.raises(ConfigError, match=r"space\.latent_dim: value 16 changes the method's inputs \(input "
                                          r"'waveform': sample_rate 8000 → 16000\)"):
        load_space(_write(tmp_path / "wave_int.yaml", {**ae, "space": {"latent_dim": {"int": [8, 16]}}}))
    assert list(load_space(_write(tmp_path / "lr.yaml", {**ae, "space": {"lr": {"choice": [1e-3, 1e-2]}}})).params) \
        == ["lr"]


def test_the_sweep_record_carries_every_input_and_the_log_mel_spec_for_older_readers():
    """sweep.json's inputs record (and the trial context's ``inputs``) survive a JSON round trip back into the
    specs a trial hands to ``fit``; ``feature_spec`` / ``feature_spec_hash`` are the log-mel input's, and absent
    when the method has no log-mel input or several unnamed ones."""
    from stethoscope.data.features import FeatureSpec, WaveformSpec, input_specs_from_dict
    from stethoscope.tuning.runner import inputs_record

    inputs = {"waveform": WaveformSpec(sample_rate=16000), "log_mel": FeatureSpec(n_fft=2048, n_mels=128)}
    record = json.loads(json.dumps(inputs_record(inputs)))
    assert input_specs_from_dict(record["inputs"]) == inputs
    assert record["inputs"]["waveform"] == {"input_kind": "waveform", "sample_rate": 16000}
    assert record["input_spec_hashes"] == {"waveform": inputs["waveform"].hash(), "log_mel": inputs["log_mel"].hash()}
    assert record["feature_spec"] == inputs["log_mel"].to_dict()
    assert record["feature_spec_hash"] == inputs["log_mel"].hash() != inputs["waveform"].hash()
    assert "feature_spec" not in inputs_record({"waveform": WaveformSpec()})
    two = {"mel_a": FeatureSpec(n_mels=64), "mel_b": FeatureSpec(n_mels=128)}
    assert set(inputs_record(two)) == {"inputs", "input_spec_hashes"}
    assert inputs_record({"spec": FeatureSpec(n_mels=64), "waveform": WaveformSpec()})["feature_spec"]["n_mels"] == 64
    with pytest.raises(ConfigError, match=r"inputs\.log_mel: .*n_mels"):
        input_specs_from_dict({"log_mel": {"input_kind": "spectrogram", "n_mels": "many"}})
    with pytest.raises(ConfigError, match=r"inputs\.waveform = 16000; expected a mapping"):
        input_specs_from_dict({"waveform": 16000})


def test_best_config_records_the_inputs_and_loads_back_through_load_config_file(tmp_path):
    """best_config.yaml writes ``inputs`` (and ``feature_spec`` only for a log-mel input); jobs/train.py --config
    (``load_config_file``) accepts the file and returns the trial's Config, and still refuses an unknown key."""
    from stethoscope.config import load_config_file
    from stethoscope.data.features import FeatureSpec, WaveformSpec, input_specs_from_dict
    from stethoscope.tuning.export import write_best_config

    space = load_space(_write(tmp_path / "grid.yaml", GRID_SPACE))
    row = {"trial_id": "abc_00001", "status": "completed", "val_auc_pauc_mean": 0.75, "lr": GOOD_LR,
           "batch_size": 16, "epochs": EPOCHS, "epochs_done": EPOCHS}
    both = {"waveform": WaveformSpec(sample_rate=16000), "log_mel": FeatureSpec(n_mels=64)}
    for name, inputs in (("both", both), ("wave", {"waveform": WaveformSpec(sample_rate=22050)})):
        path = write_best_config(str(tmp_path / f"{name}.yaml"), row, space, machine_type="fan", seed=0,
                                 inputs=inputs, split_sha256="0" * 64)
        doc = yaml.safe_load(Path(path).read_text())
        assert input_specs_from_dict(doc["inputs"]) == inputs
        assert doc.get("feature_spec") == (FeatureSpec(n_mels=64).to_dict() if name == "both" else None)
        values = load_config_file(path, "autoencoder")
        assert values == doc["config"] and values["lr"] == GOOD_LR and values["batch_size"] == 16
    doc["inputz"] = doc.pop("inputs")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['inputz'\]"):
        load_config_file(str(_write(tmp_path / "typo.yaml", doc)), "autoencoder")


# -- one sweep, run through jobs/tune.py: interrupted, resumed, exported, retrained ----------------------------
@pytest.fixture(scope="module")
def clicks_root(tmp_path_factory):
    from stethoscope.data.synthetic import make_dcase2020_tree

    return make_dcase2020_tree(
        tmp_path_factory.mktemp("tune_clicks"), machine_types=("fan",), machine_ids=("00",), n_train=12,
        n_test_normal=8, n_test_anomaly=8, anomalies=("clicks",), severity=1.0, duration_s=2.0, seed=7,
    )


def _job(script: str, args: list[str], address: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": address}  # join the session's Ray
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / script), *args], cwd=log.parent, env=env,
                            stdout=log.open("a"), stderr=subprocess.STDOUT)


def _log_lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


def _epoch_results(folder: Path, trial_id: str) -> dict[int, dict]:
    """Tune's per-epoch results of one trial: epoch → reported metrics."""
    lines = (folder / f"trial_{trial_id}" / "result.json").read_text().splitlines()
    return {int(d["epoch"]): d for d in map(json.loads, lines)}


@pytest.fixture(scope="module")
def sweep(ray_session, clicks_root, tmp_path_factory):
    """jobs/tune.py over GRID_SPACE, killed (SIGKILL: no chance to save anything) once 2 trials have finished and
    Tune's experiment state has had time to record them (it saves at least every EXPERIMENT_STATE_PERIOD_S), then
    --resume (Tuner.restore)."""
    work = tmp_path_factory.mktemp("sweep")
    space = _write(work / "grid.yaml", GRID_SPACE)
    address = ray_session.get_runtime_context().gcs_address
    args = ["--space", str(space), "--machine-type", "fan", "--data-root", str(clicks_root), "--storage",
            str(work / "tune"), "--name", "grid", "--store", str(work / "store"), "--val-fraction", "0.5",
            "--split-seed", "0"]
    trial_log = work / "tune" / "grid" / "trial_log.jsonl"
    out = work / "tune_job.log"
    from stethoscope.runtime import live_placement_groups

    cpus_before = ray_session.available_resources().get("CPU", 0.0)
    pgs_before = set(live_placement_groups())
    proc = _job("tune.py", args, address, out)
    deadline = time.monotonic() + 900
    while proc.poll() is None and len(_log_lines(trial_log)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, out.read_text()[-3000:]
    from stethoscope.tuning.runner import EXPERIMENT_STATE_PERIOD_S

    while proc.poll() is None and time.time() - trial_log.stat().st_mtime < 2 * EXPERIMENT_STATE_PERIOD_S:
        time.sleep(0.05)  # kill only when the last finished trial is in Tune's saved state too
    before = _log_lines(trial_log)
    proc.send_signal(signal.SIGKILL)
    first_rc = proc.wait(timeout=300)
    second_rc = _job("tune.py", [*args, "--resume"], address, out).wait(timeout=900)
    deadline = time.monotonic() + 60  # the last trial's actors exit asynchronously
    while time.monotonic() < deadline and ray_session.available_resources().get("CPU", 0.0) < cpus_before - 1e-6:
        time.sleep(0.5)
    folder = work / "tune" / "grid"
    return {"cpus_before": cpus_before, "cpus_after": ray_session.available_resources().get("CPU", 0.0),
            "pgs_before": pgs_before, "pgs_after": set(live_placement_groups()), "first_rc": first_rc, "second_rc": second_rc, "before": before, "after": _log_lines(trial_log),
            "folder": folder, "output": out.read_text(), "clicks_root": clicks_root, "work": work,
            "address": address, "table": pd.read_csv(folder / "results.csv").sort_values("number")}


def test_killed_sweep_resumes_and_completes_without_repeating_trials(sweep):
    assert sweep["first_rc"] == -signal.SIGKILL, sweep["output"][-3000:]  # killed mid-sweep
    assert sweep["second_rc"] == 0, sweep["output"][-3000:]
    assert len(sweep["before"]) >= 2  # the two finished trials were logged before the interrupt
    ids = [line["trial_id"] for line in sweep["after"]]
    assert len(ids) == len(set(ids)) == 4  # every trial finished exactly once
    assert sweep["after"][: len(sweep["before"])] == sweep["before"]  # the finished ones were kept, not rerun
    assert set(sweep["table"]["trial_id"]) == set(ids)
    assert "Trial status:" in sweep["output"]  # Tune's live trial table


def test_sweep_frees_every_cpu_and_placement_group_and_logs_no_state_query_failure(sweep):
    """Issue 10 / issue 11 §6: the sweep (1 CPU per Train worker on 2 CPUs, ASHA stopping trials, interrupted and
    resumed) runs to the end; afterwards the Ray it joined has all its CPUs back, no placement group and no
    placement-group cleaner actor is left, and the job's log has no "Failed to query" / "multiple active Ray
    instances" line. Before the fix the 4th trial waited forever for CPUs ("Cluster resources are not enough ...
    ReadFilesParquetV2"): Ray Train's cleaner could not query the controller of an ASHA-stopped trial and its
    placement group leaked."""
    from ray.util.state import list_actors

    assert sweep["second_rc"] == 0 and len(sweep["table"]) == 4
    assert (sweep["table"]["status"] == "stopped_early").sum() >= 1  # trials whose Train controller Tune killed
    summary = json.loads((sweep["folder"] / "summary.json").read_text())
    assert summary["leaked_placement_groups"] == []
    assert sweep["cpus_after"] == pytest.approx(sweep["cpus_before"])
    assert sweep["pgs_after"] == sweep["pgs_before"]
    assert list_actors(filters=[("class_name", "=", "PlacementGroupCleaner"), ("state", "=", "ALIVE")]) == []
    bad = ("Failed to query", "multiple active Ray instances")
    assert not [line for line in sweep["output"].splitlines() if any(b in line for b in bad)]


def test_grid_mode_runs_exactly_the_four_points(sweep):
    table = sweep["table"]
    assert len(table) == 4 and set(table["status"]) <= {"completed", "stopped_early"}
    points = sorted(zip(table["lr"], table["batch_size"]))
    assert points == sorted(itertools.product([BAD_LR, GOOD_LR], [16, 32]))


def test_sweep_selects_the_good_learning_rate_on_the_validation_split(sweep):
    table, metric, folder = sweep["table"], "val_auc_pauc_mean", sweep["folder"]
    good, bad = table[table["lr"] == GOOD_LR], table[table["lr"] == BAD_LR]
    assert len(good) == 2 and len(bad) == 2
    for row in table.itertuples():  # both learning rates train: every trial's loss falls from epoch 1 to epoch 2
        epochs = _epoch_results(folder, row.trial_id)
        assert epochs[2]["loss"] < epochs[1]["loss"], (row.lr, epochs[1]["loss"], epochs[2]["loss"])
    assert good[metric].min() > bad[metric].max()  # ... but 0.0001 has barely started after 3 epochs
    exported = yaml.safe_load((folder / "best_config.yaml").read_text())
    assert exported["config"]["lr"] == GOOD_LR and exported["value"] == table[metric].max()
    assert exported["validation_split"]["file"] == "validation_split.json"
    assert exported["validation_split"]["sha256"] == split_sha256((folder / "validation_split.json").read_bytes())
    assert exported["method"] == "autoencoder" and exported["machine_type"] == "fan" and exported["seed"] == 0
    # the inputs the sweep ingested once (the autoencoder's one log-mel), in sweep.json and in the best config
    from stethoscope import methods
    from stethoscope.data.features import input_specs_to_dict

    declared = methods.get("autoencoder").input_specs(methods.get("autoencoder").make_config(GRID_SPACE["fixed"]))
    settings = json.loads((folder / "sweep.json").read_text())
    assert settings["inputs"] == exported["inputs"] == input_specs_to_dict(declared) and list(declared) == ["log_mel"]
    assert settings["feature_spec"] == exported["feature_spec"] == declared["log_mel"].to_dict()
    assert settings["feature_spec_hash"] == settings["input_spec_hashes"]["log_mel"] == declared["log_mel"].hash()
    assert (table["seed"] == 0).all()  # seeds recorded per trial
    assert len(pd.read_parquet(folder / "results.parquet")) == 4
    assert (folder / "plots" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    split = json.loads((folder / "validation_split.json").read_text())
    assert split["seed"] == 0 and split["fractions"]["validation"] == 0.5 and len(split["validation"]) == 8
    assert not set(split["validation"]) & set(split["test"]) and len(split["test"]) == 8
    assert split["counts"]["train"] == 12 and split["train_validation"] == []  # fixed val_fraction 0.0


def test_asha_stops_trials_below_the_rung_cutoff(sweep):
    """ASHA (grace period 2 epochs, reduction factor 2: one rung, at epoch 2) on the per-epoch validation metric:
    a trial whose epoch-2 value is below the median of the earlier trials' epoch-2 values stops there."""
    recorded: list[float] = []
    for row in sweep["table"].itertuples():
        value = _epoch_results(sweep["folder"], row.trial_id)[2]["val_auc_pauc_mean"]
        stop = bool(recorded) and value < np.percentile(recorded, 50)
        assert row.status == ("stopped_early" if stop else "completed"), (row, recorded)
        assert row.epochs_done == (2 if stop else EPOCHS)
        recorded.append(value)
    stopped = sweep["table"][sweep["table"]["status"] == "stopped_early"]
    assert len(stopped) >= 1 and (stopped["lr"] == BAD_LR).all()  # grid seed 3 runs the good ones first


def test_exported_best_config_reproduces_its_trial_metric_through_jobs_train(sweep, capsys, monkeypatch):
    """jobs/train.py --config <best_config.yaml> --evaluate with the trial's seed reuses the sweep's split (named in
    the config file), so it gives the trial's validation metric (the Train loop reseeds every epoch, so it is the
    same run) and reports only the clips the sweep held out, never the ones it selected on."""
    best = sweep["folder"] / "best_config.yaml"
    exported = yaml.safe_load(best.read_text())
    rc, text, err = run_job("train.py", "--method", "autoencoder", "--machine-type", "fan", "--data-root",
                            str(sweep["clicks_root"]), "--config", str(best), "--seed", str(exported["seed"]),
                            "--split-seed", "5", "--evaluate", "--store", str(sweep["work"] / "store"),
                            "--runs", str(sweep["work"] / "runs"), capsys=capsys, monkeypatch=monkeypatch)
    assert rc == 0, err[-3000:]
    run = Path(next(ln for ln in text.splitlines() if ln.startswith("run folder: ")).split(": ", 1)[1])
    got = json.loads((run / "validation_metrics.json").read_text())
    assert abs(got["val_auc_pauc_mean"] - exported["value"]) <= 1e-6
    # the same run, not only the same (possibly saturated) metric: the last training loss matches the trial's
    history = json.loads((run / "train_history.json").read_text())
    trial = _epoch_results(sweep["folder"], exported["trial_id"])[exported["config"]["epochs"]]
    assert len(history) == exported["config"]["epochs"]
    assert history[-1]["loss"] == pytest.approx(trial["loss"], rel=1e-6)
    # the run's split is the sweep's file (not one drawn with --split-seed 5), and --evaluate reported its test part
    assert (run / "validation_split.json").read_bytes() == (sweep["folder"] / "validation_split.json").read_bytes()
    sweep_split = json.loads((sweep["folder"] / "validation_split.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["clips"]["part"] == "test" and metrics["clips"]["n"] == len(sweep_split["test"]) == 8
    csv_rows = (run / "anomaly_score_fan_id_00.csv").read_text().splitlines()
    assert sorted(r.split(",")[0] for r in csv_rows) == sorted(Path(p).name for p in sweep_split["test"])
