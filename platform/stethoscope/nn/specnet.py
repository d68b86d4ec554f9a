"""SpecNet: a residual learnable filter applied to the log-mel in the 2-D Fourier domain (FGASpecNet, 2025).

FGASpecNet's SpecNet (frequency-gated spectral enhancement network, 2025; as specified in our issue 13):

    F̂ = FFT2(F_LM)                                   (complex, over the mel and frame axes)
    Ŝ = C2(tanh(SpectralBN(C1(F̂))))                  (C1, C2: FourierConv2d; SpectralBN: BN on Re and Im apart)
    F_S = Re(IFFT2(F̂ + Ŝ))                            [B, M, T], the same grid as F_LM

With Ŝ = 0 SpecNet returns F_LM exactly (up to FFT round-off), so it starts as a perturbation of the identity.

What the paper leaves open and we chose (all "ours", config values in :class:`SpecNetConfig`):
- C1 and C2 are complex convolutions (weights ``W = W_r + i·W_i``, ``W·z = (W_r z_r − W_i z_i) + i(W_r z_i + W_i z_r)``)
  with ``kernel_size`` 1 by default, i.e. a complex pointwise map shared by every 2-D frequency bin, as in the
  spectral transform of Fast Fourier Convolution (Chi et al., NeurIPS 2020); ``kernel_size`` > 1 convolves
  neighbouring bins. C1 maps 1 → ``hidden_channels`` (16), C2 maps back to 1.
- tanh is applied to the real and imaginary parts separately ("split" complex activation): the complex tanh has
  poles at ±iπ/2 and is unbounded near them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive


@dataclass
class SpecNetConfig:
    """SpecNet hyperparameters (all "ours": the FGASpecNet paper does not give them, see the module docstring).

    Fields:
        hidden_channels: complex channels between C1 and C2 (16).
        kernel_size: odd size of the complex convolutions over the 2-D frequency bins (1 = pointwise).
        bias: complex bias in C1 and C2.
    """

    hidden_channels: int = 16
    kernel_size: int = 1
    bias: bool = True

    def __post_init__(self) -> None:
        require_positive("SpecNetConfig", hidden_channels=self.hidden_channels)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"SpecNetConfig.kernel_size = {self.kernel_size}; expected an odd integer >= 1")


class FourierConv2d(nn.Module):
    """Complex 2-D convolution of a complex tensor [B, C_in, H, W] → [B, C_out, H, W] ('same' padding, stride 1).

    Implemented with two real convolutions (real and imaginary weights), so it trains with any real optimizer.

    Raises:
        ValueError (in forward): the input is not a complex 4-D tensor with ``in_channels`` channels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, bias: bool = True):
        super().__init__()
        self.in_channels = in_channels
        pad = kernel_size // 2
        self.real = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, bias=bias)
        self.imag = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, bias=bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not torch.is_complex(z) or z.ndim != 4 or z.shape[1] != self.in_channels:
            raise ValueError(
                f"FourierConv2d expects a complex [B, {self.in_channels}, H, W] tensor, got "
                f"{tuple(z.shape)} {z.dtype}"
            )
        zr, zi = z.real, z.imag
        # (W_r + iW_i)(z_r + iz_i); each conv adds its own bias once, so the bias is b_r + i·b_i.
        real = self.real(zr) - nn.functional.conv2d(zi, self.imag.weight, None, padding=self.imag.padding)
        imag = self.imag(zr) + nn.functional.conv2d(zi, self.real.weight, None, padding=self.real.padding)
        return torch.complex(real, imag)


class SpectralBatchNorm2d(nn.Module):
    """Batch norm of a complex tensor [B, C, H, W]: one BatchNorm2d on the real part and one on the imaginary part.

    Each part gets its own per-channel mean, variance, affine scale and shift (FGASpecNet's SpectralBN), so in
    training mode both parts of every channel come out with mean 0 and variance 1 before the affine map.

    Raises:
        ValueError (in forward): the input is not a complex 4-D tensor.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.real = nn.BatchNorm2d(num_channels)
        self.imag = nn.BatchNorm2d(num_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not torch.is_complex(z) or z.ndim != 4:
            raise ValueError(f"SpectralBatchNorm2d expects a complex [B, C, H, W] tensor, got {tuple(z.shape)} {z.dtype}")
        return torch.complex(self.real(z.real), self.imag(z.imag))


class SpecNet(nn.Module):
    """Log-mel F_LM [B, M, T] → spectrally filtered F_S [B, M, T] (see the module docstring for the equations).

    :meth:`residual` gives Ŝ [B, 1, M, T] (complex) for inspection. The FFTs run in float32 (complex64) even
    under autocast, because half-precision FFTs need power-of-two sizes on CUDA.

    Raises:
        ValueError (in forward): logmel is not 3-D.
    """

    def __init__(self, config: SpecNetConfig | None = None):
        super().__init__()
        self.config = c = config or SpecNetConfig()
        self.c1 = FourierConv2d(1, c.hidden_channels, c.kernel_size, c.bias)
        self.bn = SpectralBatchNorm2d(c.hidden_channels)
        self.c2 = FourierConv2d(c.hidden_channels, 1, c.kernel_size, c.bias)

    def residual(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Ŝ = C2(tanh(SpectralBN(C1(F̂)))): complex [B, 1, M, T] → complex [B, 1, M, T]."""
        h = self.bn(self.c1(spectrum))
        h = torch.complex(torch.tanh(h.real), torch.tanh(h.imag))
        return self.c2(h)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        if logmel.ndim != 3:
            raise ValueError(f"SpecNet expects a log-mel [B, M, T], got shape {tuple(logmel.shape)}")
        with torch.autocast(device_type=logmel.device.type, enabled=False):
            spectrum = torch.fft.fft2(logmel.float()).unsqueeze(1)  # F̂ [B, 1, M, T]
            out = torch.fft.ifft2(spectrum + self.residual(spectrum))
        return out.real.squeeze(1)
