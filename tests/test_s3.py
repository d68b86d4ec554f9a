"""Object storage against a real S3-compatible server (moto's standalone server, started by the ``s3_server``
fixture on 127.0.0.1): the storage helpers, clear errors for a missing bucket and missing credentials, and one
pipeline ingest → train → publish → serve with the feature store, the runs and the registry all on S3 and the
endpoint loading its bundle from S3."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from job_helpers import run_job  # tests/ is on sys.path (no __init__.py)
from serve_helpers import free_port

from stethoscope import storage
from stethoscope.storage import StorageError
from stethoscope.training.trainer import latest_checkpoint


def _keys(bucket_uri: str) -> list[str]:
    """Every object key in the bucket, read straight from the server."""
    fs, path = storage.resolve(bucket_uri)
    return sorted(i.path[len(path) + 1:] for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                  if i.type == pafs.FileType.File)


def test_storage_round_trip_on_s3(s3_bucket, tmp_path):
    base = f"{s3_bucket}/prefix"
    storage.check_access(base, "--store")  # the bucket exists: no error
    storage.write_json(storage.join(base, "a", "x.json"), {"auc": 0.75, "ids": ["00", "02"]})
    storage.write_text(storage.join(base, "a", "b", "note.txt"), "hello\n")
    assert storage.read_json(storage.join(base, "a", "x.json")) == {"auc": 0.75, "ids": ["00", "02"]}
    assert storage.listdir(storage.join(base, "a")) == ["b", "x.json"]
    assert storage.exists(storage.join(base, "a", "b", "note.txt"))
    assert not storage.exists(storage.join(base, "a", "missing.txt"))
    assert storage.listdir(storage.join(base, "nothing")) == []
    # a local folder up to S3 and back down: the same bytes at the same relative paths
    local = tmp_path / "run"
    (local / "model").mkdir(parents=True)
    (local / "model" / "state.pt").write_bytes(bytes(range(256)) * 40)
    (local / "run.json").write_text('{"seed": 3}\n')
    storage.copy_tree(local, f"{base}/runs/run-1")
    assert _keys(s3_bucket) == ["prefix/a/b/note.txt", "prefix/a/x.json", "prefix/runs/run-1/model/state.pt",
                                "prefix/runs/run-1/run.json"]
    back = tmp_path / "back"
    storage.download_tree(f"{base}/runs/run-1", back)
    assert (back / "model" / "state.pt").read_bytes() == bytes(range(256)) * 40
    assert json.loads((back / "run.json").read_text()) == {"seed": 3}
    skipped = tmp_path / "without-model"
    storage.download_tree(f"{base}/runs/run-1", skipped, skip_dirs=("model",))
    assert sorted(p.name for p in skipped.rglob("*")) == ["run.json"]


def test_a_missing_bucket_is_a_clear_error_naming_the_uri(s3_server, tmp_path):
    uri = "s3://no-such-bucket-for-stethoscope/store"
    with pytest.raises(StorageError, match=r"--store s3://no-such-bucket-for-stethoscope/store: bucket "
                                           r"'no-such-bucket-for-stethoscope' does not exist at http://127\.0\.0\.1"):
        storage.check_access(uri, "--store")
    with pytest.raises(StorageError, match="cannot download s3://no-such-bucket-for-stethoscope/store/run"):
        storage.download_tree(f"{uri}/run", tmp_path / "run")
    with pytest.raises(StorageError, match="nope://bucket/store: pyarrow cannot open its filesystem"):
        storage.check_access("nope://bucket/store", "--store")
    # the pipeline checks its URIs before it ingests or trains anything
    from stethoscope.pipeline import run

    with pytest.raises(StorageError, match=r"registry s3://no-such-bucket-for-stethoscope/store: bucket"):
        run(tmp_path / "never-read", store=str(tmp_path / "store"), runs_root=str(tmp_path / "runs"), registry=uri)
    assert not (tmp_path / "store").exists() and not (tmp_path / "runs").exists()


def test_missing_credentials_are_a_clear_error_naming_the_uri(s3_bucket, monkeypatch, tmp_path):
    for name in storage.CREDENTIAL_VARIABLES + ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError) as err:
        storage.check_access(f"{s3_bucket}/runs", "--runs")
    message = str(err.value)
    assert f"--runs {s3_bucket}/runs: no AWS credentials found" in message
    assert "AWS_ACCESS_KEY_ID is unset" in message and "AWS_ENDPOINT_URL is set" in message
    assert "stethoscope-test" not in message  # names of variables only, never values


@pytest.mark.slow
def test_pipeline_ingest_train_publish_serve_all_on_s3(ray_session, s3_bucket, synthetic_clicks, capsys,
                                                      monkeypatch):
    """Store, runs and registry on S3; the run is resumed from its S3 URI for a second epoch (jobs/train.py --resume:
    the workers read the epoch-1 checkpoint from S3), published again from its URI (as jobs/publish.py does), and
    Serve loads the bundle from the S3 registry and answers as the offline scores say."""
    import httpx
    import torch
    from ray import serve

    from serve.app import build_app
    from stethoscope.pipeline import run
    from stethoscope.publishing import discover_runs, list_bundles, publish_runs

    torch.set_num_threads(1)
    store, runs_root, registry = (f"{s3_bucket}/{p}" for p in ("store", "runs", "registry"))
    result = run(synthetic_clicks, machine_type="fan", config={"epochs": 1}, store=store, runs_root=runs_root,
                 registry=registry)
    assert result.run_dir.startswith(f"{runs_root}/") and "publish" in result.extra
    name = result.run_dir.rsplit("/", 1)[1]
    keys = _keys(s3_bucket)
    # the feature store's Parquet shards, the run (with Ray Train's checkpoints) and the bundle are all on S3
    assert any(k.startswith("store/features/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("store/features/") and k.endswith("/_SUCCESS") for k in keys)
    for f in ("run.json", "validation_split.json", "scores.parquet", "train_scores.parquet", "metrics.json",
              "model/state.pt", "model/meta.json"):
        assert f"runs/{name}/{f}" in keys, f
    assert any(k.startswith(f"runs/{name}/train/") and "checkpoint_" in k for k in keys)
    assert "registry/fan/all/CURRENT" in keys
    manifest = json.loads(storage.read_text(f"{runs_root}/{name}/run.json"))
    assert manifest["store"] == store and manifest["model"] == f"{runs_root}/{name}/model"
    assert storage.read_json(f"{runs_root}/{name}/metrics.json")["model"] == f"{runs_root}/{name}/model"
    assert manifest["published"]["registry"] == registry
    first = storage.read_json(f"{runs_root}/{name}/train_history.json")
    assert [h["epoch"] for h in first] == [1]
    # --resume <run URI> up to 2 epochs: the run is copied down without its checkpoints, epoch 2 starts from the
    # epoch-1 checkpoint the workers read from S3, and the run (re-evaluated) is uploaded to the same URI
    code, out, err = run_job("train.py", "--resume", result.run_dir, "--method", "autoencoder", "--machine-type", "fan",
                             "--data-root", str(synthetic_clicks), "--epochs", "2", "--store", store, "--runs",
                             runs_root, "--evaluate", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == f"run folder: {result.run_dir}"
    history = storage.read_json(f"{runs_root}/{name}/train_history.json")
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == first[0]  # epoch 1 came from the checkpoint
    assert json.loads(storage.read_text(f"{runs_root}/{name}/model/meta.json"))["epoch"] == 2
    latest = latest_checkpoint(f"{runs_root}/{name}/train")
    assert latest.startswith(f"{runs_root}/{name}/train/") and storage.read_json(f"{latest}/meta.json")["epoch"] == 2
    # read back from S3 only: the run found under the runs URI and published again (a new version)
    found, skipped = discover_runs([runs_root])  # downloads the run (read_run of its URI)
    assert [r.path.name for r in found] == [name] and skipped == []
    (again,) = publish_runs(found, registry)
    assert again.version != result.extra["publish"].version
    assert again.out_dir.startswith(f"{runs_root}/publish-")
    assert again.manifest["members"][0]["source"] == f"{runs_root}/{name}/model"
    assert [b["version"] for b in list_bundles(registry) if b["machine_type"] == "fan"] == [again.version]
    # Serve loads the current bundle from S3 and scores a clip as publishing did offline
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"registry": registry}), name="stethoscope-s3", route_prefix="/")
        row = again.scores[again.scores["role"] == "test"].iloc[0]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            r = client.post("/v1/score", params={"machine_type": "fan", "machine_id": row["machine_id"]},
                            content=Path(row["path"]).read_bytes(), headers={"content-type": "audio/wav"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == again.version
        assert body["score"] == pytest.approx(row["score"], abs=1e-5)
        assert body["is_anomaly"] == bool(row["decision"])
    finally:
        serve.shutdown()


SWEEP_SPACE = {  # one grid point (one trial), 2 epochs, ASHA with a rung at epoch 1 (so its state file is written too)
    "method": "autoencoder", "metric": "val_auc_pauc_mean", "mode": "max", "sampler": "grid", "seed": 0,
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "max_concurrent_trials": 1},
    "fixed": {"epochs": 2, "val_fraction": 0.0},
    "space": {"lr": {"choice": [0.001]}},
}


@pytest.mark.slow
def test_a_sweep_on_s3_keeps_every_trial_there_and_resumes_from_there(ray_session, s3_bucket, synthetic_clicks,
                                                                       tmp_path):
    """Tune's storage on S3: Tune's own state, the sweep's files, each trial's Ray Train checkpoints and trial.json
    and ASHA's rungs all land under ``<storage>/<name>/``; nothing goes to a local scratch folder, and
    ``--resume`` (Tuner.restore from the URI) reruns no finished trial."""
    from stethoscope.tuning.runner import run_sweep

    space = tmp_path / "grid.yaml"
    space.write_text(yaml.safe_dump(SWEEP_SPACE, sort_keys=False))
    tune_root = f"{s3_bucket}/tune"
    kw = dict(machine_type="fan", data_root=synthetic_clicks, storage_root=tune_root, name="grid",
              store=f"{s3_bucket}/store", verbose=0)
    result = run_sweep(space, **kw)
    assert result.complete and len(result.trials) == 1
    keys = _keys(s3_bucket)
    for f in ("sweep.json", "trial_log.jsonl", "validation_split.json", "results.csv", "results.parquet",
              "best_config.yaml", "summary.json", "trials/asha_state.pkl"):
        assert f"tune/grid/{f}" in keys, f
    for row in result.trials.itertuples():
        trial = storage.read_json(f"{tune_root}/grid/trials/{row.trial_id}/trial.json")
        assert trial["trial_id"] == row.trial_id and trial["checkpoint"].startswith(f"{tune_root}/grid/trials/")
        assert row.fit_seconds == pytest.approx(trial["fit_seconds"])  # the results table read it back from S3
        latest = latest_checkpoint(f"{tune_root}/grid/trials/{row.trial_id}/train")
        assert latest is not None and storage.read_json(f"{latest}/meta.json")["epoch"] == row.epochs_done
    before = storage.read_text(f"{tune_root}/grid/trial_log.jsonl").splitlines()
    assert len(before) == 1
    again = run_sweep(space, resume=True, **kw)
    assert again.complete and set(again.trials["trial_id"]) == set(result.trials["trial_id"])
    assert storage.read_text(f"{tune_root}/grid/trial_log.jsonl").splitlines() == before  # no trial ran again
