"""The pipeline job end to end on the real slider clips, and the errors a user will hit (one line, exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from job_helpers import run_job  # tests/ is on sys.path (no __init__.py)

ROOT = Path(__file__).resolve().parents[1]


def _job(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None,
         drop: tuple[str, ...] = ("RAY_ADDRESS",)) -> subprocess.CompletedProcess:
    """``python *args`` in a new process: this environment without ``drop`` (RAY_AUTH_MODE disabled unless dropped),
    updated with ``env``."""
    full = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    for name in drop:
        full.pop(name, None)
    full.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


def test_pipeline_job_on_real_slider_clips_writes_every_artifact(dcase2020_root, tmp_path, capsys, monkeypatch,
                                                                  ray_session):
    """jobs/pipeline.py as a new user runs it (no RAY_AUTH_MODE, no token yet, no RAY_ADDRESS, a fresh HOME) while
    another Ray instance (the test session's) is up on the host: it starts its own Ray, with token authentication on
    by Ray's default, finishes, and its log holds no "Failed to query" / "multiple active Ray instances" line (before
    the fix, the Train run's placement-group cleaner died with "Found multiple active Ray instances" or asked the
    other instance about our controller). Then every artifact of the run."""
    home = tmp_path / "home"
    home.mkdir()
    proc = _job(str(ROOT / "jobs" / "pipeline.py"), "--data-root", str(dcase2020_root), "--machine-type", "slider",
                "--ids", "00", "--epochs", "2", "--runs", str(tmp_path / "runs"), "--store", str(tmp_path / "store"),
                "--registry", str(tmp_path / "registry"), cwd=tmp_path, env={"HOME": str(home)},
                drop=("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    # our own start-up line (Ray's "Started a local Ray instance" is an INFO line the job keeps off the console)
    assert "started an embedded Ray at 127.0.0.1:" in log and "joining the Ray cluster" not in log
    assert (home / ".ray" / "auth_token").is_file()  # Ray's default for a new local cluster: token auth on
    assert not [ln for ln in log.splitlines() if "Failed to query" in ln or "multiple active Ray instances" in ln]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("run folder: "))
    run = Path(line.split(": ", 1)[1])
    assert run.is_dir() and run.parent == tmp_path / "runs"
    assert "id_00" in proc.stdout and "AUC" in proc.stdout and "pAUC" in proc.stdout
    assert "clips: the held-out test part of validation_split.json (3 normal, 2 anomalous" in proc.stdout
    # the job ends with its result tables (the publish table's row, then the run folder), and Ray's INFO lines stay
    # off the console: neither the driver's Ray Data lines nor the training workers' per-epoch ones (issue 12 §5)
    tail = proc.stdout.rstrip().splitlines()[-5:]
    assert tail[-1].startswith("run folder: ") and tail[-2] == "" and tail[-3].startswith("slider/all ")
    assert tail[-5].startswith("machine ") and set(tail[-4]) <= {"-", " "}
    for ray_line in ("logging_progress", "Registered dataset logger", "Starting execution of Dataset",
                     "Execution plan of Dataset", "execution finished", "Reporting training result",
                     "Checkpoint successfully created", "Started a local Ray instance"):
        assert ray_line not in proc.stdout and ray_line not in proc.stderr, ray_line

    # the split was written before training: 75 training clips (8 held out for the validation loss), 9 labelled
    split = json.loads((run / "validation_split.json").read_text())
    assert split["counts"] == {"train": 67, "train_validation": 8, "validation": 4, "test": 5, "unlabelled": 0}
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["validation_split"]["fingerprint"] == split["fingerprint"] and manifest["preset"] is None
    assert manifest["seed"] == 0 and manifest["ids"] == ["00"] and (run / "model" / "state.pt").is_file()

    # metrics cover the 5 test clips, and their AUC / pAUC are sklearn's on exactly the stored test scores
    metrics = json.loads((run / "metrics.json").read_text())
    group = metrics["machine_types"]["slider"]["groups"]["id_00"]
    assert (group["n_normal"], group["n_anomaly"]) == (3, 2)
    assert metrics["clips"]["part"] == "test" and metrics["clips"]["n_validation_excluded"] == 4
    scores = pd.read_parquet(run / "scores.parquet")
    assert scores.groupby("role").size().to_dict() == {"test": 5, "validation": 4}
    test = scores[scores["role"] == "test"]
    y = (test["label"] == "anomaly").astype(int)
    assert group["auc"] == pytest.approx(roc_auc_score(y, test["score"]))
    assert group["pauc"] == pytest.approx(roc_auc_score(y, test["score"], max_fpr=0.1))
    assert metrics["seed"] == 0 and metrics["method"] == "autoencoder"
    train = pd.read_parquet(run / "train_scores.parquet")
    assert train.groupby("role").size().to_dict() == {"train": 67, "train_validation": 8}

    csv = pd.read_csv(run / "anomaly_score_slider_id_00.csv", header=None, names=["file_name", "score"])
    assert sorted(csv["file_name"]) == sorted(Path(p).name for p in split["test"])  # never a validation clip
    assert "| 00 |" in (run / "results.md").read_text()
    for png in ("slider_id_00_roc.png", "slider_id_00_hist.png"):
        assert (run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "ingest_report.json").read_text())["n_ingested"] == 84
    history = json.loads((run / "train_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all("val_loss" in h for h in history)
    # published from the stored scores: the bundle records the run's split
    bundle = json.loads(next((tmp_path / "registry" / "slider" / "all").glob("*/manifest.json")).read_text())
    assert bundle["validation_split"]["fingerprint"] == split["fingerprint"]
    assert bundle["validation_split"]["n_validation"] == 4 and bundle["validation_split"]["n_test"] == 5

    # the evaluate job re-scores the same run and gets the same numbers (in this process, on the session's Ray)
    model_before = (run / "model" / "state.pt").read_bytes()
    code, err = _job_in_process("evaluate.py", "--run", str(run), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err[-3000:]
    again = json.loads((run / "metrics.json").read_text())["machine_types"]["slider"]["groups"]["id_00"]
    assert again["auc"] == pytest.approx(group["auc"]) and again["pauc"] == pytest.approx(group["pauc"])
    assert (run / "model" / "state.pt").read_bytes() == model_before  # evaluation never rewrites the model
    # ... and refuses a split file that was changed after the run wrote it
    edited = json.loads((run / "validation_split.json").read_text())
    edited["test"].append(edited["validation"].pop())
    (run / "validation_split.json").write_text(json.dumps(edited))
    code, err = _job_in_process("evaluate.py", "--run", str(run), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "was changed after the run wrote it" in err and "Traceback" not in err


def _job_in_process(script: str, *args: str, capsys, monkeypatch) -> tuple[int, str]:
    """(exit status, stderr) of ``jobs/<script>`` run in this process (:func:`job_helpers.run_job`)."""
    code, _, err = run_job(script, *args, capsys=capsys, monkeypatch=monkeypatch)
    return code, err


def test_a_user_error_exits_2_with_one_line_and_no_traceback(tmp_path):
    """One real process: the exit status and stderr a user sees."""
    proc = _job(str(ROOT / "jobs" / "pipeline.py"), "--data-root", "/nonexistent/dcase", "--runs",
                str(tmp_path / "runs"), "--store", str(tmp_path / "store"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: data root '/nonexistent/dcase' does not exist; expected a folder with a DCASE Task 2 layout")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data-root", "/nonexistent/dcase"], "data root '/nonexistent/dcase' does not exist"),
        (["--method", "autoencodr"], "unknown method 'autoencodr'; known methods:"),
        (["--machine-type", "fan"], "machine type 'fan' (machine_id ['00', '02', '06']) has no training clips"),
        (["--machine-type", "drill"], "machine type 'drill' is not in the data"),
        (["--set", "epochs=-1"], "epochs = -1; expected >= 0"),
    ],
)
def test_user_errors_are_one_clear_line(args, expected, dcase2020_root, tmp_path, capsys, monkeypatch, ray_session):
    code, err = _job_in_process("pipeline.py", "--data-root", str(dcase2020_root), *args, "--runs",
                                str(tmp_path / "runs"), "--store", str(tmp_path / "store"),
                                capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "feature, expected",
    [("n_mels=0", "FeatureSpec.n_mels = 0; expected a positive integer"),
     ("hop_length=4096", "FeatureSpec.hop_length = 4096; expected at most n_fft=1024")],
)
def test_bad_feature_parameters_from_the_ingest_job(feature, expected, dcase2020_root, tmp_path, capsys,
                                                    monkeypatch, ray_session):
    code, err = _job_in_process("ingest.py", "--data-root", str(dcase2020_root), "--feature", feature,
                                "--store", str(tmp_path / "store"), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and expected in err and "Traceback" not in err


def test_empty_machine_folder_is_a_clear_error(tmp_path, capsys, monkeypatch, ray_session):
    (tmp_path / "dev_data" / "fan" / "train").mkdir(parents=True)
    code, err = _job_in_process("pipeline.py", "--data-root", str(tmp_path / "dev_data" / "fan"),
                                "--machine-type", "fan", "--runs", str(tmp_path / "runs"), "--store",
                                str(tmp_path / "store"), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "no .wav files under" in err and "Traceback" not in err


def test_dcase2023_sample_runs_end_to_end_with_per_section_metrics(dcase2023_root, tmp_path, capsys, monkeypatch,
                                                                    ray_session):
    """Issue 10: `jobs/pipeline.py --data-root <2023 sample> --machine-type valve` died in Ray Data ('section_00' is
    not in list: clips with a section and no machine_id). Now ingest → split → train → evaluate → publish runs, and
    the tiny strata (2 training and 2 test clips) are reported, not fatal. valve's test clips are one target-domain
    normal and one target-domain anomaly, so AUC (target) and AUC (all) are defined and AUC (source) is not."""
    code, err = _job_in_process("pipeline.py", "--data-root", str(dcase2023_root), "--machine-type", "valve",
                                "--method", "autoencoder", "--epochs", "2", "--runs", str(tmp_path / "runs"),
                                "--store", str(tmp_path / "store"), "--registry", str(tmp_path / "registry"),
                                capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    split = json.loads((run / "validation_split.json").read_text())
    assert split["counts"] == {"train": 2, "train_validation": 0, "validation": 0, "test": 2, "unlabelled": 0}
    assert any("validation: no clips" in n for n in split["notes"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "dcase2021+"
    section = metrics["machine_types"]["valve"]["groups"]["section_00"]
    assert (section["n_normal_target"], section["n_anomaly_target"], section["n_normal_source"]) == (1, 1, 0)
    scores = pd.read_parquet(run / "scores.parquet").set_index("file_name")
    normal, anomaly = (scores.loc[f"section_00_target_test_{k}_0044_pat_03.wav", "score"] for k in ("normal", "anomaly"))
    expected = 1.0 if anomaly > normal else 0.0  # two clips: the AUC is whether the anomaly scores higher
    assert section["auc"] == section["auc_target"] == expected
    assert section["auc_source"] is None and "auc_source: no source-domain normal clips" in section["reason"]
    assert (run / "anomaly_score_valve_section_00_test.csv").read_text().count("\n") == 2
    # published: no validation clip to weigh members on, and 2 training clips, too few for a gamma fit
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["published"]["machine_type"] == "valve"
    bundle = json.loads((tmp_path / "registry" / "valve" / "all" / manifest["published"]["version"]
                         / "manifest.json").read_text())
    train = pd.read_parquet(run / "train_scores.parquet")
    assert bundle["threshold"]["method"] == "max_train_normal" and bundle["threshold"]["n"] == 2
    assert "gamma threshold needs at least 3" in bundle["threshold"]["reason"]
    z = (train["score"] - bundle["members"][0]["standardizer"]["mean"]) / bundle["members"][0]["standardizer"]["std"]
    assert bundle["threshold"]["value"] == pytest.approx(float(z.max()))
    assert bundle["metrics"]["validation"]["auc"] is None and bundle["metrics"]["notes"]


def test_machine_type_all_means_every_type_with_training_clips(dcase2020_root, dcase2023_root, monkeypatch, capsys):
    """jobs/pipeline.py --machine-type all: one run per machine type that has training clips; the others are listed
    (docs/results.md section (c) runs it on every DCASE 2023 type)."""
    import argparse
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    job = importlib.import_module("pipeline")
    args = argparse.Namespace(machine_type=["all"], data_root=str(dcase2023_root), lenient=False)
    assert job._machine_types(args) == ["ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve"]
    args = argparse.Namespace(machine_type=["all"], data_root=str(dcase2020_root), lenient=False)
    assert job._machine_types(args) == ["slider"]
    assert "skipping machine type(s) without training clips: ToyCar, ToyConveyor, fan, pump, valve" in capsys.readouterr().out
    args = argparse.Namespace(machine_type=["fan", "valve"], data_root=str(dcase2023_root), lenient=False)
    assert job._machine_types(args) == ["fan", "valve"]
