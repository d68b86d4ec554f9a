"""Publishing several runs (issue 10): publish_runs and jobs/publish.py read each run's one split and its stored
scores, never re-ingest or re-score, choose members and weights on the validation clips only, report the test
clips, and refuse runs whose split file is missing, changed, or not shared.

Data: the session's synthetic clicks tree (fan id_00, 24 training clips, 10 normal + 10 severe-click test clips of
3 s). Two real pipeline runs share its split (split seed 0; the session's ``fan_runs``): the DCASE 2020 autoencoder
(20 epochs of batch 64, which detects these clicks, see test_training) and GANomaly (4 epochs of batch 64).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from job_helpers import run_job  # tests/ is on sys.path (no __init__.py)
from stethoscope import runs as run_files
from stethoscope.evaluation.threshold import fit_gamma_threshold
from stethoscope.publishing import RegistryError, load_bundle, publish_runs, read_run
from stethoscope.splits import read_run_split, split_sha256


@pytest.fixture()
def two_runs(fan_runs) -> list[Path]:
    """The session's two fan runs (tests/conftest.py): read only."""
    return fan_runs


@pytest.fixture()
def copies(two_runs, tmp_path) -> list[Path]:
    """Copies of the two run folders that a test may edit."""
    out = []
    for r in two_runs:
        dest = tmp_path / "runs" / r.name
        shutil.copytree(r, dest, ignore=shutil.ignore_patterns("train"))
        out.append(dest)
    return out


def _no_ingest_or_scoring(monkeypatch):
    """Publishing must use what the runs stored: make every ingest and scoring entry point fail loudly."""
    import stethoscope.data.ingest as ingest_mod
    import stethoscope.scoring as scoring_mod
    import stethoscope.stages.ingest as stage_mod

    def refuse(*args, **kwargs):
        raise AssertionError("publishing ingested or scored clips again")

    for mod, name in ((ingest_mod, "ingest"), (ingest_mod, "read_features"), (stage_mod, "ingest_stage"),
                      (scoring_mod, "score_dataset"), (scoring_mod, "score_batches")):
        monkeypatch.setattr(mod, name, refuse)


def test_publish_runs_chooses_on_validation_reports_test_and_never_rescores(two_runs, tmp_path, monkeypatch):
    _no_ingest_or_scoring(monkeypatch)
    (result,) = publish_runs(two_runs, tmp_path / "registry", out_dir=tmp_path / "out")
    split = read_run_split(two_runs[0])
    assert read_run_split(two_runs[1]).to_dict() == split.to_dict()  # one split shared by both runs
    assert len(split.validation) == 10 and len(split.test) == 10
    manifest = result.manifest
    assert manifest["validation_split"]["fingerprint"] == split.fingerprint
    assert (manifest["validation_split"]["n_validation"], manifest["validation_split"]["n_test"]) == (10, 10)
    # every clip keeps the role the runs' split gives it
    table = pd.read_parquet(tmp_path / "out" / "fan" / "ensemble_scores.parquet")
    roles = split.roles()
    assert all(roles[p] == r for p, r in zip(table["path"], table["role"])) and len(table) == 20
    # the reported numbers, recomputed from the runs' stored scores with the bundle's standardizers and weights
    names = [p.name for p in two_runs]
    assert set(result.ensemble.members) <= set(names) and abs(sum(result.ensemble.weights) - 1) < 1e-12
    raw = {n: pd.read_parquet(p / run_files.SCORES).set_index("path")["score"] for n, p in zip(names, two_runs)}
    train = {n: pd.read_parquet(p / run_files.TRAIN_SCORES).set_index("path")["score"] for n, p in zip(names, two_runs)}

    def ensemble(scores: dict, paths) -> np.ndarray:
        out = np.zeros(len(paths))
        for m, w in zip(manifest["members"], result.ensemble.weights):
            st = m["standardizer"]
            assert st["mean"] == pytest.approx(train[m["name"]].mean()) and st["n"] == len(train[m["name"]])
            out += w * (scores[m["name"]].loc[paths].to_numpy() - st["mean"]) / st["std"]
        return out

    labels = table.set_index("path")["label"]
    y = (labels.loc[split.test] == "anomaly").to_numpy().astype(int)
    test_scores = ensemble(raw, split.test)
    held = manifest["metrics"]["test_heldout"]
    assert held["auc"] == pytest.approx(roc_auc_score(y, test_scores))
    assert held["pauc"] == pytest.approx(roc_auc_score(y, test_scores, max_fpr=0.1))
    assert held["auc"] >= 0.9  # severe clicks
    yv = (labels.loc[split.validation] == "anomaly").to_numpy().astype(int)
    assert manifest["metrics"]["validation"]["auc"] == pytest.approx(roc_auc_score(yv, ensemble(raw, split.validation)))
    # the threshold: the gamma 0.9 quantile of the ensemble's scores on every training normal
    train_paths = sorted(split.train + split.train_validation)
    expected = fit_gamma_threshold(ensemble(train, train_paths), 0.9)
    assert manifest["threshold"]["value"] == pytest.approx(expected.value) and manifest["threshold"]["n"] == 24
    # the published metrics.json covers the test clips only
    metrics = json.loads((tmp_path / "out" / "fan" / "metrics.json").read_text())
    group = metrics["machine_types"]["fan"]["groups"]["id_00"]
    assert group["n_normal"] + group["n_anomaly"] == 10 and metrics["clips"]["part"] == "test"
    assert load_bundle(tmp_path / "registry", "fan").version == result.version


def test_a_changed_split_file_is_refused(copies):
    """Change the run's split file → publishing refuses it, with the reason."""
    run = copies[0]
    path = run / "validation_split.json"
    doc = json.loads(path.read_text())
    doc["test"].append(doc["validation"].pop())  # one validation clip moved to the reported part
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(RegistryError, match="was changed after the run wrote it"):
        read_run(run)
    with pytest.raises(RegistryError, match="was changed after the run wrote it"):
        publish_runs([run], run.parent / "registry")
    # ... even when run.json is made to record the new file: the stored scores no longer match its membership
    manifest = json.loads((run / "run.json").read_text())
    manifest["validation_split"]["sha256"] = split_sha256(path.read_bytes())
    (run / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match=r"scores.parquet does not match its validation split: 1 clip"):
        publish_runs([run], run.parent / "registry")
    path.unlink()
    with pytest.raises(RegistryError, match="validation_split.json does not exist"):
        read_run(run)


def _reassign(run: Path, moved: str) -> None:
    """Make ``run`` a consistent run of another split: ``moved`` (a validation clip) becomes a test clip in the split
    file, in both score tables and in run.json's recorded hash."""
    path = run / "validation_split.json"
    doc = json.loads(path.read_text())
    doc["validation"].remove(moved)
    doc["test"] = sorted(doc["test"] + [moved])
    path.write_text(json.dumps(doc, indent=2))
    scores = pd.read_parquet(run / run_files.SCORES)
    scores.loc[scores["path"] == moved, "role"] = "test"
    scores.to_parquet(run / run_files.SCORES)
    manifest = json.loads((run / "run.json").read_text())
    manifest["validation_split"]["sha256"] = split_sha256(path.read_bytes())
    (run / "run.json").write_text(json.dumps(manifest))


def test_runs_made_with_different_splits_are_not_published_together(copies, tmp_path):
    moved = read_run_split(copies[1]).validation[0]
    _reassign(copies[1], moved)
    read_run(copies[1])  # a consistent run on its own
    with pytest.raises(RegistryError, match=r"different validation splits \(their validation parts differ") as e:
        publish_runs(copies, tmp_path / "registry")
    assert Path(moved).name in str(e.value)
    # alone, it publishes with exactly its file's membership: the moved clip is reported, not used for selection
    (result,) = publish_runs([copies[1]], tmp_path / "registry", out_dir=tmp_path / "out")
    table = pd.read_parquet(tmp_path / "out" / "fan" / "ensemble_scores.parquet").set_index("path")
    assert table.loc[moved, "role"] == "test"
    assert result.manifest["validation_split"]["n_validation"] == 9 and result.manifest["validation_split"]["n_test"] == 11


def _publish_job(*args: str, capsys, monkeypatch) -> tuple[int, str, str]:
    return run_job("publish.py", *args, capsys=capsys, monkeypatch=monkeypatch)


def test_publish_job_publishes_the_runs_and_refuses_an_inconsistent_one(copies, tmp_path, capsys, monkeypatch):
    runs_dir = copies[0].parent
    code, out, err = _publish_job("--runs", str(runs_dir), "--registry", str(tmp_path / "reg"), "--out",
                                  str(tmp_path / "out"), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err[-2000:]
    assert "fan/all" in out and "val AUC" in out and "test AUC" in out
    version = json.loads((tmp_path / "reg" / "fan" / "all" / "CURRENT").read_text())["version"]
    assert version in out
    # a run whose split file is gone: refused with its reason, unless --skip-inconsistent
    (copies[1] / "validation_split.json").unlink()
    code, out, err = _publish_job("--runs", str(runs_dir), "--registry", str(tmp_path / "reg"), "--out",
                                  str(tmp_path / "out"), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "refusing to publish" in err and "validation_split.json does not exist" in err
    assert "Traceback" not in err
    code, out, err = _publish_job("--runs", str(runs_dir), "--registry", str(tmp_path / "reg"), "--out",
                                  str(tmp_path / "out"), "--skip-inconsistent", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and copies[0].name in out and copies[1].name not in out
