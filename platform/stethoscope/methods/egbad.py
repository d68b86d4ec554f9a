"""EGBAD (Efficient GAN-Based Anomaly Detection) over 640-dim log-mel frame vectors.

Sources:
- de Oliveira Neto, Guedes & Figueiredo 2024 ("JBCS 2024"; DOI 10.5753/jisa.2024.3897), §2 and §3.2.1.
- Zenati, Foo, Lecouat, Manek & Chandrasekhar, "Efficient GAN-Based Anomaly Detection", ICLR 2018 workshop
  (arXiv:1802.06222), §2-3: a BiGAN (Donahue et al. 2017) whose score mixes the reconstruction distance with a
  discriminator term, α = 0.9: either D's classification (cross-entropy of D(x, E(x)) against "real") or
  feature matching (L1 distance of D's intermediate features).

Model: G(z) → x (FC decoder, latent 8 → 128 × num_hidden → 640, linear output), E(x) → z (FC encoder) and D(x, z)
(x-branch: num_hidden FC layers; z-branch: one FC layer; joint FC layer → the intermediate features f(x, z); linear
real/fake head). Every layer but G's output is BatchNorm + ReLU like the rest of the family (JBCS §3.2), E's 8-unit
latent layer included (``latent_activation="bn_relu"``, the default), while z ~ N(0, I). That makes E's codes
non-negative where the prior's are not, so D can tell the pairs apart by the sign of z alone; ``"linear"`` (ours,
Zenati et al.'s design) keeps a plain Linear latent. We keep the paper's form as the default and report what it
measures.

Training (BiGAN): D step ``½[BCE(D(x, E(x)), 1) + BCE(D(G(z), z), 0)]``; then a joint G/E step with the labels
swapped, ``½[BCE(D(x, E(x)), 0) + BCE(D(G(z), z), 1)]`` (Zenati et al.'s reference code). Adam, lr 2e-4, β1 0.5.

Scores (Zenati 2018 §3; JBCS §2), ``A(x) = α·L_G(x) + (1 − α)·L_D(x)`` with α = ``score_weight`` = 0.9,
L_G(x) = ‖x − G(E(x))‖₁ as a mean |·| on standardised inputs, averaged over a clip's vectors; two named variants
(:meth:`EGBAD.score_variants`), chosen on the validation clips by the pipeline like AEGAN-AD's:
- ``classification`` (JBCS §2, the default ``score_variant``): L_D = BCE(D(x, E(x)), real) = softplus(−logit), the
  discriminator's confidence that (x, E(x)) is not a real pair;
- ``feature_matching``: L_D = mean |f(x, E(x)) − f(G(E(x)), E(x))| on D's 128-dim intermediate layer.

JBCS 2024 found EGBAD below chance on several machines. Nothing here is tuned to hide that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.data.features import FeatureSpec
from stethoscope.errors import ConfigError
from stethoscope.methods.base import register
from stethoscope.methods.ganomaly import FrameVectorGAN, GANConfig, bce_loss, mean_abs
from stethoscope.nn.fc import FCDecoder, FCEncoder, fc_block, init_weights


#: EGBAD's score variants (Zenati et al. 2018 §3): the discriminator term of A(x).
SCORE_VARIANTS = ("classification", "feature_matching")


@dataclass
class Config(GANConfig):
    """EGBAD hyperparameters: the family's shared ones (see :class:`~stethoscope.methods.ganomaly.GANConfig`; JBCS
    did not grid-search EGBAD, so its epochs and batch are the family defaults) plus ``score_weight`` α = 0.9 and
    ``score_variant`` (Zenati et al. 2018 §3; "classification" is the form JBCS §2 describes). EGBAD has no λ loss
    weights (the BiGAN loss has one term per network), so the ``lambda_*`` fields of GANomaly do not exist here."""

    score_weight: float = 0.9
    score_variant: Literal["classification", "feature_matching"] = "classification"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_variant not in SCORE_VARIANTS:
            raise ConfigError(f"{self._where()}: score_variant = {self.score_variant!r}; expected one of "
                              f"{list(SCORE_VARIANTS)}")


class BiGANDiscriminator(nn.Module):
    """D(x, z): x [N, input_dim], z [N, latent_dim] → (logit [N], features f(x, z) [N, hidden_dim])."""

    def __init__(self, input_dim: int, hidden_dim: int, num_hidden: int, latent_dim: int, dropout: float = 0.0):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * num_hidden
        self.x_branch = nn.Sequential(*(fc_block(a, b, dropout) for a, b in zip(dims[:-1], dims[1:])))
        self.z_branch = fc_block(latent_dim, hidden_dim, dropout)
        self.joint = fc_block(2 * hidden_dim, hidden_dim, dropout)
        self.head = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.joint(torch.cat([self.x_branch(x), self.z_branch(z)], dim=1))
        return self.head(f).squeeze(1), f


@register
class EGBAD(FrameVectorGAN):
    """EGBAD (Zenati et al. 2018) on 640-dim log-mel vectors (JBCS 2024 §3.2.1). ``name = "egbad"``.

    Modules: ``generator`` G, ``encoder`` E, ``discriminator`` D(x, z). ``training_step`` does one D step then one
    joint G/E step and returns ``{"loss_d", "loss_g", "loss_rec"}`` (``loss_rec``: mean |x − G(E(x))| in standardised
    units, a monitor; EGBAD does not train on it).
    """

    name = "egbad"
    Config = Config

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        c, d = config, self.feature_spec.vector_dim
        self.generator = init_weights(FCDecoder(c.latent_dim, c.hidden_dim, c.num_hidden, d, c.dropout), c.init)
        self.encoder = init_weights(FCEncoder(d, c.hidden_dim, c.num_hidden, c.latent_dim, c.dropout,
                                              head_norm=c.latent_activation == "bn_relu"), c.init)
        self.discriminator = init_weights(
            BiGANDiscriminator(d, c.hidden_dim, c.num_hidden, c.latent_dim, c.dropout), c.init
        )
        self.optimizer_ge = self._adam(self.generator, self.encoder)
        self.optimizer_d = self._adam(self.discriminator)
        self.score_variant = config.score_variant

    @staticmethod
    def score_variant_names() -> list[str]:
        """The names :meth:`score_variants` returns."""
        return list(SCORE_VARIANTS)

    def set_score_variant(self, name: str) -> None:
        """Make :meth:`score` use variant ``name`` (chosen on the validation clips by the pipeline).

        Raises:
            ConfigError: unknown name (lists the valid ones).
        """
        if name not in SCORE_VARIANTS:
            raise ConfigError(f"unknown egbad score variant {name!r}; valid names: {', '.join(SCORE_VARIANTS)}")
        self.score_variant = name

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if batch["x"].shape[0] < 2:  # BatchNorm needs two vectors; a 1-vector tail batch is skipped
            return {}
        x = self.normalize(batch["x"])
        self.train()
        z = torch.randn(x.shape[0], self.config.latent_dim, device=x.device)
        # D step: (x, E(x)) is real, (G(z), z) is fake.
        with torch.no_grad():
            z_enc, x_gen = self.encoder(x), self.generator(z)
        logit_real, _ = self.discriminator(x, z_enc)
        logit_fake, _ = self.discriminator(x_gen, z)
        loss_d = 0.5 * (bce_loss(logit_real, True) + bce_loss(logit_fake, False))
        self.optimize(self.optimizer_d, loss_d)
        # G/E step: the same pairs with the labels swapped.
        z_enc, x_gen = self.encoder(x), self.generator(z)
        logit_real, _ = self.discriminator(x, z_enc)
        logit_fake, _ = self.discriminator(x_gen, z)
        loss_g = 0.5 * (bce_loss(logit_real, False) + bce_loss(logit_fake, True))
        self.optimize(self.optimizer_ge, loss_g)
        self.generator.eval()  # the monitor must not move G's BatchNorm statistics
        with torch.no_grad():
            loss_rec = F.l1_loss(self.generator(z_enc.detach()), x)
        self.generator.train()
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach()), "loss_rec": float(loss_rec)}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out ``val_loss`` = mean |x − G(E(x))| (standardised units) and ``val_score`` (mean A(x))."""
        self.eval()
        with torch.no_grad():
            x = self.normalize(batch["x"])
            return {
                "val_loss": float(F.l1_loss(self.reconstruct(x), x)),
                "val_score": float(self.vector_scores(x).mean()),
            }

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(x))

    def _vector_variants(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised vectors [N, D] → {variant: A(x) per vector [N]} (Zenati 2018 §3)."""
        z = self.encoder(x)
        rec = self.generator(z)
        logit, f_real = self.discriminator(x, z)
        _, f_rec = self.discriminator(rec, z)
        w = self.config.score_weight
        l_g = mean_abs(x - rec)
        return {
            "classification": w * l_g + (1.0 - w) * F.softplus(-logit),  # BCE(D(x, E(x)), real)
            "feature_matching": w * l_g + (1.0 - w) * mean_abs(f_real - f_rec),
        }

    def vector_scores(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) of the current ``score_variant`` per vector [N]."""
        return self._vector_variants(x)[self.score_variant]

    def score_variants(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"log_mel": [B, n_mels, frames]}`` → {variant: Tensor [B]}: each variant's A(x) averaged over each clip's
        vectors (higher = more anomalous)."""
        self.eval()
        with torch.no_grad():
            v = self._clip_vectors(batch)
            b, nv, d = v.shape
            return {k: s.reshape(b, nv).mean(dim=1) for k, s in self._vector_variants(v.reshape(b * nv, d)).items()}
