"""MobileFaceNet and MFNSE: the embedding backbones of the machine-ID / section classifiers.

MobileFaceNet: Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on Mobile
Devices", CCBR 2018, Table 1: a 3×3 stride-2 conv, a 3×3 depthwise conv, MobileNetV2 inverted-residual bottlenecks
(expansion t, PReLU), a 1×1 conv to 512 channels, a *global depthwise conv* (GDC: a depthwise conv whose kernel is
the whole remaining feature map) and a linear 1×1 conv to the embedding (128). As adapted to spectrograms by
STgram-MFN (Liu et al., ICASSP 2022; public code ``net.py``): input [B, C, M, T] (stacked F_LM, F_T, … as channels),
BatchNorm after every conv, no bias, the GDC kernel (8, 20) for 128 × 313 inputs. Here the GDC kernel is computed
from ``input_size`` so that any spectrogram size works.

Two bottleneck settings ([t, c, n, s] rows: expansion, output channels, repeats, first stride):

- ``"stgram_mfn"`` (:data:`STGRAM_MFN_SETTING`): the public STgram-MFN code (Chen et al.'s face setting).
- ``"aithu"`` (:data:`AITHU_SETTING`): the AITHU DCASE 2022 technical report (Liu et al., Tsinghua), used by the
  public TASTgram / Noisy-ArcMix code (Choi et al. 2024), which FGASpecNet builds on. The FGASpecNet paper's
  parameter counts (its Table 5: STgram-MFN 1.1 M, TASTgram 1.2 M, FGASpecNet 1.3 M) are met with this setting
  for all three (see docs/nn.md); with the ``"stgram_mfn"`` setting STgram-MFN has 1.35 M parameters.

MFNSE (AITHU report, Table 3 backbones): MobileFaceNet with a squeeze-and-excitation block (Hu et al., "Squeeze-and-
Excitation Networks", CVPR 2018, §3 and Fig. 3) on the residual branch of every bottleneck, before the addition.
The report names the block but not its placement or reduction; we use SE-ResNet's placement and Hu et al.'s default
reduction r = 16 — labelled "ours" in :class:`MobileFaceNetConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive

#: STgram-MFN public code (Chen et al. 2018 Table 1 rows after the depthwise conv): [t, c, n, s].
STGRAM_MFN_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
#: AITHU DCASE 2022 report, as in the public TASTgram code: [t, c, n, s].
AITHU_SETTING: tuple[tuple[int, int, int, int], ...] = ((2, 128, 2, 2), (4, 128, 2, 2), (4, 128, 2, 2))
BOTTLENECK_SETTINGS = {"stgram_mfn": STGRAM_MFN_SETTING, "aithu": AITHU_SETTING}


@dataclass
class MobileFaceNetConfig:
    """MobileFaceNet / MFNSE hyperparameters.

    Fields:
        in_channels: stacked input maps (2: F_LM + F_T for STgram-MFN; 1 for a single spectrogram).
        input_size: (frequency bins, frames) of the input, e.g. (128, 313) for a 10 s log-mel; sizes the GDC.
        setting: a name in :data:`BOTTLENECK_SETTINGS` or explicit [t, c, n, s] rows ("aithu": see module docstring).
        embedding_dim: output size of the linear 1×1 conv (128, Chen et al. 2018 Table 1).
        stem_channels / head_channels: 64 and 512 (Chen et al. 2018 Table 1).
        se: add squeeze-and-excitation to every bottleneck (MFNSE).
        se_reduction: SE bottleneck ratio r (ours, Hu et al. 2018's default 16).
    """

    in_channels: int = 2
    input_size: tuple[int, int] = (128, 313)
    setting: str | Sequence[Sequence[int]] = "aithu"
    embedding_dim: int = 128
    stem_channels: int = 64
    head_channels: int = 512
    se: bool = False
    se_reduction: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.setting, str) and self.setting not in BOTTLENECK_SETTINGS:
            raise ConfigError(
                f"MobileFaceNetConfig.setting = {self.setting!r}; expected one of {sorted(BOTTLENECK_SETTINGS)} "
                "or a list of [t, c, n, s] rows"
            )
        for row in self.rows:
            if len(row) != 4 or any(int(v) < 1 for v in row):
                raise ConfigError(f"MobileFaceNetConfig.setting row {list(row)}; expected [t, c, n, s], all >= 1")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ConfigError(f"MobileFaceNetConfig.input_size = {self.input_size}; expected (bins >= 1, frames >= 1)")
        require_positive(
            "MobileFaceNetConfig", in_channels=self.in_channels, embedding_dim=self.embedding_dim,
            stem_channels=self.stem_channels, head_channels=self.head_channels, se_reduction=self.se_reduction,
        )

    @property
    def rows(self) -> tuple[tuple[int, int, int, int], ...]:
        if isinstance(self.setting, str):
            return BOTTLENECK_SETTINGS.get(self.setting, ())
        return tuple(tuple(int(v) for v in row) for row in self.setting)  # type: ignore[misc]


class ConvBlock(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d (→ PReLU unless ``linear``): [B, C_in, H, W] → [B, C_out, H', W']."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0, depthwise=False, linear=False):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=c_in if depthwise else 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if not linear:
            layers.append(nn.PReLU(c_out))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """SE block (Hu et al. 2018, §3): x [B, C, H, W] → x · σ(W2 ReLU(W1 mean_hw(x))), W1: C → C/r, W2: C/r → C."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class Bottleneck(nn.Module):
    """Inverted residual (MobileNetV2; Chen et al. 2018 use PReLU): 1×1 expand → 3×3 depthwise (stride) → 1×1 linear.

    [B, c_in, H, W] → [B, c_out, ceil(H/stride), ceil(W/stride)]; identity shortcut when stride 1 and c_in = c_out.
    With ``se_reduction`` set, an SE block rescales the branch before the addition (MFNSE).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, se_reduction: int | None = None):
        super().__init__()
        hidden = c_in * expansion
        self.shortcut = stride == 1 and c_in == c_out
        layers: list[nn.Module] = [
            ConvBlock(c_in, hidden, 1),
            ConvBlock(hidden, hidden, 3, stride, 1, depthwise=True),
            ConvBlock(hidden, c_out, 1, linear=True),
        ]
        if se_reduction:
            layers.append(SqueezeExcitation(c_out, se_reduction))
        self.branch = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return x + out if self.shortcut else out


def _strided(size: int, stride: int) -> int:
    """Output length of a 3×3 conv with padding 1: ceil(size / stride)."""
    return (size - 1) // stride + 1


class MobileFaceNet(nn.Module):
    """Spectrogram stack [B, in_channels, F, T] (or [B, F, T] when in_channels = 1) → embedding [B, embedding_dim].

    Layers (Chen et al. 2018 Table 1): ConvBlock(3×3, s2) → depthwise ConvBlock(3×3) → bottlenecks → ConvBlock(1×1,
    head_channels) → linear GDC (depthwise, kernel = the remaining map) → linear 1×1 ConvBlock(embedding_dim).
    Conv weights: He-normal with fan-out (the public STgram-MFN code's ``normal(0, sqrt(2 / (k·k·C_out)))``).

    Raises:
        ValueError (in forward): the input's channels or (F, T) differ from the config (the GDC kernel is fixed).
    """

    def __init__(self, config: MobileFaceNetConfig | None = None):
        super().__init__()
        self.config = c = config or MobileFaceNetConfig()
        h, w = c.input_size
        self.stem = nn.Sequential(
            ConvBlock(c.in_channels, c.stem_channels, 3, 2, 1),
            ConvBlock(c.stem_channels, c.stem_channels, 3, 1, 1, depthwise=True),
        )
        h, w = _strided(h, 2), _strided(w, 2)
        blocks = []
        channels = c.stem_channels
        for t, out, n, s in c.rows:
            for i in range(n):
                stride = s if i == 0 else 1
                blocks.append(Bottleneck(channels, out, stride, t, c.se_reduction if c.se else None))
                channels = out
                h, w = _strided(h, stride), _strided(w, stride)
        self.blocks = nn.Sequential(*blocks)
        self.gdc_kernel = (h, w)
        self.head = nn.Sequential(
            ConvBlock(channels, c.head_channels, 1),
            ConvBlock(c.head_channels, c.head_channels, (h, w), depthwise=True, linear=True),
            ConvBlock(c.head_channels, c.embedding_dim, 1, linear=True),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim == 3 and c.in_channels == 1:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != c.in_channels or tuple(x.shape[2:]) != tuple(c.input_size):
            raise ValueError(
                f"MobileFaceNet expects [B, {c.in_channels}, {c.input_size[0]}, {c.input_size[1]}] "
                f"(in_channels, input_size of its config), got {tuple(x.shape)}"
            )
        return self.head(self.blocks(self.stem(x))).flatten(1)
