"""AEGAN-AD: a WGAN-GP whose generator is a convolutional autoencoder over log-mel patches.

Sources:
- Jiang, Zhang, ... "Unsupervised Anomaly Detection and Localization of Machine Audio: A GAN-based Approach"
  (ICASSP 2023, arXiv:2303.17949) and the AITHU team's DCASE 2022 Task 2 technical report, §3.3, Eq. 5-6;
- the authors' reference code, github.com/jianganbai/AEGAN-AD (``dcase22/``: ``config.yaml``, ``net.py``,
  ``train.py``, ``test.py``, ``emb_distance.py``). We read it to understand the method; nothing is copied.

Input: 128 × 128 log-mel patches (n_fft 2048, hop 512, 128 mels, 128 frames), cut from each clip with a hop of
``patch_hop`` frames. The log-mel is librosa's ``power_to_db(ref=1.0)`` with its 80 dB floor below each clip's
maximum (``FeatureSpec(db_ref="absolute_top_db")``, as the reference ``utils.generate_spec``), then min-max scaled to
[-1, 1] with the minimum and maximum of the training set.

Networks (DCGAN-like, LayerNorm instead of BatchNorm; reference ``net.py``):
- encoder = discriminator trunk: Conv 4×4 stride 2 (1 → C) then Conv 4×4 stride 2 doubling the channels until the
  shorter side is 4, each followed by LayerNorm over (channels, height, width) and LeakyReLU(0.2);
- generator = encoder (+ a final Conv over the whole 4×4 map → ``latent_dim``) and a decoder of transposed
  convolutions (ReLU, LayerNorm) back to [1, H, W] with a tanh output;
- discriminator D = the same trunk, then a depthwise (global) 4×4 convolution whose flattened output f(x) is the
  embedding (D's last convolution), then LayerNorm → LeakyReLU → Linear → critic value.
  ``adaptive_layernorm=True`` conditions the generator on the class (machine_id or section) with per-class scale
  and shift vectors: on the latent code only (``adaptive_layernorm_scope="latent"``: a LayerNorm over the latent
  vector before the decoder, the AITHU report's §3.3 choice for ToyCar and gearbox) or in place of every generator
  LayerNorm's affine parameters (``"generator"``).
- ``use_discriminator=False`` trains the generator alone as a plain autoencoder (reconstruction MSE, no critic, no
  feature matching, no ``d_*`` scores): the AITHU report (§3.3) keeps the discriminator for gearbox and slider only.
  ``stethoscope/presets/aegan_ad_aithu2022.yaml`` holds these per-machine choices.

Losses: critic (Eq. 5, WGAN-GP, Gulrajani et al. 2017) ``L_D = E[D(x̂)] − E[D(x)] + λ·E[(‖∇D(x̃)‖₂ − 1)²]`` with
x̃ a random interpolation of x and x̂ = G(x); generator (Eq. 6) ``L_G = MSE(x, x̂) + μ·‖E f(x) − E f(x̂)‖²`` (the
feature-matching term is a mean over the embedding dimensions, as in the reference ``D2GLoss``), optionally
``+ μ_σ·‖σ f(x) − σ f(x̂)‖²`` (the paper's variant for some machine types).

Scores (higher = more anomalous), all exposed by name through :meth:`AeganAd.score_variants`:
- generator-based ``g_{input|latent}_{l1|l2|cos}_{mean|min|max}``: per patch, the distance between x and x̂
  (``input``) or between E(x) and E(x̂) (``latent``) — l1 = mean |·|, l2 = mean squared difference, cos = 1 − cosine
  similarity — then the mean, min or max over the clip's patches (the reference sums per patch and over patches;
  with a fixed number of elements and patches that is the same ranking);
- discriminator-based ``d_{knn|lof|cos|mahalanobis}``: the clip embedding (mean of f over its patches) scored by a
  detector fitted on the training clips' embeddings (``stethoscope.detectors``; pooled over machine_ids/sections,
  as the reference's ``EmbeddingDetector``).
The reference code chose the variant per machine type on the *test* set; here the pipeline chooses it on a
validation split (``stethoscope.evaluation.selection``) and calls :meth:`AeganAd.set_score_variant`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from stethoscope.data.features import FeatureSpec
from stethoscope.detectors import EmbeddingDetector, detector_from_state, get_detector
from stethoscope.errors import ConfigError, DataError
from stethoscope.methods.base import Method, clip_arrays, register

log = logging.getLogger(__name__)

#: Generator-based score families: (space, distance) pairs and the reductions over a clip's patches.
G_SPACES = ("input", "latent")
G_DISTANCES = ("l1", "l2", "cos")
G_REDUCTIONS = ("mean", "min", "max")
#: Discriminator-embedding detectors: score-variant suffix → ``stethoscope.detectors`` name.
D_DETECTORS = {"knn": "knn", "lof": "lof", "cos": "cosine", "mahalanobis": "mahalanobis"}


def score_variant_names() -> list[str]:
    """Every score variant AEGAN-AD computes: 18 generator-based, then 4 discriminator-based names."""
    g = [f"g_{s}_{d}_{r}" for s in G_SPACES for d in G_DISTANCES for r in G_REDUCTIONS]
    return g + [f"d_{k}" for k in D_DETECTORS]


@dataclass
class Config:
    """AEGAN-AD hyperparameters. Defaults: the reference code's ``dcase22/config.yaml`` (the DCASE 2022 setting).

    - epochs 60, batch_size 512, lr 2e-4 for G and D, betas (0.5, 0.999): ``train.epoch``, ``train.batch_size``,
      ``train.lrD/lrG``, ``train.beta1`` (β2 is Adam's default, as in ``train.py``).
    - gp_lambda 10 (Eq. 5; ``wgan.lambda_gp``), mu 0.1 (μ of Eq. 6; ``wgan.feat_match_eff``), mu_sigma 0 (μ₂ of the
      σ-matching variant, README; ``match_item`` has ``mu`` only), n_critic 1 (``wgan.ncritic``: one critic step
      on every batch and a generator step on every n_critic-th batch).
    - patch_frames 128 (``feat.frame_num``), patch_hop 1 frame (``feat.graph_hop_f``).
    - base_channels 32 (``net.ndf``: first encoder/discriminator width, doubled at each stride-2 layer),
      decoder_channels 32 (``net.ngf``: width of the last decoder layer before the output), latent_dim 256
      (``net.nz``), encoder_first_norm True (the reference drops the first encoder LayerNorm for bearing, fan and
      ToyCar only).
    - adaptive_layernorm False (issue 3 option: generator LayerNorm scale/shift per machine_id/section).
    - score_variant "g_latent_l1_mean": the reference README's DCASE 2022 table picks G-z-L1-sum for bearing and
      ToyCar, G-z-cos-min for fan and gearbox and D-LOF for slider; we take G-z-L1 (sum ≡ mean over patches).
      The pipeline replaces it with the one selected on a validation split.
    - knn_neighbors 2, lof_neighbors 4, detector_metric "cosine", mahalanobis_covariance "empirical"
      (``emb_distance.py``).
    - use_discriminator True (the ICASSP 2023 model); adaptive_layernorm_scope "generator" (issue 3's option).
      The per-machine values of the AITHU DCASE 2022 report §3.3 are a preset (``aegan_ad_aithu2022.yaml``).
    - val_fraction 0.1: share of the training clips held out for the validation loss (a platform setting; the
      reference has none).
    - score_chunk: patches per forward pass when scoring (memory only; no effect on the result).
    """

    epochs: int = 60
    batch_size: int = 512
    val_fraction: float = 0.1
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    gp_lambda: float = 10.0
    mu: float = 0.1
    mu_sigma: float = 0.0
    n_critic: int = 1
    patch_frames: int = 128
    patch_hop: int = 1
    base_channels: int = 32
    decoder_channels: int = 32
    latent_dim: int = 256
    encoder_first_norm: bool = True
    adaptive_layernorm: bool = False
    adaptive_layernorm_scope: Literal["generator", "latent"] = "generator"
    use_discriminator: bool = True
    score_variant: str = "g_latent_l1_mean"
    knn_neighbors: int = 2
    lof_neighbors: int = 4
    detector_metric: str = "cosine"
    mahalanobis_covariance: str = "empirical"
    score_chunk: int = 512

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> None:
            raise ConfigError(f"aegan_ad config: {field} = {getattr(self, field)!r}; expected {expected}")

        for field in ("batch_size", "n_critic", "patch_hop", "base_channels", "decoder_channels", "latent_dim",
                      "knn_neighbors", "lof_neighbors", "score_chunk"):
            if getattr(self, field) < 1:
                bad(field, "an integer >= 1")
        if self.epochs < 0:
            bad("epochs", ">= 0")
        if not self.lr > 0:
            bad("lr", "> 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            bad("betas", "two numbers in [0, 1)")
        for field in ("gp_lambda", "mu", "mu_sigma"):
            if not getattr(self, field) >= 0:
                bad(field, ">= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")
        if not _is_pow2(self.patch_frames) or self.patch_frames < 8:
            bad("patch_frames", "a power of two >= 8 (the encoder halves it down to 4)")
        if self.score_variant not in score_variant_names():
            bad("score_variant", f"one of {score_variant_names()}")
        if not self.use_discriminator and self.score_variant.startswith("d_"):
            bad("score_variant", "a generator-based g_* variant: use_discriminator is false, so there are no "
                                 "discriminator embeddings")
        if self.adaptive_layernorm_scope not in ("generator", "latent"):
            bad("adaptive_layernorm_scope", "'generator' or 'latent'")
        if self.mahalanobis_covariance not in ("empirical", "ledoit_wolf"):
            bad("mahalanobis_covariance", "'empirical' or 'ledoit_wolf'")
        self.betas = (float(self.betas[0]), float(self.betas[1]))


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and n > 0 and (n & (n - 1)) == 0


# ---------------------------------------------------------------------------------------------------------------------
# WGAN-GP


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    gp_lambda: float = 10.0,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP gradient penalty (Gulrajani et al., NeurIPS 2017, Eq. 3; AEGAN-AD Eq. 5):
    ``λ · mean_i (‖∇_x̃ D(x̃_i)‖₂ − 1)²`` with ``x̃_i = α_i·real_i + (1 − α_i)·fake_i``.

    Args:
        critic: [N, ...] → [N] or [N, 1] critic values; each output must depend on its own input only.
        real, fake: [N, ...] same shape (fake is detached here).
        gp_lambda: λ (10 in the paper).
        alpha: [N] or broadcastable interpolation weights in [0, 1]; default U(0, 1) per sample
            (drawn from torch's global generator).
    Returns:
        scalar tensor, differentiable with respect to the critic's parameters (create_graph=True).
    Raises:
        ValueError: real and fake shapes differ.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    n = real.shape[0]
    view = (n,) + (1,) * (real.dim() - 1)
    if alpha is None:
        alpha = torch.rand(view, device=real.device, dtype=real.dtype)
    alpha = alpha.reshape(view) if alpha.numel() == n else alpha
    mixed = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(mixed).reshape(n)
    (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
    norms = grad.reshape(n, -1).norm(2, dim=1)
    return gp_lambda * ((norms - 1.0) ** 2).mean()


# ---------------------------------------------------------------------------------------------------------------------
# networks


class _Norm(nn.Module):
    """LayerNorm over (C, H, W). ``num_classes > 0``: no elementwise affine; instead a per-class scale and shift
    vector [C] (adaptive LayerNorm, initialised to 1 and 0) chosen by ``cond`` [N] (class indices)."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int = 0):
        super().__init__()
        self.adaptive = num_classes > 0
        self.norm = nn.LayerNorm((channels, height, width), elementwise_affine=not self.adaptive)
        if self.adaptive:
            self.scale = nn.Embedding(num_classes, channels)
            self.shift = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.scale.weight)
            nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        y = self.norm(x)
        if self.adaptive:
            y = y * self.scale(cond)[:, :, None, None] + self.shift(cond)[:, :, None, None]
        return y


def _levels(height: int, width: int) -> int:
    """Stride-2 layers that bring the shorter side of an H × W patch down to 4."""
    return int(math.log2(min(height, width))) - 2


class ConvTrunk(nn.Module):
    """[N, 1, H, W] → [N, C·2^(L−1), H/2^L, W/2^L] (the shorter side ends at 4): Conv 4×4 stride 2 → (LayerNorm)
    → LeakyReLU(0.2), L times, doubling the channels from the second layer on. Shared shape of the encoder and D."""

    def __init__(self, height: int, width: int, channels: int, first_norm: bool = True, num_classes: int = 0):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in, c_out, h, w = 1, channels, height, width
        for i in range(_levels(height, width)):
            h, w = h // 2, w // 2
            self.convs.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False))
            self.norms.append(_Norm(c_out, h, w, num_classes) if (i > 0 or first_norm) else nn.Identity())
            c_in, c_out = c_out, c_out * 2
        self.out_channels, self.out_size = c_in, (h, w)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)
            x = norm(x, cond) if isinstance(norm, _Norm) else x
            x = F.leaky_relu(x, 0.2, inplace=True)  # on a fresh tensor; its backward reads the result
        return x


class LatentAdaLN(nn.Module):
    """Adaptive LayerNorm of the latent code: z [N, K] → LayerNorm(z) · γ[c] + β[c] with per-class vectors γ, β [K]
    (initialised to 1 and 0) chosen by ``cond`` [N] (class indices)."""

    def __init__(self, latent_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(latent_dim, elementwise_affine=False)
        self.scale = nn.Embedding(num_classes, latent_dim)
        self.shift = nn.Embedding(num_classes, latent_dim)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None:
            raise DataError("adaptive LayerNorm on the latent needs the class index of every patch")
        return self.norm(z) * self.scale(cond) + self.shift(cond)


class Generator(nn.Module):
    """Convolutional autoencoder G: [N, 1, H, W] in [-1, 1] → x̂ [N, 1, H, W] in (-1, 1); ``encode`` gives
    E(x) [N, latent_dim]. H and W are powers of two >= 8.

    ``num_classes > 0`` conditions it on the class: every LayerNorm's affine parameters (``cond_scope="generator"``)
    or only a :class:`LatentAdaLN` before the decoder (``"latent"``)."""

    def __init__(self, height: int, width: int, base_channels: int, decoder_channels: int, latent_dim: int,
                 first_norm: bool = True, num_classes: int = 0, cond_scope: str = "generator"):
        super().__init__()
        self.latent_norm = LatentAdaLN(latent_dim, num_classes) if num_classes and cond_scope == "latent" else None
        if self.latent_norm is not None:
            num_classes = 0  # the convolutional LayerNorms keep their own affine parameters
        self.trunk = ConvTrunk(height, width, base_channels, first_norm, num_classes)
        h0, w0 = self.trunk.out_size
        self.to_latent = nn.Conv2d(self.trunk.out_channels, latent_dim, (h0, w0), 1, 0, bias=False)
        levels = _levels(height, width)
        c = decoder_channels * 2 ** (levels - 1)
        self.from_latent = nn.ConvTranspose2d(latent_dim, c, (h0, w0), 1, 0, bias=False)
        self.dec_norms = nn.ModuleList([_Norm(c, h0, w0, num_classes)])
        self.up = nn.ModuleList()
        h, w = h0, w0
        for _ in range(levels - 1):
            h, w = h * 2, w * 2
            self.up.append(nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False))
            c //= 2
            self.dec_norms.append(_Norm(c, h, w, num_classes))
        self.to_output = nn.ConvTranspose2d(c, 1, 4, 2, 1, bias=False)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.to_latent(self.trunk(x, cond)).flatten(1)

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.latent_norm is not None:
            z = self.latent_norm(z, cond)
        y = F.relu(self.dec_norms[0](self.from_latent(z[:, :, None, None]), cond), inplace=True)
        for conv, norm in zip(self.up, self.dec_norms[1:]):
            y = F.relu(norm(conv(y), cond), inplace=True)
        return torch.tanh(self.to_output(y))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, cond), cond)


class Discriminator(nn.Module):
    """Critic D: [N, 1, H, W] → (critic value [N], embedding f(x) [N, C·2^(L−1)]). The embedding is the output of
    a depthwise convolution over the trunk's last 4×· map (D's last convolution)."""

    def __init__(self, height: int, width: int, base_channels: int):
        super().__init__()
        self.trunk = ConvTrunk(height, width, base_channels, first_norm=True)
        c = self.trunk.out_channels
        self.embed = nn.Conv2d(c, c, self.trunk.out_size, 1, 0, groups=c, bias=False)
        self.head = nn.Sequential(nn.LayerNorm(c), nn.LeakyReLU(0.2), nn.Linear(c, 1))
        self.embedding_dim = c

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.embed(self.trunk(x)).flatten(1)
        return self.head(f).reshape(-1), f


def _tensor(a: np.ndarray) -> torch.Tensor:
    """float32 numpy [n_mels, T] → a CPU tensor that owns a writable copy (Arrow-backed arrays are read-only)."""
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation of (transposed) convolution weights, N(0, 0.02) (reference ``utils.weights_init``)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)


# ---------------------------------------------------------------------------------------------------------------------
# the Method


@register
class AeganAd(Method):
    """AEGAN-AD over log-mel patches (``name = "aegan_ad"``).

    Examples: ``{"x": float32 [N, 1, n_mels, patch_frames]}`` (dB, unscaled; scaling happens inside the method)
    and ``"group": int64 [N]`` when the clips carry one. Clips shorter than ``patch_frames`` frames are
    tiled (repeated in time) up to ``patch_frames`` frames, so every clip gives at least one patch; patches start
    every ``patch_hop`` frames, and frames after the last full patch are not used.

    Scores: :meth:`score_variants` returns every named score ([B] each); :meth:`score` returns the one named by
    ``self.score_variant`` (Config default, or the one set by :meth:`set_score_variant`).
    """

    name = "aegan_ad"
    Config = Config

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        # the group label (machine_id / section) is read only by the adaptive LayerNorm
        self.labels = ("group",) if config.adaptive_layernorm else ()
        h, w = self.feature_spec.n_mels, config.patch_frames
        if not _is_pow2(h) or h < 8:
            raise ConfigError(f"aegan_ad needs n_mels to be a power of two >= 8; FeatureSpec.n_mels = {h}")
        n_cond = self.num_classes if config.adaptive_layernorm else 0
        self.generator = Generator(h, w, config.base_channels, config.decoder_channels, config.latent_dim,
                                   config.encoder_first_norm, n_cond, config.adaptive_layernorm_scope)
        self.generator.apply(_dcgan_init)
        betas = tuple(config.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas)
        self.discriminator: Discriminator | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        if config.use_discriminator:
            self.discriminator = Discriminator(h, w, config.base_channels)
            self.discriminator.apply(_dcgan_init)
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=betas)
        self.x_min: float | None = None
        self.x_max: float | None = None
        self.steps = 0
        self.score_variant = config.score_variant
        self.detectors: dict[str, EmbeddingDetector] = {}

    @classmethod
    def default_feature_spec(cls, config: Config) -> FeatureSpec:
        """n_fft 2048, hop 512, 128 mels (reference ``feat``), power 2, Slaney mel (librosa's default, which the
        reference used), ``10·log10(max(mel, 1e-10))`` floored at 80 dB below the clip's maximum ("absolute_top_db":
        the reference's ``librosa.power_to_db(mel, ref=1)`` with librosa's default ``top_db=80``, AITHU report
        §3.3); min-max scaling to [-1, 1] follows in the method."""
        return FeatureSpec(n_fft=2048, hop_length=512, n_mels=128, db_ref="absolute_top_db", amin=1e-10, top_db=80.0)

    # -- score variants ---------------------------------------------------------------------------------------
    @staticmethod
    def score_variant_names() -> list[str]:
        """Every name :meth:`score_variants` can return (see the module docstring)."""
        return score_variant_names()

    def set_score_variant(self, name: str) -> None:
        """Make :meth:`score` return variant ``name`` (chosen on a validation split by the pipeline).

        Raises:
            ConfigError: unknown name (the message lists the valid names), or a ``d_*`` variant of a model trained
                without a discriminator.
        """
        valid = [n for n in score_variant_names() if self.discriminator is not None or not n.startswith("d_")]
        if name not in valid:
            raise ConfigError(f"unknown aegan_ad score variant {name!r} for this model; valid names: {', '.join(valid)}")
        self.score_variant = name

    # -- data -------------------------------------------------------------------------------------------------
    def _patches(self, log_mel: torch.Tensor) -> torch.Tensor:
        """One clip's log-mel [n_mels, T] → patches [P, 1, n_mels, patch_frames] (a view when T >= patch_frames)."""
        if log_mel.ndim != 2 or log_mel.shape[0] != self.feature_spec.n_mels:
            m = self.feature_spec.n_mels
            raise DataError(f"aegan_ad expects log-mel clips [n_mels={m}, frames]; got {tuple(log_mel.shape)}")
        t, f = log_mel.shape[1], self.config.patch_frames
        if t == 0:
            raise DataError("a log-mel clip has 0 frames")
        if t < f:
            log_mel = log_mel.repeat(1, math.ceil(f / t))[:, :f]
        return log_mel.unfold(1, f, self.config.patch_hop).permute(1, 0, 2).unsqueeze(1)

    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        patches = [self._patches(_tensor(a)).numpy() for a in clip_arrays(clips["log_mel"])]
        m, f = self.feature_spec.n_mels, self.config.patch_frames
        if not patches:
            out = {"x": np.zeros((0, 1, m, f), dtype=np.float32)}
            if "group" in clips:
                out["group"] = np.zeros((0,), dtype=np.int64)
            return out
        out = {"x": np.ascontiguousarray(np.concatenate(patches), dtype=np.float32)}
        if "group" in clips:
            counts = [p.shape[0] for p in patches]
            out["group"] = np.repeat(np.asarray(clips["group"], dtype=np.int64).reshape(-1), counts)
        return out

    def fit_statistics(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Minimum and maximum log-mel value (dB) over every training patch; all-reduced (MIN / MAX) over
        ``torch.distributed`` workers when initialised, so every worker scales alike.

        Raises:
            DataError: no training examples, or every value is the same (nothing to scale).
        """
        lo, hi = math.inf, -math.inf
        for b in batches:
            x = b["x"]
            if x.numel():
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            t = torch.tensor([lo, -hi], dtype=torch.float64, device=backend_device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            lo, hi = float(t[0]), -float(t[1])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError("aegan_ad: no finite training log-mel values to compute the min-max scaling from")
        if hi <= lo:
            raise DataError(f"aegan_ad: every training log-mel value is {lo} dB; min-max scaling is undefined")
        self.x_min, self.x_max = lo, hi
        log.info("aegan_ad min-max scaling: [%.3f, %.3f] dB → [-1, 1]", lo, hi)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """dB → [-1, 1] with the training minimum and maximum (values outside the training range go beyond ±1)."""
        if self.x_min is None or self.x_max is None:
            raise RuntimeError("aegan_ad: min-max statistics are not set; call fit_statistics (or load a checkpoint)")
        mid, half = 0.5 * (self.x_max + self.x_min), 0.5 * (self.x_max - self.x_min)
        return (x.to(self.device, torch.float32) - mid) / half

    def _cond(self, group: Any, n: int) -> torch.Tensor | None:
        if not self.config.adaptive_layernorm:
            return None
        if group is None:
            if self.num_classes == 1:
                return torch.zeros(n, dtype=torch.long, device=self.device)
            raise DataError(
                f"aegan_ad with adaptive_layernorm and {self.num_classes} classes needs 'group' in every batch"
            )
        c = torch.as_tensor(group, device=self.device).long().reshape(-1)
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.num_classes):
            raise DataError(f"group index out of range [0, {self.num_classes}): {sorted(set(c.tolist()))}")
        return c

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One critic step (Eq. 5) on the batch; on every ``n_critic``-th batch also one generator step (Eq. 6).

        Returns ``loss_d``, ``gp`` (λ-weighted), ``wasserstein`` (E D(x) − E D(x̂)) and, on generator steps,
        ``loss_g``, ``loss_rec`` (MSE in the scaled [-1, 1] space) and ``loss_fm``. Without a discriminator
        (``use_discriminator=False``) every step is a plain autoencoder step: ``loss_g`` = ``loss_rec``.

        Cost (the same maths as computing each term on its own): x̂ = G(x) is computed once per batch. The critic
        step does not change G, so on generator steps the forward pass the critic reads (detached) is the one the
        generator step back-propagates through; on critic-only steps it runs without a graph. (Scoring x and x̂
        in one batched D call would save nothing measurable and changes the float summation order of D's weight
        gradients, which Adam's first steps amplify, so D keeps one call per input.)
        """
        x = self._scale(batch["x"])
        if x.shape[0] == 0:
            return {}
        cond = self._cond(batch.get("group"), x.shape[0])
        cfg = self.config
        self.generator.train()
        if self.discriminator is None:
            loss_rec = F.mse_loss(self.generator(x, cond), x)
            self.optimize(self.opt_g, loss_rec)
            self.steps += 1
            return {"loss_g": float(loss_rec.detach()), "loss_rec": float(loss_rec.detach())}
        self.discriminator.train()
        generator_step = self.steps % cfg.n_critic == 0

        with torch.set_grad_enabled(generator_step):
            x_hat = self.generator(x, cond)
        fake = x_hat.detach()
        d_real, _ = self.discriminator(x)
        d_fake, _ = self.discriminator(fake)
        gp = gradient_penalty(lambda v: self.discriminator(v)[0], x, fake, gp_lambda=cfg.gp_lambda)
        loss_d = d_fake.mean() - d_real.mean() + gp
        self.optimize(self.opt_d, loss_d)
        out = {"loss_d": float(loss_d.detach()), "gp": float(gp.detach()),
               "wasserstein": float((d_real.mean() - d_fake.mean()).detach())}

        if generator_step:
            self.discriminator.requires_grad_(False)
            try:
                with torch.no_grad():
                    _, f_real = self.discriminator(x)  # D has just been updated: f(x) is recomputed
                _, f_fake = self.discriminator(x_hat)
                loss_rec = F.mse_loss(x_hat, x)
                loss_fm = F.mse_loss(f_fake.mean(0), f_real.mean(0))
                if cfg.mu_sigma > 0:
                    loss_fm_sigma = F.mse_loss(f_fake.std(0, unbiased=False), f_real.std(0, unbiased=False))
                else:
                    loss_fm_sigma = torch.zeros((), device=x.device)
                loss_g = loss_rec + cfg.mu * loss_fm + cfg.mu_sigma * loss_fm_sigma
                self.optimize(self.opt_g, loss_g)
            finally:
                self.discriminator.requires_grad_(True)
            out.update(loss_g=float(loss_g.detach()), loss_rec=float(loss_rec.detach()),
                       loss_fm=float(loss_fm.detach()))
        self.steps += 1
        return out

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """``{"val_loss": reconstruction MSE}`` in the scaled [-1, 1] space, no parameter changes."""
        self.eval()
        with torch.no_grad():
            x = self._scale(batch["x"])
            if x.shape[0] == 0:
                return {}
            x_hat = self.generator(x, self._cond(batch.get("group"), x.shape[0]))
            return {"val_loss": float(F.mse_loss(x_hat, x))}

    # -- per-patch statistics ---------------------------------------------------------------------------------
    def _clip_stats(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per clip: generator-based scores {name: [B]} and the clip embedding [B, D] (mean of f over patches)."""
        self.eval()
        clips = clip_arrays(batch["log_mel"])
        cls = batch.get("group")
        if cls is not None:
            cls = torch.as_tensor(np.asarray(cls.cpu() if torch.is_tensor(cls) else cls)).long().reshape(-1)
        per_patch_names = [f"{s}_{d}" for s in G_SPACES for d in G_DISTANCES]
        g_scores = {f"g_{k}_{r}": torch.empty(len(clips)) for k in per_patch_names for r in G_REDUCTIONS}
        emb_dim = self.discriminator.embedding_dim if self.discriminator is not None else 0
        embeddings = torch.empty(len(clips), emb_dim)
        chunk = self.config.score_chunk
        with torch.no_grad():
            for i, clip in enumerate(clips):
                patches = self._patches(_tensor(clip))
                stats: dict[str, list[torch.Tensor]] = {k: [] for k in per_patch_names}
                f_sum = torch.zeros(emb_dim, dtype=torch.float64)
                for start in range(0, patches.shape[0], chunk):
                    x = self._scale(patches[start : start + chunk])
                    n = x.shape[0]
                    cond = self._cond(None if cls is None else cls[i].repeat(n), n)
                    z = self.generator.encode(x, cond)
                    x_hat = self.generator.decode(z, cond)
                    z_hat = self.generator.encode(x_hat, cond)
                    if self.discriminator is not None:
                        _, f = self.discriminator(x)
                        f_sum += f.double().sum(0).cpu()
                    for space, a, b in (("input", x.flatten(1), x_hat.flatten(1)), ("latent", z, z_hat)):
                        d = b - a
                        stats[f"{space}_l1"].append(d.abs().mean(1).cpu())
                        stats[f"{space}_l2"].append(d.pow(2).mean(1).cpu())
                        stats[f"{space}_cos"].append((1.0 - F.cosine_similarity(b, a, dim=1, eps=1e-8)).cpu())
                for k, parts in stats.items():
                    v = torch.cat(parts)
                    g_scores[f"g_{k}_mean"][i] = v.mean()
                    g_scores[f"g_{k}_min"][i] = v.min()
                    g_scores[f"g_{k}_max"][i] = v.max()
                embeddings[i] = (f_sum / patches.shape[0]).float()
        return g_scores, embeddings

    # -- detectors ---------------------------------------------------------------------------------------------
    def _new_detectors(self) -> dict[str, EmbeddingDetector]:
        cfg = self.config
        kwargs = {
            "knn": {"n_neighbors": cfg.knn_neighbors, "metric": cfg.detector_metric},
            "lof": {"n_neighbors": cfg.lof_neighbors, "metric": cfg.detector_metric},
            "cos": {},
            "mahalanobis": {"covariance": cfg.mahalanobis_covariance},
        }
        return {k: get_detector(D_DETECTORS[k], **kwargs[k]) for k in D_DETECTORS}

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Clip embedding: D's last-convolution features f(x) averaged over the clip's patches → [B, D] (CPU).

        Raises:
            RuntimeError: the model has no discriminator (``use_discriminator=False``).
        """
        if self.discriminator is None:
            raise RuntimeError("aegan_ad without a discriminator has no embeddings")
        return self._clip_stats(batch)[1]

    def fit_detector(self, clip_batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Fit the discriminator-embedding detectors (KNN, LOF, cosine to the mean, Mahalanobis) on the embeddings
        of the training clips ``{"log_mel": [B, n_mels, T]}``. Returns ``{"detector_train_clips": N}``.

        Without a discriminator there are no embeddings: nothing is fitted and ``{}`` is returned.

        Raises:
            DataError: no clips, or too few for a detector (KNN / LOF need more clips than neighbours).
        """
        if self.discriminator is None:
            return {}
        parts = [self.embed(b) for b in clip_batches]
        if not parts:
            raise DataError("aegan_ad.fit_detector got no training clips")
        emb = torch.cat(parts).double().numpy()
        detectors = self._new_detectors()
        for det in detectors.values():
            det.fit(emb)
        self.detectors = detectors
        return {"detector_train_clips": float(emb.shape[0])}

    # -- inference --------------------------------------------------------------------------------------------
    def score_variants(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every score variant for a clip batch ``{"log_mel": [B, n_mels, T] (or a list of [n_mels, T_i]),
        optional "group": [B]}`` → {name: float32 Tensor [B] on the CPU}, higher = more anomalous.

        The ``d_*`` variants are present only after :meth:`fit_detector` (or loading a checkpoint that has them).
        """
        g_scores, emb = self._clip_stats(batch)
        out = {k: v.float() for k, v in g_scores.items()}
        if self.detectors:
            e = emb.double().numpy()
            for k, det in self.detectors.items():
                out[f"d_{k}"] = torch.from_numpy(det.decision_function(e)).float()
        return out

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``self.score_variant`` score per clip, float32 Tensor [B] (CPU).

        Raises:
            RuntimeError: a ``d_*`` variant is selected but the detectors were never fitted.
        """
        if self.score_variant.startswith("d_") and not self.detectors:
            raise RuntimeError(f"score variant {self.score_variant!r} needs fit_detector() to have run first")
        return self.score_variants(batch)[self.score_variant]

    # -- state ------------------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {
            "x_min": self.x_min,
            "x_max": self.x_max,
            "steps": int(self.steps),
            "score_variant": self.score_variant,
            "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.x_min = None if state.get("x_min") is None else float(state["x_min"])
        self.x_max = None if state.get("x_max") is None else float(state["x_max"])
        self.steps = int(state.get("steps", 0))
        self.set_score_variant(state.get("score_variant", self.config.score_variant))
        self.detectors = {k: detector_from_state(s) for k, s in state.get("detectors", {}).items()}


__all__ = ["AeganAd", "Config", "Discriminator", "Generator", "gradient_penalty", "score_variant_names"]
