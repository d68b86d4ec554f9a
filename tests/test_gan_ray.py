"""The GAN family on the shared platform (issue 3): GANomaly, Skip-GANomaly, EGBAD and AEGAN-AD each train through the
one Ray Train loop (``stethoscope.training.fit`` via ``pipeline.train_stage``), reload from their checkpoint with the
same scores, and are scored and evaluated by ``pipeline.evaluate_stage``; AEGAN-AD's score variant is chosen on a
validation half of the labelled test clips and reported on the other half.

Data: a seeded synthetic DCASE 2020 tree (fan id_00; 10 training clips, 6 normal and 6 severe-click test clips;
2 s each). One Ray Train run per method (2 epochs, seed 3); AEGAN-AD uses a small network (8 channels, latent 16,
32-mel 32 × 32 patches) so that every run takes seconds of training after Ray Train's start-up.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stethoscope import checkpoint as ckpt_io
from stethoscope import methods
from stethoscope.pipeline import (
    VARIANT_COLUMN_PREFIX,
    choose_score_variant,
    evaluate_stage,
    feature_spec_for,
    ingest_stage,
    new_run_dir,
    train_stage,
)
from stethoscope.scoring import score_batches
from stethoscope.splits import Split
from stethoscope.training.loop import examples_of, minibatches, run_validation, seed_everything
from stethoscope.training.trainer import split_by_path

SEED = 3
EPOCHS = 2
GAN_CFG = {"epochs": EPOCHS, "batch_size": 128, "val_fraction": 0.1}
AEGAN_CFG = {"epochs": EPOCHS, "batch_size": 32, "val_fraction": 0.1, "base_channels": 8, "decoder_channels": 8,
             "latent_dim": 16, "patch_frames": 32, "patch_hop": 8}
# method → (Config overrides, FeatureSpec overrides)
RUNS = {
    "ganomaly": (GAN_CFG, None),
    "skip_ganomaly": (GAN_CFG, None),
    "egbad": (GAN_CFG, None),
    "aegan_ad": (AEGAN_CFG, {"n_mels": 32}),
}
N_TEST = 12


@dataclasses.dataclass
class Trained:
    prepared: object
    run_dir: Path
    fit: object  # stethoscope.training.FitResult
    metrics: dict
    scores: pd.DataFrame
    config: object
    spec: object
    train_clips: pd.DataFrame  # the ingested clips, read once (each Ray Data read costs seconds here)
    test_clips: pd.DataFrame


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    from stethoscope.data.synthetic import make_dcase2020_tree

    return make_dcase2020_tree(
        tmp_path_factory.mktemp("gan_ray_data"), machine_types=("fan",), machine_ids=("00",), n_train=10,
        n_test_normal=N_TEST // 2, n_test_anomaly=N_TEST // 2, anomalies=("clicks",), severity=1.0, duration_s=2.0,
        seed=11,
    )


@pytest.fixture(scope="module")
def trained(ray_session, tree, tmp_path_factory):
    """method name → Trained, each trained once (lazily) for the whole module."""
    store = str(tmp_path_factory.mktemp("gan_ray_store"))
    runs_root = tmp_path_factory.mktemp("gan_ray_runs")
    cache: dict[str, Trained] = {}
    clips: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}  # FeatureSpec hash → (train, test) clips

    def get(name: str) -> Trained:
        if name not in cache:
            overrides, feature_overrides = RUNS[name]
            cfg = methods.get(name).make_config(overrides)
            spec = feature_spec_for(name, cfg, feature_overrides)
            prepared = ingest_stage(tree, spec, machine_type="fan", store=store)
            run_dir = new_run_dir(runs_root, name, "fan")
            fit = train_stage(prepared, run_dir, method=name, config=cfg, spec=spec, seed=SEED)
            metrics, scores = evaluate_stage(prepared, run_dir, fit.method, {**fit.meta, "seed": SEED})
            if spec.hash() not in clips:
                clips[spec.hash()] = (prepared.features("train").to_pandas(), prepared.features("test").to_pandas())
            cache[name] = Trained(prepared, run_dir, fit, metrics, scores, cfg, spec, *clips[spec.hash()])
        return cache[name]

    return get


def _batch(clips: pd.DataFrame) -> dict:
    """Ingested clips (pandas) → one numpy clip batch, as ``Dataset.iter_batches(batch_format="numpy")`` gives."""
    out = {c: clips[c].to_numpy() for c in clips.columns if c != "log_mel"}
    out["log_mel"] = np.array(list(clips["log_mel"]), dtype=object)
    return out


def _test_scores(method, t: Trained) -> np.ndarray:
    frame = score_batches(method, [_batch(t.test_clips)], t.fit.meta.get("class_names") or None)
    assert len(frame) == N_TEST
    return frame.sort_values("path")["score"].to_numpy()


@pytest.mark.parametrize("name", list(RUNS))
def test_ray_train_updates_every_network_and_the_pipeline_writes_metrics(trained, name):
    t = trained(name)
    # the Ray Train loop ran every epoch and reported finite losses
    assert [h["epoch"] for h in t.fit.history] == list(range(1, EPOCHS + 1))
    assert all(np.isfinite(v) for h in t.fit.history for v in h.values())
    assert "val_loss" in t.fit.history[-1]
    assert Path(t.fit.checkpoint_path).is_dir() and str(t.run_dir / "train") in t.fit.checkpoint_path
    # Every network (generator side and discriminator) moved away from the initial weights that the worker built
    # from the same seed: the alternating G and D steps really ran on the Ray Train worker.
    cls = methods.get(name)
    seed_everything(SEED)
    initial = cls(t.config, t.spec, t.fit.method.num_classes)
    seed_everything(SEED)
    again = cls(t.config, t.spec, t.fit.method.num_classes)
    for key, module in initial.modules().items():
        before = module.state_dict()
        assert all(torch.equal(v, again.modules()[key].state_dict()[k]) for k, v in before.items())
        after = t.fit.method.modules()[key].state_dict()
        changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
        assert changed, f"{name}.{key}: no parameter changed during training"
    # the evaluate stage wrote metrics for this method
    m = json.loads((t.run_dir / "metrics.json").read_text())
    assert m["method"] == name and m["seed"] == SEED and m["epochs"] == EPOCHS
    group = m["machine_types"]["fan"]["groups"]["id_00"]
    expected = N_TEST if name != "aegan_ad" else m["score_variant_selection"]["n_test"]
    assert group["n_normal"] + group["n_anomaly"] == expected
    assert 0.0 <= group["auc"] <= 1.0 and 0.0 <= group["pauc"] <= 1.0
    assert m["machine_types"]["fan"]["mean"]["auc"] == group["auc"]
    assert (t.run_dir / "anomaly_score_fan_id_00.csv").is_file()


@pytest.mark.parametrize("name", list(RUNS))
def test_checkpoint_reloads_the_worker_model_and_scores_identically(trained, name):
    t = trained(name)
    # run_dir/model (written after training, with any fitted detector) scores exactly like the fitted method
    loaded, meta = ckpt_io.load(t.run_dir / "model")
    assert meta["seed"] == SEED and meta["epoch"] == EPOCHS
    np.testing.assert_array_equal(_test_scores(loaded, t), _test_scores(t.fit.method, t))
    # The model on the driver is the one the worker trained: its held-out loss equals the loss the worker reported
    # in its last epoch (the held-out clips are recomputed with the trainer's own split rule).
    train = t.train_clips
    held = split_by_path(train["path"].tolist(), t.config.val_fraction, SEED)
    assert held.any()
    clips = [{"log_mel": np.stack(list(train["log_mel"][held]))}]
    examples = examples_of(loaded, clips)
    n = len(next(iter(examples.values())))
    assert n <= loaded.batch_size  # one batch, so the batch mean does not depend on the example order
    val = run_validation(loaded, minibatches(examples, loaded.batch_size, None))
    assert val["val_loss"] == pytest.approx(t.fit.history[-1]["val_loss"], rel=1e-4)
    # Ray Train's own last checkpoint (before any detector fit) reloads with the same generator scores
    ray_model, _ = ckpt_io.load(t.fit.checkpoint_path)
    if name == "aegan_ad":
        batch = {"log_mel": torch.from_numpy(clips[0]["log_mel"])}
        a, b = ray_model.score_variants(batch), t.fit.method.score_variants(batch)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    else:
        np.testing.assert_array_equal(_test_scores(ray_model, t), _test_scores(t.fit.method, t))


@pytest.mark.parametrize("name", ["ganomaly", "egbad"])
def test_methods_without_score_variants_are_evaluated_on_every_test_clip(trained, name):
    t = trained(name)
    assert "score_variant_selection" not in t.metrics
    assert not (t.run_dir / "validation_split.json").exists()
    assert len(t.scores) == N_TEST and "role" not in t.scores.columns


def test_aegan_ad_variant_is_chosen_on_the_validation_half_and_reported_on_the_other(trained):
    t = trained("aegan_ad")
    sel = t.metrics["score_variant_selection"]
    names = methods.get("aegan_ad").score_variant_names()
    assert set(sel["validation"]) == set(names) and sel["selected"] in names
    best = max(sel["validation"].items(), key=lambda kv: (kv[1]["mean"], kv[1]["auc"]))
    assert sel["validation"][sel["selected"]]["mean"] == best[1]["mean"]
    split_doc = json.loads((t.run_dir / "validation_split.json").read_text())
    val, test = set(split_doc["validation"]), set(split_doc["test"])
    assert not val & test and len(val | test) == N_TEST
    assert split_doc["seed"] == SEED and split_doc["fraction"] == 0.5
    assert sel["n_validation"] == len(val) and sel["n_test"] == len(test)
    # both halves hold both classes (stratified), and only the test half is in the reported metrics and CSV
    labels = dict(zip(t.scores["path"], t.scores["label"]))
    assert {labels[p] for p in val} == {"normal", "anomaly"} == {labels[p] for p in test}
    group = t.metrics["machine_types"]["fan"]["groups"]["id_00"]
    assert group["n_normal"] + group["n_anomaly"] == len(test)
    csv_rows = (t.run_dir / "anomaly_score_fan_id_00.csv").read_text().splitlines()
    assert sorted(r.split(",")[0] for r in csv_rows) == sorted(Path(p).name for p in test)
    # the reported score is the chosen variant, and the saved model now scores with it
    variants = pd.read_parquet(t.run_dir / "score_variants.parquet")
    np.testing.assert_array_equal(variants["score"], variants[VARIANT_COLUMN_PREFIX + sel["selected"]])
    assert set(variants.loc[variants["role"] == "validation", "path"]) == val
    loaded, meta = ckpt_io.load(t.run_dir / "model")
    assert loaded.score_variant == sel["selected"] and meta["score_variant"] == sel["selected"]


def test_aegan_ad_choice_ignores_the_test_labels(trained):
    t = trained("aegan_ad")
    variants = pd.read_parquet(t.run_dir / "score_variants.parquet")
    split_doc = json.loads((t.run_dir / "validation_split.json").read_text())
    split = Split(split_doc["validation"], split_doc["test"], SEED, 0.5, "stratified")
    chosen, table = choose_score_variant(variants, split)
    assert chosen == t.metrics["score_variant_selection"]["selected"]
    is_test = variants["path"].isin(set(split.test)).to_numpy()
    rng = np.random.default_rng(0)
    for labels in (rng.permutation(variants.loc[is_test, "label"].to_numpy()),
                   np.where(variants.loc[is_test, "label"] == "anomaly", "normal", "anomaly")):
        shuffled = variants.copy()
        shuffled.loc[is_test, "label"] = labels
        assert choose_score_variant(shuffled, split) == (chosen, table)
    # ... while the validation labels do decide it: flipping them turns every validation AUC into 1 − AUC
    flipped = variants.copy()
    is_val = ~is_test
    flipped.loc[is_val, "label"] = np.where(variants.loc[is_val, "label"] == "anomaly", "normal", "anomaly")
    _, flipped_table = choose_score_variant(flipped, split)
    for name, row in table.items():
        if np.isfinite(row["auc"]):
            assert flipped_table[name]["auc"] == pytest.approx(1.0 - row["auc"])


def test_aegan_ad_keeps_its_configured_variant_when_the_validation_half_cannot_rank(trained, tmp_path):
    """One anomalous clip only: the stratified split leaves validation without an anomaly, so nothing is chosen,
    nothing is held out, and the reason is recorded."""
    import ray

    from stethoscope.pipeline import select_score_variant_on_validation

    t = trained("aegan_ad")
    clips = t.test_clips.sort_values("path")
    clips = pd.concat([clips[clips["label"] == "normal"], clips[clips["label"] == "anomaly"].head(1)])
    method, _ = ckpt_io.load(t.run_dir / "model")
    method.set_score_variant("g_input_l2_max")
    scores, record = select_score_variant_on_validation(
        method, ray.data.from_pandas(clips), None, tmp_path, seed=SEED, machine_type="fan")
    assert record["selected"] == record["configured"] == "g_input_l2_max" == method.score_variant
    assert "anomal" in record["reason"] and record["n_validation"] == 0 and record["validation"] == {}
    assert record["n_test"] == len(clips) == len(scores) and set(scores["role"]) == {"test"}
    assert not (tmp_path / "validation_split.json").exists()
