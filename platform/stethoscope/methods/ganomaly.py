"""GANomaly over 640-dim log-mel frame vectors, and the base class the GAN family shares.

Sources:
- de Oliveira Neto, Guedes & Figueiredo, "Anomaly Detection in Sound Activity with Generative Adversarial Network
  Models" (2024; the issue calls it "JBCS 2024"; the article we found is DOI 10.5753/jisa.2024.3897, SBC),
  §3.1 (features), §3.2.2 and Eq. 4-7 (GANomaly adapted to sound), Tables 3-4 (hyperparameters).
- Akçay, Atapour-Abarghouei & Breckon, "GANomaly: Semi-Supervised Anomaly Detection via Adversarial Training",
  ACCV 2018, §3 and the authors' reference code (loss weights w_adv 1, w_con 50, w_enc 1; Adam lr 2e-4,
  β1 0.5; feature matching on D's last hidden layer; D trained with BCE).

Model (fully connected, JBCS §3.2 and §3.2.2): G_E: 640 → 128 × num_hidden → latent 8; G_D: the mirror, linear
output; E: same shape as G_E, applied to G(x); D: FC encoder with a real/fake output. Every layer except the
decoder's output uses BatchNorm + ReLU, the 8-unit latent layer included (Config ``latent_activation="bn_relu"``;
``"linear"`` keeps a plain Linear latent, ours).

Generator loss (JBCS Eq. 4-7; Akçay 2018 §3):
``L_gen = λ_adv·L_adv + λ_con·‖x − G(x)‖₁ + λ_enc·L_enc`` with
- L_adv the BCE form ``BCE(D(G(x)), real)`` (JBCS Eq. 5; Config ``adv_loss="bce"``, the default), or feature
  matching ``mean‖f(x) − f(G(x))‖²`` on D's last hidden layer (``adv_loss="feature_matching"``, Akçay 2018's code);
- L_enc = ``‖G_E(x) − E(G(x))‖₂``, the L2 norm of each vector's latent difference averaged over the batch (JBCS
  Eq. 7; ``enc_loss="l2_norm"``, the default), or the per-element mean square (``enc_loss="mse"``, Akçay 2018's code);
- L_con the per-element mean |x − G(x)| (the reference code's L1), on standardised inputs (``GANConfig.standardize``).
D loss: ``½[BCE(D(x), 1) + BCE(D(G(x)), 0)]``.

Score (JBCS §3.2.2; Akçay 2018 §3, "Model testing"): the latent distance ``‖G_E(x) − E(G(x))‖₁`` per vector (as a
mean over the latent dimensions, i.e. the L1 norm / latent_dim), averaged over a clip's vectors. Higher = more
anomalous.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from stethoscope.data.features import FeatureSpec, frame_stack
from stethoscope.errors import ConfigError
from stethoscope.methods.base import Method, clip_arrays, register
from stethoscope.nn.fc import (
    INIT_SCHEMES,
    FCDecoder,
    FCDiscriminator,
    FCEncoder,
    frame_vectors,
    init_weights,
    vectors_to_cells,
)

log = logging.getLogger(__name__)

#: JBCS 2024 §3.1 / Eq. 2-3: dB relative to the clip's maximum, floored at −80 dB; n_fft 1024, hop 512, 128 mels,
#: 5 frames (640 dims). Every method of the GAN family returns this from ``default_feature_spec``.
JBCS_FEATURE_SPEC = FeatureSpec(db_ref="max", top_db=80.0)


@dataclass
class GANConfig:
    """Hyperparameters shared by the GAN family (ganomaly, skip_ganomaly, egbad); names are common to all three so
    one Ray Tune search space can address them.

    Defaults: Adam lr 2e-4, β1 0.5, latent 8, dropout 0 and init "glorot_uniform" (JBCS 2024, the values common to
    every model in the text after Table 3; "normal" is N(0, 0.02), the GANomaly code); hidden width 128 and three
    hidden layers (JBCS §3.2); epochs 10 and batch 16: the row of JBCS Table 4 shared by fan, slider and valve (and
    Table 5's fan row). Per machine type, ``stethoscope.presets`` holds Tables 4 and 5. ``latent_activation``
    "bn_relu": BatchNorm + ReLU on the latent layer too (JBCS §3.2). JBCS Table 3 grid-searches epochs, lr,
    latent_dim, dropout, init, beta1, num_hidden, the λ weights and batch_size.

    ``val_fraction``: held-out share of the training clips for validation losses (whole clips, as in the
    autoencoder, because neighbouring 5-frame vectors overlap).

    ``standardize`` (ours, not from the papers): feed the networks ``(x − μ) / σ`` with one scalar μ, σ over every
    training value (``fit_statistics``), instead of raw dB in [−80, 0]. A scalar keeps the relative weight of the
    mel bins, so a pure reconstruction score ranks clips the same way. Without it, a linear output layer at lr 2e-4
    needs thousands of Adam steps to reach the −40 dB offset: on 2-s synthetic clips we measured the L1 loss falling
    only from 27 to 23 dB over 285 steps.
    """

    epochs: int = 10
    batch_size: int = 16
    val_fraction: float = 0.1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    latent_dim: int = 8
    hidden_dim: int = 128
    num_hidden: int = 3
    dropout: float = 0.0
    init: Literal["glorot_uniform", "normal"] = "glorot_uniform"
    latent_activation: Literal["bn_relu", "linear"] = "bn_relu"
    standardize: bool = True

    def _where(self) -> str:
        return f"{type(self).__module__.rsplit('.', 1)[-1]} config"

    def __post_init__(self) -> None:
        where = self._where()

        def bad(field: str, expected: str) -> None:
            raise ConfigError(f"{where}: {field} = {getattr(self, field)!r}; expected {expected}")

        for field in ("latent_dim", "hidden_dim", "num_hidden"):
            if getattr(self, field) < 1:
                bad(field, ">= 1")
        if self.batch_size < 2:
            bad("batch_size", ">= 2 (BatchNorm needs two vectors per batch)")
        if self.epochs < 0:
            bad("epochs", ">= 0")
        if not self.lr > 0:
            bad("lr", "> 0")
        if not 0.0 <= self.beta1 < 1.0:
            bad("beta1", "in [0, 1)")
        if not 0.0 <= self.beta2 < 1.0:
            bad("beta2", "in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "in [0, 1)")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")
        if self.init not in INIT_SCHEMES:
            bad("init", f"one of {list(INIT_SCHEMES)}")
        if self.latent_activation not in ("bn_relu", "linear"):
            bad("latent_activation", "'bn_relu' (JBCS §3.2) or 'linear'")
        for f in dataclasses.fields(self):
            if f.name.startswith("lambda_") and getattr(self, f.name) < 0:
                bad(f.name, ">= 0")
        if hasattr(self, "score_weight") and not 0.0 <= self.score_weight <= 1.0:
            bad("score_weight", "in [0, 1]")


def mean_abs(d: torch.Tensor) -> torch.Tensor:
    """Normalised L1 norm per row: [N, K] → [N], ``‖d‖₁ / K``."""
    return d.abs().mean(dim=1)


def rms(d: torch.Tensor) -> torch.Tensor:
    """Normalised L2 norm per row: [N, K] → [N], ``‖d‖₂ / √K`` (root mean square)."""
    return d.pow(2).mean(dim=1).sqrt()


def latent_distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Scalar distance between two batches of vectors [N, K]: ``"l2_norm"`` = mean over rows of ‖a − b‖₂ (JBCS
    Eq. 7), ``"mse"`` = mean over every element of (a − b)² (the GANomaly / Skip-GANomaly reference code)."""
    if kind == "l2_norm":
        return (a - b).norm(p=2, dim=1).mean()
    if kind == "mse":
        return F.mse_loss(a, b)
    raise ValueError(f"latent distance {kind!r}; expected 'l2_norm' or 'mse'")


def bce_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Mean binary cross-entropy of logits [N] against the all-real (1) or all-fake (0) label → scalar."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class FrameVectorGAN(Method):
    """Shared plumbing of the GAN family over frame vectors (not registered; subclasses are).

    Examples: ``{"x": float32 [N, n_frames·n_mels]}`` (frame_stack of each clip). ``score`` maps clips
    ``{"log_mel": [B, n_mels, frames]}`` → [B] as the mean of :meth:`vector_scores` over each clip's vectors;
    ``localize`` gives |x − x̂| per (mel, frame) cell, [B, n_mels, frames]. Subclasses implement
    ``training_step``, :meth:`reconstruct` and :meth:`vector_scores`.
    """

    def __init__(self, config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        self.input_mean = 0.0  # dB; set by fit_statistics when config.standardize
        self.input_std = 1.0  # dB

    @classmethod
    def default_feature_spec(cls, config) -> FeatureSpec:
        """JBCS 2024 §3.1: ``FeatureSpec(db_ref="max", top_db=80.0)`` (dB re the clip maximum, floor −80 dB)."""
        return JBCS_FEATURE_SPEC

    def _adam(self, *modules: torch.nn.Module) -> torch.optim.Adam:
        params = [p for m in modules for p in m.parameters()]
        return torch.optim.Adam(params, lr=self.config.lr, betas=(self.config.beta1, self.config.beta2))

    # -- data -------------------------------------------------------------------------------------------------
    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Clip batch → ``{"x": float32 [N, n_frames·n_mels]}``; clips shorter than n_frames give no vectors."""
        n = self.feature_spec.n_frames
        vecs = [frame_stack(a, n).numpy() for a in clip_arrays(clips["log_mel"]) if a.shape[-1] >= n]
        if not vecs:
            return {"x": np.zeros((0, self.feature_spec.vector_dim), dtype=np.float32)}
        return {"x": np.concatenate(vecs).astype(np.float32)}

    def fit_statistics(self, batches) -> None:
        """With ``config.standardize``: μ and σ (dB) of every value of the training examples ``{"x": [N, D]}``,
        summed over ``torch.distributed`` workers when initialised, so every worker uses the same ones."""
        if not self.config.standardize:
            return
        acc = torch.zeros(3, dtype=torch.float64, device=self.device)  # count, sum, sum of squares
        for b in batches:
            x = b["x"].to(self.device, torch.float64)
            acc += torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x * x).sum()])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(acc)
        n, s, ss = acc.tolist()
        if n < 2:
            raise ValueError(f"{self.name}: fit_statistics saw {int(n)} values; need training examples")
        mean = s / n
        self.input_mean = float(mean)
        self.input_std = float(max((ss / n - mean * mean) ** 0.5, 1e-6))
        log.info("%s: input standardisation mean %.3f dB, std %.3f dB", self.name, self.input_mean, self.input_std)

    def extra_state(self) -> dict:
        return {"input_mean": self.input_mean, "input_std": self.input_std}

    def load_extra_state(self, state: dict) -> None:
        self.input_mean = float(state.get("input_mean", 0.0))
        self.input_std = float(state.get("input_std", 1.0))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw dB vectors → network inputs ``(x − μ) / σ`` (identity until ``fit_statistics`` ran)."""
        return (x - self.input_mean) / self.input_std

    # -- per-vector model functions (eval mode, no grad, called by score / localize / validation) ---------------
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised vectors x [N, D] → the generator's reconstruction x̂ [N, D] (normalised units)."""
        raise NotImplementedError

    def vector_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised vectors x [N, D] → anomaly score per vector [N] (higher = more anomalous)."""
        raise NotImplementedError

    # -- inference --------------------------------------------------------------------------------------------
    def _clip_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Clip batch → normalised frame vectors [B, V, D]."""
        log_mel = torch.as_tensor(batch["log_mel"]).to(self.device, torch.float32)
        return self.normalize(frame_vectors(log_mel, self.feature_spec.n_frames))

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{"log_mel": [B, n_mels, frames]}`` → Tensor [B]: mean vector score over each clip's vectors.

        Raises ValueError for clips shorter than n_frames.
        """
        self.eval()
        with torch.no_grad():
            v = self._clip_vectors(batch)
            b, nv, d = v.shape
            return self.vector_scores(v.reshape(b * nv, d)).reshape(b, nv).mean(dim=1)

    def localize(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{"log_mel": [B, n_mels, frames]}`` → [B, n_mels, frames]: |x − G(x)| in dB per cell, averaged over
        the vectors covering the cell (the reconstruction error, whatever the method's score is)."""
        self.eval()
        with torch.no_grad():
            v = self._clip_vectors(batch)
            b, nv, d = v.shape
            flat = v.reshape(b * nv, d)
            err = (self.reconstruct(flat) - flat).abs().reshape(b, nv, d) * self.input_std
            return vectors_to_cells(err, self.feature_spec.n_mels, self.feature_spec.n_frames)


@dataclass
class Config(GANConfig):
    """GANomaly hyperparameters. Loss weights λ_adv 1, λ_con 50, λ_enc 1: the JBCS 2024 Table 4 row of fan, slider and
    valve (also Akçay et al. 2018's w_adv, w_con, w_enc); Table 4 tunes them per machine (λ_adv, λ_con, λ_lat;
    ``lambda_enc`` is λ_lat/λ_enc).

    ``adv_loss``: "bce" (JBCS Eq. 5: BCE of D(G(x)) against the real label; default) or "feature_matching" (the
    original GANomaly code: mean squared difference of D's last hidden layer on x and G(x)).
    ``enc_loss``: "l2_norm" (JBCS Eq. 7: ‖G_E(x) − E(G(x))‖₂ per vector, averaged; default) or "mse" (the per-element
    mean square of the GANomaly code).
    """

    lambda_adv: float = 1.0
    lambda_con: float = 50.0
    lambda_enc: float = 1.0
    adv_loss: Literal["feature_matching", "bce"] = "bce"
    enc_loss: Literal["l2_norm", "mse"] = "l2_norm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adv_loss not in ("feature_matching", "bce"):
            raise ConfigError(f"{self._where()}: adv_loss = {self.adv_loss!r}; expected 'feature_matching' or 'bce'")
        if self.enc_loss not in ("l2_norm", "mse"):
            raise ConfigError(f"{self._where()}: enc_loss = {self.enc_loss!r}; expected 'l2_norm' or 'mse'")


def adversarial_loss(config, discriminator, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial term: feature matching (mean squared difference of D's last hidden layer on real and
    fake, real side detached) or BCE of D(fake) against the real label, per ``config.adv_loss``."""
    logit_fake, feat_fake = discriminator(fake)
    if config.adv_loss == "bce":
        return bce_loss(logit_fake, True)
    with torch.no_grad():
        _, feat_real = discriminator(x)
    return F.mse_loss(feat_fake, feat_real)


def discriminator_step(method: Method, discriminator, optimizer, x: torch.Tensor, fake: torch.Tensor) -> float:
    """One D step: ``½[BCE(D(x), real) + BCE(D(fake), fake)]`` with ``fake`` detached. Returns the loss."""
    logit_real, _ = discriminator(x)
    logit_fake, _ = discriminator(fake.detach())
    loss = 0.5 * (bce_loss(logit_real, True) + bce_loss(logit_fake, False))
    method.optimize(optimizer, loss)
    return float(loss.detach())


@register
class GANomaly(FrameVectorGAN):
    """GANomaly (Akçay et al. 2018) on 640-dim log-mel vectors, as adapted to sound by JBCS 2024 §3.2.2.

    ``name = "ganomaly"``. Modules: ``encoder_g`` (G_E), ``decoder`` (G_D), ``encoder`` (E), ``discriminator`` (D).
    ``training_step`` does one generator step then one D step and returns
    ``{"loss_g", "loss_adv", "loss_con", "loss_enc", "loss_d"}``.
    """

    name = "ganomaly"
    Config = Config

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        c, d = config, self.feature_spec.vector_dim
        bn = c.latent_activation == "bn_relu"
        self.encoder_g = init_weights(FCEncoder(d, c.hidden_dim, c.num_hidden, c.latent_dim, c.dropout, bn), c.init)
        self.decoder = init_weights(FCDecoder(c.latent_dim, c.hidden_dim, c.num_hidden, d, c.dropout), c.init)
        self.encoder = init_weights(FCEncoder(d, c.hidden_dim, c.num_hidden, c.latent_dim, c.dropout, bn), c.init)
        self.discriminator = init_weights(FCDiscriminator(d, c.hidden_dim, c.num_hidden, c.dropout), c.init)
        self.optimizer_g = self._adam(self.encoder_g, self.decoder, self.encoder)
        self.optimizer_d = self._adam(self.discriminator)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x → (G(x), G_E(x), E(G(x)))."""
        z = self.encoder_g(x)
        fake = self.decoder(z)
        return fake, z, self.encoder(fake)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if batch["x"].shape[0] < 2:  # BatchNorm needs two vectors; a 1-vector tail batch is skipped
            return {}
        x = self.normalize(batch["x"])
        self.train()
        c = self.config
        fake, z, z_hat = self._forward(x)
        loss_adv = adversarial_loss(c, self.discriminator, x, fake)
        loss_con = F.l1_loss(fake, x)
        loss_enc = latent_distance(z_hat, z, c.enc_loss)
        loss_g = c.lambda_adv * loss_adv + c.lambda_con * loss_con + c.lambda_enc * loss_enc
        self.optimize(self.optimizer_g, loss_g)
        loss_d = discriminator_step(self, self.discriminator, self.optimizer_d, x, fake)
        return {
            "loss_g": float(loss_g.detach()),
            "loss_adv": float(loss_adv.detach()),
            "loss_con": float(loss_con.detach()),
            "loss_enc": float(loss_enc.detach()),
            "loss_d": loss_d,
        }

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out losses: ``val_loss`` = λ_con·L_con + λ_enc·L_enc (the generator loss without the adversarial
        term, which depends on D's state), plus ``val_loss_con`` (mean |x − G(x)|) and ``val_loss_enc`` (L_enc as
        configured); all in standardised units."""
        self.eval()
        with torch.no_grad():
            x = self.normalize(batch["x"])
            fake, z, z_hat = self._forward(x)
            con, enc = F.l1_loss(fake, x), latent_distance(z_hat, z, self.config.enc_loss)
            c = self.config
            return {
                "val_loss": float(c.lambda_con * con + c.lambda_enc * enc),
                "val_loss_con": float(con),
                "val_loss_enc": float(enc),
            }

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder_g(x))

    def vector_scores(self, x: torch.Tensor) -> torch.Tensor:
        """‖G_E(x) − E(G(x))‖₁ / latent_dim per vector (JBCS §3.2.2; Akçay 2018 §3)."""
        _, z, z_hat = self._forward(x)
        return mean_abs(z - z_hat)
