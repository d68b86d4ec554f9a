"""Skip-GANomaly over 640-dim log-mel frame vectors.

Sources:
- de Oliveira Neto, Guedes & Figueiredo 2024 ("JBCS 2024"; DOI 10.5753/jisa.2024.3897), §3.2.3 and Table 5.
- Akçay, Atapour-Abarghouei & Breckon, "Skip-GANomaly: Skip Connected and Adversarially Trained Encoder-Decoder
  Anomaly Detection", IJCNN 2019, §3 and the authors' reference code (w_adv 1, w_con 50, w_lat 1; λ = 0.9).

Generator: a fully connected encoder-decoder (640 → 128 × num_hidden → latent 8 → 128 × num_hidden → 640; BatchNorm
+ ReLU on every layer but the output, the latent included, JBCS §3.2) with U-Net-style skips: the output of encoder hidden layer ``i`` (input side first) is concatenated onto the output of
the mirrored decoder hidden layer ``num_hidden − 1 − i`` before the next decoder layer. D: an FC encoder that
classifies real/fake; its last hidden layer is the feature extractor f.

Generator loss (the three terms of JBCS Eq. 4 in Skip-GANomaly's form, Akçay 2019 §3):
``λ_adv·BCE(D(x̂), real) + λ_con·‖x − x̂‖₁ + λ_lat·‖f(x) − f(x̂)‖₂`` (L1 as a per-element mean; the λ_lat term as
the reference code's per-element mean square, ``enc_loss="mse"``, or the per-vector L2 norm, ``"l2_norm"``;
``lambda_enc`` holds λ_lat so the three methods share one name). D: ``½[BCE(D(x), 1) + BCE(D(x̂), 0)]``.

Score (Akçay 2019 §3): ``A(x) = λ‖x − x̂‖₁ + (1 − λ)‖f(x) − f(x̂)‖₂``, λ = ``score_weight`` = 0.9, averaged over a
clip's vectors. The norms are normalised (‖·‖₁/K, i.e. mean |·|, and ‖·‖₂/√K, the RMS, on standardised inputs),
so that the 640-dim and 128-dim terms are on comparable scales, as with the reference code's per-element means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.data.features import FeatureSpec
from stethoscope.methods import ganomaly
from stethoscope.methods.base import register
from stethoscope.methods.ganomaly import FrameVectorGAN, bce_loss, discriminator_step, latent_distance, mean_abs, rms
from stethoscope.nn.fc import FCDecoder, FCDiscriminator, FCEncoder, init_weights


@dataclass
class Config(ganomaly.Config):
    """Skip-GANomaly hyperparameters: those of GANomaly (``lambda_enc`` = λ_lat, JBCS Table 5 / Akçay 2019's
    w_lat; defaults the Table 5 fan row: epochs 10, 3 hidden layers, λ 1/50/1, batch 16) with the adversarial term
    in its BCE form (Akçay 2019 §3: the generator's L_adv is the BCE game; feature matching is the separate L_lat),
    ``enc_loss`` "mse" for the λ_lat term (Akçay 2019's code; JBCS Eq. 7's norm is GANomaly's L_enc, and we do not
    have JBCS's Skip-GANomaly equations), plus ``score_weight`` λ = 0.9 of the score (Akçay 2019 §3)."""

    adv_loss: Literal["feature_matching", "bce"] = "bce"
    enc_loss: Literal["l2_norm", "mse"] = "mse"
    score_weight: float = 0.9


class FCUNet(nn.Module):
    """Fully connected U-Net: [N, D] → [N, D] with encoder→decoder skip concatenations.

    Encoder hidden outputs ``h_0..h_{L-1}`` ([N, hidden_dim] each, input side first) feed decoder hidden layer
    ``L − 1 − i`` (the mirror); so decoder layer ``j`` outputs ``[N, 2·hidden_dim]`` after the concatenation.
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_hidden: int, latent_dim: int, dropout: float = 0.0,
                 latent_norm: bool = True):
        super().__init__()
        self.encoder = FCEncoder(input_dim, hidden_dim, num_hidden, latent_dim, dropout, head_norm=latent_norm)
        skip_dims = [hidden_dim] * num_hidden
        self.decoder = FCDecoder(latent_dim, hidden_dim, num_hidden, input_dim, dropout, skip_dims=skip_dims)

    def forward_with_skips(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """x [N, D] → (x̂ [N, D], latent [N, latent_dim], skips in decoder order, each [N, hidden_dim])."""
        z, hidden = self.encoder.forward_with_hidden(x)
        skips = hidden[::-1]
        return self.decoder(z, skips), z, skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_skips(x)[0]


@register
class SkipGANomaly(FrameVectorGAN):
    """Skip-GANomaly (Akçay et al. 2019) on 640-dim log-mel vectors (JBCS 2024 §3.2.3). ``name = "skip_ganomaly"``.

    Modules: ``generator`` (:class:`FCUNet`), ``discriminator`` (D and f). ``training_step`` does one generator step
    then one D step and returns ``{"loss_g", "loss_adv", "loss_con", "loss_lat", "loss_d"}``.
    """

    name = "skip_ganomaly"
    Config = Config

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        c, d = config, self.feature_spec.vector_dim
        self.generator = init_weights(FCUNet(d, c.hidden_dim, c.num_hidden, c.latent_dim, c.dropout,
                                             c.latent_activation == "bn_relu"), c.init)
        self.discriminator = init_weights(FCDiscriminator(d, c.hidden_dim, c.num_hidden, c.dropout), c.init)
        self.optimizer_g = self._adam(self.generator)
        self.optimizer_d = self._adam(self.discriminator)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if batch["x"].shape[0] < 2:  # BatchNorm needs two vectors; a 1-vector tail batch is skipped
            return {}
        x = self.normalize(batch["x"])
        self.train()
        c = self.config
        fake = self.generator(x)
        logit_fake, feat_fake = self.discriminator(fake)
        with torch.no_grad():
            _, feat_real = self.discriminator(x)
        loss_lat = latent_distance(feat_fake, feat_real, c.enc_loss)
        # With adv_loss="feature_matching" the adversarial term is the same feature-matching distance.
        loss_adv = bce_loss(logit_fake, True) if c.adv_loss == "bce" else loss_lat
        loss_con = F.l1_loss(fake, x)
        loss_g = c.lambda_adv * loss_adv + c.lambda_con * loss_con + c.lambda_enc * loss_lat
        self.optimize(self.optimizer_g, loss_g)
        loss_d = discriminator_step(self, self.discriminator, self.optimizer_d, x, fake)
        return {
            "loss_g": float(loss_g.detach()),
            "loss_adv": float(loss_adv.detach()),
            "loss_con": float(loss_con.detach()),
            "loss_lat": float(loss_lat.detach()),
            "loss_d": loss_d,
        }

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out losses: ``val_loss`` = λ_con·L_con + λ_lat·L_lat (generator loss without the adversarial
        term), ``val_loss_con`` (mean |x − x̂|), ``val_loss_lat`` and ``val_score`` (mean A(x)); standardised units."""
        self.eval()
        with torch.no_grad():
            x = self.normalize(batch["x"])
            fake = self.generator(x)
            _, f_real = self.discriminator(x)
            _, f_fake = self.discriminator(fake)
            con, lat = F.l1_loss(fake, x), latent_distance(f_fake, f_real, self.config.enc_loss)
            c = self.config
            return {
                "val_loss": float(c.lambda_con * con + c.lambda_enc * lat),
                "val_loss_con": float(con),
                "val_loss_lat": float(lat),
                "val_score": float(self.vector_scores(x).mean()),
            }

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)

    def vector_scores(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) = λ·mean|x − x̂| + (1 − λ)·RMS(f(x) − f(x̂)) per vector (Akçay 2019 §3, normalised norms)."""
        fake = self.generator(x)
        _, f_real = self.discriminator(x)
        _, f_fake = self.discriminator(fake)
        w = self.config.score_weight
        return w * mean_abs(x - fake) + (1.0 - w) * rms(f_real - f_fake)
