"""TLDiffGAN on the Method contract (issue 14): the LDGAN backbone with TMixup (:mod:`stethoscope.nn.tldiffgan`),
a frozen pretrained waveform encoder (:mod:`stethoscope.encoders`), and the detector stage choosing, per machine
type on the validation clips, between the reconstruction score and KNN / LOF / GMM / SOS on the embeddings.

Source: Ma, Jia, Guo & Yang, "TLDiffGAN: a latent diffusion-GAN framework with temporal information fusion for
anomalous sound detection" (DCASE 2020 Task 2), as summarised in issue 14; the network's own choices are documented
in :mod:`stethoscope.nn.tldiffgan`. Registered as ``tldiffgan``. Trained per machine type; needs no machine IDs.

- **Input** (:meth:`TLDiffGANMethod.input_specs`): ``log_mel`` (n_fft 1024, hop 512, 128 mels, dB: the DCASE 2020
  baseline's front end with the paper's 128 mels; the paper gives 128 × 313 for 10 s at 16 kHz but no n_fft: ours)
  and, with the waveform branch, ``waveform`` (16 kHz; the encoder resamples to its own rate and the run log says so).
- **Crops**: the network sees ``n_frames`` (313) frames. A clip is cut into crops of ``n_frames`` every ``crop_hop``
  frames (default: ``n_frames``, no overlap) plus one crop aligned to its end when the hop misses the tail; a
  shorter clip is tiled from its start (:func:`stethoscope.methods.base.crop_starts`). A 10 s clip is exactly one crop. A clip's
  reconstruction score and Z_mel are the means over its crops; its anomaly map stitches the crops' maps back to its
  frames (overlaps averaged).
- **Scale**: the log-mel (dB) is standardised with the mean and standard deviation of every training value
  (:meth:`TLDiffGANMethod.fit_statistics`, all-reduced over the Ray Train workers) so that TMixup's σ(Pool(x)) and
  the DDPM's unit-scale latent see informative values (ours; the paper does not say). The same pass keeps the
  training-mean log-mel μ [n_mels, n_frames] (standardised) for the anomaly maps (Fig. 3).
- **Training** (:meth:`training_step`, Eqs. 1-2): one critic step L_D = L_adv + λ_GP·L_GP on every batch, one
  generator step L_G = L_noise + λ_stat·L_stat (+ our λ_rec·L_rec) on every ``n_critic``-th batch, two Adam
  optimisers (lr 1e-4, TLDiffGAN §2.1; betas (0.5, 0.999): ours), through :meth:`Method.optimize` (mixed precision
  on CUDA, gradient clipping, the all-reduce over workers). TMixup's τ and λ come from a numpy Generator drawn
  once per epoch from the global numpy state (seeded per epoch by the train loop) and the worker's rank.
- **Scores**: ``score`` = s_r of Eq. 5 (``score_variant``: "latent" = ‖Enc(x) − Enc(x̂)‖², the default; or
  "denoised" / "input", :data:`stethoscope.nn.tldiffgan.SCORE_VARIANTS`), with the diffusion noise drawn from a
  generator seeded with ``score_seed`` and shared by every crop of the batch, so a clip scores the same in any batch
  (the run, the bundle and the endpoint agree). ``embed`` = Z = concat(Z_mel, Z_wave) (§2.4): Z_mel the clip's
  mean latent, Z_wave the frozen encoder's clip embedding, each L2-normalised first (``branch_norm = "l2"``, ours:
  otherwise the larger-scaled half decides every distance). ``localize`` = Fig. 3's difference map |x̂ − μ|
  [n_mels, frames] (:meth:`localization`: the three panels).
- **Detectors** (§2.4, Eq. 6): ``detectors`` = ("method", "knn", "lof", "gmm", "sos"): the detector stage
  (:mod:`stethoscope.stages.detect`) fits the detectors per machine ID on the training embeddings and keeps, per
  machine type, the candidate ("method" = s_r) with the best mean(AUC, pAUC) on the validation clips only.
- **Waveform branch** (§2.3): ``encoder`` names a registered encoder (:func:`stethoscope.encoders.names`; the
  paper's best is EAT, then BEATs, ATST, AST), ``encoder_path`` its local weights. The default, "aisfx", works
  offline: its weights ship inside the aisfx wheel (CC-BY-4.0; 44.1 kHz, 512-d). "none" turns the branch off
  (Table 3's "w/o EAT"). The weights are found and hashed when the config is made (a missing file is an
  :class:`~stethoscope.encoders.EncoderError` that says which file goes where, before anything trains); they are
  loaded on the first ``embed``. Checkpoints and bundles keep the :class:`~stethoscope.encoders.EncoderRef` (name,
  path, SHA-256), never the weights; loading a checkpoint whose encoder files changed is refused.
- **Ablations** (Table 3): ``diffusion = false`` (plain GAN generator), ``encoder = none``, ``tmixup = false``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from stethoscope import encoders
from stethoscope.data.features import FeatureSpec, InputSpec, WaveformSpec
from stethoscope.detectors.stage import OWN_SCORE
from stethoscope.errors import ConfigError, DataError
from stethoscope.methods.base import FrozenEncoder, Method, clip_arrays, crop_clip, crop_starts, register
from stethoscope.nn.diffusion import DenoiserConfig, DiffusionConfig
from stethoscope.nn.tldiffgan import SCORE_VARIANTS, TLDiffGAN, TLDiffGANConfig, localization_maps
from stethoscope.nn.tmixup import TMixupConfig

log = logging.getLogger(__name__)

#: ``encoder`` value that turns the waveform branch off (Table 3's "w/o EAT").
NO_ENCODER = "none"


@dataclass
class Config:
    """TLDiffGAN. Paper values cite issue 14 (TLDiffGAN §2); every other default is *ours* and says so.

    Fields:
        n_mels 128, n_frames 313: the log-mel the network sees (TLDiffGAN §2.1: 128 × 313 for 10 s at 16 kHz).
        n_fft 1024 (ours: the DCASE 2020 baseline's), hop_length 512 (gives the paper's 313 frames).
        crop_hop: frames between crops of a longer clip (None = n_frames; ours).
        latent_dim: D of the latent (ours 128; the paper: "low-dimensional"; searched).
        base_channels 32, max_channels 256, num_layers 5, discriminator_groups 8: network widths (ours;
            :class:`~stethoscope.nn.tldiffgan.TLDiffGANConfig`).
        diffusion: the latent DDPM generator (True) or a plain GAN generator (False; Table 3 "w/o latent diffusion").
        tmixup: TMixup on the training log-mels (Table 3 "w/o log-mel enhancement" when False).
        tmixup_alpha: α of λ ~ Beta(α, α) (not in the paper; ours 0.5; searched).
        num_diffusion_steps: T of the linear β schedule (ours: 1000, Ho et al.'s).
        start_step: s, the step the latent is noised to before denoising (not in the paper; ours 200; searched).
        train_denoise_steps: reverse steps of the training chain D judges (ours 4). score_denoise_steps: reverse
            steps at scoring time (None = every step from s; ours).
        denoiser_hidden 512, denoiser_blocks 4: ε_θ's residual MLP (ours).
        lambda_stat 1.0, lambda_gp 10.0: λ_stat (Eq. 1) and λ_GP (Eq. 2), TLDiffGAN §2.1; searched.
        lambda_rec: our autoencoder term's weight (1.0; 0 = Eq. 1 exactly). feature_matching: "mean" or "paired".
        judge_intermediate: D judges every denoising step's decoded prediction (TLDiffGAN §2.1).
        lr 1e-4, batch_size 512, epochs 150: Adam (TLDiffGAN §2.1). betas: (0.5, 0.999) (ours). n_critic: critic
            steps per generator step (ours 1). clip_grad_norm: 0 = off (ours).
        val_fraction: training clips held out for the validation losses (ours, as the other methods).
        encoder: the waveform branch's encoder (registry name, or "none"); ours "aisfx" (the paper's best, EAT,
            cannot be downloaded here: put its weights at ``encoder_path`` and set ``encoder: eat``).
        encoder_path: the encoder's local weights (file or folder; None = aisfx's packaged weights).
        encoder_pooling: the encoder's clip pooling (None = its default).
        branch_norm: "l2" (normalise Z_mel and Z_wave before concatenating; ours) or "none" (the raw concat).
        score_variant: "latent" (Eq. 5, default), "denoised" or "input". score_seed: seed of the scoring noise.
        detectors: the detector stage's candidates: "method" (s_r) and detectors of
            :func:`stethoscope.detectors.detector_names` (KNN, LOF, GMM, SOS: TLDiffGAN §2.4).
    Raises:
        ConfigError: a bad value (names the field). EncoderError: (from :meth:`TLDiffGANMethod.make_config`) an
            unknown encoder or missing weights.
    """

    n_mels: int = 128
    n_frames: int = 313
    n_fft: int = 1024
    hop_length: int = 512
    crop_hop: int | None = None
    latent_dim: int = 128
    base_channels: int = 32
    max_channels: int = 256
    num_layers: int = 5
    discriminator_groups: int = 8
    diffusion: bool = True
    tmixup: bool = True
    tmixup_alpha: float = 0.5
    num_diffusion_steps: int = 1000
    start_step: int = 200
    train_denoise_steps: int = 4
    score_denoise_steps: int | None = None
    denoiser_hidden: int = 512
    denoiser_blocks: int = 4
    lambda_stat: float = 1.0
    lambda_gp: float = 10.0
    lambda_rec: float = 1.0
    feature_matching: str = "mean"
    judge_intermediate: bool = True
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 512
    epochs: int = 150
    n_critic: int = 1
    clip_grad_norm: float = 0.0
    val_fraction: float = 0.1
    shuffle: bool = True
    encoder: str = "aisfx"
    encoder_path: str | None = None
    encoder_pooling: str | None = None
    branch_norm: str = "l2"
    score_variant: str = "latent"
    score_seed: int = 0
    detectors: tuple[str, ...] = (OWN_SCORE, "knn", "lof", "gmm", "sos")

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> None:
            raise ConfigError(f"tldiffgan config: {field} = {getattr(self, field)!r}; expected {expected}")

        for name in ("n_fft", "hop_length", "batch_size", "n_critic"):
            if getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.crop_hop is not None and self.crop_hop < 1:
            bad("crop_hop", "None (= n_frames) or an integer >= 1")
        if self.epochs < 0:
            bad("epochs", ">= 0")
        if not self.lr > 0:
            bad("lr", "> 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            bad("betas", "two numbers in [0, 1)")
        if self.clip_grad_norm < 0:
            bad("clip_grad_norm", ">= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")
        if self.branch_norm not in ("l2", "none"):
            bad("branch_norm", "'l2' or 'none'")
        if self.score_variant not in SCORE_VARIANTS or (self.score_variant == "denoised" and not self.diffusion):
            bad("score_variant", f"one of {list(SCORE_VARIANTS)} ('denoised' needs diffusion)")
        self.network()  # the network's own checks (sizes, start_step within T, feature matching, α) now

    def network(self) -> TLDiffGANConfig:
        """The :class:`~stethoscope.nn.tldiffgan.TLDiffGANConfig` these fields describe (Z_wave is concatenated by
        the Method, so ``extra_dim`` stays 0). Raises ConfigError (the network's checks)."""
        return TLDiffGANConfig(
            n_mels=self.n_mels, n_frames=self.n_frames, latent_dim=self.latent_dim, base_channels=self.base_channels,
            max_channels=self.max_channels, num_layers=self.num_layers,
            discriminator_groups=self.discriminator_groups, diffusion=self.diffusion, tmixup=self.tmixup,
            lambda_stat=self.lambda_stat, lambda_gp=self.lambda_gp, lambda_rec=self.lambda_rec,
            feature_matching=self.feature_matching, start_step=self.start_step,
            train_denoise_steps=self.train_denoise_steps, score_denoise_steps=self.score_denoise_steps,
            judge_intermediate=self.judge_intermediate,
            diffusion_config=DiffusionConfig(num_steps=self.num_diffusion_steps),
            denoiser_config=DenoiserConfig(hidden_dim=self.denoiser_hidden, num_blocks=self.denoiser_blocks),
            tmixup_config=TMixupConfig(alpha=self.tmixup_alpha),
        )

    @property
    def waveform_branch(self) -> bool:
        return self.encoder != NO_ENCODER


@register
class TLDiffGANMethod(Method):
    """TLDiffGAN (``name = "tldiffgan"``); see the module docstring.

    Examples (training batches): ``{"x": float32 [N, n_mels, n_frames]}`` (dB crops). Scoring batches:
    ``{"log_mel": [B, n_mels, frames] (dB), "waveform": [B, samples] (with the waveform branch)}``.
    """

    name = "tldiffgan"
    Config = Config
    default_scope = "per_machine_type"
    labels = ()

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        if self.feature_spec.n_mels != config.n_mels:
            raise ConfigError(f"tldiffgan: the log-mel input has {self.feature_spec.n_mels} mels but the network is "
                              f"built for n_mels = {config.n_mels}")
        self.model = TLDiffGAN(config.network())
        self.g_optimizer = torch.optim.Adam(self.model.generator_parameters(), lr=config.lr, betas=config.betas)
        self.d_optimizer = torch.optim.Adam(self.model.discriminator_parameters(), lr=config.lr, betas=config.betas)
        #: scale: dB → (x − mean) / std; μ: the standardised training-mean log-mel [n_mels, n_frames]
        self.mean: float | None = None
        self.std: float | None = None
        self.training_mean: torch.Tensor | None = None
        self.frozen_encoder = FrozenEncoder(self.name, config.encoder, config.encoder_path) \
            if config.waveform_branch else None
        self._steps = 0

    @classmethod
    def make_config(cls, values=None) -> Config:
        """``Config`` from a mapping; also checks that the waveform branch's encoder exists and its weights are at
        ``encoder_path`` (hashing them), before anything trains.

        Raises:
            ConfigError: a bad value. EncoderError: an unknown encoder, a pooling it lacks, or missing weights
                (the message says which file goes where).
        """
        cfg = super().make_config(values)
        if cfg.waveform_branch:
            encoders.reference(cfg.encoder, cfg.encoder_path)
            pools = encoders.get(cfg.encoder).poolings
            if cfg.encoder_pooling is not None and cfg.encoder_pooling not in pools:
                raise ConfigError(f"tldiffgan config: encoder_pooling = {cfg.encoder_pooling!r}; encoder "
                                  f"'{cfg.encoder}' offers {list(pools)}")
        return cfg

    @classmethod
    def input_specs(cls, config: Config) -> dict[str, InputSpec]:
        """``{"log_mel": FeatureSpec(n_fft, hop, n_mels, dB)}`` plus ``"waveform": WaveformSpec(16000)`` with the
        waveform branch."""
        spec = FeatureSpec(n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels)
        if not config.waveform_branch:
            return {"log_mel": spec}
        return {"log_mel": spec, "waveform": WaveformSpec(sample_rate=spec.sample_rate)}

    # -- data -------------------------------------------------------------------------------------------------
    @property
    def crop_hop(self) -> int:
        return self.config.crop_hop or self.config.n_frames

    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops = [crop_clip(a, self.config.n_frames, self.crop_hop) for a in clip_arrays(clips["log_mel"])]
        if not crops:
            return {"x": np.zeros((0, self.config.n_mels, self.config.n_frames), np.float32)}
        return {"x": np.ascontiguousarray(np.concatenate(crops))}

    def fit_statistics(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Mean and standard deviation (dB) of every training log-mel value, and the training-mean crop μ; summed
        over the ``torch.distributed`` workers when initialised, so every worker scales alike.

        With the waveform branch it also loads the frozen encoder once, so that a file that is not the named
        encoder's checkpoint fails here, before epoch 1, not after training when the detector stage embeds.

        Raises:
            DataError: no training example, non-finite values, or a constant log-mel (std 0).
            EncoderError: the encoder's file does not load as that encoder (the message names file and encoder).
        """
        if self.encoder_ref is not None:
            self.encoder  # noqa: B018 - loads and checks the weights (kept for embed)
        c = self.config
        n, s1, s2 = 0.0, 0.0, 0.0
        crop_sum = torch.zeros(c.n_mels, c.n_frames, dtype=torch.float64)
        for b in batches:
            x = b["x"].detach().to("cpu", torch.float64)
            if x.numel():
                n += x.shape[0]
                s1 += float(x.sum())
                s2 += float(x.square().sum())
                crop_sum += x.sum(dim=0)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            t = torch.cat([torch.tensor([n, s1, s2], dtype=torch.float64), crop_sum.flatten()]).to(dev)
            dist.all_reduce(t)
            t = t.cpu()
            n, s1, s2 = float(t[0]), float(t[1]), float(t[2])
            crop_sum = t[3:].reshape(c.n_mels, c.n_frames)
        if n == 0:
            raise DataError("tldiffgan: no training log-mel to compute the standardisation from")
        cells = n * c.n_mels * c.n_frames
        mean = s1 / cells
        var = s2 / cells - mean * mean
        if not (math.isfinite(mean) and math.isfinite(var)):
            raise DataError("tldiffgan: the training log-mels hold non-finite values")
        if var <= 1e-12:
            raise DataError(f"tldiffgan: every training log-mel value is {mean:.3f} dB; standardisation is undefined")
        self.mean, self.std = mean, math.sqrt(var)
        self.training_mean = ((crop_sum / n - mean) / self.std).float()
        log.info("tldiffgan standardisation: mean %.3f dB, std %.3f dB over %d crops", mean, self.std, int(n))

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            raise RuntimeError("tldiffgan: standardisation statistics are not set; call fit_statistics (or load a "
                               "checkpoint)")
        return (torch.as_tensor(x).to(self.device, torch.float32) - self.mean) / self.std

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One critic step (Eq. 2) and, on every ``n_critic``-th batch, one generator step (Eq. 1).

        Returns ``loss_d``, ``adv`` (E D(x̂) − E D(x)), ``gp`` and, on generator steps, ``loss_g``, ``noise``
        (L_noise), ``stat`` (L_stat), ``rec`` (L_rec).
        """
        x = self._standardise(batch["x"])
        if x.shape[0] < 1:
            return {}
        self.model.train()
        rng = self.epoch_rng() if self.model.tmixup is not None else None
        clip = self.config.clip_grad_norm or None
        with self.autocast():
            d = self.model.discriminator_losses(x, rng)
        self.optimize(self.d_optimizer, d["loss"].float(), clip_grad_norm=clip)
        out = {"loss_d": float(d["loss"].detach()), "adv": float(d["adv"].detach()), "gp": float(d["gp"].detach())}
        self._steps += 1
        if self._steps % self.config.n_critic == 0:
            with self.autocast():
                g = self.model.generator_losses(x, rng)
            self.optimize(self.g_optimizer, g["loss"].float(), clip_grad_norm=clip)
            out.update(loss_g=float(g["loss"].detach()), noise=float(g["noise"].detach()),
                       stat=float(g["stat"].detach()), rec=float(g["rec"].detach()))
        return out

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """``val_rec`` = ‖x − Dec(Enc(x))‖² (mean) and ``val_score`` = the mean reconstruction score of held-out
        training crops (eval mode, no TMixup, seeded noise)."""
        self.model.eval()
        x = self._standardise(batch["x"])
        with torch.no_grad():
            rec = F.mse_loss(self.model.decode(self.model.encode(x)), x)
            s = self._crop_scores(x)
        return {"val_rec": float(rec), "val_score": float(s.mean())}

    # -- inference --------------------------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(self.config.score_seed))

    def _crop_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised crops [N, n_mels, n_frames] → the configured reconstruction score [N] (seeded, shared
        noise)."""
        variants = self.model.score_variants(x, self._generator(), shared_noise=True)
        return variants[self.config.score_variant]

    def _clip_crops(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[int], list[int]]:
        """The batch's clips → (standardised crops [N, n_mels, n_frames], crops per clip, frames per clip)."""
        if "log_mel" not in batch:
            raise DataError("tldiffgan scores log-mels: the batch needs 'log_mel' [B, n_mels, frames]")
        arrays = clip_arrays(batch["log_mel"])
        for i, a in enumerate(arrays):
            if a.ndim != 2 or a.shape[0] != self.config.n_mels:
                raise DataError(f"tldiffgan: clip {i} of the batch has a log-mel of shape {a.shape}; expected "
                                f"[{self.config.n_mels}, frames]")
        crops = [crop_clip(a, self.config.n_frames, self.crop_hop) for a in arrays]
        x = self._standardise(torch.from_numpy(np.concatenate(crops)))
        return x, [c.shape[0] for c in crops], [a.shape[1] for a in arrays]

    @staticmethod
    def _clip_means(values: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Per-crop values [N, ...] → per-clip means [B, ...]."""
        return torch.stack([v.mean(dim=0) for v in values.split(counts)])

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """s_r of each clip (Eq. 5, or the configured ``score_variant``), the mean over its crops: [B] float32.

        Raises:
            DataError: no ``log_mel`` or a log-mel of the wrong number of mels.
        """
        self.model.eval()
        x, counts, _ = self._clip_crops(batch)
        with torch.no_grad():
            return self._clip_means(self._crop_scores(x), counts).float().cpu()

    def score_variants(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every reconstruction score of :data:`~stethoscope.nn.tldiffgan.SCORE_VARIANTS` the model has: {name: [B]}."""
        self.model.eval()
        x, counts, _ = self._clip_crops(batch)
        with torch.no_grad():
            out = self.model.score_variants(x, self._generator(), shared_noise=True)
        return {k: self._clip_means(v, counts).float().cpu() for k, v in out.items()}

    @property
    def encoder(self) -> encoders.Encoder:
        """The frozen waveform encoder, loaded on first use from :attr:`encoder_ref` (its SHA-256 is checked
        before the files are unpickled). Raises EncoderError (missing or changed files) or ConfigError (no branch)."""
        if self.frozen_encoder is None:
            raise ConfigError("tldiffgan: this model has no waveform branch (encoder = none)")
        return self.frozen_encoder.load(self.device)

    @property
    def encoder_ref(self) -> encoders.EncoderRef | None:
        """The waveform branch's :class:`~stethoscope.encoders.EncoderRef` (None without the branch)."""
        return None if self.frozen_encoder is None else self.frozen_encoder.ref

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Z = concat(Z_mel, Z_wave) [B, latent_dim (+ the encoder's D)] (TLDiffGAN §2.4): Z_mel = the clip's mean
        latent Enc(x) over its crops, Z_wave = the frozen encoder's clip embedding of ``waveform`` (16 kHz,
        resampled to the encoder's rate), each L2-normalised first with ``branch_norm = "l2"``.

        Raises:
            DataError: no ``waveform`` in the batch with the waveform branch. EncoderInputError: a clip shorter
                than the encoder's minimum (the message names it in samples and seconds).
        """
        self.model.eval()
        x, counts, _ = self._clip_crops(batch)
        with torch.no_grad():
            z = self._clip_means(self.model.encode(x), counts).float()
        if self.encoder_ref is None:
            return z.cpu()
        if "waveform" not in batch:
            raise DataError("tldiffgan with a waveform branch embeds the raw audio: the batch needs 'waveform'")
        wave = torch.as_tensor(np.stack(clip_arrays(batch["waveform"])))
        z_wave = self.encoder.embed(wave, self.inputs["waveform"].sample_rate, self.config.encoder_pooling).float()
        z_wave = z_wave.to(z.device)
        if self.config.branch_norm == "l2":
            z, z_wave = F.normalize(z, dim=1), F.normalize(z_wave, dim=1)
        return torch.cat([z, z_wave], dim=1).cpu()

    def localization(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fig. 3's three panels for each clip, on the standardised scale: ``reconstruction`` x̂ and ``training_mean``
        μ stitched from the clip's crops back to its own frames (overlaps averaged), and ``difference`` |x̂ − μ|, each
        [B, n_mels, frames] (the clips of a batch share one length).

        Raises:
            DataError: see :meth:`score`; clips of different lengths in one batch.
            RuntimeError: no training mean (neither fitted nor loaded).
        """
        if self.training_mean is None:
            raise RuntimeError("tldiffgan: no training-mean log-mel; call fit_statistics (or load a checkpoint)")
        self.model.eval()
        x, counts, frames = self._clip_crops(batch)
        if len(set(frames)) > 1:
            raise DataError(f"tldiffgan.localization: clips of {sorted(set(frames))} frames in one batch; localize "
                            "clips of one length together")
        with torch.no_grad():
            rec = self.model.reconstruct(x, self._generator(), shared_noise=True).reconstruction
        maps = localization_maps(rec, self.training_mean.to(rec.device))
        c, t = self.config, frames[0]
        starts = crop_starts(t, c.n_frames, self.crop_hop)
        out = {}
        for name in ("reconstruction", "training_mean"):
            per_crop = getattr(maps, name).split(counts)
            clips = []
            for crops in per_crop:
                if t <= c.n_frames:
                    clips.append(crops[0, :, :t])
                    continue
                acc = crops.new_zeros(c.n_mels, t)
                n = crops.new_zeros(1, t)
                for s, crop in zip(starts, crops):
                    acc[:, s:s + c.n_frames] += crop
                    n[:, s:s + c.n_frames] += 1
                clips.append(acc / n)
            out[name] = torch.stack(clips).float().cpu()
        out["difference"] = (out["reconstruction"] - out["training_mean"]).abs()
        return out

    def localize(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The anomaly map of each clip: Fig. 3's difference |x̂ − μ| [B, n_mels, frames] (:meth:`localization`)."""
        return self.localization(batch)["difference"]

    # -- state ------------------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "TLDiffGANMethod":
        super().to(device)
        if self.frozen_encoder is not None:
            self.frozen_encoder.to(self.device)
        return self

    def extra_state(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "training_mean": self.training_mean,
            "steps": self._steps,
            "encoder": self.encoder_ref.to_dict() if self.encoder_ref is not None else None,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Statistics and the encoder reference. Raises EncoderError when the checkpoint was trained with other
        encoder weights than the config's ``encoder_path`` holds now (or with another encoder, or none)."""
        self.mean, self.std = state.get("mean"), state.get("std")
        self.training_mean = state.get("training_mean")
        self._steps = int(state.get("steps", 0))
        saved = state.get("encoder")
        if (saved is None) != (self.encoder_ref is None):
            raise encoders.EncoderError(
                f"tldiffgan: the checkpoint was trained {'without' if saved is None else 'with'} a waveform branch "
                f"({saved!r}) but the config says encoder = {self.config.encoder!r}")
        if saved is not None:
            self.frozen_encoder.check(saved)
