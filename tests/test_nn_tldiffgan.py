"""The neural blocks of TLDiffGAN (issue 14 parts 1, 2, 5, 6): the DDPM forward process against its closed form, the
reverse chain against an exact denoiser, the noise-prediction loss going down, TMixup on a hand-computed example,
spectral normalisation on every discriminator layer, the gradient penalty of a linear critic, shapes at full size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from stethoscope.errors import ConfigError
from stethoscope.nn.diffusion import (
    DenoiserConfig,
    Denoiser,
    DiffusionConfig,
    NoiseSchedule,
    denoise,
    noise_prediction_loss,
    timestep_embedding,
)
from stethoscope.nn.gan_losses import feature_matching_loss, gradient_penalty, wgan_critic_loss
from stethoscope.nn.tldiffgan import (
    TLDiffGAN,
    TLDiffGANConfig,
    localization_maps,
    reconstruction_score,
)
from stethoscope.nn.tmixup import TemporalPool, TMixup, TMixupConfig


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and on a loaded 2-core machine far faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(**overrides) -> TLDiffGANConfig:
    """16 mels × 20 frames, two stride-2 blocks (8×10, 4×5), a 100-step schedule: fast on one CPU thread."""
    base = dict(
        n_mels=16,
        n_frames=20,
        latent_dim=8,
        base_channels=4,
        max_channels=8,
        num_layers=2,
        norm_groups=2,
        discriminator_groups=4,
        start_step=20,
        train_denoise_steps=3,
        diffusion_config=DiffusionConfig(num_steps=100, beta_start=1e-3, beta_end=0.05),
        denoiser_config=DenoiserConfig(hidden_dim=32, num_blocks=2, time_embedding_dim=16),
        tmixup_config=TMixupConfig(),
    )
    base.update(overrides)
    return TLDiffGANConfig(**base)


# ---------------------------------------------------------------------------------------------- DDPM
def test_schedule_and_forward_process_match_the_closed_form_exactly():
    cfg = DiffusionConfig(num_steps=4, beta_start=0.1, beta_end=0.4)
    sched = NoiseSchedule(cfg)
    # β = 0.1, 0.2, 0.3, 0.4 → ᾱ = 0.9, 0.72, 0.504, 0.3024 (hand-computed products of 1 − β)
    assert torch.allclose(sched.betas, torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4]))
    assert torch.allclose(sched.alpha_bars, torch.tensor([1.0, 0.9, 0.72, 0.504, 0.3024]), atol=1e-7)
    z0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    eps = torch.tensor([[0.3, 0.1], [-1.0, 2.0]])
    t = torch.tensor([3, 1])
    expected = torch.stack(
        [math.sqrt(0.504) * z0[0] + math.sqrt(0.496) * eps[0], math.sqrt(0.9) * z0[1] + math.sqrt(0.1) * eps[1]]
    )
    assert torch.allclose(sched.q_sample(z0, t, eps), expected, atol=1e-6)
    assert torch.equal(sched.q_sample(z0, 0, eps), z0)  # t = 0 is the clean latent
    # predict_start inverts q_sample for the true noise
    assert torch.allclose(sched.predict_start(sched.q_sample(z0, t, eps), t, eps), z0, atol=1e-6)
    with pytest.raises(ValueError, match="0 … T = 4"):
        sched.q_sample(z0, 5, eps)
    with pytest.raises(ValueError, match="integers"):
        sched.q_sample(z0, torch.tensor([1.0, 2.0]), eps)


def test_the_markov_chain_of_single_steps_has_the_closed_form_marginal():
    """Running q(z_t | z_{t−1}) step by step from a fixed z_0 must give mean √ᾱ_t·z_0 and variance 1 − ᾱ_t (Eq. 4)."""
    sched = NoiseSchedule(DiffusionConfig(num_steps=50, beta_start=1e-3, beta_end=0.05))
    gen = torch.Generator().manual_seed(0)
    n = 40000
    z0 = torch.tensor([2.0, -1.0, 0.5])
    z = z0.expand(n, 3).clone()
    for t in range(1, 51):
        z = sched.q_step(z, t, torch.randn(z.shape, generator=gen))
        if t in (10, 50):
            a = float(sched.alpha_bars[t])
            assert torch.allclose(z.mean(0), math.sqrt(a) * z0, atol=0.02), (t, z.mean(0))
            assert torch.allclose(z.var(0), torch.full((3,), 1 - a), rtol=0.03), (t, z.var(0), 1 - a)


def test_cosine_schedule_decreases_to_near_zero():
    sched = NoiseSchedule(DiffusionConfig(num_steps=1000, schedule="cosine"))
    ab = sched.alpha_bars
    assert ab[0] == 1 and bool((ab[1:] < ab[:-1]).all()) and float(ab[-1]) < 1e-3
    assert float(sched.betas.max()) <= 0.999 + 1e-6


def test_respaced_timesteps():
    sched = NoiseSchedule(DiffusionConfig(num_steps=100))
    assert sched.timesteps(5) == [5, 4, 3, 2, 1]
    assert sched.timesteps(10, 4) == [10, 7, 4, 1]
    assert sched.timesteps(3, 10) == [3, 2, 1]
    with pytest.raises(ValueError, match="start_step"):
        sched.timesteps(101)


class PointOracle(nn.Module):
    """The exact ε for data that is a single point z*: ε = (z_t − √ᾱ_t z*)/√(1 − ᾱ_t)."""

    def __init__(self, sched: NoiseSchedule, point: torch.Tensor):
        super().__init__()
        self.sched, self.point = sched, point

    def forward(self, z_t, t):
        a = self.sched.alpha_bars[t].reshape(-1, 1)
        return (z_t - a.sqrt() * self.point) / (1 - a).sqrt()


class GaussianOracle(nn.Module):
    """The exact E[ε | z_t] for data z_0 ~ N(0, I): z_t ~ N(0, I) and E[ε | z_t] = √(1 − ᾱ_t)·z_t."""

    def __init__(self, sched: NoiseSchedule):
        super().__init__()
        self.sched = sched

    def forward(self, z_t, t):
        return (1 - self.sched.alpha_bars[t].reshape(-1, 1)).sqrt() * z_t


@pytest.mark.parametrize("num_steps", [None, 4])
def test_denoise_with_an_exact_denoiser_lands_on_the_data_point(num_steps):
    sched = NoiseSchedule(DiffusionConfig(num_steps=100))
    point = torch.tensor([[1.5, -0.5, 2.0]])
    gen = torch.Generator().manual_seed(1)
    z_s = sched.q_sample(point.expand(8, 3), 60, torch.randn(8, 3, generator=gen))
    out = denoise(PointOracle(sched, point), sched, z_s, 60, num_steps, generator=gen)
    assert out.timesteps == (list(range(60, 0, -1)) if num_steps is None else [60, 40, 21, 1])
    assert len(out.predictions) == len(out.timesteps)
    for pred in out.predictions:
        assert torch.allclose(pred, point.expand(8, 3), atol=1e-4)
    assert out.z0 is out.predictions[-1]


def _chain_variance(sched: NoiseSchedule, steps: list[int], variance: str) -> float:
    """Var(z_0) of the reverse chain driven by the Gaussian oracle, from Var(z_s) = 1: each step is
    z' = √α'·z + σ·ξ with the oracle (its mean is √α'·z_t), so v' = α'·v + σ², σ² = β' or β̃', no noise on the last."""
    v = 1.0
    for i, t in enumerate(steps):
        t_prev = steps[i + 1] if i + 1 < len(steps) else 0
        a_t, a_prev = float(sched.alpha_bars[t]), float(sched.alpha_bars[t_prev])
        alpha = a_t / a_prev
        beta = 1 - alpha
        sigma2 = 0.0 if t_prev == 0 else (beta if variance == "beta" else (1 - a_prev) / (1 - a_t) * beta)
        v = alpha * v + sigma2
    return v


@pytest.mark.parametrize("num_steps", [None, 5])
@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_reverse_chain_noise_has_the_configured_variance(num_steps, variance):
    """For z_0 ~ N(0, I) and the exact E[ε | z_t], the reverse chain is a linear Gaussian recursion whose output
    variance is known in closed form. With σ² = β it stays exact (Ho et al. §3.2): Var = ᾱ_{τ_1}, since only the last
    step adds no noise; with σ² = β̃ it is smaller. A wrong σ (or noise on the last step) changes it."""
    cfg = DiffusionConfig(num_steps=100, beta_start=1e-3, beta_end=0.05, variance=variance)
    sched = NoiseSchedule(cfg)
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(40000, 2, generator=gen)
    out = denoise(GaussianOracle(sched), sched, z, 80, num_steps, generator=gen)
    expected = _chain_variance(sched, out.timesteps, variance)
    if variance == "beta":
        assert expected == pytest.approx(float(sched.alpha_bars[out.timesteps[-1]]), rel=1e-5)
    else:
        assert expected < 0.99 * float(sched.alpha_bars[out.timesteps[-1]])
    assert abs(float(out.z0.mean())) < 0.02
    assert torch.allclose(out.z0.var(0), torch.full((2,), expected), rtol=0.03), (out.z0.var(0), expected)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 3]), 6)
    assert emb.shape == (2, 6)
    assert torch.allclose(emb[0], torch.tensor([0.0, 0, 0, 1, 1, 1]))
    # ω = 10000^(−i/3), i = 0, 1, 2
    w = [10000 ** (-i / 3) for i in range(3)]
    assert torch.allclose(emb[1], torch.tensor([math.sin(3 * x) for x in w] + [math.cos(3 * x) for x in w]), atol=1e-6)
    assert timestep_embedding(torch.tensor([1]), 5).shape == (1, 5)


def test_noise_prediction_loss_goes_down_on_a_tiny_set():
    torch.manual_seed(0)
    sched = NoiseSchedule(DiffusionConfig(num_steps=100))
    net = Denoiser(DenoiserConfig(latent_dim=4, hidden_dim=64, num_blocks=2, time_embedding_dim=16))
    data = torch.cat([torch.full((16, 4), 1.0), torch.full((16, 4), -1.0)]) + 0.05 * torch.randn(32, 4)

    def held_out_loss() -> float:
        with torch.no_grad():  # the same t and ε every time: a fixed evaluation
            return float(noise_prediction_loss(net, sched, data.repeat(8, 1), torch.Generator().manual_seed(9)))

    before = held_out_loss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(100):
        opt.zero_grad()
        noise_prediction_loss(net, sched, data, gen).backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.4 * before, (before, after)  # measured: 1.02 → 0.18


def test_denoiser_checks_its_input():
    net = Denoiser(DenoiserConfig(latent_dim=4, hidden_dim=8, num_blocks=1, time_embedding_dim=4))
    assert net(torch.zeros(3, 4), torch.tensor(5)).shape == (3, 4)
    with pytest.raises(ValueError, match=r"z_t \[B, 4\]"):
        net(torch.zeros(3, 5), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"t \[B\]"):
        net(torch.zeros(3, 4), torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------- TMixup
def test_tmixup_mask_and_mix_on_a_hand_computed_example():
    tm = TMixup(TMixupConfig(straight_through=False))  # ŵ = 1/3 each (w = 0)
    x = torch.tensor([[[1.0, -2.0, 0.5], [3.0, 0.0, -0.5]]])  # [B=1, F=2, T=3]
    # frame 0: max 3, mean 2, power mean √((1 + 9)/2) = √5        → Pool = (5 + √5)/3
    # frame 1: max 0, mean −1, power mean √((4 + 0)/2) = √2       → Pool = (−1 + √2)/3
    # frame 2: max 0.5, mean 0, power mean √((0.25 + 0.25)/2) = .5 → Pool = 1/3
    pool = torch.tensor([(5 + math.sqrt(5)) / 3, (-1 + math.sqrt(2)) / 3, 1 / 3])
    assert torch.allclose(tm.pool(x)[0], pool, atol=1e-6)
    x_ta = tm.attention(x)[0]
    assert torch.allclose(x_ta, torch.sigmoid(pool), atol=1e-6)  # 0.918, 0.535, 0.583
    assert torch.equal(tm.mask(x_ta, 0.55), torch.tensor([1.0, 0.0, 1.0]))
    # λ = 0.25: kept frames stay, the masked frame 1 becomes 0.25·x
    mixed = tm.mix(x, tau=0.55, lam=0.25)
    assert torch.allclose(mixed, torch.tensor([[[1.0, -0.5, 0.5], [3.0, 0.0, -0.5]]]))
    assert torch.equal(tm.mix(x, tau=0.3, lam=0.25), x)  # every frame above τ: nothing masked
    assert torch.allclose(tm.mix(x, tau=0.6, lam=0.0), torch.tensor([[[1.0, 0, 0], [3.0, 0, 0]]]))
    with pytest.raises(ValueError, match="λ in"):
        tm.mix(x, 0.3, 1.5)
    with pytest.raises(ValueError, match=r"\[\.\.\., F, T\]"):
        tm(torch.zeros(5), np.random.default_rng(0))


def test_pooling_weights_sum_to_one_and_learn_through_the_straight_through_mask():
    tm = TMixup()
    assert torch.allclose(tm.pool.weights, torch.full((3,), 1 / 3))
    with torch.no_grad():
        tm.pool.logits.copy_(torch.tensor([2.0, -1.0, 0.5]))
    w = tm.pool.weights.detach()
    assert bool((w > 0).all()) and abs(float(w.sum()) - 1.0) < 1e-6
    x = torch.randn(4, 8, 10)
    mask = tm.mask(tm.attention(x), 0.35)
    assert set(torch.unique(mask.detach()).tolist()) <= {0.0, 1.0}  # the value is the hard mask
    tm.mix(x, 0.35, 0.3).square().sum().backward()
    assert tm.pool.logits.grad is not None and float(tm.pool.logits.grad.abs().sum()) > 0
    assert abs(float(tm.pool.weights.detach().sum()) - 1.0) < 1e-6
    hard = TMixup(TMixupConfig(straight_through=False))
    out = hard.mix(x, 0.35, 0.3).square().sum()
    assert not out.requires_grad  # without the estimator the mask blocks every gradient to ŵ


def test_tmixup_draws_tau_and_lambda_from_their_ranges():
    tm = TMixup(TMixupConfig(alpha=0.5))
    rng = np.random.default_rng(0)
    draws = np.array([tm.draw(rng) for _ in range(4000)])
    assert draws[:, 0].min() >= 0.2 and draws[:, 0].max() <= 0.5 and abs(draws[:, 0].mean() - 0.35) < 0.01
    assert draws[:, 1].min() >= 0 and draws[:, 1].max() <= 1 and abs(draws[:, 1].mean() - 0.5) < 0.02
    # Beta(0.5, 0.5) has variance 1/8; Beta(1, 1) would have 1/12
    assert abs(draws[:, 1].var() - 0.125) < 0.01
    x = torch.randn(2, 4, 6)
    assert torch.equal(tm(x, np.random.default_rng(5)), tm(x, np.random.default_rng(5)))  # seeded: reproducible
    assert TemporalPool()(torch.randn(2, 3, 4, 6)).shape == (2, 3, 6)


# ---------------------------------------------------------------------------------------------- GAN losses
def test_gradient_penalty_is_zero_for_a_linear_critic_with_unit_norm_gradient():
    w = torch.randn(2 * 3 * 4)
    w = (w / w.norm()).requires_grad_(True)

    def critic(v):
        return v.flatten(1) @ w

    real, fake = torch.randn(5, 2, 3, 4), torch.randn(5, 2, 3, 4)
    gp = gradient_penalty(critic, real, fake, gp_lambda=10.0)
    assert abs(float(gp.detach())) < 1e-10
    # ‖∇‖ = 3 everywhere → λ·(3 − 1)² = 40, and differentiable in the critic's parameters
    w3 = (3 * w.detach()).requires_grad_(True)
    gp3 = gradient_penalty(lambda v: v.flatten(1) @ w3, real, fake, gp_lambda=10.0)
    assert abs(float(gp3.detach()) - 40.0) < 1e-4
    gp3.backward()
    # d/dw λ(‖w‖ − 1)² = 2λ(‖w‖ − 1)·w/‖w‖ = 40·w/3
    assert torch.allclose(w3.grad, 40.0 * w3.detach() / 3.0, atol=1e-4)
    with pytest.raises(ValueError, match="differ in shape"):
        gradient_penalty(critic, real, fake[:2])


def test_gradient_penalty_interpolates_with_the_given_alpha():
    # critic(x) = ‖x‖² / 2 per sample → ∇ = x̃ → penalty (‖x̃‖ − 1)² with x̃ = α·real + (1 − α)·fake
    real = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    fake = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    alpha = torch.tensor([0.5, 0.25])
    gp = gradient_penalty(lambda v: 0.5 * v.square().sum(1), real, fake, gp_lambda=1.0, alpha=alpha)
    # x̃ = (2, 0) → (2 − 1)² = 1; x̃ = (0, 0.5) → (0.5 − 1)² = 0.25; mean 0.625
    assert abs(float(gp.detach()) - 0.625) < 1e-6


def test_wgan_loss_and_feature_matching_on_hand_examples():
    assert float(wgan_critic_loss(torch.tensor([1.0, 3.0]), torch.tensor([[0.5], [0.5], [2.0]]))) == pytest.approx(-1.0)
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    fake = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    # means (2, 3) vs (1, 1): ((1)² + (2)²)/2 = 2.5
    assert float(feature_matching_loss(real, fake, "mean")) == pytest.approx(2.5)
    # paired: (0 + 1 + 4 + 9)/4 = 3.5
    assert float(feature_matching_loss(real, fake, "paired")) == pytest.approx(3.5)
    assert float(feature_matching_loss(real, real.flip(0), "mean")) == 0.0  # same statistics, other order
    with pytest.raises(ValueError, match="paired"):
        feature_matching_loss(real, fake[:1], "paired")
    with pytest.raises(ValueError, match="mode"):
        feature_matching_loss(real, fake, "median")


# ---------------------------------------------------------------------------------------------- the model
def test_spectral_norm_is_on_every_discriminator_layer_and_normalises_it():
    torch.manual_seed(0)
    model = TLDiffGAN(tiny_config())
    d = model.discriminator
    layers = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d))]
    assert len(layers) == 3  # two stride-2 blocks and the grouped head
    for m in layers:
        assert parametrize.is_parametrized(m, "weight"), m
    assert d.head is layers[-1] and d.head.groups == 4 and d.head.out_channels == 4
    with torch.no_grad():
        for _ in range(50):  # power iterations run in training mode
            d(torch.randn(4, 16, 20))
        for m in layers:
            w = m.weight  # the normalised weight
            sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
            assert abs(float(sigma) - 1.0) < 0.02, (m, float(sigma))
            raw = m.parametrizations.weight.original
            assert float(torch.linalg.matrix_norm(raw.reshape(raw.shape[0], -1), ord=2)) != pytest.approx(1.0, abs=0.02)
    # the encoder is not spectrally normalised (only D is)
    assert not any(parametrize.is_parametrized(m) for m in model.encoder.modules() if isinstance(m, nn.Conv2d))


def test_full_size_shapes():
    torch.manual_seed(0)
    model = TLDiffGAN(TLDiffGANConfig(train_denoise_steps=2)).eval()
    x = torch.randn(2, 128, 313)
    assert model.config.map_sizes == [(128, 313), (64, 156), (32, 78), (16, 39), (8, 19), (4, 9)]
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 128)
        assert model.decode(z).shape == (2, 128, 313)
        out = model.discriminator(x)
        assert out.critic.shape == (2,) and out.features.shape == (2, 256 * 4 * 9)
        rec = model.reconstruct(x, torch.Generator().manual_seed(0))  # 200 reverse steps from s = 200
        assert rec.reconstruction.shape == (2, 128, 313) and rec.z_rec.shape == (2, 128)
        gen = model.generate(x, num_steps=2, intermediate=True)
        assert len(gen.judged) == 2 and all(j.shape == (2, 128, 313) for j in gen.judged)
        assert model.score(x).shape == (2,)
        assert localization_maps(rec.reconstruction, x.mean(0)).difference.shape == (2, 128, 313)
    model.train()
    rng = np.random.default_rng(0)
    g = model.generator_losses(x, rng)
    d = model.discriminator_losses(x, rng)
    assert all(bool(torch.isfinite(v)) for v in [*g.values(), *d.values()])


def test_generator_and_discriminator_steps_train_only_their_own_parameters():
    torch.manual_seed(0)
    model = TLDiffGAN(tiny_config()).train()
    x = torch.randn(6, 16, 20)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    g = model.generator_losses(x, rng, gen)
    assert set(g) == {"loss", "noise", "stat", "rec"}
    g["loss"].backward()
    assert all(p.grad is None for p in model.discriminator_parameters())
    parts = {"encoder": model.encoder, "decoder": model.decoder, "denoiser": model.denoiser, "tmixup": model.tmixup}
    for name, part in parts.items():
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters()), name
    assert all(p.requires_grad for p in model.discriminator_parameters())  # restored after the frozen block
    model.zero_grad(set_to_none=True)
    d = model.discriminator_losses(x, rng, gen)
    assert set(d) == {"loss", "adv", "gp"}
    loss, adv, gp = (float(d[k].detach()) for k in ("loss", "adv", "gp"))
    assert loss == pytest.approx(adv + 10.0 * gp, rel=1e-5)
    d["loss"].backward()
    assert all(p.grad is None for p in model.generator_parameters())
    assert all(p.grad is not None for p in model.discriminator_parameters())
    with pytest.raises(ValueError, match="numpy Generator"):
        model.generator_losses(x)


def test_d_judges_the_final_and_every_intermediate_step():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 20)
    model = TLDiffGAN(tiny_config(train_denoise_steps=3))
    gen = model.generate(x, num_steps=3, intermediate=True, generator=torch.Generator().manual_seed(0))
    assert len(gen.judged) == 3 and gen.judged[-1] is gen.reconstruction
    assert not torch.allclose(gen.judged[0], gen.judged[-1])
    final_only = TLDiffGAN(tiny_config(judge_intermediate=False))
    assert len(final_only.generate(x, num_steps=3, intermediate=False).judged) == 1


def test_ablation_switches():
    torch.manual_seed(0)
    x = torch.randn(4, 16, 20)
    plain = TLDiffGAN(tiny_config(diffusion=False)).train()
    assert plain.denoiser is None and plain.schedule is None
    losses = plain.generator_losses(x, np.random.default_rng(0))
    assert float(losses["noise"]) == 0.0
    gen = plain.generate(x)
    assert len(gen.judged) == 1 and torch.equal(gen.z_denoised, gen.z_real)
    plain.eval()
    with torch.no_grad():
        rec = plain.reconstruct(x)
        assert torch.allclose(rec.reconstruction, plain.decode(plain.encode(x)))
    no_mix = TLDiffGAN(tiny_config(tmixup=False)).train()
    assert no_mix.tmixup is None and no_mix.augment(x, None) is x
    assert not any("tmixup" in n for n, _ in no_mix.named_parameters())
    with_mix = TLDiffGAN(tiny_config()).train()
    assert not torch.equal(with_mix.augment(x, np.random.default_rng(0)), x)
    assert with_mix.eval().augment(x, None) is x  # training only


def test_embed_concatenates_the_extra_embedding():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 20)
    model = TLDiffGAN(tiny_config(extra_dim=5)).eval()
    wave = torch.randn(3, 5)
    z = model.embed(x, wave)
    assert z.shape == (3, 13)
    assert torch.equal(z[:, 8:], wave) and torch.equal(z[:, :8], model.encode(x))
    with pytest.raises(ValueError, match="extra_dim = 5"):
        model.embed(x)
    with pytest.raises(ValueError, match=r"expected \[3, 5\]"):
        model.embed(x, torch.randn(3, 4))
    with pytest.raises(ValueError, match="extra_dim = 0"):
        TLDiffGAN(tiny_config()).embed(x, wave)


def test_scores_are_seeded_and_independent_of_the_other_clips_in_the_batch():
    torch.manual_seed(0)
    model = TLDiffGAN(tiny_config(diffusion=False)).eval()
    x = torch.randn(5, 16, 20)
    with torch.no_grad():
        alone = model.score(x[:1])
        assert torch.allclose(model.score(x)[:1], alone, atol=1e-5)
    diff = TLDiffGAN(tiny_config()).eval()
    with torch.no_grad():
        a = diff.score(x, torch.Generator().manual_seed(4))
        b = diff.score(x, torch.Generator().manual_seed(4))
        c = diff.score(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_score_variants_are_the_distances_of_one_reconstruction():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 20)
    model = TLDiffGAN(tiny_config()).eval()
    with torch.no_grad():
        variants = model.score_variants(x, torch.Generator().manual_seed(7))
        r = model.reconstruct(x, torch.Generator().manual_seed(7))
        assert set(variants) == {"latent", "denoised", "input"}
        assert torch.allclose(variants["latent"], (r.z_real - r.z_rec).square().sum(1))
        assert torch.allclose(variants["denoised"], (r.z_real - r.z_denoised).square().sum(1))
        assert torch.allclose(variants["input"], (x - r.reconstruction).square().sum((1, 2)))
        assert torch.equal(model.score(x, torch.Generator().manual_seed(7)), variants["latent"])
        assert torch.equal(model.score(x, torch.Generator().manual_seed(7), variant="input"), variants["input"])
    plain = TLDiffGAN(tiny_config(diffusion=False)).eval()
    with torch.no_grad():
        assert set(plain.score_variants(x)) == {"latent", "input"}
        with pytest.raises(ValueError, match="'denoised'"):
            plain.score(x, variant="denoised")


def test_reconstruction_score_and_localization_on_hand_examples():
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    z_rec = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    assert torch.equal(reconstruction_score(z, z_rec), torch.tensor([4.0, 25.0]))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        reconstruction_score(z, z_rec[:1])
    assert torch.equal(reconstruction_score(torch.ones(2, 2, 3), torch.zeros(2, 2, 3)), torch.tensor([6.0, 6.0]))
    x_rec = torch.tensor([[1.0, -2.0], [0.5, 3.0]])  # one clip [F=2, T=2]
    mu = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    maps = localization_maps(x_rec, mu)
    assert maps.difference.shape == (1, 2, 2)
    assert torch.equal(maps.difference[0], torch.tensor([[1.0, 2.0], [0.5, 2.0]]))
    assert torch.equal(maps.training_mean[0], mu) and torch.equal(maps.reconstruction[0], x_rec)
    with pytest.raises(ValueError, match=r"μ \[F, T\]"):
        localization_maps(x_rec, mu[:1])


def test_a_tiny_model_learns_to_reconstruct():
    """Alternating G and D steps on a tiny set: the autoencoder term and L_noise both fall."""
    torch.manual_seed(0)
    model = TLDiffGAN(tiny_config()).train()
    f = torch.arange(16.0).reshape(16, 1)
    data = torch.cat([torch.sin(f / 3 + k).expand(16, 20) for k in range(8)]).reshape(8, 16, 20)
    data = data + 0.05 * torch.randn_like(data)
    g_opt = torch.optim.Adam(model.generator_parameters(), lr=2e-3)
    d_opt = torch.optim.Adam(model.discriminator_parameters(), lr=1e-3)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    history = []
    for _ in range(40):
        d_opt.zero_grad()
        model.discriminator_losses(data, rng, gen)["loss"].backward()
        d_opt.step()
        g_opt.zero_grad()
        losses = model.generator_losses(data, rng, gen)
        losses["loss"].backward()
        g_opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first = {k: np.mean([h[k] for h in history[:5]]) for k in ("rec", "noise")}
    last = {k: np.mean([h[k] for h in history[-5:]]) for k in ("rec", "noise")}
    # measured over 30 steps: rec 0.61 → 0.24, noise 1.14 → 0.75
    assert last["rec"] < 0.5 * first["rec"], (first, last)
    assert last["noise"] < 0.9 * first["noise"], (first, last)


def test_config_errors():
    with pytest.raises(ConfigError, match="too small"):
        tiny_config(n_mels=3)
    with pytest.raises(ConfigError, match="discriminator_groups"):
        tiny_config(discriminator_groups=3)
    with pytest.raises(ConfigError, match="start_step"):
        tiny_config(start_step=101)
    with pytest.raises(ConfigError, match="feature_matching"):
        tiny_config(feature_matching="sum")
    with pytest.raises(ConfigError, match="lambda_gp"):
        tiny_config(lambda_gp=-1.0)
    with pytest.raises(ConfigError, match="extra_dim"):
        tiny_config(extra_dim=-1)
    with pytest.raises(ConfigError, match="schedule"):
        DiffusionConfig(schedule="quadratic")
    with pytest.raises(ConfigError, match="beta_start"):
        DiffusionConfig(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ConfigError, match="tau_low"):
        TMixupConfig(tau_low=0.6, tau_high=0.5)
    with pytest.raises(ConfigError, match="alpha"):
        TMixupConfig(alpha=0.0)
    with pytest.raises(ValueError, match=r"log-mel \[B, 16, 20\]"):
        TLDiffGAN(tiny_config()).encode(torch.zeros(2, 16, 21))
    assert tiny_config().denoiser_config.latent_dim == 8
