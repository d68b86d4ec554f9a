"""TLDiffGAN's LDGAN backbone (§2.1) as one model with ablation switches: a log-mel encoder to a low-dimensional
latent, a DDPM denoiser in that latent space (:mod:`stethoscope.nn.diffusion`), a decoder back to the log-mel, and a
spectrally normalised discriminator with the encoder's structure whose last layer is a grouped convolution; TMixup
(:mod:`stethoscope.nn.tmixup`) on the training log-mels; the reconstruction score (Eq. 5) and the anomaly map (Fig. 3).

Source: Ma, Jia, Guo & Yang, "TLDiffGAN: a latent diffusion-GAN framework with temporal information fusion for
anomalous sound detection" (arXiv:2602.01060), as summarised in our issue 14. What the paper gives:

- L_G = L_noise + λ_stat·L_stat (Eq. 1): L_noise = ‖ε − ε̂‖² (DDPM, Ho et al. 2020), L_stat = ‖D_feat(real) −
  D_feat(generated)‖² (feature matching on D's deep features); λ_stat = 1.0.
- L_D = L_adv + λ_GP·L_GP (Eq. 2), WGAN-GP with λ_GP = 10, spectral normalisation on D; D judges the final and the
  intermediate denoising steps; D has the encoder's structure with a grouped convolution as its last layer.
- Reconstruction at scoring time: encode, noise to a start step, denoise, decode. s_r = ‖z_real − z_rec‖² (Eq. 5).
- Ablations (Table 3): without the latent diffusion (a plain GAN generator), without TMixup, without the waveform
  branch (here: an optional extra embedding concatenated by :meth:`TLDiffGAN.embed`).
- Training (for the Method, not this module): Adam, lr 1e-4, batch 512, 150 epochs.

What we chose (*ours*, each a :class:`TLDiffGANConfig` field, also listed in docs/nn.md):

- Networks. Encoder: ``num_layers`` blocks [Conv2d 4×4 stride 2 pad 1 → GroupNorm → LeakyReLU(0.2)], channels
  base·2^i capped at ``max_channels``, then a Conv2d whose kernel covers the whole remaining map → latent [B, D],
  then a LayerNorm without affine (``latent_norm``: keeps the latent at the unit scale the DDPM schedule assumes).
  For 128 × 313 and 5 layers the maps are 64×156, 32×78, 16×39, 8×19, 4×9. Decoder: the mirror (ConvTranspose2d over
  the 4×9 map, then 4×4 stride-2 transposed convolutions with the encoder's exact sizes, GroupNorm → ReLU, a linear
  1-channel output). Discriminator: the encoder's blocks with spectral normalisation (Miyato et al., ICLR 2018)
  instead of GroupNorm (a WGAN-GP critic must not normalise across samples), and as last layer a spectrally
  normalised grouped Conv2d over the whole map with ``discriminator_groups`` groups and one output per group; the
  critic value is the mean of the group outputs. D_feat = the input of that last layer (the last block's output,
  flattened).
- Training chain. The generator reconstructs a training log-mel the way scoring does: encode, noise to
  ``start_step`` (s = 200 of T = 1000, ᾱ_s ≈ 0.65), denoise on a respaced chain of ``train_denoise_steps`` = 4
  steps, decode. D judges the decoded ẑ_0 prediction of every step (the last is the final output) when
  ``judge_intermediate``; each judged step weighs the same in L_adv, L_GP and L_stat.
- L_noise is the DDPM loss at a uniform random t on the *detached* latent (the encoder learns nothing from it:
  a latent shrunk to 0 would make it vanish); L_stat matches the batch means of D_feat (``feature_matching="mean"``,
  Salimans et al. 2016: the "stat" of L_stat; "paired" matches clip by clip).
- The paper does not say how the encoder and decoder are trained. We add an autoencoder term λ_rec·‖x − Dec(Enc(x))‖²
  (mean squared error), λ_rec = 1; ``lambda_rec=0`` gives Eq. 1 exactly.
- Scoring: the chain from ``start_step`` walks every step (``score_denoise_steps=None``); z_real = Enc(x),
  z_rec = Enc(x̂) with x̂ the reconstruction (the same definition with or without diffusion). Eq. 5 does not say
  which space z lives in, so :meth:`TLDiffGAN.score_variants` also gives ‖Enc(x) − ẑ_0‖² and ‖x − x̂‖² for a
  choice on validation data (:data:`SCORE_VARIANTS`).
- Plain GAN generator (``diffusion=False``): x̂ = Dec(Enc(x)), no L_noise, D judges x̂ only.
- TMixup is applied to the training log-mels in both the G and the D step (the mixed log-mel is the real sample of
  that step); its pooling weights are trained with the generator.

Shapes: log-mel [B, F, T] (F = n_mels, T = frames; 128 × 313 for 10 s at 16 kHz, hop 512), latent [B, D].
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive
from stethoscope.nn.diffusion import (
    Denoiser,
    DenoiserConfig,
    DiffusionConfig,
    NoiseSchedule,
    denoise,
    noise_prediction_loss,
)
from stethoscope.nn.gan_losses import FEATURE_MATCHING_MODES, feature_matching_loss, gradient_penalty, wgan_critic_loss
from stethoscope.nn.tmixup import TMixup, TMixupConfig

#: LeakyReLU slope of the encoder and discriminator blocks (DCGAN's 0.2; ours).
LEAKY_SLOPE = 0.2

#: Reconstruction scores (all squared Euclidean distances per clip, :func:`reconstruction_score`):
#: "latent" ‖Enc(x) − Enc(x̂)‖² (Eq. 5 with z_rec = Enc(x̂), the default), "denoised" ‖Enc(x) − ẑ_0‖² (z_rec = the
#: denoised latent, before decoding; diffusion only), "input" ‖x − x̂‖² over the log-mel cells (ours: Eq. 5 does not
#: say which space z lives in; see docs/nn.md for a toy measurement).
SCORE_VARIANTS = ("latent", "denoised", "input")


@dataclass
class TLDiffGANConfig:
    """The LDGAN backbone, TMixup and the ablation switches. Paper values cite TLDiffGAN; the rest are *ours*.

    Fields:
        n_mels, n_frames: the log-mel's F × T (128 × 313: TLDiffGAN §2.1, 10 s at 16 kHz with hop 512).
        latent_dim: D of the latent (ours: 128; the paper says "low-dimensional"; searched, issue 14).
        base_channels, max_channels, num_layers: encoder / discriminator widths base·2^i ≤ max and the number of
            stride-2 blocks (ours: 32, 256, 5). n_mels and n_frames must be ≥ 2^num_layers.
        norm_groups: GroupNorm groups in the encoder and decoder (ours: 8; fewer where a layer has fewer channels).
        latent_norm: LayerNorm (no affine) on the latent (ours: True).
        discriminator_groups: groups (and outputs) of D's last, grouped convolution (ours: 8).
        diffusion: the latent DDPM generator (True) or a plain GAN generator x̂ = Dec(Enc(x)) (False; Table 3).
        tmixup: TMixup on the training log-mels (Table 3's "log-mel enhancement").
        extra_dim: size of an extra clip embedding concatenated by :meth:`TLDiffGAN.embed` (the waveform branch's
            Z_wave, §2.3; 0 = no waveform branch, Table 3).
        lambda_stat: λ_stat of Eq. 1 (1.0, TLDiffGAN §2.1). lambda_gp: λ_GP of Eq. 2 (10, TLDiffGAN §2.1).
        lambda_rec: weight of our autoencoder term ‖x − Dec(Enc(x))‖² (ours: 1.0; 0 = Eq. 1 exactly).
        feature_matching: "mean" (batch means of D_feat; ours) or "paired".
        start_step: s, the timestep the latent is noised to before denoising, at training and scoring time (the paper
            makes it a config value without giving it; ours: 200 of 1000; searched, issue 14).
        train_denoise_steps: reverse steps of the differentiable training chain (ours: 4).
        score_denoise_steps: reverse steps at scoring time (None = every step from s, plain DDPM; ours).
        judge_intermediate: D judges every step's decoded prediction, not only the final one (TLDiffGAN §2.1).
        diffusion_config, denoiser_config, tmixup_config: sub-configs (``denoiser_config.latent_dim`` is set from
            latent_dim).
    Raises:
        ConfigError: a size < 1, a log-mel too small for num_layers, discriminator_groups not dividing D's last
            width, start_step outside 1 … T, or an unknown feature_matching mode.
    """

    n_mels: int = 128
    n_frames: int = 313
    latent_dim: int = 128
    base_channels: int = 32
    max_channels: int = 256
    num_layers: int = 5
    norm_groups: int = 8
    latent_norm: bool = True
    discriminator_groups: int = 8
    diffusion: bool = True
    tmixup: bool = True
    extra_dim: int = 0
    lambda_stat: float = 1.0
    lambda_gp: float = 10.0
    lambda_rec: float = 1.0
    feature_matching: Literal["mean", "paired"] = "mean"
    start_step: int = 200
    train_denoise_steps: int = 4
    score_denoise_steps: int | None = None
    judge_intermediate: bool = True
    diffusion_config: DiffusionConfig = field(default_factory=DiffusionConfig)
    denoiser_config: DenoiserConfig = field(default_factory=DenoiserConfig)
    tmixup_config: TMixupConfig = field(default_factory=TMixupConfig)

    def __post_init__(self) -> None:
        require_positive(
            "TLDiffGANConfig",
            n_mels=self.n_mels,
            n_frames=self.n_frames,
            latent_dim=self.latent_dim,
            base_channels=self.base_channels,
            max_channels=self.max_channels,
            num_layers=self.num_layers,
            norm_groups=self.norm_groups,
            discriminator_groups=self.discriminator_groups,
            train_denoise_steps=self.train_denoise_steps,
        )
        if self.extra_dim < 0:
            raise ConfigError(f"TLDiffGANConfig.extra_dim = {self.extra_dim}; expected >= 0 (0 = no extra embedding)")
        if self.score_denoise_steps is not None and self.score_denoise_steps < 1:
            raise ConfigError(f"TLDiffGANConfig.score_denoise_steps = {self.score_denoise_steps}; expected >= 1 or None")
        smallest = 2**self.num_layers
        if self.n_mels < smallest or self.n_frames < smallest:
            raise ConfigError(
                f"TLDiffGANConfig: a {self.n_mels} × {self.n_frames} log-mel is too small for num_layers = "
                f"{self.num_layers} stride-2 blocks; n_mels and n_frames must be >= {smallest}"
            )
        last = self.channels[-1]
        if last % self.discriminator_groups:
            raise ConfigError(
                f"TLDiffGANConfig.discriminator_groups = {self.discriminator_groups} must divide the discriminator's "
                f"last width {last}"
            )
        for name in ("lambda_stat", "lambda_gp", "lambda_rec"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"TLDiffGANConfig.{name} = {getattr(self, name)}; expected >= 0")
        if self.feature_matching not in FEATURE_MATCHING_MODES:
            raise ConfigError(
                f"TLDiffGANConfig.feature_matching = {self.feature_matching!r}; "
                f"expected one of {list(FEATURE_MATCHING_MODES)}"
            )
        if not 1 <= self.start_step <= self.diffusion_config.num_steps:
            raise ConfigError(
                f"TLDiffGANConfig.start_step = {self.start_step}; expected 1 … T = {self.diffusion_config.num_steps}"
            )
        self.denoiser_config = dataclasses.replace(self.denoiser_config, latent_dim=self.latent_dim)

    @property
    def channels(self) -> list[int]:
        """Width of each stride-2 block: base·2^i capped at max_channels, i = 0 … num_layers − 1."""
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.num_layers)]

    @property
    def map_sizes(self) -> list[tuple[int, int]]:
        """(F, T) at the input of each block, then after the last: num_layers + 1 sizes, halved (floor) each time."""
        sizes = [(self.n_mels, self.n_frames)]
        for _ in range(self.num_layers):
            f, t = sizes[-1]
            sizes.append((f // 2, t // 2))
        return sizes


def _groups(requested: int, channels: int) -> int:
    return math.gcd(requested, channels)


def _as_image(x: torch.Tensor, config: TLDiffGANConfig, who: str) -> torch.Tensor:
    """[B, F, T] → [B, 1, F, T], checked against the config's n_mels × n_frames."""
    if x.ndim != 3 or x.shape[1:] != (config.n_mels, config.n_frames):
        raise ValueError(f"{who} expects a log-mel [B, {config.n_mels}, {config.n_frames}], got {tuple(x.shape)}")
    return x.unsqueeze(1)


class ConvEncoder(nn.Module):
    """Log-mel [B, F, T] → latent [B, latent_dim] (see the module docstring for the layout)."""

    def __init__(self, config: TLDiffGANConfig):
        super().__init__()
        self.config = c = config
        widths = [1] + c.channels
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(a, b, 4, stride=2, padding=1),
                nn.GroupNorm(_groups(c.norm_groups, b), b),
                nn.LeakyReLU(LEAKY_SLOPE),
            )
            for a, b in zip(widths[:-1], widths[1:])
        )
        self.head = nn.Conv2d(widths[-1], c.latent_dim, kernel_size=c.map_sizes[-1])
        self.norm = nn.LayerNorm(c.latent_dim, elementwise_affine=False) if c.latent_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _as_image(x, self.config, "ConvEncoder")
        for block in self.blocks:
            h = block(h)
        return self.norm(self.head(h).flatten(1))


class ConvDecoder(nn.Module):
    """Latent [B, latent_dim] → log-mel [B, F, T], the mirror of :class:`ConvEncoder` with a linear output."""

    def __init__(self, config: TLDiffGANConfig):
        super().__init__()
        self.config = c = config
        ch = c.channels
        self.sizes = c.map_sizes
        self.head = nn.Sequential(
            nn.ConvTranspose2d(c.latent_dim, ch[-1], kernel_size=self.sizes[-1]),
            nn.GroupNorm(_groups(c.norm_groups, ch[-1]), ch[-1]),
            nn.ReLU(),
        )
        outs = [1] + ch[:-1]  # block i maps ch[i] → outs[i], up to the size at block i's encoder input
        self.ups = nn.ModuleList(nn.ConvTranspose2d(ch[i], outs[i], 4, stride=2, padding=1) for i in range(c.num_layers))
        self.norms = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(_groups(c.norm_groups, outs[i]), outs[i]), nn.ReLU()) if i > 0 else nn.Identity()
            for i in range(c.num_layers)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"ConvDecoder expects a latent [B, {self.config.latent_dim}], got {tuple(z.shape)}")
        h = self.head(z[:, :, None, None])
        for i in reversed(range(self.config.num_layers)):
            h = self.norms[i](self.ups[i](h, output_size=list(self.sizes[i])))
        return h.squeeze(1)


@dataclass
class CriticOutput:
    """Discriminator output: ``critic`` [B] (Wasserstein critic value), ``features`` [B, C·h·w] (D_feat, the input
    of the last layer, flattened), ``hidden`` (each block's output [B, C_i, F_i, T_i], input side first)."""

    critic: torch.Tensor
    features: torch.Tensor
    hidden: list[torch.Tensor]


class Discriminator(nn.Module):
    """Log-mel [B, F, T] → :class:`CriticOutput`. Every Conv2d is spectrally normalised
    (``torch.nn.utils.parametrizations.spectral_norm``, one power iteration per forward in training mode); the last
    layer is a grouped Conv2d (``discriminator_groups`` groups, one output each) whose kernel is the whole final map.
    """

    def __init__(self, config: TLDiffGANConfig):
        super().__init__()
        self.config = c = config
        widths = [1] + c.channels
        self.blocks = nn.ModuleList(
            nn.Sequential(spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1)), nn.LeakyReLU(LEAKY_SLOPE))
            for a, b in zip(widths[:-1], widths[1:])
        )
        g = c.discriminator_groups
        self.head = spectral_norm(nn.Conv2d(widths[-1], g, kernel_size=c.map_sizes[-1], groups=g))

    def forward(self, x: torch.Tensor) -> CriticOutput:
        h = _as_image(x, self.config, "Discriminator")
        hidden = []
        for block in self.blocks:
            h = block(h)
            hidden.append(h)
        critic = self.head(h).flatten(1).mean(dim=1)
        return CriticOutput(critic=critic, features=h.flatten(1), hidden=hidden)


@dataclass
class Generation:
    """One pass of the generator.

    Fields:
        z_real: Enc(x) [B, D].
        z_denoised: the denoised latent [B, D] (= z_real without diffusion).
        reconstruction: x̂ = Dec(z_denoised) [B, F, T].
        judged: the log-mels D judges, each [B, F, T]: the decoded prediction of every step of the chain, the last
            being ``reconstruction`` (only ``[reconstruction]`` without intermediates or without diffusion).
    """

    z_real: torch.Tensor
    z_denoised: torch.Tensor
    reconstruction: torch.Tensor
    judged: list[torch.Tensor]


@dataclass
class Reconstruction:
    """Scoring-time reconstruction: z_real = Enc(x), z_denoised, x̂ = ``reconstruction`` [B, F, T], z_rec = Enc(x̂)."""

    z_real: torch.Tensor
    z_denoised: torch.Tensor
    reconstruction: torch.Tensor
    z_rec: torch.Tensor


@dataclass
class LocalizationMaps:
    """Fig. 3's three panels for each clip, each [B, F, T]: the reconstruction x̂, the training-mean log-mel μ
    (broadcast) and the difference map |x̂ − μ|."""

    reconstruction: torch.Tensor
    training_mean: torch.Tensor
    difference: torch.Tensor


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Turn off requires_grad on the module's parameters for the block (restoring each flag afterwards)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class TLDiffGAN(nn.Module):
    """The TLDiffGAN model: ``encoder``, ``decoder``, ``discriminator``, ``denoiser`` and ``schedule`` (None without
    diffusion), ``tmixup`` (None without TMixup).

    Training (the Method alternates; this module owns no optimizer):
        ``generator_losses(x, rng, generator)["loss"].backward()`` → step the optimizer over
        :meth:`generator_parameters`; ``discriminator_losses(x, rng, generator)["loss"].backward()`` → step the one
        over :meth:`discriminator_parameters`. TMixup runs only in training mode.
    Scoring (wrap in ``torch.no_grad()``; eval mode): :meth:`reconstruct`, :meth:`score` (Eq. 5),
        :meth:`score_variants`, :meth:`embed`, :meth:`localize`.

    Randomness: ``rng`` is the run's numpy Generator (TMixup's τ and λ); ``generator`` a torch.Generator on the
    model's device for the diffusion noise, the timesteps of L_noise and the GP interpolation (torch's global
    generator when None).
    """

    def __init__(self, config: TLDiffGANConfig | None = None):
        super().__init__()
        self.config = c = config or TLDiffGANConfig()
        self.encoder = ConvEncoder(c)
        self.decoder = ConvDecoder(c)
        self.discriminator = Discriminator(c)
        self.schedule = NoiseSchedule(c.diffusion_config) if c.diffusion else None
        self.denoiser = Denoiser(c.denoiser_config) if c.diffusion else None
        self.tmixup = TMixup(c.tmixup_config) if c.tmixup else None

    # ------------------------------------------------------------------------------------------ parameter groups
    def generator_parameters(self) -> list[nn.Parameter]:
        """Encoder, decoder, denoiser and TMixup's pooling weights: what L_G trains."""
        mods = [self.encoder, self.decoder, self.denoiser, self.tmixup]
        return [p for m in mods if m is not None for p in m.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """The discriminator's parameters: what L_D trains."""
        return list(self.discriminator.parameters())

    # ------------------------------------------------------------------------------------------ building blocks
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel [B, F, T] → latent z [B, D]."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B, D] → log-mel [B, F, T]."""
        return self.decoder(z)

    def augment(self, x: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
        """TMixup in training mode when switched on; the identity otherwise.

        Raises:
            ValueError: TMixup is on, the model is training and no numpy Generator was given.
        """
        if self.tmixup is None or not self.training:
            return x
        if rng is None:
            raise ValueError("TLDiffGAN: TMixup needs the run's numpy Generator (rng) in training mode")
        return self.tmixup(x, rng)

    def generate(
        self,
        x: torch.Tensor,
        *,
        start_step: int | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        intermediate: bool = False,
        shared_noise: bool = False,
    ) -> Generation:
        """Encode, noise to the start step, denoise, decode (or Dec(Enc(x)) without diffusion). Differentiable.

        Args:
            x: log-mel [B, F, T].
            start_step: s (default config.start_step). num_steps: reverse steps (None = every step).
            intermediate: also decode every step's prediction into ``judged``.
            shared_noise: one noise vector for every row (start noise and each step's ξ), so a row's result does
                not depend on its batch (scoring: the same clip scores the same in any batch).
        Raises:
            ValueError: x of the wrong shape, start_step or num_steps out of range.
        """
        z = self.encode(x)
        if self.denoiser is None:
            x_rec = self.decode(z)
            return Generation(z_real=z, z_denoised=z, reconstruction=x_rec, judged=[x_rec])
        s = self.config.start_step if start_step is None else start_step
        if not 1 <= s <= self.schedule.num_steps:
            raise ValueError(f"start_step = {s}; expected 1 … T = {self.schedule.num_steps}")
        shape = (1, z.shape[1]) if shared_noise else z.shape
        noise = torch.randn(shape, device=z.device, dtype=z.dtype, generator=generator).expand_as(z)
        out = denoise(self.denoiser, self.schedule, self.schedule.q_sample(z, s, noise), s, num_steps, generator,
                      shared_noise=shared_noise)
        if intermediate and len(out.predictions) > 1:
            decoded = self.decode(torch.cat(out.predictions)).split(z.shape[0])
            judged = list(decoded)
            x_rec = judged[-1]
        else:
            x_rec = self.decode(out.z0)
            judged = [x_rec]
        return Generation(z_real=z, z_denoised=out.z0, reconstruction=x_rec, judged=judged)

    # ------------------------------------------------------------------------------------------ losses
    def generator_losses(
        self,
        x: torch.Tensor,
        rng: np.random.Generator | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """L_G = L_noise + λ_stat·L_stat (Eq. 1) + λ_rec·L_rec (ours) on a batch of training log-mels x [B, F, T].

        D's parameters are frozen during the call (no gradient reaches them). L_noise is 0 without diffusion.
        Returns:
            {"loss": the total (call backward on it), "noise": L_noise, "stat": L_stat, "rec": L_rec}, scalars.
        """
        c = self.config
        x_in = self.augment(x, rng)
        gen = self.generate(x_in, num_steps=c.train_denoise_steps, generator=generator, intermediate=c.judge_intermediate)
        if self.denoiser is not None:
            l_noise = noise_prediction_loss(self.denoiser, self.schedule, gen.z_real.detach(), generator)
        else:
            l_noise = x.new_zeros(())
        with _frozen(self.discriminator):
            real_feat = self.discriminator(x_in).features.detach()
            fake_feat = self.discriminator(torch.cat(gen.judged)).features.split(x.shape[0])
            l_stat = torch.stack([feature_matching_loss(real_feat, f, c.feature_matching) for f in fake_feat]).mean()
        ae = gen.reconstruction if self.denoiser is None else self.decode(gen.z_real)
        l_rec = F.mse_loss(ae, x_in) if c.lambda_rec > 0 else x.new_zeros(())
        loss = l_noise + c.lambda_stat * l_stat + c.lambda_rec * l_rec
        return {"loss": loss, "noise": l_noise, "stat": l_stat, "rec": l_rec}

    def discriminator_losses(
        self,
        x: torch.Tensor,
        rng: np.random.Generator | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """L_D = L_adv + λ_GP·L_GP (Eq. 2) on a batch of training log-mels x [B, F, T]; the generated samples are made
        without gradient. Every judged step (final and intermediate) is a fake sample of equal weight.

        Returns:
            {"loss": the total, "adv": E[D(x̂)] − E[D(x)], "gp": the unweighted penalty}, scalars.
        """
        c = self.config
        x_in = self.augment(x, rng).detach()
        with torch.no_grad():
            gen = self.generate(
                x_in, num_steps=c.train_denoise_steps, generator=generator, intermediate=c.judge_intermediate
            )
        fakes = torch.cat(gen.judged)
        real_scores = self.discriminator(x_in).critic
        fake_scores = self.discriminator(fakes).critic
        l_adv = wgan_critic_loss(real_scores, fake_scores)
        reals = x_in.repeat(len(gen.judged), 1, 1)
        l_gp = gradient_penalty(lambda v: self.discriminator(v).critic, reals, fakes, gp_lambda=1.0, generator=generator)
        return {"loss": l_adv + c.lambda_gp * l_gp, "adv": l_adv, "gp": l_gp}

    # ------------------------------------------------------------------------------------------ scoring
    def reconstruct(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        start_step: int | None = None,
        shared_noise: bool = False,
    ) -> Reconstruction:
        """Encode, noise to s, denoise with ``score_denoise_steps`` steps, decode, re-encode (§2.1, Eq. 5).

        x [B, F, T] → :class:`Reconstruction`. Random (the diffusion noise): pass a seeded generator for
        reproducible scores, and ``shared_noise`` for scores that do not depend on the batch (:meth:`generate`).
        """
        gen = self.generate(x, start_step=start_step, num_steps=self.config.score_denoise_steps, generator=generator,
                            shared_noise=shared_noise)
        return Reconstruction(
            z_real=gen.z_real,
            z_denoised=gen.z_denoised,
            reconstruction=gen.reconstruction,
            z_rec=self.encode(gen.reconstruction),
        )

    def score_variants(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        start_step: int | None = None,
        shared_noise: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Every reconstruction score of :data:`SCORE_VARIANTS` (see there) from one reconstruction: x [B, F, T] →
        {name: [B]}, higher = more anomalous. "denoised" only with diffusion (it is 0 without). For the Method's
        ``score_variants``: the variant is chosen on validation data only.
        """
        r = self.reconstruct(x, generator, start_step, shared_noise)
        out = {
            "latent": reconstruction_score(r.z_real, r.z_rec),
            "input": reconstruction_score(x, r.reconstruction),
        }
        if self.denoiser is not None:
            out["denoised"] = reconstruction_score(r.z_real, r.z_denoised)
        return out

    def score(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        start_step: int | None = None,
        variant: str = "latent",
    ) -> torch.Tensor:
        """s_r = ‖z_real − z_rec‖² (Eq. 5; ``variant="latent"``) or another of :data:`SCORE_VARIANTS`: x [B, F, T] → [B].

        Raises:
            ValueError: an unknown variant, or "denoised" without diffusion.
        """
        if variant not in SCORE_VARIANTS or (variant == "denoised" and self.denoiser is None):
            names = [v for v in SCORE_VARIANTS if v != "denoised" or self.denoiser is not None]
            raise ValueError(f"TLDiffGAN.score: variant {variant!r}; expected one of {names}")
        return self.score_variants(x, generator, start_step)[variant]

    def embed(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Z = concat(Z_mel, Z_wave) for the detector stage (§2.4): Z_mel = Enc(x) [B, D], Z_wave = ``extra``
        [B, extra_dim] (the waveform branch's embedding, computed outside nn/) → [B, D + extra_dim].

        Raises:
            ValueError: ``extra`` missing when extra_dim > 0, given when extra_dim = 0, or of the wrong shape.
        """
        z = self.encode(x)
        k = self.config.extra_dim
        if k == 0:
            if extra is not None:
                raise ValueError("TLDiffGAN.embed: got an extra embedding but config.extra_dim = 0 (no waveform branch)")
            return z
        if extra is None:
            raise ValueError(f"TLDiffGAN.embed: config.extra_dim = {k}; pass the extra embedding [B, {k}]")
        if extra.shape != (z.shape[0], k):
            raise ValueError(f"TLDiffGAN.embed: extra embedding {tuple(extra.shape)}; expected [{z.shape[0]}, {k}]")
        return torch.cat([z, extra.to(z.dtype)], dim=1)

    def localize(
        self, x: torch.Tensor, training_mean: torch.Tensor, generator: torch.Generator | None = None
    ) -> LocalizationMaps:
        """Fig. 3 for a batch: reconstruct x [B, F, T], then :func:`localization_maps` against μ [F, T]."""
        return localization_maps(self.reconstruct(x, generator).reconstruction, training_mean)


def reconstruction_score(z_real: torch.Tensor, z_rec: torch.Tensor) -> torch.Tensor:
    """s_r = ‖z_real − z_rec‖² (TLDiffGAN Eq. 5), the squared Euclidean distance per clip over every dimension after
    the first: latents [B, D] × [B, D] → [B] (or log-mels [B, F, T] × [B, F, T] → [B]).

    Raises:
        ValueError: the shapes differ or have no batch dimension.
    """
    if z_real.shape != z_rec.shape or z_real.ndim < 2:
        raise ValueError(
            f"reconstruction_score expects two [B, D] (or [B, F, T]) tensors of one shape, got {tuple(z_real.shape)} "
            f"and {tuple(z_rec.shape)}"
        )
    return (z_real - z_rec).square().flatten(1).sum(dim=1)


def localization_maps(reconstruction: torch.Tensor, training_mean: torch.Tensor) -> LocalizationMaps:
    """Fig. 3's panels: the reconstruction x̂, the training-mean log-mel μ and the difference map |x̂ − μ|.

    Args:
        reconstruction: x̂ [B, F, T] or one clip [F, T].
        training_mean: μ [F, T], the mean log-mel of the training clips (same scale as x̂).
    Returns:
        :class:`LocalizationMaps`, each [B, F, T] ([1, F, T] for one clip); ``difference`` is the [F, T] anomaly map
        of each clip (higher = further from normal).
    Raises:
        ValueError: μ is not [F, T] or does not match x̂'s last two dimensions.
    """
    x_rec = reconstruction.unsqueeze(0) if reconstruction.ndim == 2 else reconstruction
    if x_rec.ndim != 3 or training_mean.ndim != 2 or x_rec.shape[1:] != training_mean.shape:
        raise ValueError(
            f"localization_maps expects x̂ [B, F, T] and μ [F, T] of one F × T, got {tuple(reconstruction.shape)} "
            f"and {tuple(training_mean.shape)}"
        )
    mu = training_mean.to(x_rec.dtype).expand_as(x_rec)
    return LocalizationMaps(reconstruction=x_rec, training_mean=mu, difference=(x_rec - mu).abs())
