"""The pipeline job end to end on the real slider clips, and the errors a user will hit (one line, exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _job(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_pipeline_job_on_real_slider_clips_writes_every_artifact(dcase2020_root, tmp_path, capsys, monkeypatch,
                                                                  ray_session):
    proc = _job(str(ROOT / "jobs" / "pipeline.py"), "--data-root", str(dcase2020_root), "--machine-type", "slider",
                "--ids", "00", "--epochs", "2", "--runs", str(tmp_path / "runs"), "--store", str(tmp_path / "store"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("run folder: "))
    run = Path(line.split(": ", 1)[1])
    assert run.is_dir() and run.parent == tmp_path / "runs"
    assert "id_00" in proc.stdout and "AUC" in proc.stdout and "pAUC" in proc.stdout

    metrics = json.loads((run / "metrics.json").read_text())
    group = metrics["machine_types"]["slider"]["groups"]["id_00"]
    assert group["n_normal"] == 5 and group["n_anomaly"] == 4
    assert 0.0 <= group["auc"] <= 1.0 and 0.0 <= group["pauc"] <= 1.0
    assert metrics["seed"] == 0 and metrics["method"] == "autoencoder"

    csv = pd.read_csv(run / "anomaly_score_slider_id_00.csv", header=None, names=["file_name", "score"])
    assert len(csv) == 9 and csv["file_name"].str.endswith(".wav").all()
    assert "| 00 |" in (run / "results.md").read_text()
    for png in ("slider_id_00_roc.png", "slider_id_00_hist.png"):
        assert (run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["seed"] == 0 and manifest["ids"] == ["00"] and (run / "model" / "state.pt").is_file()
    assert json.loads((run / "ingest_report.json").read_text())["n_ingested"] == 84
    history = json.loads((run / "train_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]

    # the evaluate job re-scores the same run and gets the same numbers (in this process, on the session's Ray)
    code, err = _job_in_process("evaluate.py", "--run", str(run), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err[-3000:]
    again = json.loads((run / "metrics.json").read_text())["machine_types"]["slider"]["groups"]["id_00"]
    assert again["auc"] == pytest.approx(group["auc"]) and again["pauc"] == pytest.approx(group["pauc"])


def _job_in_process(script: str, *args: str, capsys, monkeypatch) -> tuple[int, str]:
    """Run a job script's ``__main__`` in this process (same code path as ``python jobs/<script>``, without paying
    ~6 s of interpreter and torch/Ray imports per case). Returns (exit status, stderr)."""
    import runpy

    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "jobs" / script), *args])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "jobs" / script), run_name="__main__")
    return stop.value.code, capsys.readouterr().err


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
