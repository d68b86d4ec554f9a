"""DDPM in a latent vector space (Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020): the
noise schedule, the forward process, a noise-prediction network over timesteps and ancestral denoising from any
start step. TLDiffGAN's generator (LDGAN, §2.1) is this denoiser over the encoder's latent.

Notation (Ho et al. §2): timesteps t = 1 … T, z_0 the clean latent [B, D], β_t the variance schedule,
α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s (ᾱ_0 = 1).

- Forward step  q(z_t | z_{t−1}) = N(√α_t·z_{t−1}, β_t·I)                       (:meth:`NoiseSchedule.q_step`)
- Closed form   q(z_t | z_0)     = N(√ᾱ_t·z_0, (1 − ᾱ_t)·I)       (Ho et al. Eq. 4; :meth:`NoiseSchedule.q_sample`)
- Loss          L_simple = E_{t, z_0, ε} ‖ε − ε_θ(√ᾱ_t z_0 + √(1 − ᾱ_t) ε, t)‖²    (Eq. 14, Algorithm 1;
  TLDiffGAN's L_noise; :func:`noise_prediction_loss`)
- Reverse step  z_{t−1} = (z_t − β_t/√(1 − ᾱ_t)·ε_θ(z_t, t)) / √α_t + σ_t·ξ          (Algorithm 2;
  :meth:`NoiseSchedule.p_step`), σ_t² = β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t ("posterior") or β_t ("beta"), the two
  choices of §3.2; no noise on the last step.

Denoising from a start step s (TLDiffGAN's reconstruction: encode, noise to s, denoise, decode) walks every step
s, s−1, …, 1, or a subsequence of K of them (respacing, Nichol & Dhariwal, ICML 2021, §4: the chain over
τ_K = s > … > τ_1 uses β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}} with τ_0 = 0), so a GAN can back-propagate through a short
chain. :func:`denoise` returns every step's prediction ẑ_0 = (z_t − √(1 − ᾱ_t)·ε̂)/√ᾱ_t, which is what the
TLDiffGAN discriminator judges at the intermediate steps; the last step's prediction is the final latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive

SCHEDULES = ("linear", "cosine")
VARIANCES = ("posterior", "beta")


@dataclass
class DiffusionConfig:
    """The noise schedule.

    Fields (TLDiffGAN only says "DDPM"; these defaults are Ho et al. 2020's, §4, which we chose — *ours* to use them):
        num_steps: T (1000).
        schedule: "linear" (β_t from beta_start to beta_end, Ho et al. §4) or "cosine" (ᾱ_t = f(t)/f(0),
            f(t) = cos²(π/2·(t/T + 0.008)/1.008), β_t capped at 0.999; Nichol & Dhariwal 2021, Eq. 17).
        beta_start, beta_end: β_1 and β_T of the linear schedule (1e-4, 0.02).
        variance: σ_t² of the reverse step, "posterior" (β̃_t) or "beta" (β_t); Ho et al. §3.2 found both similar.
            Ours: "posterior".
    """

    num_steps: int = 1000
    schedule: Literal["linear", "cosine"] = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    variance: Literal["posterior", "beta"] = "posterior"

    def __post_init__(self) -> None:
        require_positive("DiffusionConfig", num_steps=self.num_steps)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"DiffusionConfig.schedule = {self.schedule!r}; expected one of {list(SCHEDULES)}")
        if self.variance not in VARIANCES:
            raise ConfigError(f"DiffusionConfig.variance = {self.variance!r}; expected one of {list(VARIANCES)}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ConfigError(
                f"DiffusionConfig.beta_start = {self.beta_start}, beta_end = {self.beta_end}; "
                "expected 0 < beta_start <= beta_end < 1"
            )


def _betas(config: DiffusionConfig) -> torch.Tensor:
    """β_1 … β_T as float64 [T]."""
    t = config.num_steps
    if config.schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, t, dtype=torch.float64)
    s = 0.008
    steps = torch.arange(t + 1, dtype=torch.float64) / t
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2).square()
    alpha_bar = f / f[0]
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


class NoiseSchedule(nn.Module):
    """β, α, ᾱ as buffers indexed by the timestep t = 0 … T (index 0 is the clean latent: β_0 = 0, ᾱ_0 = 1), so the
    schedule moves with ``.to(device)``. Computed in float64, stored in float32.

    Timesteps ``t`` below are an int or an integer tensor [B] with values in 0 … T; latents are [B, D] (any
    trailing shape works: the coefficients broadcast over every dimension after the first).
    """

    def __init__(self, config: DiffusionConfig | None = None):
        super().__init__()
        self.config = config or DiffusionConfig()
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), _betas(self.config)])
        alpha_bars = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas", (1.0 - betas).float(), persistent=False)
        self.register_buffer("alpha_bars", alpha_bars.float(), persistent=False)

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    # ------------------------------------------------------------------------------------------ helpers
    def _index(self, t: int | torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """t → int64 tensor [B] on z's device, checked against 0 … T."""
        t = torch.as_tensor(t, device=z.device)
        if t.dtype.is_floating_point:
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        t = t.long().expand(z.shape[0]) if t.ndim == 0 else t.long()
        if t.shape != (z.shape[0],):
            raise ValueError(f"timesteps have shape {tuple(t.shape)}; expected [B] = [{z.shape[0]}] or a scalar")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.num_steps):
            raise ValueError(f"timesteps must lie in 0 … T = {self.num_steps}, got {int(t.min())} … {int(t.max())}")
        return t

    @staticmethod
    def _bcast(values: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return values.to(z.dtype).reshape((-1,) + (1,) * (z.ndim - 1))

    # ------------------------------------------------------------------------------------------ forward process
    def q_sample(self, z0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_t = √ᾱ_t·z_0 + √(1 − ᾱ_t)·ε, a draw of q(z_t | z_0) (Ho et al. Eq. 4). z0, noise: [B, D] → [B, D].

        Raises:
            ValueError: noise and z0 differ in shape, or a timestep outside 0 … T.
        """
        if noise.shape != z0.shape:
            raise ValueError(f"noise {tuple(noise.shape)} and z0 {tuple(z0.shape)} must have the same shape")
        a = self._bcast(self.alpha_bars[self._index(t, z0)], z0)
        return a.sqrt() * z0 + (1.0 - a).sqrt() * noise

    def q_step(self, z_prev: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward step z_t = √α_t·z_{t−1} + √β_t·ε, a draw of q(z_t | z_{t−1}) (Ho et al. Eq. 2), t ≥ 1."""
        if noise.shape != z_prev.shape:
            raise ValueError(f"noise {tuple(noise.shape)} and z_prev {tuple(z_prev.shape)} must have the same shape")
        idx = self._index(t, z_prev)
        if int(idx.min()) < 1:
            raise ValueError("q_step needs t >= 1")
        return self._bcast(self.alphas[idx], z_prev).sqrt() * z_prev + self._bcast(self.betas[idx], z_prev).sqrt() * noise

    def predict_start(self, z_t: torch.Tensor, t: int | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """ẑ_0 = (z_t − √(1 − ᾱ_t)·ε) / √ᾱ_t, the clean latent implied by a noise estimate (inverse of q_sample)."""
        a = self._bcast(self.alpha_bars[self._index(t, z_t)], z_t)
        return (z_t - (1.0 - a).sqrt() * eps) / a.sqrt()

    # ------------------------------------------------------------------------------------------ reverse process
    def timesteps(self, start_step: int, num_steps: int | None = None) -> list[int]:
        """The reverse chain's timesteps from ``start_step`` down, [τ_K = start_step, …, τ_1] (descending).

        ``num_steps`` None (or ≥ start_step): every step s, s−1, …, 1. Otherwise K = num_steps timesteps spread
        evenly over 1 … s (rounded; always including s).

        Raises:
            ValueError: start_step outside 1 … T, or num_steps < 1.
        """
        if not 1 <= start_step <= self.num_steps:
            raise ValueError(f"start_step = {start_step}; expected 1 … T = {self.num_steps}")
        if num_steps is None or num_steps >= start_step:
            return list(range(start_step, 0, -1))
        if num_steps < 1:
            raise ValueError(f"num_steps = {num_steps}; expected >= 1")
        picks = torch.linspace(start_step, 1, num_steps, dtype=torch.float64).round().long().tolist()
        out: list[int] = []
        for p in picks:  # rounding cannot collide when num_steps < start_step, but keep the chain strictly descending
            if not out or p < out[-1]:
                out.append(int(p))
        return out

    def p_step(
        self,
        z_t: torch.Tensor,
        t: int,
        t_prev: int,
        eps_hat: torch.Tensor,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        """One ancestral step z_t → z_{t_prev} (Ho et al. Algorithm 2 line 4, on the respaced chain when
        t_prev < t − 1): z_{t_prev} = (z_t − β'/√(1 − ᾱ_t)·ε̂)/√α' + σ·ξ with α' = ᾱ_t/ᾱ_{t_prev}, β' = 1 − α'.
        σ² is β̃' = (1 − ᾱ_{t_prev})/(1 − ᾱ_t)·β' or β' (config.variance); no noise when t_prev = 0 or noise is None.

        Args:
            z_t, eps_hat: [B, D]; t > t_prev ≥ 0 integers; noise: ξ [B, D] or None.
        Raises:
            ValueError: t ≤ t_prev or a timestep outside 0 … T.
        """
        if not 0 <= t_prev < t <= self.num_steps:
            raise ValueError(f"p_step needs 0 <= t_prev < t <= T = {self.num_steps}, got t = {t}, t_prev = {t_prev}")
        a_t, a_prev = self.alpha_bars[t], self.alpha_bars[t_prev]
        alpha = a_t / a_prev
        beta = 1.0 - alpha
        mean = (z_t - (beta / (1.0 - a_t).sqrt()).to(z_t.dtype) * eps_hat) / alpha.sqrt().to(z_t.dtype)
        if t_prev == 0 or noise is None:
            return mean
        var = beta if self.config.variance == "beta" else (1.0 - a_prev) / (1.0 - a_t) * beta
        return mean + var.sqrt().to(z_t.dtype) * noise


# ---------------------------------------------------------------------------------------------- the denoiser network
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017 §3.5, as used by Ho et al. 2020 §4).

    t [B] → [B, dim]: [sin(t·ω_0) … sin(t·ω_{h−1}), cos(t·ω_0) … cos(t·ω_{h−1})], ω_i = max_period^(−i/h), h = dim//2
    (a zero column is appended when dim is odd).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    angles = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=1)
    return emb


@dataclass
class DenoiserConfig:
    """ε_θ(z_t, t) over latent vectors. TLDiffGAN does not describe the network; every default is *ours*.

    Fields:
        latent_dim: D of z (set by the model that owns the denoiser).
        hidden_dim: width of the residual MLP (512).
        num_blocks: residual blocks (4).
        time_embedding_dim: size of the sinusoidal timestep embedding (128).
    """

    latent_dim: int = 128
    hidden_dim: int = 512
    num_blocks: int = 4
    time_embedding_dim: int = 128

    def __post_init__(self) -> None:
        require_positive(
            "DenoiserConfig",
            latent_dim=self.latent_dim,
            hidden_dim=self.hidden_dim,
            num_blocks=self.num_blocks,
            time_embedding_dim=self.time_embedding_dim,
        )


class _ResidualBlock(nn.Module):
    """h + Linear(SiLU(LN(Linear(SiLU(LN(h))) + W_t·e_t))): a pre-norm residual MLP block with the timestep added."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.time = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        a = self.fc1(nn.functional.silu(self.norm1(h))) + self.time(t_emb)
        return h + self.fc2(nn.functional.silu(self.norm2(a)))


class Denoiser(nn.Module):
    """The noise-prediction network ε_θ: (z_t [B, D], t [B] integers) → ε̂ [B, D].

    Sinusoidal timestep embedding → MLP (Linear, SiLU, Linear) → added inside every residual block
    (:class:`_ResidualBlock`, ``num_blocks`` of width ``hidden_dim``); input and output are linear maps D ↔ hidden.

    Raises:
        ValueError (in forward): z_t is not [B, latent_dim] or t is not [B].
    """

    def __init__(self, config: DenoiserConfig | None = None):
        super().__init__()
        self.config = c = config or DenoiserConfig()
        self.time_mlp = nn.Sequential(
            nn.Linear(c.time_embedding_dim, c.hidden_dim), nn.SiLU(), nn.Linear(c.hidden_dim, c.hidden_dim)
        )
        self.inp = nn.Linear(c.latent_dim, c.hidden_dim)
        self.blocks = nn.ModuleList(_ResidualBlock(c.hidden_dim) for _ in range(c.num_blocks))
        self.out_norm = nn.LayerNorm(c.hidden_dim)
        self.out = nn.Linear(c.hidden_dim, c.latent_dim)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if z_t.ndim != 2 or z_t.shape[1] != self.config.latent_dim:
            raise ValueError(f"Denoiser expects z_t [B, {self.config.latent_dim}], got {tuple(z_t.shape)}")
        t = torch.as_tensor(t, device=z_t.device)
        t = t.expand(z_t.shape[0]) if t.ndim == 0 else t
        if t.shape != (z_t.shape[0],):
            raise ValueError(f"Denoiser expects t [B] = [{z_t.shape[0]}], got {tuple(t.shape)}")
        t_emb = self.time_mlp(timestep_embedding(t, self.config.time_embedding_dim).to(z_t.dtype))
        h = self.inp(z_t)
        for block in self.blocks:
            h = block(h, t_emb)
        return self.out(nn.functional.silu(self.out_norm(h)))


# ---------------------------------------------------------------------------------------------- training and sampling
def noise_prediction_loss(
    denoiser: nn.Module,
    schedule: NoiseSchedule,
    z0: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L_simple of Ho et al. (Eq. 14, Algorithm 1) = TLDiffGAN's L_noise = mean ‖ε − ε̂‖² (a mean over the batch and
    the latent dimensions): t ~ U{1 … T} and ε ~ N(0, I) per sample, drawn with ``generator``.

    Args:
        denoiser: ε_θ(z_t [B, D], t [B]) → [B, D].
        z0: clean latents [B, D]. Detach them first if the encoder must not learn from this loss.
    Returns:
        scalar tensor.
    """
    b = z0.shape[0]
    t = torch.randint(1, schedule.num_steps + 1, (b,), device=z0.device, generator=generator)
    eps = torch.randn(z0.shape, device=z0.device, dtype=z0.dtype, generator=generator)
    eps_hat = denoiser(schedule.q_sample(z0, t, eps), t)
    return (eps - eps_hat).square().mean()


def _draw_noise(z: torch.Tensor, generator: torch.Generator | None, shared: bool) -> torch.Tensor:
    """ξ ~ N(0, I) of z's shape [B, D]; with ``shared`` one [1, D] draw expanded to [B, D]."""
    shape = (1, *z.shape[1:]) if shared else z.shape
    return torch.randn(shape, device=z.device, dtype=z.dtype, generator=generator).expand_as(z)


@dataclass
class DenoiseOutput:
    """The result of :func:`denoise`.

    Fields:
        z0: the final latent [B, D].
        predictions: ẑ_0 predicted at each step of the chain, [B, D] each, in chain order (first = at the start
            step); the last one is ``z0`` (the last step, to t = 0, is deterministic and its mean is ẑ_0).
        timesteps: the chain's timesteps, descending (τ_K … τ_1).
    """

    z0: torch.Tensor
    predictions: list[torch.Tensor]
    timesteps: list[int]


def denoise(
    denoiser: nn.Module,
    schedule: NoiseSchedule,
    z_t: torch.Tensor,
    start_step: int,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    shared_noise: bool = False,
) -> DenoiseOutput:
    """Ancestral DDPM sampling from ``z_t`` at timestep ``start_step`` back to z_0 (Ho et al. Algorithm 2 started at
    s instead of T; on a respaced chain of ``num_steps`` steps when given, see :meth:`NoiseSchedule.timesteps`).

    Differentiable: no ``torch.no_grad`` inside (wrap the call for scoring). The noise ξ of each step is drawn with
    ``generator`` (pass a seeded one for reproducible scores). With ``shared_noise`` every row gets the same ξ
    (one [1, D] draw per step, broadcast), so a row's result does not depend on the other rows of the batch: scores
    then match whatever the batching (ours; used at scoring time).

    Args:
        z_t: [B, D] noisy latents at ``start_step``.
        start_step: s in 1 … T. num_steps: K, or None for every step.
    Returns:
        :class:`DenoiseOutput`.
    Raises:
        ValueError: start_step or num_steps out of range.
    """
    steps = schedule.timesteps(start_step, num_steps)
    z = z_t
    predictions: list[torch.Tensor] = []
    for i, t in enumerate(steps):
        t_prev = steps[i + 1] if i + 1 < len(steps) else 0
        t_vec = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        eps_hat = denoiser(z, t_vec)
        predictions.append(schedule.predict_start(z, t, eps_hat))
        if t_prev == 0:  # the last step's mean is the prediction itself (α' = ᾱ_t, β' = 1 − ᾱ_t), no noise
            z = predictions[-1]
            break
        noise = _draw_noise(z, generator, shared_noise)
        z = schedule.p_step(z, t, t_prev, eps_hat, noise)
    return DenoiseOutput(z0=z, predictions=predictions, timesteps=steps)
