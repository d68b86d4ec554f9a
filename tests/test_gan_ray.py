"""The GAN family on the shared platform (issue 3): GANomaly, Skip-GANomaly, EGBAD and AEGAN-AD each train through the
one Ray Train loop (``stethoscope.training.fit`` via ``stages.train.train_stage``), reload from their checkpoint
with the same scores, and are scored and evaluated by ``stages.evaluate.evaluate_stage`` on the run's one split
(``validation_split.json``): the training clips it holds out give the validation loss, AEGAN-AD's and EGBAD's score
variant is chosen on its validation clips, and every method is reported on its test clips.

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

from sklearn.metrics import roc_auc_score

from stethoscope.data.ingest import input_column
from stethoscope import checkpoint as ckpt_io
from stethoscope import methods, runs
from stethoscope.runs import new_run_dir
from stethoscope.scoring import score_batches
from stethoscope.splits import read_run_split
from stethoscope.stages.evaluate import evaluate_stage
from stethoscope.stages.ingest import feature_spec_for, ingest_stage
from stethoscope.stages.score import VARIANT_COLUMN_PREFIX, choose_score_variant
from stethoscope.stages.split import record_split, split_stage
from stethoscope.stages.train import train_stage
from stethoscope.training.loop import examples_of, minibatches, run_validation, seed_everything

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
#: AUC each method must reach on the held-out test clips (3 normal, 3 severe-click) after its 2 epochs (8 optimizer
#: steps for the FC GANs). EGBAD has no bar here: it ranked them at chance (measured 0.44 in the paper's form, 0.56
#: with a linear latent), so 8 steps prove nothing about it; its detection is tested in process over 8 epochs
#: (test_gan_family). Every method's reported AUC must still equal sklearn's on the stored
#: scores of exactly the split's test clips.
AUC_BAR = {"ganomaly": 0.9, "skip_ganomaly": 0.9, "egbad": None, "aegan_ad": 0.9}


@dataclasses.dataclass
class Trained:
    prepared: object
    run_dir: Path
    fit: object  # stethoscope.training.FitResult
    metrics: dict
    scores: pd.DataFrame
    split: object  # stethoscope.splits.RunSplit
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
            split = split_stage(prepared, train_validation_fraction=cfg.val_fraction)
            run_dir = new_run_dir(runs_root, name, "fan")
            record_split(run_dir, split, manifest := {"machine_type": "fan", "seed": SEED})
            (run_dir / "run.json").write_text(json.dumps(manifest))
            fit = train_stage(prepared, run_dir, method=name, config=cfg, spec=spec, split=split, seed=SEED)
            metrics, scores = evaluate_stage(prepared, run_dir, fit.method, {**fit.meta, "seed": SEED}, split)
            if spec.hash() not in clips:
                clips[spec.hash()] = (prepared.features("train").to_pandas(), prepared.features("test").to_pandas())
            cache[name] = Trained(prepared, run_dir, fit, metrics, scores, split, cfg, spec, *clips[spec.hash()])
        return cache[name]

    return get


def _batch(clips: pd.DataFrame) -> dict:
    """Ingested clips (pandas) → one numpy clip batch, as ``Dataset.iter_batches(batch_format="numpy")`` gives."""
    cols = [c for c in clips.columns if c.startswith("x_")]
    out = {c: clips[c].to_numpy() for c in clips.columns if c not in cols}
    for c in cols:  # the store's input columns (x_<spec hash>), one array per clip
        out[c] = np.array(list(clips[c]), dtype=object)
    return out


def _test_scores(method, t: Trained) -> np.ndarray:
    frame = score_batches(method, [_batch(t.test_clips)])
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
    initial = cls(t.config, t.fit.method.inputs, t.fit.method.vocab)
    seed_everything(SEED)
    again = cls(t.config, t.fit.method.inputs, t.fit.method.vocab)
    for key, module in initial.modules().items():
        before = module.state_dict()
        assert all(torch.equal(v, again.modules()[key].state_dict()[k]) for k, v in before.items())
        after = t.fit.method.modules()[key].state_dict()
        changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
        assert changed, f"{name}.{key}: no parameter changed during training"
    # the evaluate stage reported the split's test clips, and its AUC is sklearn's on exactly those scores
    m = json.loads((t.run_dir / "metrics.json").read_text())
    assert m["method"] == name and m["seed"] == SEED and m["epochs"] == EPOCHS
    group = m["machine_types"]["fan"]["groups"]["id_00"]
    test = t.scores[t.scores["role"] == "test"]
    assert sorted(test["path"]) == t.split.test and len(t.split.test) == N_TEST // 2
    assert group["n_normal"] + group["n_anomaly"] == len(t.split.test) == m["clips"]["n"]
    y = (test["label"] == "anomaly").to_numpy().astype(int)
    assert group["auc"] == pytest.approx(roc_auc_score(y, test["score"]))
    assert m["machine_types"]["fan"]["mean"]["auc"] == group["auc"]
    # severe clicks are obvious: the methods with a bar rank them above the normal clips after 2 epochs
    if AUC_BAR[name] is not None:
        assert group["auc"] >= AUC_BAR[name], (name, group["auc"])
    csv_rows = (t.run_dir / "anomaly_score_fan_id_00.csv").read_text().splitlines()
    assert sorted(r.split(",")[0] for r in csv_rows) == sorted(Path(p).name for p in t.split.test)


@pytest.mark.parametrize("name", list(RUNS))
def test_checkpoint_reloads_the_worker_model_and_scores_identically(trained, name):
    t = trained(name)
    # the run's model as later stages load it (model/, written after training with any fitted detector, plus the
    # score variant chosen on validation) scores exactly like the fitted method the pipeline evaluated
    loaded, meta = runs.load_model(t.run_dir)
    assert meta["seed"] == SEED and meta["epoch"] == EPOCHS
    np.testing.assert_array_equal(_test_scores(loaded, t), _test_scores(t.fit.method, t))
    # The model on the driver is the one the worker trained: its held-out loss equals the loss the worker reported
    # in its last epoch, on the training clips the run's validation_split.json holds out.
    train = t.train_clips
    held = train["path"].isin(set(read_run_split(t.run_dir).train_validation)).to_numpy()
    assert held.sum() == 1  # 10 training clips, val_fraction 0.1
    clips = [{"log_mel": np.stack(list(train[input_column(t.spec)][held]))}]
    examples = examples_of(loaded, clips)
    n = len(next(iter(examples.values())))
    assert n <= loaded.batch_size  # one batch, so the batch mean does not depend on the example order
    val = run_validation(loaded, minibatches(examples, loaded.batch_size, None))
    assert val["val_loss"] == pytest.approx(t.fit.history[-1]["val_loss"], rel=1e-4)
    # Ray Train's own last checkpoint (before any detector fit) reloads with the same generator scores
    ray_model, _ = ckpt_io.load(t.fit.checkpoint_path)
    if name in ("aegan_ad", "egbad"):
        batch = {"log_mel": torch.from_numpy(clips[0]["log_mel"])}
        a, b = ray_model.score_variants(batch), t.fit.method.score_variants(batch)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    else:
        np.testing.assert_array_equal(_test_scores(ray_model, t), _test_scores(t.fit.method, t))


def test_methods_without_score_variants_report_the_test_part_and_store_every_score(trained):
    t = trained("ganomaly")
    assert "score_variant_selection" not in t.metrics and not (t.run_dir / runs.SCORE_VARIANT).exists()
    # every test clip is stored with its role, every training clip too (what publishing reads)
    assert len(t.scores) == N_TEST and set(t.scores["role"]) == {"validation", "test"}
    train = pd.read_parquet(t.run_dir / runs.TRAIN_SCORES)
    assert sorted(train["path"]) == sorted(t.split.train + t.split.train_validation) and len(train) == 10
    assert runs.verify_run(t.run_dir).fingerprint == t.split.fingerprint


@pytest.mark.parametrize("name", ["aegan_ad", "egbad"])
def test_score_variant_is_chosen_on_the_validation_clips_and_never_rewrites_the_model(trained, name):
    t = trained(name)
    sel = t.metrics["score_variant_selection"]
    names = methods.get(name).score_variant_names()
    assert set(sel["validation"]) == set(names) and sel["selected"] in names and sel["reason"] is None
    best = max(sel["validation"].items(), key=lambda kv: (kv[1]["mean"], kv[1]["auc"]))
    assert sel["validation"][sel["selected"]]["mean"] == best[1]["mean"]
    val, test = set(t.split.validation), set(t.split.test)
    assert not val & test and len(val | test) == N_TEST and sel["n_validation"] == len(val)
    # both parts hold both classes (stratified), and only the test part is in the reported metrics and CSV
    labels = dict(zip(t.scores["path"], t.scores["label"]))
    assert {labels[p] for p in val} == {"normal", "anomaly"} == {labels[p] for p in test}
    group = t.metrics["machine_types"]["fan"]["groups"]["id_00"]
    assert group["n_normal"] + group["n_anomaly"] == len(test)
    # the reported score is the chosen variant; the choice is its own artifact, and model/ is the trained model
    variants = pd.read_parquet(t.run_dir / "score_variants.parquet")
    np.testing.assert_array_equal(variants["score"], variants[VARIANT_COLUMN_PREFIX + sel["selected"]])
    assert set(variants.loc[variants["role"] == "validation", "path"]) == val
    assert runs.read_score_variant(t.run_dir)["selected"] == sel["selected"]
    raw, meta = ckpt_io.load(t.run_dir / "model")
    assert "score_variant" not in meta and raw.score_variant == t.config.score_variant
    loaded, _ = runs.load_model(t.run_dir)  # how every later stage loads the run
    assert loaded.score_variant == sel["selected"]


def test_score_variant_choice_ignores_the_test_labels(trained):
    t = trained("aegan_ad")
    variants = pd.read_parquet(t.run_dir / "score_variants.parquet")
    configured = t.config.score_variant
    record = choose_score_variant(variants, t.split, configured)
    chosen, table = record["selected"], record["validation"]
    assert chosen == t.metrics["score_variant_selection"]["selected"]
    is_test = variants["path"].isin(set(t.split.test)).to_numpy()
    rng = np.random.default_rng(0)
    for labels in (rng.permutation(variants.loc[is_test, "label"].to_numpy()),
                   np.where(variants.loc[is_test, "label"] == "anomaly", "normal", "anomaly")):
        shuffled = variants.copy()
        shuffled.loc[is_test, "label"] = labels
        assert choose_score_variant(shuffled, t.split, configured) == record
    # ... while the validation labels do decide it: flipping them turns every validation AUC into 1 − AUC
    flipped = variants.copy()
    is_val = ~is_test
    flipped.loc[is_val, "label"] = np.where(variants.loc[is_val, "label"] == "anomaly", "normal", "anomaly")
    flipped_table = choose_score_variant(flipped, t.split, configured)["validation"]
    for name, row in table.items():
        if row["auc"] is not None:
            assert flipped_table[name]["auc"] == pytest.approx(1.0 - row["auc"])


def test_the_configured_variant_is_kept_when_the_validation_clips_cannot_rank(trained):
    """A split whose validation clips are all normal (as the tiny strata of the DCASE 2023 sample give): nothing is
    chosen, the configured variant is kept and the reason is recorded."""
    import dataclasses

    t = trained("aegan_ad")
    variants = pd.read_parquet(t.run_dir / "score_variants.parquet")
    normal = sorted(variants.loc[variants["label"] == "normal", "path"])
    split = dataclasses.replace(t.split, validation=normal[:2])
    record = choose_score_variant(variants, split, "g_input_l2_max")
    assert record["selected"] == record["configured"] == "g_input_l2_max"
    assert "anomal" in record["reason"] and record["validation"] == {} and record["n_validation"] == 2
