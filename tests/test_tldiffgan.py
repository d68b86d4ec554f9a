"""TLDiffGAN on the Method contract (issue 14; stethoscope.methods.tldiffgan). The network's own unit tests (DDPM
closed form, TMixup, spectral norm, gradient penalty ...) are in test_nn_tldiffgan.py.

Cheap in-process tests (config and encoder errors, crops, training, batch-independent scores, embeddings, the
checkpoint's encoder reference, the anomaly-map panels, the ablation switches, the search space), then one small Ray
pipeline run on two Ray Train workers on a synthetic set with known anomalies: the AUC bar, the detector chosen on
validation only, publish → bundle parity with the anomaly map, and the map figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stethoscope.encoders import EncoderError, EncoderInputError
from stethoscope.errors import ConfigError, DataError

#: A tiny TLDiffGAN for CPU tests: 32 mels × 32 frames (1 s at 16 kHz, hop 512), a 3-block encoder, a 100-step DDPM.
TINY_NET = {"n_mels": 32, "n_frames": 32, "latent_dim": 16, "base_channels": 8, "max_channels": 32, "num_layers": 3,
            "discriminator_groups": 4, "num_diffusion_steps": 100, "start_step": 20, "denoiser_hidden": 64,
            "denoiser_blocks": 2, "batch_size": 16, "lr": 1e-3}


def _tiny_beats_file(path: Path, seed: int = 0) -> Path:
    """A tiny random BEATs checkpoint in the official file format (16 kHz, 32-d embeddings)."""
    from stethoscope.encoders import beats as beats_mod

    torch.manual_seed(seed)
    cfg = beats_mod.BEATsConfig(input_patch_size=16, embed_dim=32, encoder_layers=1, encoder_embed_dim=32,
                                encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=16, conv_pos_groups=4,
                                num_buckets=32, max_distance=64, deep_norm=True, relative_position_embedding=True,
                                gru_rel_pos=True)
    beats_mod.save_checkpoint(beats_mod.BEATs(cfg).eval(), path)
    return path


@pytest.fixture(scope="module")
def beats_file(tmp_path_factory) -> Path:
    return _tiny_beats_file(tmp_path_factory.mktemp("beats") / "BEATs_tiny.pt")


def _method(beats_file: Path | None = None, **overrides):
    from stethoscope import methods

    cls = methods.get("tldiffgan")
    enc = {"encoder": "beats", "encoder_path": str(beats_file)} if beats_file else {"encoder": "none"}
    torch.manual_seed(0)
    return cls(cls.make_config({**TINY_NET, **enc, **overrides}))


def _clips(n: int, frames: int = 32, seconds: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    """n clips: a log-mel (dB) [n, 32, frames] with a per-clip offset, and a 16 kHz waveform."""
    rng = np.random.default_rng(seed)
    mel = rng.normal(-40.0, 4.0, (n, 32, frames)) + rng.normal(0.0, 2.0, (n, 1, 1))
    wave = rng.normal(0.0, 0.1, (n, int(16000 * seconds)))
    return {"log_mel": mel.astype(np.float32), "waveform": wave.astype(np.float32)}


def _fitted(m, clips: dict[str, np.ndarray]):
    ex = m.examples(clips)
    m.fit_statistics([{"x": torch.from_numpy(ex["x"])}])
    return torch.from_numpy(ex["x"])


# -- config, inputs, encoder errors ----------------------------------------------------------------------------------
def test_defaults_are_the_papers_and_inputs_follow_the_waveform_branch():
    from stethoscope import methods
    from stethoscope.data.features import FeatureSpec, WaveformSpec

    cls = methods.get("tldiffgan")
    c = cls.Config()  # the dataclass itself: no encoder files are looked at
    assert (c.lambda_stat, c.lambda_gp, c.lr, c.batch_size, c.epochs) == (1.0, 10.0, 1e-4, 512, 150)  # §2.1
    assert (c.n_mels, c.n_frames) == (128, 313) and c.detectors == ("method", "knn", "lof", "gmm", "sos")
    assert c.encoder == "aisfx" and cls.default_scope == "per_machine_type" and cls.labels == ()
    spec = cls.input_specs(c)
    assert spec == {"log_mel": FeatureSpec(n_fft=1024, hop_length=512, n_mels=128),
                    "waveform": WaveformSpec(sample_rate=16000)}
    assert 1 + 160000 // spec["log_mel"].hop_length == 313  # 10 s at 16 kHz → the paper's 128 × 313
    assert set(cls.input_specs(cls.make_config({"encoder": "none"}))) == {"log_mel"}


def test_a_missing_or_unknown_encoder_is_refused_before_anything_trains(tmp_path):
    from stethoscope import methods

    cls = methods.get("tldiffgan")
    with pytest.raises(EncoderError, match=r"BEATs.*\.pt") as err:
        cls.make_config({"encoder": "beats", "encoder_path": str(tmp_path / "nowhere")})
    assert "nowhere" in str(err.value)
    with pytest.raises(EncoderError, match="unknown encoder 'atst'; known encoders: .*beats"):
        cls.make_config({"encoder": "atst"})
    with pytest.raises(ConfigError, match="encoder_pooling = 'median'"):
        cls.make_config({"encoder": "aisfx", "encoder_pooling": "median"})
    with pytest.raises(ConfigError, match="score_variant = 'denoised'"):
        cls.make_config({"encoder": "none", "diffusion": False, "score_variant": "denoised"})
    with pytest.raises(ConfigError, match="start_step = 2000"):
        cls.make_config({"encoder": "none", "start_step": 2000})


def test_a_file_that_is_not_the_encoders_checkpoint_fails_before_training(tmp_path):
    bad = tmp_path / "BEATs_iter3_plus_AS2M.pt"
    bad.write_bytes(b"not a checkpoint")
    m = _method(bad)  # the file exists: the config accepts it (its SHA-256 is recorded) ...
    with pytest.raises(EncoderError, match="beats"):
        _fitted(m, _clips(2))  # ... and the first training step's statistics pass loads it and refuses it


def test_crops_cover_the_whole_clip_and_short_clips_are_tiled():
    from stethoscope.methods.base import crop_starts

    assert crop_starts(313, 313, 313) == [0]
    assert crop_starts(344, 313, 313) == [0, 31]  # an 11 s ToyCar clip: the tail gets a crop aligned to the end
    assert crop_starts(100, 32, 32) == [0, 32, 64, 68]
    assert crop_starts(20, 32, 32) == [0]
    with pytest.raises(DataError, match="0 frames"):
        crop_starts(0, 32, 32)
    m = _method()
    x = m.examples({"log_mel": np.arange(32 * 20, dtype=np.float32).reshape(1, 32, 20)})["x"]
    assert x.shape == (1, 32, 32)
    np.testing.assert_array_equal(x[0, :, 20:], x[0, :, :12])  # tiled from the start


# -- training and scoring --------------------------------------------------------------------------------------------
def test_training_lowers_the_reconstruction_error_and_scores_do_not_depend_on_the_batch():
    m = _method()
    clips = _clips(32)
    x = _fitted(m, clips)
    before = m.validation_step({"x": x})["val_rec"]
    np.random.seed(0)
    for _ in range(40):
        out = m.training_step({"x": x[torch.randperm(len(x))[:16]]})
    assert {"loss_d", "adv", "gp", "loss_g", "noise", "stat", "rec"} <= set(out)
    after = m.validation_step({"x": x})["val_rec"]
    assert after < 0.8 * before, (before, after)
    batch = {"log_mel": clips["log_mel"][:6]}
    scores = m.score(batch)
    alone = torch.cat([m.score({"log_mel": clips["log_mel"][i:i + 1]}) for i in range(6)])
    torch.testing.assert_close(scores, alone)  # seeded noise shared by every row: any batching gives one score
    variants = m.score_variants(batch)
    assert set(variants) == {"latent", "denoised", "input"}
    torch.testing.assert_close(variants["latent"], scores)  # Eq. 5 is the default score


def test_embedding_is_the_l2_normalised_concat_and_checkpoints_keep_only_the_encoder_reference(beats_file, tmp_path):
    import shutil

    from stethoscope import methods
    from stethoscope.encoders.base import file_sha256

    m = _method(beats_file)
    clips = _clips(4)
    _fitted(m, clips)
    z = m.embed(clips)
    assert z.shape == (4, 16 + 32)  # Z_mel (latent 16) ⊕ Z_wave (tiny BEATs, 32-d)
    torch.testing.assert_close(z[:, :16].norm(dim=1), torch.ones(4))
    torch.testing.assert_close(z[:, 16:].norm(dim=1), torch.ones(4))
    raw = _method(beats_file, branch_norm="none")
    raw.load_state_dict(m.state_dict())
    torch.testing.assert_close(raw.embed(clips)[:, 16:], m.encoder.embed(torch.from_numpy(clips["waveform"]), 16000))

    state = m.state_dict()
    assert state["extra"]["encoder"] == {"name": "beats", "path": str(beats_file), "sha256": file_sha256(beats_file)}
    n_saved = sum(t.numel() for mod in state["modules"].values() for t in mod.values())
    n_model = sum(p.numel() for p in m.model.state_dict().values())
    assert n_saved == n_model  # the frozen encoder's weights are not in the checkpoint
    # other weights at the same path: loading the checkpoint is refused
    moved = tmp_path / "BEATs_tiny.pt"
    shutil.copyfile(beats_file, moved)
    cls = methods.get("tldiffgan")
    ok = cls(cls.make_config({**TINY_NET, "encoder": "beats", "encoder_path": str(moved)}))
    ok.load_state_dict(state)
    torch.testing.assert_close(ok.embed(clips), z)
    _tiny_beats_file(moved, seed=1)
    other = cls(cls.make_config({**TINY_NET, "encoder": "beats", "encoder_path": str(moved)}))
    with pytest.raises(EncoderError, match="not the weights the model was trained with"):
        other.load_state_dict(state)
    with pytest.raises(EncoderError, match="without a waveform branch"):
        _method(beats_file).load_state_dict(_method().state_dict())


def test_a_clip_shorter_than_the_encoder_minimum_is_a_clear_error(beats_file):
    m = _method(beats_file)
    _fitted(m, _clips(2))
    short = _clips(2, seconds=0.01)  # 160 samples: less than one 25 ms fbank frame of BEATs
    with pytest.raises(EncoderInputError, match="needs at least .* samples at 16000 Hz"):
        m.embed(short)
    with pytest.raises(DataError, match="needs 'waveform'"):
        m.embed({"log_mel": short["log_mel"]})


def test_the_default_encoder_works_offline_and_resamples_16_khz_clips():
    m = _method(encoder="aisfx")  # weights inside the aisfx wheel; it needs at least 2.3 s of audio
    clips = _clips(2, seconds=3.0)
    _fitted(m, clips)
    assert m.encoder_ref.path == "package:aisfx" and m.encoder.sample_rate == 44100
    assert m.encoder.conversion(16000) == ["resampled from 16000 Hz to 44100 Hz (torchaudio.functional.resample)"]
    assert m.embed(clips).shape == (2, 16 + 512)


def test_anomaly_map_panels_are_stitched_back_to_the_clip_frames():
    m = _method(crop_hop=16)
    clips = _clips(2, frames=50)
    _fitted(m, clips)
    panels = m.localization(clips)
    assert {k: tuple(v.shape) for k, v in panels.items()} == {
        "reconstruction": (2, 32, 50), "training_mean": (2, 32, 50), "difference": (2, 32, 50)}
    torch.testing.assert_close(panels["difference"], (panels["reconstruction"] - panels["training_mean"]).abs())
    mu = m.training_mean  # crops at 0, 16, 18: frame 40 is covered by the crops at 16 and 18
    torch.testing.assert_close(panels["training_mean"][0, :, 40], (mu[:, 24] + mu[:, 22]) / 2)
    torch.testing.assert_close(panels["training_mean"][0, :, 5], mu[:, 5])
    torch.testing.assert_close(m.localize(clips), panels["difference"])
    with pytest.raises(DataError, match="clips of \\[32, 50\\] frames in one batch"):
        m.localization({"log_mel": [clips["log_mel"][0], clips["log_mel"][1][:, :32]]})


def test_ablation_switches_turn_off_diffusion_tmixup_and_the_waveform_branch():
    plain = _method(diffusion=False, tmixup=False)
    assert plain.model.denoiser is None and plain.model.tmixup is None and set(plain.inputs) == {"log_mel"}
    clips = _clips(8)
    x = _fitted(plain, clips)
    out = plain.training_step({"x": x})
    assert out["noise"] == 0.0
    assert set(plain.score_variants({"log_mel": clips["log_mel"]})) == {"latent", "input"}
    assert plain.embed(clips).shape == (8, 16)


def test_search_space_covers_the_issues_parameters():
    from stethoscope import methods
    from stethoscope.config import field_names
    from stethoscope.tuning import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "tldiffgan.yaml")
    assert space.method == "tldiffgan" and space.metric == "val_auc_pauc_mean"
    assert set(space.params) == {"lambda_stat", "lambda_gp", "start_step", "tmixup_alpha", "latent_dim", "lr"}
    assert set(space.params) <= set(field_names(methods.get("tldiffgan").Config))


# -- through the pipeline (Ray) ----------------------------------------------------------------------------------------
#: Severe clicks in fan id_00 and id_02 (1 s clips, 16 + 16 test clips per ID: half of them validation); two Ray Train
#: workers (DDP: the standardisation statistics and every gradient are all-reduced), 12 epochs.
AUC_BAR = 0.9
CANDIDATES = ["method", "knn", "lof", "gmm", "sos"]


@pytest.fixture(scope="module")
def tldiffgan_run(ray_session, tmp_path_factory, beats_file):
    from stethoscope.data.synthetic import make_dcase2020_tree
    from stethoscope.pipeline import run

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("tldiffgan_runs")
    tree = make_dcase2020_tree(base / "tree", machine_types=("fan",), machine_ids=("00", "02"), n_train=24,
                               n_test_normal=16, n_test_anomaly=16, anomalies=("clicks",), severity=1.0,
                               duration_s=1.0, seed=5)
    config = {**TINY_NET, "epochs": 12, "encoder": "beats", "encoder_path": str(beats_file)}
    res = run(tree, machine_type="fan", method="tldiffgan", config=config, store=str(base / "store"),
              runs_root=str(base / "runs"), registry=str(base / "registry"), seed=0, num_workers=2)
    return base, res


@pytest.mark.slow
def test_tldiffgan_detects_the_anomalies_with_a_detector_chosen_on_validation_only(tldiffgan_run):
    from stethoscope.evaluation.metrics import auc, pauc
    from stethoscope.splits import read_run_split
    from stethoscope.stages.score import choose_score_variant

    _, res = tldiffgan_run
    run_dir = Path(res.run_dir)
    assert res.metrics["machine_types"]["fan"]["mean"]["auc"] >= AUC_BAR, res.metrics["machine_types"]["fan"]
    record = json.loads((run_dir / "detect.json").read_text())
    assert record["candidates"] == CANDIDATES
    choice = record["machine_types"]["fan"]
    variants = pd.read_parquet(run_dir / "detector_scores.parquet")
    val = variants[variants["role"] == "validation"]
    y = (val["label"] == "anomaly").to_numpy().astype(int)
    means = {c: (auc(y, val[f"variant:{c}"]) + pauc(y, val[f"variant:{c}"])) / 2 for c in CANDIDATES}
    assert means[choice["selected"]] == pytest.approx(max(means.values()))  # Eq. 6, on validation clips
    # relabelling every clip outside the validation clips changes nothing chosen
    rows = variants.copy()
    outside = rows["role"] != "validation"
    rows.loc[outside, "label"] = np.where(rows.loc[outside, "label"] == "anomaly", "normal", "anomaly")
    assert choose_score_variant(rows, read_run_split(run_dir), configured="knn")["selected"] == choice["selected"]
    workers = json.loads((run_dir / "run.json").read_text())["workers"]["fan"]
    assert sorted(w["rank"] for w in workers) == [0, 1]  # trained data-parallel on two Ray Train workers
    emb = pd.read_parquet(run_dir / "embeddings.parquet")
    assert len(emb["embedding"].iloc[0]) == 16 + 32  # Z_mel ⊕ Z_wave


@pytest.mark.slow
def test_the_bundle_references_the_encoder_and_scores_and_maps_like_the_run(tldiffgan_run, beats_file):
    from stethoscope.data.audio import load_audio
    from stethoscope.encoders.base import file_sha256
    from stethoscope.publishing.bundle import load_bundle

    base, res = tldiffgan_run
    bundle = load_bundle(base / "registry", "fan")
    (member,) = bundle.manifest["members"]
    assert member["encoder"] == {"name": "beats", "path": str(beats_file), "sha256": file_sha256(beats_file)}
    assert member["can_localize"] is True
    digests = {f["sha256"] for f in bundle.manifest["files"].values()}
    assert file_sha256(beats_file) not in digests  # the encoder's weights are referenced, never copied
    for machine_id in ("00", "02"):
        rows = res.scores[res.scores["machine_id"] == machine_id].head(3)
        waves = [load_audio(p, 16000)[0] for p in rows["path"]]
        out = bundle.score_waveforms(waves, f"id_{machine_id}", want_map=True)
        assert [o["raw"][0] for o in out] == pytest.approx(rows["score"].tolist(), rel=1e-5, abs=1e-6)
        (amap,) = out[0]["maps"].values()
        assert amap.shape == (32, 32)  # |x̂ − μ| over the clip's 32 mels × 32 frames


@pytest.mark.slow
def test_anomaly_map_figures_have_the_three_panels(tldiffgan_run):
    from stethoscope import checkpoint as ckpt_io
    from stethoscope import runs
    from stethoscope.stages.evaluate import write_anomaly_maps
    from stethoscope.stages.ingest import ingest_stage

    _, res = tldiffgan_run
    run_dir = Path(res.run_dir)
    manifest = json.loads((run_dir / "run.json").read_text())
    method, _ = ckpt_io.load(run_dir / runs.run_units(manifest)[0].folder)
    prepared = ingest_stage(manifest["data_root"], method.inputs, machine_type="fan", machine_ids=manifest["ids"],
                            store=manifest["store"])
    paths = write_anomaly_maps(prepared, run_dir, method, 3, res.scores)
    assert [p.parent.name for p in paths] == ["fan"] * 3
    assert [p.name.split("_id_")[0] for p in paths] == ["anomaly", "normal", "anomaly"]
    import matplotlib.image

    img = matplotlib.image.imread(paths[0])
    assert img.shape[1] > 2.5 * img.shape[0]  # three panels side by side
