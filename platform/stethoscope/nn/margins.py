"""Margin-based classification heads and losses of the machine-ID / section classifiers: ArcFace, Noisy-ArcMix, SoftTriple.

- :class:`ArcFace`: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019,
  the additive angular margin loss: logits ``s·cos(θ_y + m)`` for the true class and ``s·cos θ_j`` for the others,
  cos θ between the L2-normalised embedding and class weights. Where θ_y + m > π the logit falls back to
  ``s·(cos θ_y − m·sin m)`` (the ArcFace reference implementation's rule, kept by STgram-MFN and Noisy-ArcMix),
  so the target logit stays monotonic in θ_y.
- :func:`mixup` and :func:`noisy_arcmix_loss`: Choi et al., "Noisy-ArcMix: Additive Noisy Angular Margin Loss
  Combined with Mixup for Anomalous Sound Detection", ICASSP 2024: inputs mixed within the batch,
  ``x_ij = λ x_i + (1 − λ) x_j``, λ ~ Beta(α, α), and ``L = λ·L_AF(x_ij, y_i) + (1 − λ)·L_AF(x_ij, y_j)``. As in the
  public Noisy-ArcMix code, one set of ArcFace logits is computed with the angular margin on y_i only and both
  cross-entropies use it: the "noisy" (inconsistent) margin for the mixed-in label y_j.
- :class:`SoftTriple`: Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling", ICCV 2019, §3:
  K centers per class; the class similarity is the softmax(·/γ)-weighted mean of the K center similarities;
  ``L = CE(λ·(S − δ·onehot(y)), y) + τ·R`` with R the regulariser that merges a class's similar centers.

Shapes: embeddings [B, D] (D = 128 for MobileFaceNet), labels [B] int64 class indices, logits [B, C].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive


def _check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    if labels.ndim != 1:
        raise ValueError(f"{where}: labels must be [B] class indices, got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{where}: labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")


@dataclass
class ArcFaceConfig:
    """ArcFace margin m (radians) and scale s. Defaults: m 0.7, s 30 (Noisy-ArcMix, Choi et al. 2024, as used by
    FGASpecNet; our issue 13)."""

    margin: float = 0.7
    scale: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < math.pi:
            raise ConfigError(f"ArcFaceConfig.margin = {self.margin}; expected m in [0, π) radians")
        if self.scale <= 0:
            raise ConfigError(f"ArcFaceConfig.scale = {self.scale}; expected s > 0")


class ArcFace(nn.Module):
    """ArcFace head: embedding [B, D] (+ labels [B]) → logits [B, num_classes].

    Without labels (scoring) the logits are ``s·cos θ`` (no margin). Class weights [num_classes, D] start
    Xavier-uniform (the public STgram-MFN / Noisy-ArcMix code).

    Raises:
        ValueError: labels not [B] or outside 0..num_classes − 1.
    """

    def __init__(self, embedding_dim: int, num_classes: int, config: ArcFaceConfig | None = None):
        super().__init__()
        require_positive("ArcFace", embedding_dim=embedding_dim, num_classes=num_classes)
        self.config = config or ArcFaceConfig()
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """cos θ [B, C] between the normalised embeddings and class weights."""
        return F.linear(F.normalize(embedding, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        m, s = self.config.margin, self.config.scale
        cos = self.cosine(embedding)
        if labels is None or m == 0.0:
            if labels is not None:
                _check_labels(labels, self.num_classes, "ArcFace")
            return s * cos
        _check_labels(labels, self.num_classes, "ArcFace")
        sin = (1.0 - cos.pow(2)).clamp(min=1e-7).sqrt()
        phi = cos * math.cos(m) - sin * math.sin(m)  # cos(θ + m)
        phi = torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)
        target = F.one_hot(labels, self.num_classes).to(cos.dtype)
        return s * (target * phi + (1.0 - target) * cos)

    def loss(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_AF: mean cross-entropy of the margin logits (Deng et al. 2019). Scalar."""
        return F.cross_entropy(self(embedding, labels), labels)


@dataclass
class NoisyArcMixConfig:
    """Mixup α of Noisy-ArcMix: λ ~ Beta(α, α). Default 0.5 (Choi et al. 2024; our issue 13)."""

    alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ConfigError(f"NoisyArcMixConfig.alpha = {self.alpha}; expected α > 0")


def mixup(
    inputs: Sequence[torch.Tensor], labels: torch.Tensor, alpha: float, rng: np.random.Generator
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, float]:
    """Mix every input with a shuffled copy of the batch (Zhang et al. 2018 mixup, as Noisy-ArcMix uses it).

    Args:
        inputs: tensors sharing the batch dimension, e.g. waveform [B, samples] and log-mel [B, M, T]; all are
            mixed with the same λ and the same permutation.
        labels: y [B].
        alpha: α of Beta(α, α).
        rng: the run's numpy Generator (λ and the permutation are drawn from it, so a seed reproduces them).
    Returns:
        (mixed inputs, y_i = labels, y_j = labels[perm], λ).
    Raises:
        ValueError: no inputs, or inputs whose batch size differs from the labels'.
    """
    if not inputs:
        raise ValueError("mixup: no inputs to mix")
    batch = labels.shape[0]
    for x in inputs:
        if x.shape[0] != batch:
            raise ValueError(f"mixup: an input has batch size {x.shape[0]}, labels have {batch}")
    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(batch), device=labels.device)
    mixed = [lam * x + (1.0 - lam) * x[perm] for x in inputs]
    return mixed, labels, labels[perm], lam


def noisy_arcmix_loss(
    head: ArcFace, embedding: torch.Tensor, y_i: torch.Tensor, y_j: torch.Tensor, lam: float
) -> torch.Tensor:
    """L = λ·CE(z, y_i) + (1 − λ)·CE(z, y_j), z = ArcFace logits of the mixed clips with the margin on y_i.

    Args:
        embedding: [B, D] embeddings of the mixed inputs x_ij. y_i, y_j: [B]. lam: λ ∈ [0, 1].
    Returns:
        scalar loss. With λ = 1 it is :meth:`ArcFace.loss`.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"noisy_arcmix_loss: lam = {lam}; expected λ in [0, 1]")
    logits = head(embedding, y_i)
    return lam * F.cross_entropy(logits, y_i) + (1.0 - lam) * F.cross_entropy(logits, y_j)


@dataclass
class SoftTripleConfig:
    """SoftTriple hyperparameters. Defaults: FGASpecNet's (our issue 13; the paper's Table 4 grid searches
    γ {0.05, 0.1}, λ {10, 20}, δ {0.02, 0.025}, K {3, 4}, τ {0, 0.02}, λ_ST {0.12, 0.15}).

    Fields:
        gamma: γ, the temperature of the softmax over a class's centers (Qian et al. 2019 §3).
        lam: λ, the scale of the similarity logits.
        delta: δ, the margin subtracted from the true class's similarity.
        centers: K, centers per class.
        tau: τ, weight of the center regulariser R (0 = off).
        weight: λ_ST in L = L_NAMix + λ_ST·L_ST (FGASpecNet).
        reg_eps: the constant under R's square root, for a finite gradient when two centers meet (ours: 1e-5,
            the value in Qian et al.'s public code).
    """

    gamma: float = 0.1
    lam: float = 20.0
    delta: float = 0.02
    centers: int = 3
    tau: float = 0.0
    weight: float = 0.15
    reg_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.gamma <= 0 or self.lam <= 0:
            raise ConfigError(f"SoftTripleConfig: gamma = {self.gamma}, lam = {self.lam}; both must be > 0")
        if self.delta < 0 or self.tau < 0 or self.weight < 0 or self.reg_eps <= 0:
            raise ConfigError(
                f"SoftTripleConfig: delta = {self.delta}, tau = {self.tau}, weight = {self.weight}, "
                f"reg_eps = {self.reg_eps}; expected delta, tau, weight >= 0 and reg_eps > 0"
            )
        require_positive("SoftTripleConfig", centers=self.centers)


class SoftTriple(nn.Module):
    """SoftTriple head and loss (Qian et al. 2019, §3): embedding [B, D] → class similarities [B, C].

    ``forward(x)`` gives the scoring logits λ·S [B, C] (no margin); :meth:`loss` gives
    CE(λ·(S − δ·onehot(y)), y) + τ·R. With K = 1 and δ = 0 the loss is the normalised softmax loss
    CE(λ·cos θ, y). Centers [D, C·K] start Kaiming-uniform, as in the public SoftTriple code.

    Raises:
        ValueError: labels not [B] or outside 0..num_classes − 1.
    """

    def __init__(self, embedding_dim: int, num_classes: int, config: SoftTripleConfig | None = None):
        super().__init__()
        require_positive("SoftTriple", embedding_dim=embedding_dim, num_classes=num_classes)
        self.config = config or SoftTripleConfig()
        self.num_classes = num_classes
        self.centers = nn.Parameter(torch.empty(embedding_dim, num_classes * self.config.centers))
        nn.init.kaiming_uniform_(self.centers, a=math.sqrt(5))

    def similarity(self, embedding: torch.Tensor) -> torch.Tensor:
        """S [B, C]: per class, the softmax(x·w_k / γ)-weighted mean of the K center similarities x·w_k."""
        c = self.config
        sim = F.normalize(embedding, dim=1) @ F.normalize(self.centers, dim=0)  # [B, C·K]
        sim = sim.view(-1, self.num_classes, c.centers)
        weights = F.softmax(sim / c.gamma, dim=2)
        return (weights * sim).sum(dim=2)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.config.lam * self.similarity(embedding)

    def regulariser(self) -> torch.Tensor:
        """R = Σ_c Σ_{s<t} sqrt(2 + ε − 2 w_cs·w_ct) / (C·K·(K − 1)) (Qian et al. 2019 §3). Scalar; 0 for K = 1."""
        k = self.config.centers
        if k == 1:
            return self.centers.new_zeros(())
        w = F.normalize(self.centers, dim=0).t().reshape(self.num_classes, k, -1)  # [C, K, D]
        gram = w @ w.transpose(1, 2)  # [C, K, K]
        upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=w.device), diagonal=1)
        dist = (2.0 + self.config.reg_eps - 2.0 * gram[:, upper]).sqrt()
        return dist.sum() / (self.num_classes * k * (k - 1))

    def loss(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_ST = CE(λ·(S − δ·onehot(y)), y) + τ·R. Scalar."""
        c = self.config
        _check_labels(labels, self.num_classes, "SoftTriple")
        s = self.similarity(embedding)
        margin = c.delta * F.one_hot(labels, self.num_classes).to(s.dtype)
        loss = F.cross_entropy(c.lam * (s - margin), labels)
        if c.tau > 0:
            loss = loss + c.tau * self.regulariser()
        return loss
