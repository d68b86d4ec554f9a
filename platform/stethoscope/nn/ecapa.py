"""ECAPA-TDNN spectrogram encoder, from SpeechBrain (one of the AITHU section-classifier backbones, issue 15).

Desplanques, Thienpondt & Demuynck, "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation in TDNN
Based Speaker Verification", Interspeech 2020: 1-D SE-Res2Net blocks with dilations 2-4 over the frames,
multi-layer feature aggregation and attentive statistics pooling, then a linear embedding. The AITHU DCASE 2022
report uses it for ToyCar on a 64-band log-mel (its Table 3).

We use SpeechBrain's implementation (``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN``, pinned in requirements.txt);
it takes [B, frames, features], so :class:`ECAPATDNN` transposes our [B, F, T] spectrograms. SpeechBrain is imported
when the module is built, not when :mod:`stethoscope.nn` is imported (it costs ~2 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive


@dataclass
class ECAPATDNNConfig:
    """ECAPA-TDNN hyperparameters. Defaults: SpeechBrain's, which are the paper's C = 512 model (Desplanques et al.
    2020: channels 512 ×4 and 1536 for the aggregation, kernels 5-3-3-3-1, dilations 1-2-3-4-1, Res2Net scale 8,
    SE bottleneck 128, attention 128, global context in the pooling, 192-d embeddings).

    Fields:
        n_freq: F, the frequency bins of the input (64 for AITHU's ToyCar log-mel).
        embedding_dim: D (192).
    """

    n_freq: int = 64
    embedding_dim: int = 192
    channels: tuple[int, ...] = (512, 512, 512, 512, 1536)
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    attention_channels: int = 128
    res2net_scale: int = 8
    se_channels: int = 128
    global_context: bool = True

    def __post_init__(self) -> None:
        require_positive("ECAPATDNNConfig", n_freq=self.n_freq, embedding_dim=self.embedding_dim)
        if not (len(self.channels) == len(self.kernel_sizes) == len(self.dilations)) or len(self.channels) < 3:
            raise ConfigError(
                f"ECAPATDNNConfig: channels {self.channels}, kernel_sizes {self.kernel_sizes} and dilations "
                f"{self.dilations} must have one entry per layer (>= 3 layers)"
            )
        if any(c % self.res2net_scale for c in self.channels[1:-1]):
            raise ConfigError(
                f"ECAPATDNNConfig: the SE-Res2Net channels {self.channels[1:-1]} must be divisible by "
                f"res2net_scale = {self.res2net_scale}"
            )


class ECAPATDNN(nn.Module):
    """Spectrogram [B, F, T] (log-mel or STFT magnitude) → embedding [B, embedding_dim].

    Raises:
        ValueError (in forward): the input is not [B, n_freq, T].
    """

    def __init__(self, config: ECAPATDNNConfig | None = None):
        super().__init__()
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

        self.config = c = config or ECAPATDNNConfig()
        n = len(c.channels)
        self.net = ECAPA_TDNN(
            c.n_freq,
            lin_neurons=c.embedding_dim,
            channels=list(c.channels),
            kernel_sizes=list(c.kernel_sizes),
            dilations=list(c.dilations),
            attention_channels=c.attention_channels,
            res2net_scale=c.res2net_scale,
            se_channels=c.se_channels,
            global_context=c.global_context,
            groups=[1] * n,
        )

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        if spectrogram.ndim != 3 or spectrogram.shape[1] != self.config.n_freq:
            raise ValueError(
                f"ECAPATDNN expects a spectrogram [B, {self.config.n_freq}, T], got {tuple(spectrogram.shape)}"
            )
        return self.net(spectrogram.transpose(1, 2)).squeeze(1)
