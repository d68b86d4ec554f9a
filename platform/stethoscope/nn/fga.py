"""Frequency-gated attention (FGA) of FGASpecNet (2025): a gate G over mel bands × frames that blends F_LM with F_S.

As specified in our issue 13 (FGASpecNet paper, the FGA block), with F_TA the TAgram (:func:`stethoscope.nn.stgram.tagram`):

    s_f = concat(MaxPool_t(F_TA), AvgPool_t(F_TA))        [B, 2M]   (per mel band, pooled over frames)
    g_f = σ(Linear(s_f))                                  [B, M]
    g_t = σ(Conv1d(AvgPool_f(F_TA)))                      [B, T]    (per frame, pooled over mel bands)
    G   = g_f ⊗ g_t                                       [B, M, T] (outer product, values in (0, 1))
    F_S_enh = (1 − λG) ⊙ F_LM + λG ⊙ F_S                  [B, M, T]

G says where (which band, which frame) the spectrally filtered F_S replaces the plain log-mel; it is exposed as an
anomaly map. λ ∈ [0, 1] caps the blend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive


@dataclass
class FGAConfig:
    """FGA hyperparameters.

    Fields:
        n_mels: M, the mel bands of F_TA (128 in FGASpecNet); sizes the Linear(2M → M).
        blend: λ ∈ [0, 1] in F_S_enh = (1 − λG) F_LM + λG F_S. The value is ours (0.5): the issue makes λ a config
            value without a paper default.
        time_kernel: odd kernel of the Conv1d(1 → 1) over the frame axis for g_t (ours: 3; not given).
    """

    n_mels: int = 128
    blend: float = 0.5
    time_kernel: int = 3

    def __post_init__(self) -> None:
        require_positive("FGAConfig", n_mels=self.n_mels)
        if not 0.0 <= self.blend <= 1.0:
            raise ConfigError(f"FGAConfig.blend = {self.blend}; expected λ in [0, 1]")
        if self.time_kernel < 1 or self.time_kernel % 2 == 0:
            raise ConfigError(f"FGAConfig.time_kernel = {self.time_kernel}; expected an odd integer >= 1")


class FrequencyGatedAttention(nn.Module):
    """(F_TA, F_LM, F_S), each [B, M, T] → (F_S_enh [B, M, T], G [B, M, T]).

    Raises:
        ValueError (in forward): the three inputs differ in shape or are not [B, n_mels, T].
    """

    def __init__(self, config: FGAConfig | None = None):
        super().__init__()
        self.config = c = config or FGAConfig()
        self.freq_gate = nn.Linear(2 * c.n_mels, c.n_mels)
        self.time_gate = nn.Conv1d(1, 1, c.time_kernel, padding=c.time_kernel // 2)

    def gate(self, f_ta: torch.Tensor) -> torch.Tensor:
        """G = σ(Linear(concat(max_t, mean_t))) ⊗ σ(Conv1d(mean_f)): F_TA [B, M, T] → G [B, M, T] in (0, 1)."""
        if f_ta.ndim != 3 or f_ta.shape[1] != self.config.n_mels:
            raise ValueError(f"FGA expects F_TA [B, {self.config.n_mels}, T], got {tuple(f_ta.shape)}")
        s_f = torch.cat([f_ta.amax(dim=2), f_ta.mean(dim=2)], dim=1)  # [B, 2M]
        g_f = torch.sigmoid(self.freq_gate(s_f))  # [B, M]
        g_t = torch.sigmoid(self.time_gate(f_ta.mean(dim=1, keepdim=True))).squeeze(1)  # [B, T]
        return g_f.unsqueeze(2) * g_t.unsqueeze(1)

    def forward(
        self, f_ta: torch.Tensor, f_lm: torch.Tensor, f_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not (f_ta.shape == f_lm.shape == f_s.shape):
            raise ValueError(
                f"FGA inputs must share one shape [B, M, T]; got F_TA {tuple(f_ta.shape)}, "
                f"F_LM {tuple(f_lm.shape)}, F_S {tuple(f_s.shape)}"
            )
        g = self.gate(f_ta)
        lg = self.config.blend * g
        return (1.0 - lg) * f_lm + lg * f_s, g
