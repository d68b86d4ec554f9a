"""Weighted statistic pooling (WSP) of a log-mel over time (AITHU DCASE 2022 technical report, §3.2, Eq. 2).

``WSP(X) = α·mean_t(X) + β·std_t(X)`` for a log-mel X [M, T], with α + β = 1 and α, β > 0 trainable. We keep them on
the simplex by construction: ``(α, β) = softmax(w)`` over two free logits w (the issue's suggestion). The result is
one M-dim vector per clip (or per segment), the input of the WSP-NFCDEE density (:mod:`stethoscope.nn.flows`).

- :class:`WeightedStatisticPooling`: log-mel [B, M, T] → [B, M] (or in two steps: ``statistics`` [B, 2, M], then
  ``combine`` with the trainable weights).
- :func:`frame_segments`: log-mel [B, M, T] → segments [B, S, M, n_frames], for pooling segments of Table 7's
  frames (100 / 60 / 30) rather than whole clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stethoscope.errors import ConfigError


@dataclass(frozen=True)
class WSPConfig:
    """WSP settings.

    Fields:
        init_alpha: α at initialisation, in (0, 1); β = 1 − α. *Ours* (the report does not give one): 0.5, the
            plain average of the two statistics.
        unbiased: the std over time with Bessel's correction (divide by T − 1) or not (divide by T). *Ours*: False,
            so a single frame gives std 0 instead of NaN.
    """

    init_alpha: float = 0.5
    unbiased: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.init_alpha < 1.0:
            raise ConfigError(f"WSPConfig.init_alpha = {self.init_alpha}; expected in (0, 1) (α, β > 0, Eq. 2)")


class WeightedStatisticPooling(nn.Module):
    """log-mel [B, M, T] → WSP vector [B, M] (AITHU report, Eq. 2).

    Parameters: ``logits`` [2], the free logits of (α, β) = softmax(logits), so α + β = 1 and α, β > 0 after any
    optimizer step. ``weights`` returns (α, β) as a [2] tensor.

    Raises:
        ValueError (forward): input not 3-D, or T < 2 with ``unbiased=True``.
    """

    def __init__(self, config: WSPConfig | None = None):
        super().__init__()
        self.config = config or WSPConfig()
        a = self.config.init_alpha
        self.logits = nn.Parameter(torch.log(torch.tensor([a, 1.0 - a])))

    @property
    def weights(self) -> torch.Tensor:
        """(α, β) [2], on the simplex."""
        return torch.softmax(self.logits, dim=0)

    def statistics(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log-mel [B, M, T] → (mean_t, std_t) stacked as [B, 2, M]: the two statistics Eq. 2 weighs. They do not
        depend on (α, β), so a Method can compute them once per example and train α, β with :meth:`combine`."""
        if log_mel.ndim != 3:
            raise ValueError(f"WSP expects a log-mel [B, M, T], got shape {tuple(log_mel.shape)}")
        if self.config.unbiased and log_mel.shape[2] < 2:
            raise ValueError(f"WSP with unbiased std needs T >= 2 frames, got T = {log_mel.shape[2]}")
        std = log_mel.std(dim=2, correction=1 if self.config.unbiased else 0)
        return torch.stack([log_mel.mean(dim=2), std], dim=1)

    def combine(self, stats: torch.Tensor) -> torch.Tensor:
        """[B, 2, M] statistics (:meth:`statistics`) → α·mean + β·std [B, M]. Raises ValueError on another shape."""
        if stats.ndim != 3 or stats.shape[1] != 2:
            raise ValueError(f"WSP statistics must be [B, 2, M], got shape {tuple(stats.shape)}")
        alpha, beta = self.weights.to(stats.dtype)
        return alpha * stats[:, 0] + beta * stats[:, 1]

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.combine(self.statistics(log_mel))


def frame_segments(log_mel: torch.Tensor, n_frames: int, hop: int | None = None) -> torch.Tensor:
    """Cut log-mels into segments of ``n_frames`` frames: [B, M, T] → [B, S, M, n_frames], S = (T − n_frames) // hop + 1.

    Args:
        n_frames: segment length in frames (AITHU report Table 7: 100, 60 or 30).
        hop: frames between segment starts; None = n_frames (non-overlapping, *ours*). Frames after the last whole
            segment are dropped.
    Raises:
        ValueError: log_mel not 3-D, n_frames or hop < 1, or fewer than n_frames frames.
    """
    hop = n_frames if hop is None else hop
    if log_mel.ndim != 3:
        raise ValueError(f"log_mel must be [B, M, T], got shape {tuple(log_mel.shape)}")
    if n_frames < 1 or hop < 1:
        raise ValueError(f"n_frames = {n_frames}, hop = {hop}; expected both >= 1")
    if log_mel.shape[2] < n_frames:
        raise ValueError(f"log-mel has {log_mel.shape[2]} frames; a segment needs n_frames = {n_frames}")
    return log_mel.unfold(2, n_frames, hop).permute(0, 2, 1, 3)
