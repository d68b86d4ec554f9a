"""Temporal front-end blocks of the STgram family: TgramNet (F_T) and the temporally attended log-mel TAgram (F_TA).

- :class:`TgramNet`: Liu et al., "Anomalous Sound Detection Using Spectral-Temporal Information Fusion" (STgram-MFN),
  ICASSP 2022, Table 1: a learnable front end on the raw waveform,
  ``Conv1d(1→128, kernel 1024, stride 512, padding 512)`` then 3 × ``[LayerNorm, LeakyReLU, Conv1d(128→128, k 3, s 1, p 1)]``.
  Waveform [B, samples] → Tgram F_T [B, 128, frames], frames = 1 + samples // 512: the same frame grid as the
  log-mel with hop 512 (313 frames for 10 s at 16 kHz), so F_T and F_LM stack as channels.
- :func:`tagram` / :class:`TAgram`: Choi et al., "Noisy-ArcMix: Additive Noisy Angular Margin Loss Combined with
  Mixup for Anomalous Sound Detection", ICASSP 2024 (TASTgram), the temporal attention block:
  ``s_t = AvgPool_f(F_LM) + MaxPool_f(F_LM)`` per frame, ``F_TA = σ(s_t) ⊗ F_LM`` (broadcast over frequency).
  Parameter-free: [B, M, T] → [B, M, T].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive


@dataclass
class TgramNetConfig:
    """TgramNet hyperparameters. Defaults: STgram-MFN Table 1 (Liu et al. 2022) and its public code.

    Fields:
        channels: output channels = rows of F_T (128, matching the 128 mel bands).
        kernel_size / stride: the first Conv1d, in samples (1024 / 512: a 64 ms window, a 32 ms hop at 16 kHz);
            padding is kernel_size // 2, like an STFT with center=True.
        num_layers: [LayerNorm, LeakyReLU, Conv1d] blocks after it (3).
        n_frames: frames the LayerNorms normalise over. The public STgram-MFN code applies ``LayerNorm(313)``
            to [B, 128, 313], i.e. over the time axis of each channel, which fixes the clip length (10 s at 16 kHz).
        negative_slope: LeakyReLU slope (0.2, public code).
    """

    channels: int = 128
    kernel_size: int = 1024
    stride: int = 512
    num_layers: int = 3
    n_frames: int = 313
    negative_slope: float = 0.2

    def __post_init__(self) -> None:
        require_positive(
            "TgramNetConfig", channels=self.channels, kernel_size=self.kernel_size, stride=self.stride,
            num_layers=self.num_layers, n_frames=self.n_frames,
        )
        if self.negative_slope < 0:
            raise ConfigError(f"TgramNetConfig.negative_slope = {self.negative_slope}; expected >= 0")

    def num_frames(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` input samples: ``(samples + 2·(k//2) − k) // stride + 1``."""
        return (num_samples + 2 * (self.kernel_size // 2) - self.kernel_size) // self.stride + 1


class TgramNet(nn.Module):
    """Raw waveform [B, samples] (or [B, 1, samples]) → Tgram F_T [B, channels, n_frames].

    STgram-MFN (Liu et al. 2022) Table 1. Convolutions have no bias (public code). Initialisation: Xavier-uniform conv
    weights, LayerNorm weight 1 / bias 0 (public code's ``init_weight``).

    Raises:
        ValueError (in forward): wrong rank, or a clip whose frame count is not ``config.n_frames``
            (the LayerNorms are fixed to that many frames; build a TgramNetConfig with the right n_frames).
    """

    def __init__(self, config: TgramNetConfig | None = None):
        super().__init__()
        self.config = c = config or TgramNetConfig()
        self.extractor = nn.Conv1d(1, c.channels, c.kernel_size, c.stride, c.kernel_size // 2, bias=False)
        self.encoder = nn.Sequential(
            *[
                nn.Sequential(
                    nn.LayerNorm(c.n_frames),
                    nn.LeakyReLU(c.negative_slope),
                    nn.Conv1d(c.channels, c.channels, 3, 1, 1, bias=False),
                )
                for _ in range(c.num_layers)
            ]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim == 2:
            waveform = waveform.unsqueeze(1)
        if waveform.ndim != 3 or waveform.shape[1] != 1:
            raise ValueError(f"TgramNet expects a waveform [B, samples] or [B, 1, samples], got {tuple(waveform.shape)}")
        frames = self.config.num_frames(waveform.shape[-1])
        if frames != self.config.n_frames:
            raise ValueError(
                f"TgramNet: {waveform.shape[-1]} samples give {frames} frames, but the LayerNorms were built for "
                f"TgramNetConfig.n_frames = {self.config.n_frames}"
            )
        return self.encoder(self.extractor(waveform))


def tagram(logmel: torch.Tensor) -> torch.Tensor:
    """TAgram F_TA = σ(AvgPool_f(F_LM) + MaxPool_f(F_LM)) ⊗ F_LM (Choi et al. 2024, temporal attention block).

    Args:
        logmel: F_LM [B, M, T] (M mel bands, T frames; any units, dB in our pipeline).
    Returns:
        F_TA [B, M, T]: every frame of F_LM scaled by the sigmoid of its mean plus its max over frequency.
    Raises:
        ValueError: logmel is not 3-D.
    """
    if logmel.ndim != 3:
        raise ValueError(f"tagram expects a log-mel [B, M, T], got shape {tuple(logmel.shape)}")
    s_t = logmel.mean(dim=1) + logmel.amax(dim=1)  # [B, T]
    return torch.sigmoid(s_t).unsqueeze(1) * logmel


class TAgram(nn.Module):
    """Module form of :func:`tagram` (no parameters): F_LM [B, M, T] → F_TA [B, M, T]."""

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return tagram(logmel)
