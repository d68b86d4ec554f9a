"""STgram-MFN / TASTgram / FGASpecNet on the Method contract (issue 13; stethoscope.methods.machine_id_classifier).

Cheap unit tests in-process (configs, the clip-length rule, a loss that goes down, reproducible Noisy-ArcMix, the
unseen-ID policies, the anomaly maps), then small Ray pipeline runs: a tiny FGASpecNet over a synthetic set with
several machine types and IDs (AUC bar, above the AE baseline on the same test clips, the score-variant choice on
validation only, publish → bundle parity), and STgram-MFN on the real slider clips (one machine ID: −log p is
dropped and a detector on embeddings is used).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stethoscope.data.labels import Vocab
from stethoscope.errors import ConfigError, DataError

#: A tiny network for CPU tests: 1 s clips (16,000 samples → 32 frames at hop 512), 32 mels, one bottleneck row.
TINY = {"n_samples": 16000, "n_mels": 32, "mobilefacenet_setting": [[2, 32, 1, 2]], "batch_size": 8,
        "epochs": 2, "lr": 1e-3}


def _method(name: str, groups=("fan/id_00", "fan/id_02", "pump/id_00"), **overrides):
    from stethoscope import methods

    cls = methods.get(name)
    vocab = Vocab(machine_type=sorted({g.split("/")[0] for g in groups}), group=list(groups))
    torch.manual_seed(0)
    return cls(cls.make_config({**TINY, **overrides}), vocab=vocab)


def _batch(n: int, groups, samples: int = 16000, seed: int = 0) -> dict[str, torch.Tensor]:
    from stethoscope.data.features import compute
    from stethoscope.nn.frontend import CLASSIFIER_LOGMEL
    import dataclasses

    g = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(n, samples, generator=g)
    spec = dataclasses.replace(CLASSIFIER_LOGMEL, n_mels=32)
    return {"waveform": wav, "log_mel": compute(wav, spec), "group": torch.as_tensor(groups, dtype=torch.long)}


# -- config and registry --------------------------------------------------------------------------------------------
def test_three_registered_methods_with_the_paper_defaults_and_table3_switches():
    from stethoscope import methods

    for name, (tagram, specnet, fga, loss, st) in {
        "stgram_mfn": (False, False, False, "arcface", False),
        "tastgram": (True, False, False, "noisy_arcmix", False),
        "fgaspecnet": (True, True, True, "noisy_arcmix", True),
    }.items():
        cls = methods.get(name)
        cfg = cls.make_config({})
        assert (cfg.preset, cfg.lr, cfg.epochs, cfg.batch_size) == (name, 1e-4, 300, 64)
        assert (cfg.arcface_margin, cfg.arcface_scale, cfg.mixup_alpha) == (0.7, 30.0, 0.5)
        assert (cfg.st_gamma, cfg.st_lambda, cfg.st_delta, cfg.st_centers, cfg.st_tau, cfg.st_weight) == (
            0.1, 20.0, 0.02, 3, 0.0, 0.15)
        net = cfg.network()
        assert (net.tgram, net.tagram, net.specnet, net.fga, net.loss, net.softtriple) == (
            True, tagram, specnet, fga, loss, st)
        specs = cls.input_specs(cfg)
        mel = specs["log_mel"]
        assert (mel.n_fft, mel.win_length, mel.hop_length, mel.n_mels, mel.power) == (2048, None, 512, 128, 2.0)
        assert specs["waveform"].sample_rate == 16000 and cfg.n_frames == 313 == mel.num_frames(160000)
        assert cls.default_scope == "all_machine_types" and "per_id" not in cls.scopes
    # an ablation switch on top of a preset (Table 3), and the errors
    assert methods.get("tastgram").make_config({"specnet": True}).network().specnet is True
    with pytest.raises(ConfigError, match="fga = True needs specnet"):
        methods.get("tastgram").make_config({"fga": True})
    with pytest.raises(ConfigError, match="unknown_id"):
        methods.get("fgaspecnet").make_config({"unknown_id": "guess"})
    with pytest.raises(ConfigError, match="preset = 'tastgram'; expected 'fgaspecnet'"):
        methods.get("fgaspecnet").make_config({**TINY, "preset": "tastgram"})
    with pytest.raises(ConfigError, match="preset = 'fgaspecnet'; expected 'tastgram'"):
        methods.get("tastgram")(methods.get("fgaspecnet").make_config(TINY), vocab=Vocab(group=["a/id_00", "a/id_01"]))


def test_fit_length_crops_and_tiles_the_last_axis():
    from stethoscope.methods.machine_id_classifier import fit_length

    x = np.arange(10).reshape(2, 5)
    assert fit_length(x, 3).tolist() == [[0, 1, 2], [5, 6, 7]]
    assert fit_length(x, 12).tolist()[0] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert fit_length(torch.arange(3), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(DataError, match="0 samples"):
        fit_length(np.zeros((2, 0)), 4)


def test_clips_of_other_lengths_are_cropped_or_tiled_to_the_configured_size():
    m = _method("fgaspecnet")
    long, short = _batch(2, [0, 1], samples=24000), _batch(2, [0, 1], samples=8000)
    ex = m.examples({k: v.numpy() for k, v in long.items()})
    assert ex["waveform"].shape == (2, 16000) and ex["log_mel"].shape == (2, 32, 32)
    assert np.array_equal(ex["waveform"], long["waveform"][:, :16000].numpy())
    assert m.score(short).shape == (2,) and m.embed(short).shape == (2, 128)
    # scoring tiles the short clip exactly as the examples do
    tiled = m.examples({k: v.numpy() for k, v in short.items()})
    assert torch.allclose(m.score(short), m.score({k: torch.as_tensor(v) for k, v in tiled.items()}))


# -- training -------------------------------------------------------------------------------------------------------
def test_training_reduces_the_loss_and_noisy_arcmix_replays_with_the_seed():
    batch = _batch(8, [0, 1, 2, 0, 1, 2, 0, 1], seed=1)

    def losses(seed: int, steps: int) -> list[float]:
        m = _method("fgaspecnet")
        np.random.seed(seed)  # the train loop seeds the global numpy state per epoch; the mixes derive from it
        out = [m.training_step(batch)["loss"] for _ in range(steps)]
        m.on_epoch_end(1, {})
        return out

    a = losses(0, 10)
    assert losses(0, 3) == a[:3] and losses(1, 3) != a[:3]
    assert np.mean(a[-3:]) < np.mean(a[:3]), a
    m = _method("stgram_mfn", clip_grad_norm=1.0, scheduler="step")
    first = m.training_step(batch)
    assert set(first) == {"loss", "classification"} and m.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    m.on_epoch_end(1, {})  # StepLR(step_size 1, gamma 0.1) through make_scheduler
    assert m.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


# -- scoring --------------------------------------------------------------------------------------------------------
def test_score_is_minus_log_posterior_of_the_own_id_and_unseen_ids_follow_the_policy():
    from stethoscope.scoring import clip_batches

    m = _method("tastgram")
    batch = _batch(3, [0, 1, 2], seed=2)
    m.net.eval()
    with torch.no_grad():
        logits = m.net(batch["waveform"], batch["log_mel"]).logits
    expected = -torch.log_softmax(logits, 1)[torch.arange(3), batch["group"]]
    assert torch.allclose(m.score(batch), expected, atol=1e-5)

    clips = {"waveform": np.array(list(batch["waveform"].numpy()) + [batch["waveform"][0].numpy()], dtype=object),
             "log_mel": np.array(list(batch["log_mel"].numpy()) + [batch["log_mel"][0].numpy()], dtype=object),
             "machine_type": ["fan", "fan", "pump", "fan"], "machine_id": ["00", "02", "00", "04"],
             "section": [None] * 4, "path": ["a.wav", "b.wav", "c.wav", "fan_id04.wav"]}
    with pytest.raises(DataError, match=r"fan_id04.wav: group 'fan/id_04' was not in the training set"):
        list(clip_batches([clips], m))
    # unknown_id = "max_known": −log max p over the known IDs of the clip's machine type (fan: classes 0 and 1)
    fallback = _method("tastgram", unknown_id="max_known")
    fallback.net.load_state_dict(m.net.state_dict())
    (tensors, meta), = list(clip_batches([clips], fallback))
    scores = fallback.score(tensors)
    logp = torch.log_softmax(logits, 1)
    assert torch.allclose(scores[:3], expected, atol=1e-5)
    assert scores[3].item() == pytest.approx(-max(logp[0, 0].item(), logp[0, 1].item()), abs=1e-5)
    assert fallback.localize(tensors).shape == (4, 32, 32)  # the gradient map of the same fallback class


def test_a_clips_score_and_embedding_do_not_depend_on_its_batch():
    """infer_chunk = 1 (the default): each clip goes through the network alone, so the run (batches of 16) and the
    endpoint (1-3 clips) give bit-identical embeddings and −log p; infer_chunk = 0 passes the whole batch."""
    m = _method("fgaspecnet")
    batch = _batch(4, [0, 1, 2, 0], seed=5)
    one = {k: v[2:3] for k, v in batch.items()}
    assert torch.equal(m.embed(batch)[2:3], m.embed(one)) and torch.equal(m.score(batch)[2:3], m.score(one))
    assert torch.equal(m.localize(batch)[2:3], m.localize(one))
    whole = _method("fgaspecnet", infer_chunk=0)
    assert torch.allclose(whole.embed(batch), m.embed(batch), atol=1e-4)  # same weights (seed 0), one pass
    with pytest.raises(ConfigError, match="infer_chunk"):
        _method("fgaspecnet", infer_chunk=-1)


def test_anomaly_maps_fga_gate_or_score_gradient():
    batch = _batch(2, [0, 1], seed=3)
    gate = _method("fgaspecnet").localize(batch)
    assert gate.shape == (2, 32, 32) and float(gate.min()) > 0 and float(gate.max()) < 1
    grad = _method("stgram_mfn").localize(batch)
    assert grad.shape == (2, 32, 32) and float(grad.abs().sum()) > 0


def test_one_machine_id_pads_the_head_and_says_why_minus_log_p_is_no_candidate():
    from stethoscope.scopes import Unit
    from stethoscope.stages.detect import own_score_reason

    m = _method("stgram_mfn", groups=("slider/id_00",))
    assert m.net.num_classes == 2 and "constant" in m.score_undefined_reason
    assert own_score_reason([(None, m)], "slider") == m.score_undefined_reason  # what the detect stage drops
    several = _method("stgram_mfn")
    assert several.score_undefined_reason is None and own_score_reason([(None, several)], "fan") is None
    # per machine type units: only the one-ID type's own score is dropped
    units = [(Unit("slider", ("slider",), None, "model"), m), (Unit("fan", ("fan",), None, "model"), several)]
    assert own_score_reason(units, "slider") and own_score_reason(units, "fan") is None


def test_the_method_score_is_a_candidate_name_checked_before_training():
    from stethoscope.detectors.stage import split_own_score
    from stethoscope.stages.ingest import resolve_config

    assert split_own_score(["method", "knn", {"name": "lof", "n_neighbors": 3}]) == (
        True, ["knn", {"name": "lof", "n_neighbors": 3}])
    with pytest.raises(ConfigError, match="unknown detector 'nearest'"):
        resolve_config("fgaspecnet", "fan", {"detectors": ["method", "nearest"]})


def test_search_space_is_the_softtriple_grid_of_table4():
    from stethoscope.tuning import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "fgaspecnet.yaml")
    assert space.method == "fgaspecnet" and space.metric == "val_auc_pauc_mean"
    grid = {name: sorted(p.probe_values()) for name, p in space.params.items()}
    assert grid == {"st_gamma": [0.05, 0.1], "st_lambda": [10.0, 20.0], "st_delta": [0.02, 0.025],
                    "st_centers": [3, 4], "st_tau": [0.0, 0.02], "st_weight": [0.12, 0.15]}
    assert space.num_samples == 64  # 2^6: every point once (sampler grid)


# -- through the pipeline (Ray): a synthetic set with several machine types and IDs ---------------------------------
#: Amplitude modulation of the hum at severity 0.5 (2-8 Hz, modulation index 0.45), 1 s clips: the set where the
#: issue asks FGASpecNet for AUC >= 0.9 and more than the AE baseline. The AE sees 5 log-mel frames (0.16 s) at a
#: time, less than one modulation period (0.125-0.5 s), and each frame's level stays within the normal range; the
#: classifier sees the whole clip. (At severity 1.0 of the harmonic kind both reach AUC 1.0, so "above" could not fail.)
AUC_BAR = 0.9
SYNTH_TYPES = ["fan", "pump"]
CANDIDATES = ["method", "knn", "lof", "gmm", "sos"]


@pytest.fixture(scope="module")
def synthetic_tree(tmp_path_factory):
    from stethoscope.data.synthetic import make_dcase2020_tree

    return make_dcase2020_tree(tmp_path_factory.mktemp("classifier_tree"), machine_types=tuple(SYNTH_TYPES),
                               machine_ids=("00", "02"), n_train=16, n_test_normal=8, n_test_anomaly=8,
                               anomalies=("am",), severity=0.5, duration_s=1.0, seed=3)


@pytest.fixture(scope="module")
def synthetic_run(ray_session, synthetic_tree, tmp_path_factory):
    from stethoscope.pipeline import run

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("classifier_runs")
    res = run(synthetic_tree, machine_type=SYNTH_TYPES, method="fgaspecnet", config={**TINY, "detectors": CANDIDATES},
              store=str(base / "store"), runs_root=str(base / "runs"), registry=str(base / "registry"), seed=0)
    return base / "registry", res


@pytest.mark.slow
def test_fgaspecnet_over_all_types_chooses_its_score_variant_on_validation_only(synthetic_run):
    from stethoscope.evaluation.metrics import auc, pauc
    from stethoscope.splits import read_run_split
    from stethoscope.stages.score import choose_score_variant

    _, res = synthetic_run
    run_dir = Path(res.run_dir)
    meta = json.loads((run_dir / "models/all/meta.json").read_text())
    assert meta["vocab"]["group"] == ["fan/id_00", "fan/id_02", "pump/id_00", "pump/id_02"]
    record = json.loads((run_dir / "detect.json").read_text())
    assert record["candidates"] == CANDIDATES
    variants = pd.read_parquet(run_dir / "detector_scores.parquet")
    split = read_run_split(run_dir)
    for mt in SYNTH_TYPES:
        choice = record["machine_types"][mt]
        val = variants[(variants["role"] == "validation") & (variants["machine_type"] == mt)]
        y = (val["label"] == "anomaly").to_numpy().astype(int)
        means = {c: (auc(y, val[f"variant:{c}"]) + pauc(y, val[f"variant:{c}"])) / 2
                 for c in CANDIDATES if c not in choice["dropped"]}
        assert "method" in means  # −log p(y|x) competes with the detectors on the validation clips
        assert choice["reason"] is None and means[choice["selected"]] == pytest.approx(max(means.values()))
        # relabelling every clip outside the validation clips changes nothing chosen
        rows = variants[variants["machine_type"] == mt].copy()
        outside = rows["role"] != "validation"
        rows.loc[outside, "label"] = np.where(rows.loc[outside, "label"] == "anomaly", "normal", "anomaly")
        assert choose_score_variant(rows, split, configured="knn")["selected"] == choice["selected"]
        # the detector file exists exactly when a detector (not −log p) was chosen
        assert (run_dir / "detectors" / f"{mt}.pt").is_file() == (choice["selected"] != "method")
        # the held-out test clips, where the anomalies are known to differ
        assert res.metrics["machine_types"][mt]["mean"]["auc"] >= AUC_BAR, (mt, res.metrics["machine_types"][mt])


@pytest.mark.slow
def test_fgaspecnet_beats_the_autoencoder_baseline_on_the_same_clips(synthetic_run, synthetic_tree, tmp_path):
    """Issue 13: on the same synthetic set, FGASpecNet's AUC on the held-out test clips is at least 0.9 and above the
    DCASE 2020 AE baseline's (20 epochs of batch 64 per machine type, as test_training's clicks) for every machine
    type. The AE run validates on the FGASpecNet run's validation clips of its type (``--validation-split FILE``), so
    both report on exactly the same test clips. Measured when written: AUC FGASpecNet 0.969 / 1.000, AE 0.875 / 0.469
    (fan / pump)."""
    from stethoscope.pipeline import run
    from stethoscope.splits import ValidationSpec, read_run_split

    _, fga = synthetic_run
    split = read_run_split(fga.run_dir)
    for mt in SYNTH_TYPES:
        listing = tmp_path / f"{mt}_validation.txt"
        listing.write_text("".join(f"{p}\n" for p in split.validation if Path(p).parts[-3] == mt))
        ae = run(synthetic_tree, machine_type=mt, method="autoencoder", config={"epochs": 20, "batch_size": 64},
                 validation=ValidationSpec(file=str(listing)), store=str(tmp_path / "store"),
                 runs_root=str(tmp_path / "runs"), registry=None, seed=0)
        assert sorted(read_run_split(ae.run_dir).test) == sorted(p for p in split.test if Path(p).parts[-3] == mt)
        ours, baseline = (r.metrics["machine_types"][mt]["mean"]["auc"] for r in (fga, ae))
        assert ours >= AUC_BAR and ours > baseline, (mt, ours, baseline)


@pytest.mark.slow
def test_published_bundles_score_like_the_run(synthetic_run):
    from stethoscope.data.audio import load_audio
    from stethoscope.publishing.bundle import load_bundle

    reg, res = synthetic_run
    record = json.loads((Path(res.run_dir) / "detect.json").read_text())
    for mt in SYNTH_TYPES:
        bundle = load_bundle(reg, mt)
        (member,) = bundle.manifest["members"]
        chosen = record["machine_types"][mt]["selected"]
        assert (member.get("detector") or {}).get("label", "method") == chosen
        scores = res.scores[(res.scores["machine_type"] == mt)]
        for machine_id in ("00", "02"):
            rows = scores[scores["machine_id"] == machine_id].head(3)
            waves = [load_audio(p, 16000)[0] for p in rows["path"]]
            out = bundle.score_waveforms(waves, f"id_{machine_id}", want_map=True)
            assert [o["raw"][0] for o in out] == pytest.approx(rows["score"].tolist(), rel=1e-5, abs=1e-6)
            (amap,) = out[0]["maps"].values()
            assert amap.shape == (32, 32)  # FGA's gate G, [n_mels, n_frames]


@pytest.mark.slow
def test_when_minus_log_p_is_chosen_the_bundle_has_no_detector_and_scores_like_the_run(synthetic_run, tmp_path):
    """Re-evaluate the trained run (no retraining, the cached features) with −log p as the only candidate, as
    jobs/evaluate.py does, then publish it: the detect stage's own-score branch and its publish / serve parity."""
    import shutil

    from stethoscope import checkpoint as ckpt_io
    from stethoscope import runs
    from stethoscope.data.audio import load_audio
    from stethoscope.publishing import publish_runs
    from stethoscope.publishing.bundle import load_bundle
    from stethoscope.stages.evaluate import evaluate_stage
    from stethoscope.stages.ingest import ingest_stage

    _, res = synthetic_run
    run_dir = tmp_path / "run"
    shutil.copytree(res.run_dir, run_dir, ignore=shutil.ignore_patterns("publish"))
    manifest = json.loads((run_dir / "run.json").read_text())
    models = []
    for unit in runs.run_units(manifest):
        method, meta = ckpt_io.load(run_dir / unit.folder)
        method.config.detectors = ("method",)
        models.append((unit, method))
    prepared = ingest_stage(manifest["data_root"], models[0][1].inputs, machine_type=runs.run_machine_types(manifest),
                            machine_ids=manifest["ids"], store=manifest["store"])
    _, scores = evaluate_stage(prepared, run_dir, models, {**meta, "seed": 0}, runs.run_split(run_dir, manifest))
    record = json.loads((run_dir / "detect.json").read_text())
    before = pd.read_parquet(Path(res.run_dir) / "detector_scores.parquet").set_index("path")["variant:method"]
    for mt in SYNTH_TYPES:
        assert record["machine_types"][mt]["selected"] == "method" and record["machine_types"][mt]["file"] is None
        assert not (run_dir / "detectors" / f"{mt}.pt").exists()  # the copied detector file was removed
    # the run's scores are now −log p, the same values the first evaluation stored as its `method` candidate
    assert scores.set_index("path")["score"].to_numpy() == pytest.approx(before.loc[scores["path"]].to_numpy(),
                                                                         rel=1e-6)
    registry = tmp_path / "registry"
    publish_runs([run_dir], registry)
    for mt in SYNTH_TYPES:
        bundle = load_bundle(registry, mt)
        (member,) = bundle.manifest["members"]
        assert "detector" not in member
        rows = scores[(scores["machine_type"] == mt) & (scores["machine_id"] == "02")].head(3)
        out = bundle.score_waveforms([load_audio(p, 16000)[0] for p in rows["path"]], "id_02")
        assert [o["raw"][0] for o in out] == pytest.approx(rows["score"].tolist(), rel=1e-5, abs=1e-6)


# -- the real slider clips: one machine ID ---------------------------------------------------------------------------
@pytest.mark.slow
def test_real_slider_clips_one_id_use_a_detector_on_embeddings(ray_session, dcase2020_root, tmp_path):
    """Issue 13: STgram-MFN runs end to end on the real slider clips, which hold one machine ID: −log p(y|x) is then
    constant (docs/classifiers.md, "One machine ID"), so it is dropped and a detector on the embeddings is chosen."""
    from stethoscope.pipeline import run

    torch.set_num_threads(1)
    res = run(dcase2020_root, machine_type="slider", machine_ids=["00"], method="stgram_mfn",
              config={**TINY, "epochs": 1, "detectors": ["method", "knn"]}, store=str(tmp_path / "store"),
              runs_root=str(tmp_path / "runs"), registry=None, seed=0)
    run_dir = Path(res.run_dir)
    choice = json.loads((run_dir / "detect.json").read_text())["machine_types"]["slider"]
    assert "constant" in choice["dropped"]["method"] and choice["selected"] == "knn"
    assert (run_dir / "detectors" / "slider.pt").is_file()
    assert res.scores["score"].notna().all() and len(res.scores) == 9
