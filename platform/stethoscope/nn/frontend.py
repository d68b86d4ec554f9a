"""Batched, on-device log-mel front end for the waveform-reading classifiers (STgram-MFN, TASTgram, FGASpecNet).

The ingest stage computes log-mels clip by clip on the CPU (:func:`stethoscope.data.features.log_mel`, float64).
A method that reads the waveform (TgramNet needs it) may instead compute F_LM on the accelerator, from the same
:class:`~stethoscope.data.features.FeatureSpec`, with :class:`LogMel`; both give the same values (a test checks
it on a real clip to 1e-2 dB; the gap is float32 against float64 arithmetic).

Source of the parameters (:data:`CLASSIFIER_LOGMEL`): the log-mel F_LM of STgram-MFN (Liu et al., "Anomalous Sound
Detection Using Spectral-Temporal Information Fusion", ICASSP 2022) as used by TASTgram (Choi et al., ICASSP
2024) and FGASpecNet (2025): 16 kHz, n_fft = window = 2048 samples (Hann), hop 512 samples, 128 mel bands,
power 2, then ``10·log10(mel + eps)`` (the public STgram-MFN / Noisy-ArcMix code: Slaney mel scale and norm,
``20 / power · log10(mel + sys.float_info.epsilon)``). A 10 s clip (160,000 samples) gives [128, 313] frames
(center=True: ``1 + 160000 // 512``).
"""

from __future__ import annotations


import torch
from torch import nn

from stethoscope.data.features import FeatureSpec, power_to_db, spectrogram_transform

#: F_LM of STgram-MFN / TASTgram / FGASpecNet: n_fft 2048, hop 512, 128 mels, power 2, 10·log10(mel + eps).
CLASSIFIER_LOGMEL = FeatureSpec(sample_rate=16000, n_fft=2048, hop_length=512, n_mels=128, power=2.0, db_ref="absolute")


class LogMel(nn.Module):
    """Waveform [B, samples] → log-mel [B, n_mels, frames] (dB), on the waveform's device, float32.

    frames = 1 + samples // hop_length (center=True, reflect padding, as :func:`stethoscope.data.features.log_mel`).
    The transform is not trainable; it holds the mel filterbank and window as buffers.

    Args:
        spec: every front-end parameter (default :data:`CLASSIFIER_LOGMEL`). Only ``db_ref="absolute"`` is
            batch-independent; ``"max"`` normalises each clip by its own maximum, as the data layer does.
    Raises:
        ValueError (in forward): the waveform is not [B, samples] or [samples], or is shorter than n_fft.
    """

    def __init__(self, spec: FeatureSpec = CLASSIFIER_LOGMEL):
        super().__init__()
        self.spec = spec
        # The data layer's transform for this spec (filterbank built in float64), copied so that moving this
        # module to a device does not move the data layer's cached one.
        self.mel = spectrogram_transform(spec).float()

    def num_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` samples: ``1 + num_samples // hop_length``."""
        return self.spec.num_frames(num_samples)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.ndim != 2:
            raise ValueError(f"LogMel expects a waveform [B, samples], got shape {tuple(waveform.shape)}")
        if waveform.shape[-1] < self.spec.n_fft:
            raise ValueError(f"LogMel: waveform has {waveform.shape[-1]} samples; need at least n_fft={self.spec.n_fft}")
        return power_to_db(self.mel(waveform.float()), self.spec).float()
