"""The IMDN Method (issue 16 §2, AITHU DCASE 2022 report §3.2, Eq. 3-4, Tables 6 and 8): Config, presets, examples,
training, scores, anomaly maps and checkpoints. Tiny networks on synthetic log-mels; CPU, one torch thread, no Ray."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from stethoscope import methods
from stethoscope.errors import ConfigError, DataError
from stethoscope.nn.imdn import DFNet, IGNN, LRCGNN
from stethoscope.nn.mixture import MixtureParams, diagonal_gmm_marginal_nll, diagonal_gmm_nll
from stethoscope.presets import cpu_preset, load_preset
from stethoscope.training.loop import train_in_process

IMDN = methods.get("imdn")
#: Table 8 (features as Table 7): machine → (n_mels, n_fft, n_frames, network class)
TABLE_8 = {
    "bearing": (128, 2048, 100, LRCGNN),
    "fan": (128, 2048, 60, LRCGNN),
    "gearbox": (64, 2048, 100, DFNet),
    "slider": (64, 2048, 100, LRCGNN),
    "ToyCar": (64, 2048, 100, LRCGNN),
    "ToyTrain": (64, 2048, 100, DFNet),
    "valve": (64, 1024, 30, IGNN),
}
TINY = dict(n_mels=8, n_frames=5, n_components=2, hidden=16, bottleneck=4, gru_layers=1, dfnet_width=16,
            dfnet_emb_dim=16, dfnet_df_hidden=16, dfnet_df_layers=1, train_frames=40, windows_per_clip=8,
            batch_size=8, lr=1e-2, score_hop=1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    yield
    torch.set_num_threads(previous)


def _tiny(**overrides) -> "IMDN":
    return IMDN(IMDN.make_config({**TINY, **overrides}))


def _log_mels(n: int, t: int, seed: int, m: int = 8) -> np.ndarray:
    """Smooth sinusoidal patterns in dB (−40 ± 10) with a random phase per clip: the center frame of a window is
    predictable from its neighbours. float32 [n, m, t]."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * math.pi, (n, 1, 1))
    frames, bands = np.arange(t)[None, None, :], np.arange(m)[None, :, None]
    x = -40.0 + 10.0 * np.sin(0.4 * frames + 0.3 * bands + phase) + 0.5 * rng.standard_normal((n, m, t))
    return x.astype(np.float32)


def _shuffle_frames(x: np.ndarray, seed: int, fraction: float = 0.2) -> np.ndarray:
    """Anomalies with the normal clips' values but not their time structure: in each clip, a random ``fraction``
    of the frames swap places. Every cell keeps a normal value, so only a model of the frames' context sees them."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    for clip in x:
        chosen = rng.choice(clip.shape[1], int(fraction * clip.shape[1]), replace=False)
        clip[:, chosen] = clip[:, rng.permutation(chosen)]
    return x


@pytest.fixture(scope="module")
def trained():
    """A tiny LRCGNN IMDN trained 20 epochs (in process, the train loop's semantics) on 24 clips of 40 frames."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = _tiny(network="lrcgnn")
    clips = _log_mels(24, 40, seed=1)
    history = train_in_process(m, [{"log_mel": clips[:12]}, {"log_mel": clips[12:]}], epochs=20, seed=0,
                               val_clips=[{"log_mel": _log_mels(4, 40, seed=9)}])
    return m, history


# ------------------------------------------------------------------------------------------------- Config, presets
def test_defaults_are_table_8_bearing_and_table_6():
    cfg = IMDN.make_config()
    assert (cfg.n_mels, cfg.n_fft, cfg.n_frames, cfg.network) == (128, 2048, 100, "lrcgnn")
    assert (cfg.hidden, cfg.bottleneck, cfg.gru_layers) == (128, 32, 3)
    spec = IMDN.default_feature_spec(cfg)
    assert (spec.kind, spec.scale, spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels) == (
        "mel", "db", 16000, 2048, 512, 128)
    assert IMDN.default_scope == "per_machine_type" and IMDN.labels == ()
    assert set(IMDN.input_specs(cfg)) == {"log_mel"}


@pytest.mark.parametrize("values, message", [
    ({"n_frames": 2}, r"imdn config: n_frames = 2; expected an integer >= 3"),
    ({"network": "cnn"}, r"imdn config: network = 'cnn'; expected one of \['ignn', 'lrcgnn', 'dfnet'\]"),
    ({"n_frame": 30}, r"unknown key\(s\) \['n_frame'\]"),
    ({"train_frames": 50}, r"train_frames = 50; expected >= n_frames = 100"),
    ({"windows_per_clip": 0}, r"windows_per_clip = 0; expected an integer >= 1"),
    ({"conv_kernel": 4}, r"imdn config: conv_kernel = 4; expected odd"),
    ({"n_components": 0}, r"imdn config: n_components = 0; expected >= 1"),
    ({"val_fraction": 1.0}, r"val_fraction = 1.0"),
    ({"lr": 0}, r"lr = 0"),
])
def test_config_rejects_bad_values_naming_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        IMDN.make_config(values)


@pytest.mark.parametrize("machine", list(TABLE_8))
def test_presets_load_for_every_machine_type_and_build_table_8s_network(machine):
    n_mels, n_fft, n_frames, network_cls = TABLE_8[machine]
    values = load_preset("imdn", machine)
    cfg = IMDN.make_config(values)
    m = IMDN(cfg)
    assert type(m.network) is network_cls
    assert (m.feature_spec.n_mels, m.feature_spec.n_fft, m.network.config.n_frames) == (n_mels, n_fft, n_frames)
    assert m.network.config.n_mels == n_mels


def test_the_cpu_preset_combines_with_a_paper_preset():
    values = {**load_preset("imdn", "gearbox"), **cpu_preset("imdn")}
    m = IMDN(IMDN.make_config(values))
    assert type(m.network) is DFNet and m.network.df_gru.num_layers == 1 and m.config.windows_per_clip == 4
    assert m.network.config.n_frames == 100  # Table 8's row is kept


def test_a_preset_for_an_unknown_machine_type_is_refused():
    with pytest.raises(ConfigError, match="no row for machine type 'pump'"):
        load_preset("imdn", "pump")


# ------------------------------------------------------------------------------------------------------ examples
def test_examples_are_segments_with_their_real_frame_counts():
    m = _tiny(train_frames=10)
    ragged = np.empty(2, dtype=object)
    ragged[0] = np.arange(8 * 25, dtype=np.float32).reshape(8, 25)  # 25 frames: segments at 0, 10 and 15 (end)
    ragged[1] = np.ones((8, 7), np.float32)  # 7 frames: one segment, zero-padded to 10
    ex = m.examples({"log_mel": ragged})
    assert ex["x"].shape == (4, 8, 10) and ex["frames"].tolist() == [10, 10, 10, 7]
    assert ex["x"][2, 0, 0] == 15 and ex["x"][2, 0, -1] == 24  # the end-aligned segment
    assert (ex["x"][3, :, 7:] == 0).all() and (ex["x"][3, :, :7] == 1).all()
    with pytest.raises(DataError, match=r"has 3 frames, fewer than one window \(n_frames = 5\)"):
        m.examples({"log_mel": np.zeros((1, 8, 3), np.float32)})


def test_a_constant_training_log_mel_is_refused():
    m = _tiny()
    batch = m.to_tensors(m.examples({"log_mel": np.full((2, 8, 40), -30.0, np.float32)}))
    with pytest.raises(DataError, match="imdn: every training value is -30.000; standardisation is undefined"):
        m.fit_statistics([batch])


def test_sampled_windows_stay_inside_the_real_frames():
    m = _tiny(train_frames=12, windows_per_clip=50)
    x = np.zeros((2, 8, 12), np.float32)
    x[:] = np.arange(12, dtype=np.float32)  # value = frame index
    batch = m.to_tensors({"x": x, "frames": np.array([12, 6])})
    w = m.sample_windows(batch, np.random.default_rng(0))  # identity standardisation: values stay frame indices
    assert w.shape == (100, 8, 5)
    assert bool((w[:, :, 1:] - w[:, :, :-1] == 1).all())  # consecutive frames
    assert float(w[50:].max()) <= 5 and float(w[:50].max()) == 11  # clip 2 has 6 real frames: starts 0..1 only
    assert set(w[50:, 0, 0].tolist()) == {0.0, 1.0}


# ------------------------------------------------------------------------------------------- training and scores
def test_training_lowers_the_nll(trained):
    _, history = trained
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] - 3.0, (first, last)  # nats per window; ours: 12.2 → −4.5 (validation 11.1 → −6.9)
    assert last["val_loss"] < first["val_loss"] - 3.0, (first, last)


def test_clips_with_shuffled_frames_score_higher_once_trained(trained):
    m, _ = trained
    normal = _log_mels(16, 40, seed=2)
    anomalous = _shuffle_frames(_log_mels(16, 40, seed=3), seed=4)
    batch = {"log_mel": torch.from_numpy(np.concatenate([normal, anomalous]))}
    labels = [0] * 16 + [1] * 16
    scores = m.score(batch).numpy()
    assert scores.shape == (32,) and scores.dtype == np.float32
    auc = roc_auc_score(labels, scores)
    assert auc > 0.95, auc  # ours: 1.0
    untrained = _tiny(network="lrcgnn")
    untrained.mean, untrained.std = m.mean, m.std
    chance = roc_auc_score(labels, untrained.score(batch).numpy())
    assert chance < 0.75, chance  # the same network untrained: ours 0.47 (the values alone do not tell)


def test_scores_do_not_depend_on_chunking_and_survive_a_state_dict_round_trip(trained):
    m, _ = trained
    x = torch.from_numpy(_log_mels(5, 33, seed=5))
    reference = m.score({"log_mel": x})
    config = m.config
    m.config = dataclasses.replace(config, score_chunk=7)  # a window chunk smaller than one clip's windows
    try:
        assert torch.allclose(m.score({"log_mel": x}), reference, atol=1e-5)
    finally:
        m.config = config
    fresh = _tiny(network="lrcgnn")
    assert not torch.allclose(fresh.score({"log_mel": x}), reference)
    fresh.load_state_dict(m.state_dict())
    assert (fresh.mean, fresh.std) == (m.mean, m.std) and m.std != 1.0
    assert torch.equal(fresh.score({"log_mel": x}), reference)


def test_localize_marks_the_corrupted_cells(trained):
    m, _ = trained
    x = _log_mels(2, 40, seed=6)
    x[:, 2:5, 15:20] += 20.0  # a 3-bin × 5-frame patch
    amap = m.localize({"log_mel": torch.from_numpy(x)})
    assert amap.shape == (2, 8, 40) and torch.isfinite(amap).all()
    inside = torch.zeros(8, 40, dtype=torch.bool)
    inside[2:5, 15:20] = True
    assert float(amap[:, inside].mean()) > float(amap[:, ~inside].mean()) + 5.0
    assert m.can_localize


def test_short_clips_and_wrong_mels_are_clear_errors(trained):
    m, _ = trained
    with pytest.raises(DataError, match=r"a scored clip has 4 frames, fewer than one window \(n_frames = 5\)"):
        m.score({"log_mel": torch.zeros(1, 8, 4)})
    with pytest.raises(DataError, match=r"log_mel must be \[B, 8, frames\]"):
        m.score({"log_mel": torch.zeros(1, 16, 40)})


@pytest.mark.parametrize("network", ["ignn", "dfnet"])
def test_the_other_networks_train_through_the_method(network):
    m = _tiny(network=network)
    history = train_in_process(m, [{"log_mel": _log_mels(8, 40, seed=7)}], epochs=6, seed=0)
    assert history[-1]["loss"] < history[0]["loss"] - 1.0, history


# -------------------------------------------------------------------------------------------- the marginal NLL
def test_marginal_nll_sums_to_the_nll_for_one_component_and_matches_torch_for_three():
    torch.manual_seed(1)
    n, d = 4, 5
    one = MixtureParams(torch.randn(n, 1), torch.randn(n, 1, d), 0.3 * torch.randn(n, 1, d))
    x = torch.randn(n, d)
    assert torch.allclose(diagonal_gmm_marginal_nll(x, one).sum(dim=1), diagonal_gmm_nll(x, one), atol=1e-5)
    three = MixtureParams(torch.randn(n, 3), torch.randn(n, 3, d), 0.3 * torch.randn(n, 3, d))
    marginal = torch.distributions.MixtureSameFamily(  # per dimension: a 1-D mixture with the same weights
        torch.distributions.Categorical(logits=three.logits[:, None, :].expand(n, d, 3)),
        torch.distributions.Normal(three.means.transpose(1, 2), three.log_scales.exp().transpose(1, 2)),
    )
    assert torch.allclose(diagonal_gmm_marginal_nll(x, three), -marginal.log_prob(x), atol=1e-5)
