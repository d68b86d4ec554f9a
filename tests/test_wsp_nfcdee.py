"""The WSP-NFCDEE Method (issue 16 §1, ``wsp_nfcdee``): Config, Table 7 presets, segment statistics, training on
synthetic machine sounds (stethoscope.data.synthetic) of two sections, the section condition, unseen sections, and
checkpoints. CPU, one torch thread, seeded; no Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from stethoscope import checkpoint, methods
from stethoscope.data.features import log_mel
from stethoscope.data.labels import Vocab
from stethoscope.data.synthetic import synthesize_clip
from stethoscope.errors import ConfigError, DataError
from stethoscope.presets import load_preset
from stethoscope.scoring import encode_labels
from stethoscope.training.loop import train_in_process

WSP = methods.get("wsp_nfcdee")
#: A small network and input for a CPU test (32 mels, 1 s clips = 32 frames = 3 segments of 10 frames).
SMALL = {"n_mels": 32, "n_fft": 1024, "n_frames": 10, "transforms": 2, "hidden_features": [32, 32],
         "batch_size": 32, "lr": 5e-3}
VOCAB = Vocab(["fan"], ["fan/section_00", "fan/section_01"], [], {}, [])
TABLE_7 = {  # n_mels, n_fft, n_frames
    "bearing": (128, 2048, 100), "fan": (128, 2048, 60), "gearbox": (64, 2048, 100), "slider": (64, 2048, 100),
    "ToyCar": (64, 2048, 100), "ToyTrain": (64, 2048, 100), "valve": (64, 1024, 30),
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _mels(spec, section: int, n: int, anomaly: str | None = None, severity: float = 1.0, seed: int = 0) -> np.ndarray:
    """n synthetic 1 s fan clips of ``section`` as log-mels [n, M, 32] (dB)."""
    rng = np.random.default_rng([seed, section, 0 if anomaly is None else 1])
    return np.stack([log_mel(synthesize_clip("fan", f"{section:02d}", anomaly=anomaly, severity=severity,
                                             duration_s=1.0, rng=rng), spec).numpy()
                     for _ in range(n)]).astype(np.float32)


def _batch(x: np.ndarray, groups) -> dict[str, torch.Tensor]:
    return {"log_mel": torch.from_numpy(x), "group": torch.as_tensor(np.asarray(groups), dtype=torch.long)}


@pytest.fixture(scope="module")
def trained():
    """A small model trained 30 epochs on 30 normal clips of each of two sections; its untrained twin (same seed)
    and the training history."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = WSP.make_config(SMALL)
    spec = WSP.input_specs(cfg)["log_mel"]
    x = np.concatenate([_mels(spec, 0, 30), _mels(spec, 1, 30)])
    g = np.repeat([0, 1], 30)
    torch.manual_seed(0)
    untrained = WSP(cfg, vocab=VOCAB)
    train_in_process(untrained, [{"log_mel": x, "group": g}], epochs=0)
    torch.manual_seed(0)
    model = WSP(cfg, vocab=VOCAB)
    history = train_in_process(model, [{"log_mel": x, "group": g}], epochs=30, seed=0)
    torch.set_num_threads(previous)
    return model, untrained, history, spec


# ---------------------------------------------------------------------------------------------------- Config
def test_config_defaults_are_table_7_fan_row_and_bad_values_name_the_field():
    cfg = WSP.make_config()
    assert (cfg.n_mels, cfg.n_fft, cfg.n_frames) == TABLE_7["fan"]
    assert cfg.hop_length == 512 and cfg.segment_hop is None and cfg.hop == 60
    spec = WSP.input_specs(cfg)["log_mel"]
    assert (spec.n_mels, spec.n_fft, spec.hop_length, spec.scale) == (128, 2048, 512, "db")
    for values, match in [
        ({"n_frames": 0}, "n_frames = 0"),
        ({"segment_hop": 0}, "segment_hop = 0"),
        ({"init_alpha": 1.0}, "init_alpha = 1.0"),
        ({"unbiased_std": True, "n_frames": 1}, "n_frames = 1"),
        ({"flow": "glow"}, "flow = 'glow'"),
        ({"context": "text"}, "context = 'text'"),
        ({"transforms": 0}, "transforms = 0"),
        ({"hidden_features": [64, 0]}, r"hidden_features\[1\] = 0"),
        ({"min_scale": 0.0}, "min_scale = 0.0"),
        ({"lr": 0.0}, "lr = 0.0"),
        ({"val_fraction": 1.0}, "val_fraction = 1.0"),
        ({"n_frames": "many"}, "n_frames"),
        ({"n_frame": 60}, "n_frame"),  # an unknown key
    ]:
        with pytest.raises(ConfigError, match=match):
            WSP.make_config(values)


def test_a_log_mel_of_other_mels_is_refused():
    cfg = WSP.make_config(SMALL)
    other = WSP.input_specs(WSP.make_config({**SMALL, "n_mels": 16}))
    with pytest.raises(ConfigError, match="16 mels but the flow is built for n_mels = 32"):
        WSP(cfg, other, VOCAB)


@pytest.mark.parametrize("machine_type", list(TABLE_7))
def test_preset_loads_table_7_for_every_machine_type(machine_type):
    values = load_preset("wsp_nfcdee", machine_type)
    assert (values["n_mels"], values["n_fft"], values["n_frames"]) == TABLE_7[machine_type]
    cfg = WSP.make_config(values)
    spec = WSP.input_specs(cfg)["log_mel"]
    assert (spec.n_mels, spec.n_fft) == TABLE_7[machine_type][:2]
    # a 10 s DCASE clip (313 frames at hop 512) holds 313 // n_frames whole segments
    m = WSP(cfg, vocab=VOCAB)
    with torch.no_grad():
        stats = m._segment_statistics(torch.zeros(1, cfg.n_mels, 313))
    assert stats.shape == (1, 313 // cfg.n_frames, 2, cfg.n_mels)


# ---------------------------------------------------------------------------------------------------- data
def test_examples_are_the_segments_mean_and_std():
    cfg = WSP.make_config({**SMALL, "n_mels": 4, "n_frames": 5})
    m = WSP(cfg, vocab=VOCAB)
    x = np.random.default_rng(0).standard_normal((2, 4, 12)).astype(np.float32)  # 2 whole segments, 2 frames dropped
    ex = m.examples({"log_mel": x, "group": np.array([1, 0])})
    assert ex["stats"].shape == (4, 2, 4) and ex["group"].tolist() == [1, 1, 0, 0]
    seg = x[1, :, 5:10]  # clip 1, segment 1
    np.testing.assert_allclose(ex["stats"][3, 0], seg.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ex["stats"][3, 1], seg.std(axis=1), rtol=1e-5, atol=1e-6)
    # the trainable pooling on the statistics is Eq. 2's WSP of the segment itself
    with torch.no_grad():
        pooled = m.model.wsp.combine(torch.from_numpy(ex["stats"][3:]))
        direct = m.model.wsp(torch.from_numpy(seg)[None])
    assert torch.allclose(pooled, direct, atol=1e-6)
    with pytest.raises(DataError, match="shorter than one segment of n_frames = 5"):
        m.examples({"log_mel": x[:, :, :4], "group": np.array([0, 1])})


def test_the_standardization_is_fitted_on_the_initial_wsp_vectors():
    """fit_statistics in two batches gives the mean and (Bessel) std of α·mean + β·std at α = β = 0.5."""
    m = WSP(WSP.make_config({**SMALL, "n_mels": 3}), vocab=VOCAB)
    stats = torch.randn(10, 2, 3) * torch.tensor([4.0, 1.0, 0.5]) + 7.0
    m.fit_statistics([{"stats": stats[:6]}, {"stats": stats[6:]}])
    y = 0.5 * stats[:, 0] + 0.5 * stats[:, 1]
    assert torch.allclose(m.model.density.loc, y.mean(dim=0), atol=1e-5)
    assert torch.allclose(m.model.density.scale, y.std(dim=0), atol=1e-5)
    with pytest.raises(DataError, match="1 training segment"):
        m.fit_statistics([{"stats": stats[:1]}])


def test_training_needs_the_standardization():
    m = WSP(WSP.make_config(SMALL), vocab=VOCAB)
    with pytest.raises(RuntimeError, match="standardization is not fitted"):
        m.training_step({"stats": torch.zeros(4, 2, 32), "group": torch.zeros(4, dtype=torch.long)})


# ---------------------------------------------------------------------------------------------------- training
def test_loss_falls_and_alpha_stays_on_the_simplex(trained):
    model, _, history, _ = trained
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 56.9 → 12.7 nats
    w = model.model.wsp.weights.detach()
    assert torch.all(w > 0) and abs(float(w.sum()) - 1.0) < 1e-6


def test_scores_synthetic_anomalies_above_the_bar(trained):
    """Normal clips vs clips with an extra harmonic partial (severity 0.5), 10 + 10 per section, unseen seeds:
    AUC >= 0.85 (measured 0.935)."""
    model, _, _, spec = trained
    normal = np.concatenate([_mels(spec, 0, 10, seed=1), _mels(spec, 1, 10, seed=1)])
    anomalous = np.concatenate([_mels(spec, 0, 10, "harmonic", 0.5, seed=2), _mels(spec, 1, 10, "harmonic", 0.5, seed=2)])
    g = np.repeat([0, 1], 10)
    s_n, s_a = model.score(_batch(normal, g)), model.score(_batch(anomalous, g))
    assert s_n.shape == (20,) and s_n.dtype == torch.float32
    auc = roc_auc_score([0] * 20 + [1] * 20, np.r_[s_n.numpy(), s_a.numpy()])
    assert auc >= 0.85, auc


def test_the_density_is_conditioned_on_the_section(trained):
    """Normal clips scored under the other section's density get a higher NLL once trained (AUC > 0.95; measured
    1.0), and not before (the untrained flow: measured 0.49)."""
    model, untrained, _, spec = trained
    normal = np.concatenate([_mels(spec, 0, 10, seed=3), _mels(spec, 1, 10, seed=3)])
    g = np.repeat([0, 1], 10)

    def auc(m):
        own, other = m.score(_batch(normal, g)), m.score(_batch(normal, 1 - g))
        return roc_auc_score([0] * 20 + [1] * 20, np.r_[own.numpy(), other.numpy()])

    assert auc(model) > 0.95
    assert auc(untrained) < 0.7


def test_a_clip_score_is_the_mean_over_its_segments(trained):
    model, _, _, spec = trained
    x = _mels(spec, 1, 2, seed=4)
    per_segment = model.segment_scores(_batch(x, [1, 1]))
    assert per_segment.shape == (2, 3)
    assert torch.allclose(model.score(_batch(x, [1, 1])), per_segment.mean(dim=1).cpu())


def test_an_unseen_section_is_a_clear_error(trained):
    model, _, _, spec = trained
    x = _mels(spec, 0, 2, seed=5)
    with pytest.raises(DataError, match=r"section index \[2\] is not a section seen in training"):
        model.score(_batch(x, [0, 2]))
    with pytest.raises(DataError, match="lacks 'group'"):
        model.score({"log_mel": torch.from_numpy(x)})
    # the scoring path encodes section names with the method's policy ("error"): an unseen name never gets an index
    meta = {"machine_type": ["fan", "fan"], "section": ["00", "02"], "machine_id": [None, None],
            "path": ["a.wav", "b.wav"]}
    with pytest.raises(DataError, match="section_02"):
        encode_labels(model, meta)


def test_state_dict_and_checkpoint_round_trips_give_identical_scores(trained, tmp_path):
    model, _, _, spec = trained
    x = np.concatenate([_mels(spec, 0, 3, seed=6), _mels(spec, 1, 3, seed=6)])
    batch = _batch(x, np.repeat([0, 1], 3))
    expected = model.score(batch)
    fresh = WSP(model.config, model.inputs, model.vocab)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.score(batch), expected)
    checkpoint.save(model, tmp_path / "ckpt", {"seed": 0})
    loaded, _ = checkpoint.load(tmp_path / "ckpt")
    assert type(loaded) is WSP and loaded.standardized
    assert torch.equal(loaded.score(batch), expected)
