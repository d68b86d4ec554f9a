"""The four spectrogram backbones of the AITHU section classifiers (issue 15), behind one constructor.

AITHU DCASE 2022 technical report (Liu et al., Tsinghua), Table 3: each machine type uses one of MobileFaceNet
(``"mobilefacenet"``), MobileFaceNet with squeeze-and-excitation (``"mfnse"``), ECAPA-TDNN (``"ecapa_tdnn"``) or
PANNs' Cnn6 (``"cnn6"``) on an STFT magnitude (n_fft 2048 → 1025 bins) or a log-mel, 192 frames.
Every backbone maps a spectrogram [B, F, T] to an embedding [B, D]; ``module.config.embedding_dim`` is D.

- mobilefacenet / mfnse: :class:`stethoscope.nn.mobilefacenet.MobileFaceNet`, one input channel, the AITHU
  bottleneck setting, D = 128.
- ecapa_tdnn: :class:`stethoscope.nn.ecapa.ECAPATDNN` (SpeechBrain), D = 192.
- cnn6: :class:`stethoscope.nn.cnn6.Cnn6`, D = 512.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from stethoscope.errors import ConfigError

BACKBONES = ("mobilefacenet", "mfnse", "ecapa_tdnn", "cnn6")


def build_backbone(name: str, n_freq: int, n_frames: int, **overrides) -> nn.Module:
    """Build backbone ``name`` for spectrograms of ``n_freq`` bins × ``n_frames`` frames.

    Args:
        name: one of :data:`BACKBONES`.
        n_freq / n_frames: the input's F × T (e.g. 1025 × 192 for AITHU's STFT input). ECAPA-TDNN and Cnn6 accept
            any T; MobileFaceNet's global depthwise conv is sized for exactly n_frames.
        overrides: fields of the backbone's config dataclass (e.g. ``embedding_dim=64``).
    Returns:
        an nn.Module, [B, n_freq, T] → [B, D], with ``.config.embedding_dim`` = D.
    Raises:
        ConfigError: unknown name, unknown override key, or a bad value.
    """
    if name in ("mobilefacenet", "mfnse"):
        from stethoscope.nn.mobilefacenet import MobileFaceNet, MobileFaceNetConfig

        cls, config_cls = MobileFaceNet, MobileFaceNetConfig
        base = dict(in_channels=1, input_size=(n_freq, n_frames), setting="aithu", se=name == "mfnse")
    elif name == "ecapa_tdnn":
        from stethoscope.nn.ecapa import ECAPATDNN, ECAPATDNNConfig

        cls, config_cls, base = ECAPATDNN, ECAPATDNNConfig, dict(n_freq=n_freq)
    elif name == "cnn6":
        from stethoscope.nn.cnn6 import Cnn6, Cnn6Config

        cls, config_cls, base = Cnn6, Cnn6Config, dict(n_freq=n_freq)
    else:
        raise ConfigError(f"backbone {name!r}; expected one of {list(BACKBONES)}")
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"backbone {name!r}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
    return cls(config_cls(**{**base, **overrides}))
