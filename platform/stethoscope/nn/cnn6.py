"""Cnn6 of PANNs as a spectrogram encoder (one of the AITHU section-classifier backbones, issue 15: ToyTrain).

Kong et al., "PANNs: Large-Scale Pretrained Audio Neural Networks for Audio Pattern Recognition", IEEE/ACM TASLP
2020 (the CNN6 system; the public ``audioset_tagging_cnn`` code's ``Cnn6``): a BatchNorm over the frequency bins
(``bn0``), four blocks ``Conv 5×5 (no bias) → BN → ReLU → AvgPool 2×2 → Dropout 0.2`` with 64, 128, 256, 512
channels, the mean over frequency, then max + mean over time, Dropout 0.5 and ``fc1`` + ReLU: the 512-d embedding.
PANNs' own front end (STFT + log-mel) and AudioSet head are left out: the input is our spectrogram.

Shapes: [B, F, T] → [B, embedding_dim]; each block halves F and T (floor), so F and T must be >= 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive


@dataclass
class Cnn6Config:
    """Cnn6 hyperparameters. Defaults: PANNs (Kong et al. 2020) CNN6.

    Fields:
        n_freq: F, frequency bins of the input (sizes ``bn0``); 128 for a log-mel, 1025 for an n_fft 2048 STFT.
        channels: output channels of the four 5×5 conv blocks (64, 128, 256, 512).
        embedding_dim: D, the output of fc1 (512).
        block_dropout / embedding_dropout: 0.2 after each block, 0.5 before fc1.
    """

    n_freq: int = 128
    channels: tuple[int, ...] = (64, 128, 256, 512)
    embedding_dim: int = 512
    block_dropout: float = 0.2
    embedding_dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.n_freq < 2 ** len(self.channels):
            raise ConfigError(f"Cnn6Config.n_freq = {self.n_freq}; expected >= {2 ** len(self.channels)} (one 2× pool per block)")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"Cnn6Config.channels = {self.channels}; expected one or more sizes >= 1")
        require_positive("Cnn6Config", embedding_dim=self.embedding_dim)
        for name in ("block_dropout", "embedding_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"Cnn6Config.{name} = {getattr(self, name)}; expected in [0, 1)")


class Cnn6(nn.Module):
    """Spectrogram [B, F, T] → embedding [B, embedding_dim] (ReLU output, so >= 0).

    Initialisation as PANNs: Xavier-uniform conv / linear weights, zero biases, BN weight 1 and bias 0.

    Raises:
        ValueError (in forward): the input is not [B, n_freq, T] with T >= 2^blocks.
    """

    def __init__(self, config: Cnn6Config | None = None):
        super().__init__()
        self.config = c = config or Cnn6Config()
        self.bn0 = nn.BatchNorm2d(c.n_freq)
        blocks = []
        c_in = 1
        for c_out in c.channels:
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c_out, 5, padding=2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.fc1 = nn.Linear(c_in, c.embedding_dim)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        c = self.config
        min_frames = 2 ** len(c.channels)
        if spectrogram.ndim != 3 or spectrogram.shape[1] != c.n_freq or spectrogram.shape[2] < min_frames:
            raise ValueError(
                f"Cnn6 expects a spectrogram [B, {c.n_freq}, T >= {min_frames}], got {tuple(spectrogram.shape)}"
            )
        # bn0 normalises each frequency bin: put F on the channel axis, as PANNs does.
        x = self.bn0(spectrogram.unsqueeze(1).transpose(1, 2)).transpose(1, 2)  # [B, 1, F, T]
        for block in self.blocks:
            x = F.avg_pool2d(block(x), 2)
            x = F.dropout(x, c.block_dropout, self.training)
        x = x.mean(dim=2)  # over frequency → [B, C, T']
        x = x.amax(dim=2) + x.mean(dim=2)
        x = F.dropout(x, c.embedding_dropout, self.training)
        return F.relu(self.fc1(x))
