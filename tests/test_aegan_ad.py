"""AEGAN-AD (issue 3): training dynamics, WGAN-GP penalty, detection on synthetic anomalies, validation-split
selection of the score variant, checkpoints; plus the embedding detectors and the selection helper it uses.

Data: seeded synthetic "fan 00" clips (stethoscope.data.synthetic), 2 s long, as 32-mel log-mels (n_fft 2048,
hop 512) cut into 32 × 32 patches every 8 frames, with a small network (8 base channels, latent 16), so the whole
file trains on a CPU in seconds. Anomalies are severe (severity 1 clicks and extra harmonics).
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from stethoscope import methods
from stethoscope.data.features import FeatureSpec, log_mel
from stethoscope.data.synthetic import synthesize_clip
from stethoscope.detectors import detector_from_state, detector_names, get_detector
from stethoscope.data.labels import Vocab
from stethoscope.errors import ConfigError, DataError
from stethoscope.evaluation.selection import select_and_evaluate, select_score_variant
from stethoscope.methods.aegan_ad import AeganAd, gradient_penalty, score_variant_names
from stethoscope.training.loop import seed_everything, train_in_process

log = logging.getLogger(__name__)

SPEC = FeatureSpec(n_fft=2048, hop_length=512, n_mels=32, db_ref="absolute")
SMALL = {
    "base_channels": 8,
    "decoder_channels": 8,
    "latent_dim": 16,
    "patch_frames": 32,
    "patch_hop": 8,
    "batch_size": 32,
}
EPOCHS = 15


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _clips(n: int, seed: int, anomaly: str | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    waves = [synthesize_clip("fan", "00", anomaly=anomaly, duration_s=2.0, rng=rng) for _ in range(n)]
    return np.stack([log_mel(w, SPEC).numpy() for w in waves])  # [n, 32, 63]


def _split(seed: int) -> tuple[np.ndarray, np.ndarray]:
    normal = _clips(16, seed)
    clicks = _clips(8, seed + 1, "clicks")
    harmonic = _clips(8, seed + 2, "harmonic")
    return np.concatenate([normal, clicks, harmonic]), np.array([0] * 16 + [1] * 16)


@pytest.fixture(scope="module")
def data():
    val_x, val_y = _split(100)
    test_x, test_y = _split(200)
    return {"train": _clips(40, 1), "val_x": val_x, "val_y": val_y, "test_x": test_x, "test_y": test_y}


def _method(seed: int = 0, **overrides) -> AeganAd:
    seed_everything(seed)
    cls = methods.get("aegan_ad")
    return cls(cls.make_config({**SMALL, **overrides}), SPEC)


@pytest.fixture(scope="module")
def trained(data):
    m = _method(0)
    history = train_in_process(m, [{"log_mel": data["train"]}], epochs=EPOCHS, seed=0,
                               val_clips=[{"log_mel": data["train"][:8]}])
    m.fit_detector([{"log_mel": torch.from_numpy(data["train"][i : i + 16])} for i in range(0, 40, 16)])
    val = {k: v.numpy() for k, v in m.score_variants({"log_mel": torch.from_numpy(data["val_x"])}).items()}
    test = {k: v.numpy() for k, v in m.score_variants({"log_mel": torch.from_numpy(data["test_x"])}).items()}
    return {"method": m, "history": history, "val": val, "test": test}


# ---------------------------------------------------------------------------------------------------------------------
# training


def test_losses_move_the_right_way(trained):
    h = trained["history"]
    first, last = h[0], h[-1]
    # Reconstruction: training and validation MSE fall substantially.
    assert last["loss_rec"] < 0.6 * first["loss_rec"], (first["loss_rec"], last["loss_rec"])
    assert last["val_loss"] < 0.6 * first["val_loss"], (first["val_loss"], last["val_loss"])
    # Critic: its loss and the gradient penalty fall, and it ends up scoring real patches above reconstructions.
    assert last["loss_d"] < first["loss_d"] - 1.0, (first["loss_d"], last["loss_d"])
    assert last["gp"] < first["gp"], (first["gp"], last["gp"])
    assert last["wasserstein"] > 0.0
    assert all(row["steps"] == 5 for row in h)  # 160 patches / batch 32


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_alternating_steps_update_generator_and_critic(data):
    m = _method(0, n_critic=2)
    ex = m.examples({"log_mel": data["train"][:8]})
    m.fit_statistics([m.to_tensors(ex)])
    batch = m.to_tensors({k: v[:32] for k, v in ex.items()})

    g0, d0 = _params(m.generator), _params(m.discriminator)
    out = m.training_step(batch)  # step 0: critic step, then generator step
    assert {"loss_d", "gp", "loss_g", "loss_rec", "loss_fm"} <= set(out)
    assert _changed(g0, m.generator) and _changed(d0, m.discriminator)

    g1, d1 = _params(m.generator), _params(m.discriminator)
    out = m.training_step(batch)  # step 1 with n_critic = 2: critic only
    assert "loss_g" not in out and "loss_d" in out
    assert _changed(d1, m.discriminator) and not _changed(g1, m.generator)


def test_seeded_run_is_reproducible(data):
    def run(seed):
        m = _method(seed)
        hist = train_in_process(m, [{"log_mel": data["train"][:16]}], epochs=2, seed=seed)
        return hist, m.generator.state_dict(), m.discriminator.state_dict()

    h1, g1, d1 = run(7)
    h2, g2, d2 = run(7)
    assert h1 == h2
    assert all(torch.equal(g1[k], g2[k]) for k in g1) and all(torch.equal(d1[k], d2[k]) for k in d1)
    _, g3, _ = run(8)
    assert not all(torch.equal(g1[k], g3[k]) for k in g1)


# ---------------------------------------------------------------------------------------------------------------------
# WGAN-GP


def test_gradient_penalty_of_a_linear_critic_is_exact():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 3, 4, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    b = torch.tensor(0.7, dtype=torch.float64)
    real = torch.randn(5, 1, 3, 4, 4, generator=gen, dtype=torch.float64)[:, 0]
    fake = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)

    def critic(x):  # f(x) = w·x + b, so ∇f = w everywhere
        return (x * w).flatten(1).sum(1) + b

    gp = gradient_penalty(critic, real, fake, gp_lambda=10.0)
    norm = w.detach().norm()
    expected = 10.0 * (norm - 1.0) ** 2
    assert gp.item() == pytest.approx(expected.item(), rel=1e-12)
    # The penalty is differentiable in the critic's parameters: d/dw λ(‖w‖−1)² = 2λ(‖w‖−1)·w/‖w‖.
    (grad,) = torch.autograd.grad(gp, w)
    torch.testing.assert_close(grad, 2 * 10.0 * (norm - 1.0) * w.detach() / norm)
    # A critic with ‖w‖ = 1 has no penalty.
    w1 = (w / norm).detach()
    assert gradient_penalty(lambda x: (x * w1).flatten(1).sum(1), real, fake).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# detection and selection


def test_selected_variant_detects_severe_anomalies(trained, data):
    result = select_and_evaluate(trained["val"], data["val_y"], trained["test"], data["test_y"])
    name = result["selected"]
    test_auc = roc_auc_score(data["test_y"], trained["test"][name])
    log.info("selected %s: validation %s, test AUC %.3f pAUC %.3f", name, result["validation"][name],
             test_auc, result["test"]["pauc"])
    assert result["test"]["auc"] == pytest.approx(test_auc)
    assert test_auc >= 0.85
    # Every variant is a real score: all 22 are present and finite.
    assert set(trained["test"]) == set(score_variant_names())
    assert all(np.all(np.isfinite(v)) for v in trained["test"].values())


def test_selection_never_reads_test_labels(trained, data):
    base = select_and_evaluate(trained["val"], data["val_y"], trained["test"], data["test_y"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = rng.permutation(data["test_y"])
        again = select_and_evaluate(trained["val"], data["val_y"], trained["test"], shuffled)
        assert again["selected"] == base["selected"]
        assert again["validation"] == base["validation"]
    # The check is not vacuous: the selection does follow the labels it is given (the validation ones).
    flipped = select_and_evaluate(trained["val"], 1 - data["val_y"], trained["test"], data["test_y"])
    assert flipped["validation"] != base["validation"]


def test_score_returns_the_selected_variant_and_checkpoint_round_trips(trained, data):
    m = trained["method"]
    name, _ = select_score_variant(trained["val"], data["val_y"])
    m.set_score_variant(name)
    batch = {"log_mel": torch.from_numpy(data["test_x"][:6])}
    np.testing.assert_array_equal(m.score(batch).numpy(), trained["test"][name][:6])

    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = _method(123)
    fresh.load_state_dict(state)
    assert fresh.score_variant == name
    before, after = m.score_variants(batch), fresh.score_variants(batch)
    assert set(before) == set(after) == set(score_variant_names())
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)


def test_set_score_variant_rejects_unknown_names(trained):
    m = trained["method"]
    with pytest.raises(ConfigError, match="g_input_l2_mean"):
        m.set_score_variant("g_input_l3_mean")
    with pytest.raises(ConfigError, match="score_variant"):
        AeganAd.make_config({"score_variant": "nope"})


# ---------------------------------------------------------------------------------------------------------------------
# examples, conditioning


def test_examples_cut_patches_and_tile_short_clips():
    m = _method(0)
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(2, 32, 63)).astype(np.float32)
    ex = m.examples({"log_mel": clips, "group": np.array([0, 1])})
    # starts 0, 8, 16, 24 (the last full 32-frame patch starts at 24 ≤ 63 - 32)
    assert ex["x"].shape == (8, 1, 32, 32) and ex["x"].dtype == np.float32
    np.testing.assert_array_equal(ex["x"][1, 0], clips[0][:, 8:40])
    np.testing.assert_array_equal(ex["group"], [0, 0, 0, 0, 1, 1, 1, 1])

    short = np.empty(1, dtype=object)
    short[0] = clips[0][:, :20]
    ex = m.examples({"log_mel": short})
    assert ex["x"].shape == (1, 1, 32, 32)
    np.testing.assert_array_equal(ex["x"][0, 0], np.concatenate([clips[0][:, :20], clips[0][:, :12]], axis=1))

    with pytest.raises(DataError, match="n_mels=32"):
        m.examples({"log_mel": rng.normal(size=(1, 16, 63)).astype(np.float32)})


def test_adaptive_layernorm_conditions_on_the_class(data):
    seed_everything(0)
    cfg = AeganAd.make_config({**SMALL, "adaptive_layernorm": True})
    m = AeganAd(cfg, SPEC, Vocab(machine_type=["fan"], group=["fan/id_00", "fan/id_02"]))
    assert m.labels == ("group",) and m.num_classes == 2
    clips = data["train"][:8]
    labels = np.array([0, 1] * 4)
    train_in_process(m, [{"log_mel": clips, "group": labels}], epochs=2, seed=0)
    x = {"log_mel": torch.from_numpy(clips[:2])}
    as0 = m.score_variants({**x, "group": torch.tensor([0, 0])})["g_input_l2_mean"]
    as1 = m.score_variants({**x, "group": torch.tensor([1, 1])})["g_input_l2_mean"]
    assert not torch.equal(as0, as1)
    with pytest.raises(DataError, match="'group'"):
        m.score_variants(x)


# ---------------------------------------------------------------------------------------------------------------------
# detectors


def test_detector_registry_and_known_values():
    assert detector_names() == ["cosine", "gmm", "knn", "lof", "mahalanobis", "sos"]
    with pytest.raises(ConfigError, match="knn"):
        get_detector("isolation_forest")
    with pytest.raises(ConfigError):
        get_detector("knn", n_neighbors=0)

    train = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    query = np.array([[3.0, 0.0], [0.0, -2.0]])
    # cosine to the mean (0.75, 1): 1 - (x·m)/(|x||m|)
    m = np.array([0.75, 1.0])
    expected = 1 - query @ m / (np.linalg.norm(query, axis=1) * np.linalg.norm(m))
    np.testing.assert_allclose(get_detector("cosine").fit(train).decision_function(query), expected)
    # Euclidean KNN, k = 1: distance to the nearest training point
    knn = get_detector("knn", n_neighbors=1, metric="euclidean").fit(train)
    np.testing.assert_allclose(knn.decision_function(query), [1.0, np.sqrt(5.0)])
    # Mahalanobis with the (biased) sample covariance
    mu, cov = train.mean(0), np.cov(train, rowvar=False, bias=True)
    d = query - mu
    expected = np.sqrt(np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d))
    np.testing.assert_allclose(get_detector("mahalanobis").fit(train).decision_function(query), expected)
    with pytest.raises(DataError, match="n_neighbors"):
        get_detector("lof", n_neighbors=4).fit(train)


def test_detectors_rank_outliers_and_survive_weights_only_checkpoints():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 6)) + 4.0
    query = np.vstack([rng.normal(size=(10, 6)) + 4.0, rng.normal(size=(10, 6)) * 2.0 - 4.0])
    y = np.array([0] * 10 + [1] * 10)
    for name in detector_names():
        det = get_detector(name).fit(train)
        scores = det.decision_function(query)
        assert roc_auc_score(y, scores) > 0.95, name
        buf = io.BytesIO()
        torch.save(det.state_dict(), buf)
        buf.seek(0)
        again = detector_from_state(torch.load(buf, weights_only=True))
        np.testing.assert_array_equal(again.decision_function(query), scores)


def test_select_score_variant_picks_the_best_mean_of_auc_and_pauc():
    y = np.array([0, 0, 0, 0, 1, 1])
    scores = {
        "perfect": np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9]),
        "inverted": np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2]),
        "half": np.array([0.1, 0.2, 0.9, 0.4, 0.5, 0.95]),
        "broken": np.array([0.1, np.nan, 0.3, 0.4, 0.8, 0.9]),
    }
    name, table = select_score_variant(scores, y)
    assert name == "perfect"
    assert table["perfect"] == {"auc": 1.0, "pauc": 1.0, "mean": 1.0}
    assert table["inverted"]["auc"] == 0.0
    assert table["half"]["auc"] == pytest.approx(7 / 8)
    assert np.isnan(table["broken"]["mean"])
    with pytest.raises(DataError, match="both normal and anomalous"):
        select_score_variant(scores, np.zeros(6, dtype=int))


# ---------------------------------------------------------------------------------------------------------------------
# fidelity: feature spec, per-machine presets (AITHU DCASE 2022 report §3.3)


def test_feature_spec_is_the_reference_one():
    """n_fft 2048, hop 512, 128 mels, 128 × 128 patches; librosa power_to_db(ref=1.0) with its 80 dB floor below the
    clip maximum, before the min-max scaling to [-1, 1] (reference dcase22/config.yaml and utils.generate_spec)."""
    cfg = AeganAd.make_config()
    spec = AeganAd.default_feature_spec(cfg)
    assert (spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels, spec.power) == (16000, 2048, 512, 128, 2.0)
    assert (spec.db_ref, spec.top_db, spec.amin) == ("absolute_top_db", 80.0, 1e-10)
    assert (cfg.patch_frames, spec.n_mels) == (128, 128)
    # the floor, on a clip with a silent half: 80 dB below the loudest cell, and the loud part in absolute dB
    t = np.arange(32000) / 16000
    wave = np.where(t < 1.0, 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0).astype(np.float32)
    db = log_mel(wave, spec).numpy()
    assert db.max() - db.min() == pytest.approx(80.0, abs=1e-3)
    absolute = log_mel(wave, FeatureSpec(n_fft=2048, hop_length=512, db_ref="absolute")).numpy()
    assert db.max() == pytest.approx(float(absolute.max()), abs=1e-3)  # ref=1.0: not relative to the maximum
    loud = absolute > absolute.max() - 80.0
    np.testing.assert_allclose(db[loud], absolute[loud], atol=1e-3)
    # the method sees 128 × 128 patches of such clips
    m = AeganAd(cfg, spec)
    ex = m.examples({"log_mel": db[None]})
    assert ex["x"].shape[1:] == (1, 128, 128)


def test_plain_autoencoder_mode_trains_the_generator_only(data):
    """use_discriminator=False (AITHU §3.3: every machine type but gearbox and slider): no critic, no d_* scores,
    the reconstruction loss falls, and it detects the synthetic anomalies above chance."""
    m = _method(0, use_discriminator=False)
    assert m.discriminator is None and set(m.modules()) == {"generator"} and set(m.optimizers()) == {"opt_g"}
    history = train_in_process(m, [{"log_mel": data["train"]}], epochs=6, seed=0)
    assert history[-1]["loss_rec"] < 0.6 * history[0]["loss_rec"], (history[0], history[-1])
    assert "loss_d" not in history[-1]
    assert m.fit_detector([{"log_mel": torch.from_numpy(data["train"][:16])}]) == {}
    variants = m.score_variants({"log_mel": torch.from_numpy(data["test_x"])})
    assert set(variants) == {n for n in score_variant_names() if n.startswith("g_")}
    # the variant chosen on the validation clips detects the test anomalies (measured: g_input_l1_mean, AUC 0.76)
    val = {k: v.numpy() for k, v in m.score_variants({"log_mel": torch.from_numpy(data["val_x"])}).items()}
    name, _ = select_score_variant(val, data["val_y"])
    assert roc_auc_score(data["test_y"], variants[name].numpy()) >= 0.7, name
    with pytest.raises(ConfigError, match="d_knn"):
        m.set_score_variant("d_knn")
    with pytest.raises(ConfigError, match="use_discriminator"):
        AeganAd.make_config({"use_discriminator": False, "score_variant": "d_lof"})


def test_adaptive_layernorm_on_the_latent_only(data):
    """adaptive_layernorm_scope="latent": a per-class LayerNorm of the latent code before the decoder; the
    convolutional LayerNorms keep their own affine parameters."""
    seed_everything(0)
    cfg = AeganAd.make_config({**SMALL, "adaptive_layernorm": True, "adaptive_layernorm_scope": "latent"})
    m = AeganAd(cfg, SPEC, Vocab(machine_type=["fan"], group=["fan/id_00", "fan/id_02"]))
    assert m.generator.latent_norm is not None
    assert all(not getattr(n, "adaptive", False) for n in m.generator.trunk.norms)
    assert all(not n.adaptive for n in m.generator.dec_norms)
    clips = data["train"][:8]
    train_in_process(m, [{"log_mel": clips, "group": np.array([0, 1] * 4)}], epochs=2, seed=0)
    assert not torch.equal(m.generator.latent_norm.scale.weight[0], m.generator.latent_norm.scale.weight[1])
    x = {"log_mel": torch.from_numpy(clips[:2])}
    as0 = m.score_variants({**x, "group": torch.tensor([0, 0])})["g_input_l2_mean"]
    as1 = m.score_variants({**x, "group": torch.tensor([1, 1])})["g_input_l2_mean"]
    assert not torch.equal(as0, as1)


def test_per_machine_presets_follow_the_aithu_report():
    from stethoscope.presets import available_presets, load_preset

    assert available_presets()["aegan_ad"] == ["bearing", "fan", "gearbox", "slider", "ToyCar", "ToyTrain", "valve"]
    with_d = {m for m in available_presets()["aegan_ad"] if load_preset("aegan_ad", m)["use_discriminator"]}
    assert with_d == {"gearbox", "slider"}
    ada = {m for m in available_presets()["aegan_ad"] if load_preset("aegan_ad", m)["adaptive_layernorm"]}
    assert ada == {"ToyCar", "gearbox"}
    assert all(load_preset("aegan_ad", m)["adaptive_layernorm_scope"] == "latent" for m in ada)
    assert {m for m in available_presets()["aegan_ad"]
            if load_preset("aegan_ad", m).get("encoder_first_norm") is False} == {"bearing", "fan", "ToyCar"}
    for machine in available_presets()["aegan_ad"]:
        AeganAd.make_config(load_preset("aegan_ad", machine))


# ---------------------------------------------------------------------------------------------------------------------
# speed work: the same maths, the CPU preset


def _literal_training_step(m: AeganAd, batch: dict[str, torch.Tensor]) -> None:
    """Eq. 5 then Eq. 6 written term by term, as AEGAN-AD's training step read before the speed work: the critic
    step reads x̂ = G(x) computed without a graph, and the generator step computes G(x) again."""
    import torch.nn.functional as F

    cfg = m.config
    x = m._scale(batch["x"])
    cond = m._cond(batch.get("group"), x.shape[0])
    m.generator.train()
    m.discriminator.train()
    with torch.no_grad():
        x_hat = m.generator(x, cond)
    d_real, _ = m.discriminator(x)
    d_fake, _ = m.discriminator(x_hat)
    gp = gradient_penalty(lambda v: m.discriminator(v)[0], x, x_hat, gp_lambda=cfg.gp_lambda)
    m.optimize(m.opt_d, d_fake.mean() - d_real.mean() + gp)
    if m.steps % cfg.n_critic == 0:
        m.discriminator.requires_grad_(False)
        x_hat = m.generator(x, cond)
        with torch.no_grad():
            _, f_real = m.discriminator(x)
        _, f_fake = m.discriminator(x_hat)
        loss_g = (F.mse_loss(x_hat, x) + cfg.mu * F.mse_loss(f_fake.mean(0), f_real.mean(0))
                  + cfg.mu_sigma * F.mse_loss(f_fake.std(0, unbiased=False), f_real.std(0, unbiased=False)))
        m.optimize(m.opt_g, loss_g)
        m.discriminator.requires_grad_(True)
    m.steps += 1


@pytest.mark.parametrize("overrides", [{}, {"n_critic": 2, "mu_sigma": 0.1}, {"adaptive_layernorm": True}],
                         ids=["defaults", "n_critic-2-sigma-matching", "adaptive-layernorm"])
def test_training_step_computes_the_literal_equations(data, overrides):
    """The training step computes G(x) once per batch and shares it between the critic and generator steps; the
    weights and every score variant after 6 steps match the term-by-term Eq. 5-6 step on the same seed (to 1e-5;
    the shared forward pass is the same computation, so they are in fact equal)."""
    vocab = Vocab(machine_type=["fan"], group=["fan/id_00", "fan/id_02"])
    groups = np.array([0, 1] * 4)

    def trained(step):
        seed_everything(3)
        m = AeganAd(AeganAd.make_config({**SMALL, **overrides}), SPEC, vocab)
        clips = {"log_mel": data["train"][:8], "group": groups}
        ex = m.examples(clips)
        m.fit_statistics([m.to_tensors(ex)])
        for i in range(6):
            idx = np.random.default_rng(i).permutation(len(ex["x"]))[:32]
            step(m, m.to_tensors({k: v[idx] for k, v in ex.items()}))
        return m, m.score_variants({"log_mel": torch.from_numpy(data["val_x"][:6]),
                                    "group": torch.from_numpy(groups[:6])})

    fast, fast_scores = trained(lambda m, b: m.training_step(b))
    slow, slow_scores = trained(_literal_training_step)
    assert fast.steps == slow.steps == 6
    for a, b in zip(list(fast.generator.parameters()) + list(fast.discriminator.parameters()),
                    list(slow.generator.parameters()) + list(slow.discriminator.parameters())):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert set(fast_scores) == set(slow_scores)
    for name in slow_scores:
        torch.testing.assert_close(fast_scores[name], slow_scores[name], rtol=0, atol=1e-5, msg=name)
    # the steps did train: the weights moved from their seeded initial values
    seed_everything(3)
    fresh = AeganAd(AeganAd.make_config({**SMALL, **overrides}), SPEC, vocab)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.generator.parameters(), fast.generator.parameters()))


def _flops_per_patch(overrides: dict) -> float:
    """FLOPs of one training step on one 128 × 128 patch (FlopCounterMode; matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    class NoModuleTracking:  # FlopCounterMode's module hooks break autograd.grad on a leaf (the WGAN-GP input)
        parents = {"Global"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    seed_everything(0)
    m = AeganAd(AeganAd.make_config({**overrides, "batch_size": 2}))
    m.x_min, m.x_max = -80.0, 0.0
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = NoModuleTracking()
    with counter:
        m.training_step({"x": -80.0 * torch.rand(2, 1, 128, 128)})
    return counter.get_total_flops() / 2


def test_cpu_preset_is_a_valid_smaller_config_that_costs_a_fraction_per_epoch():
    """presets/cpu/aegan_ad.yaml: a valid Config override (all values ours) whose epoch costs under 1/20 of the
    paper defaults' multiply-adds: each patch's step costs under 1/3, and a clip gives 1/8 as many patches."""
    from stethoscope.presets import cpu_preset, cpu_preset_path

    values = cpu_preset("aegan_ad")
    assert values == {"base_channels": 16, "decoder_channels": 16, "patch_hop": 8, "batch_size": 64}
    assert cpu_preset_path("aegan_ad").endswith("presets/cpu/aegan_ad.yaml")
    cpu, paper = AeganAd.make_config(values), AeganAd.make_config({})
    per_patch_ratio = _flops_per_patch(values) / _flops_per_patch({})
    assert per_patch_ratio < 1 / 3, per_patch_ratio
    frames = 313  # a 10 s clip at 16 kHz, hop 512
    patches = [(frames - c.patch_frames) // c.patch_hop + 1 for c in (cpu, paper)]
    assert patches == [24, 186]
    assert per_patch_ratio * patches[0] / patches[1] < 1 / 20
    # an epoch keeps the paper's number of optimizer steps: 1/8 of the patches in batches 1/8 the size
    assert paper.batch_size / cpu.batch_size == 8
    with pytest.raises(ConfigError, match="no CPU preset for method 'ganomaly'; methods with one: aegan_ad"):
        cpu_preset("ganomaly")
