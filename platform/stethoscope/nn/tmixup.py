"""TMixup, TLDiffGAN's log-mel enhancement (§2.2, Eqs. 3-4): mix a log-mel with a copy of itself whose
low-attention frames are masked out, the frame attention coming from a trainable blend of three poolings over
frequency.

    Pool(x) = ŵ_max·MaxPool_f(x) + ŵ_avg·AvgPool_f(x) + ŵ_pow·PowerAvgPool_f(x),  ŵ = softmax(w), w ∈ R³ trainable  (Eq. 3)
    x_TA    = σ(Pool(x))                                                        [B, T]
    M_mask  = 1(x_TA > τ),  τ ~ U(0.2, 0.5) drawn at every call (training step)
    x_mixed = λ·x + (1 − λ)·(x ⊗ M_mask),  λ ~ Beta(α, α)                       (Eq. 4)

M_mask [B, T] is broadcast over the frequency axis: a frame is kept or zeroed as a whole. τ and λ are drawn once per
call (one value for the batch, as mixup draws λ, Zhang et al. 2018). Training only: at scoring time the log-mel goes
in unchanged.

What the paper does not give and we chose (*ours*, each a :class:`TMixupConfig` field):
- PowerAvgPool: the power mean over frequency (mean_f |x|^p)^(1/p) with p = 2, i.e. torch's LPPool ("power-average
  pooling") with the sum replaced by a mean so that its scale matches MaxPool and AvgPool.
- α = 0.5 (the project's Noisy-ArcMix default).
- The 0/1 mask has no gradient, so that ŵ can learn at all the mask is a straight-through estimator (Bengio et al.
  2013): its value is exactly 1(x_TA > τ), its gradient is that of x_TA. ``straight_through=False`` turns it off.
- ŵ starts uniform (w = 0).

Inputs are any tensor [..., F, T] (log-mel [B, F, T] or [B, C, F, T]); frequency is the second-to-last axis and frames
the last. Put the log-mel on a scale where σ(Pool(x)) is informative (e.g. standardised); on raw dB values around
−60 σ is 0 everywhere and nothing is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stethoscope.errors import ConfigError

#: The order of the pooling weights ŵ.
POOLS = ("max", "avg", "pow")


@dataclass
class TMixupConfig:
    """TMixup hyperparameters.

    Fields:
        tau_low, tau_high: τ ~ U(tau_low, tau_high) (0.2, 0.5: TLDiffGAN §2.2).
        alpha: α of λ ~ Beta(α, α). Not given in the paper; ours: 0.5. Searched (issue 14).
        power: p of PowerAvgPool (ours: 2, a root-mean-square over frequency).
        straight_through: mask gradient through x_TA (ours: True; see the module docstring).
        eps: floor under the power mean's p-th root (its gradient is infinite at 0).
    """

    tau_low: float = 0.2
    tau_high: float = 0.5
    alpha: float = 0.5
    power: float = 2.0
    straight_through: bool = True
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau_low <= self.tau_high <= 1.0:
            raise ConfigError(
                f"TMixupConfig.tau_low = {self.tau_low}, tau_high = {self.tau_high}; expected 0 <= tau_low <= tau_high <= 1"
            )
        if not self.alpha > 0:
            raise ConfigError(f"TMixupConfig.alpha = {self.alpha}; expected α > 0")
        if not self.power >= 1:
            raise ConfigError(f"TMixupConfig.power = {self.power}; expected p >= 1")
        if not self.eps > 0:
            raise ConfigError(f"TMixupConfig.eps = {self.eps}; expected > 0")


def _check_input(x: torch.Tensor) -> None:
    if x.ndim < 2 or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"TMixup expects a spectrogram [..., F, T], got shape {tuple(x.shape)}")


class TemporalPool(nn.Module):
    """Pool(x) of Eq. 3: [..., F, T] → [..., T], a softmax-weighted sum of max, mean and power mean over F.

    ``self.logits`` is w [3] (order :data:`POOLS`), :attr:`weights` is ŵ = softmax(w) (sums to 1).
    """

    def __init__(self, power: float = 2.0, eps: float = 1e-8):
        super().__init__()
        self.power = float(power)
        self.eps = float(eps)
        self.logits = nn.Parameter(torch.zeros(len(POOLS)))

    @property
    def weights(self) -> torch.Tensor:
        """ŵ [3] = softmax(w): (ŵ_max, ŵ_avg, ŵ_pow)."""
        return torch.softmax(self.logits, dim=0)

    def pools(self, x: torch.Tensor) -> torch.Tensor:
        """The three poolings stacked: [..., F, T] → [3, ..., T] (max, mean, power mean over F)."""
        _check_input(x)
        max_f = x.amax(dim=-2)
        avg_f = x.mean(dim=-2)
        pow_f = x.abs().pow(self.power).mean(dim=-2).clamp_min(self.eps).pow(1.0 / self.power)
        return torch.stack([max_f, avg_f, pow_f])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights.to(x.dtype).reshape((len(POOLS),) + (1,) * (x.ndim - 1))
        return (w * self.pools(x)).sum(dim=0)


class TMixup(nn.Module):
    """TMixup (Eqs. 3-4): x [..., F, T] → x_mixed [..., F, T]. Trainable parameters: the pooling logits w.

    Use :meth:`forward` (draws τ and λ from a numpy Generator) in training, :meth:`mix` for given τ and λ.
    """

    def __init__(self, config: TMixupConfig | None = None):
        super().__init__()
        self.config = c = config or TMixupConfig()
        self.pool = TemporalPool(c.power, c.eps)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """x_TA = σ(Pool(x)): [..., F, T] → [..., T] in (0, 1)."""
        return torch.sigmoid(self.pool(x))

    def mask(self, x_ta: torch.Tensor, tau: float) -> torch.Tensor:
        """M_mask = 1(x_TA > τ) [..., T]; with the straight-through estimator its gradient is that of x_TA."""
        hard = (x_ta > tau).to(x_ta.dtype)
        if self.config.straight_through:
            return hard + (x_ta - x_ta.detach())
        return hard

    def mix(self, x: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
        """x_mixed = λ·x + (1 − λ)·(x ⊗ M_mask) for given τ and λ (Eq. 4). x [..., F, T] → [..., F, T].

        Raises:
            ValueError: x is not [..., F, T], or λ outside [0, 1].
        """
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"TMixup: lam = {lam}; expected λ in [0, 1]")
        m = self.mask(self.attention(x), tau).unsqueeze(-2)  # [..., 1, T]: whole frames
        return lam * x + (1.0 - lam) * (x * m)

    def draw(self, rng: np.random.Generator) -> tuple[float, float]:
        """(τ, λ): τ ~ U(tau_low, tau_high), λ ~ Beta(α, α), from the run's numpy Generator."""
        c = self.config
        return float(rng.uniform(c.tau_low, c.tau_high)), float(rng.beta(c.alpha, c.alpha))

    def forward(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        tau, lam = self.draw(rng)
        return self.mix(x, tau, lam)
