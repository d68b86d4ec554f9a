"""The machine-ID classifier family STgram-MFN / TASTgram / FGASpecNet as one network with switches (issue 13).

Input: waveform x [B, samples] (16 kHz) and its log-mel F_LM [B, M, T] (:mod:`stethoscope.nn.frontend`; 128 × 313
for 10 s). Input maps, stacked as channels in this order, each [B, M, T]:

- F_LM, the log-mel (always);
- F_T = TgramNet(x) (:class:`stethoscope.nn.stgram.TgramNet`, switch ``tgram``);
- F_TA = TAgram(F_LM) (:func:`stethoscope.nn.stgram.tagram`, switch ``tagram``);
- F_S = SpecNet(F_LM) (:class:`stethoscope.nn.specnet.SpecNet`, switch ``specnet``), replaced by
  F_S_enh = (1 − λG) F_LM + λG F_S when ``fga`` is on (:class:`stethoscope.nn.fga.FrequencyGatedAttention`).

The stack [B, C, M, T] goes through MobileFaceNet (:mod:`stethoscope.nn.mobilefacenet`) to a 128-d embedding, then
an ArcFace head over the classes (machine IDs: 41 in DCASE 2020), plus a SoftTriple head when ``softtriple`` is on.
Loss: ArcFace, or Noisy-ArcMix (``loss="noisy_arcmix"``), plus λ_ST·L_ST with SoftTriple.
Anomaly score (issue 13): A(x) = −log p(y|x), the softmax of the ArcFace logits s·cos θ (no margin) at the clip's
own class y.

Presets (:meth:`ClassifierConfig.preset`) reproduce the FGASpecNet paper's Table 3 rows:
``stgram_mfn`` = [F_LM, F_T] + ArcFace (Liu et al. 2022); ``tastgram`` = [F_LM, F_T, F_TA] + Noisy-ArcMix
(Choi et al. 2024); ``fgaspecnet`` = all four + FGA + SoftTriple. The switches ``specnet``, ``fga`` and
``softtriple`` can be set one at a time on top of ``tastgram`` for the ablations. FGA needs SpecNet (it blends F_LM
with SpecNet's F_S), so ``fga`` without ``specnet`` is a ConfigError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive
from stethoscope.nn.fga import FGAConfig, FrequencyGatedAttention
from stethoscope.nn.margins import (
    ArcFace,
    ArcFaceConfig,
    NoisyArcMixConfig,
    SoftTriple,
    SoftTripleConfig,
    mixup,
    noisy_arcmix_loss,
)
from stethoscope.nn.mobilefacenet import MobileFaceNet, MobileFaceNetConfig
from stethoscope.nn.specnet import SpecNet, SpecNetConfig
from stethoscope.nn.stgram import TgramNet, TgramNetConfig, tagram

PRESETS = ("stgram_mfn", "tastgram", "fgaspecnet")


@dataclass
class ClassifierConfig:
    """Switches and sub-configs of the family. Defaults = the ``fgaspecnet`` preset (FGASpecNet paper, Table 3).

    Fields:
        n_mels / n_frames: F_LM's size M × T (128 × 313 for 10 s at 16 kHz, hop 512).
        tgram / tagram / specnet / fga: which input maps are stacked (see the module docstring).
        loss: "arcface" (STgram-MFN) or "noisy_arcmix" (TASTgram, FGASpecNet).
        softtriple: add the SoftTriple head and λ_ST·L_ST (FGASpecNet).
        mobilefacenet_setting: bottleneck rows, "aithu" (default; the FGASpecNet Table 5 parameter counts) or
            "stgram_mfn" (the public STgram-MFN code), or explicit [t, c, n, s] rows; see
            :mod:`stethoscope.nn.mobilefacenet`.
        embedding_dim: 128 (MobileFaceNet).
        arcface_config / noisy_arcmix_config / softtriple_config / specnet_config / fga_config / tgram_config: sub-configs;
            ``fga_config.n_mels`` and ``tgram_config.n_frames`` / ``channels`` are set from n_mels / n_frames.
    """

    n_mels: int = 128
    n_frames: int = 313
    tgram: bool = True
    tagram: bool = True
    specnet: bool = True
    fga: bool = True
    loss: Literal["arcface", "noisy_arcmix"] = "noisy_arcmix"
    softtriple: bool = True
    mobilefacenet_setting: str | Sequence[Sequence[int]] = "aithu"
    embedding_dim: int = 128
    arcface_config: ArcFaceConfig = field(default_factory=ArcFaceConfig)
    noisy_arcmix_config: NoisyArcMixConfig = field(default_factory=NoisyArcMixConfig)
    softtriple_config: SoftTripleConfig = field(default_factory=SoftTripleConfig)
    specnet_config: SpecNetConfig = field(default_factory=SpecNetConfig)
    fga_config: FGAConfig = field(default_factory=FGAConfig)
    tgram_config: TgramNetConfig = field(default_factory=TgramNetConfig)

    def __post_init__(self) -> None:
        require_positive("ClassifierConfig", n_mels=self.n_mels, n_frames=self.n_frames, embedding_dim=self.embedding_dim)
        if self.loss not in ("arcface", "noisy_arcmix"):
            raise ConfigError(f"ClassifierConfig.loss = {self.loss!r}; expected 'arcface' or 'noisy_arcmix'")
        if self.fga and not self.specnet:
            raise ConfigError("ClassifierConfig: fga = True needs specnet = True (FGA blends F_LM with SpecNet's F_S)")
        self.fga_config = dataclasses.replace(self.fga_config, n_mels=self.n_mels)
        self.tgram_config = dataclasses.replace(self.tgram_config, n_frames=self.n_frames, channels=self.n_mels)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ClassifierConfig":
        """The FGASpecNet paper's Table 3 rows: "stgram_mfn", "tastgram" or "fgaspecnet" (then ``overrides``).

        Raises:
            ConfigError: unknown preset name.
        """
        rows = {
            "stgram_mfn": dict(tagram=False, specnet=False, fga=False, loss="arcface", softtriple=False),
            "tastgram": dict(tagram=True, specnet=False, fga=False, loss="noisy_arcmix", softtriple=False),
            "fgaspecnet": dict(tagram=True, specnet=True, fga=True, loss="noisy_arcmix", softtriple=True),
        }
        if name not in rows:
            raise ConfigError(f"classifier preset {name!r}; expected one of {list(rows)}")
        return cls(**{**rows[name], **overrides})

    @property
    def in_channels(self) -> int:
        """Stacked input maps: F_LM, plus F_T, F_TA and F_S(_enh) where switched on."""
        return 1 + int(self.tgram) + int(self.tagram) + int(self.specnet)


@dataclass
class ClassifierOutput:
    """What :meth:`MachineIDClassifier.forward` returns.

    embedding [B, D]; logits [B, C] (ArcFace s·cos θ, no margin: the scoring logits); gate: FGA's G [B, M, T] in
    (0, 1) when ``fga`` is on, else None (an anomaly map); inputs: the stacked maps [B, C_in, M, T].
    """

    embedding: torch.Tensor
    logits: torch.Tensor
    gate: torch.Tensor | None
    inputs: torch.Tensor


class MachineIDClassifier(nn.Module):
    """(waveform [B, samples], log-mel [B, M, T]) → :class:`ClassifierOutput` over ``num_classes`` classes.

    Without ``tgram`` the waveform is not used and may be None.

    Raises:
        ConfigError: num_classes < 2.
        ValueError (in forward/loss): shapes that do not match the config (M, T; samples giving T frames).
    """

    def __init__(self, config: ClassifierConfig, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"MachineIDClassifier: num_classes = {num_classes}; a classifier needs >= 2 classes")
        self.config = c = config
        self.num_classes = num_classes
        self.tgramnet = TgramNet(c.tgram_config) if c.tgram else None
        self.specnet = SpecNet(c.specnet_config) if c.specnet else None
        self.fga = FrequencyGatedAttention(c.fga_config) if c.fga else None
        self.backbone = MobileFaceNet(
            MobileFaceNetConfig(
                in_channels=c.in_channels,
                input_size=(c.n_mels, c.n_frames),
                setting=c.mobilefacenet_setting,
                embedding_dim=c.embedding_dim,
            )
        )
        self.arcface = ArcFace(c.embedding_dim, num_classes, c.arcface_config)
        self.softtriple = SoftTriple(c.embedding_dim, num_classes, c.softtriple_config) if c.softtriple else None

    def input_maps(self, waveform: torch.Tensor | None, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stack [F_LM, F_T, F_TA, F_S(_enh)] (as switched on) → ([B, C_in, M, T], G [B, M, T] or None)."""
        c = self.config
        if logmel.ndim != 3 or tuple(logmel.shape[1:]) != (c.n_mels, c.n_frames):
            raise ValueError(f"log-mel must be [B, {c.n_mels}, {c.n_frames}], got {tuple(logmel.shape)}")
        maps = [logmel]
        if self.tgramnet is not None:
            if waveform is None:
                raise ValueError("this classifier uses TgramNet (tgram = True) and needs the waveform")
            maps.append(self.tgramnet(waveform))
        f_ta = tagram(logmel) if (c.tagram or c.fga) else None
        if c.tagram:
            maps.append(f_ta)
        gate = None
        if self.specnet is not None:
            f_s = self.specnet(logmel)
            if self.fga is not None:
                f_s, gate = self.fga(f_ta, logmel, f_s)
            maps.append(f_s)
        return torch.stack(maps, dim=1), gate

    def forward(self, waveform: torch.Tensor | None, logmel: torch.Tensor) -> ClassifierOutput:
        inputs, gate = self.input_maps(waveform, logmel)
        embedding = self.backbone(inputs)
        return ClassifierOutput(embedding=embedding, logits=self.arcface(embedding), gate=gate, inputs=inputs)

    def loss(
        self,
        waveform: torch.Tensor | None,
        logmel: torch.Tensor,
        labels: torch.Tensor,
        rng: np.random.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training loss of one batch (labels [B] class indices).

        "arcface": L_AF on the clips. "noisy_arcmix": waveform and log-mel are mixed with one λ ~ Beta(α, α) and
        permutation drawn from ``rng`` (required), then L_NAMix. With SoftTriple, + λ_ST·L_ST on the same
        embeddings with the labels y_i (and y_j weighted 1 − λ under mixup, like L_NAMix).
        Returns {"loss": total (backward this), "classification": L_AF or L_NAMix, "softtriple": L_ST (if on)}.

        Raises:
            ValueError: "noisy_arcmix" without an rng, or bad shapes/labels.
        """
        c = self.config
        out: dict[str, torch.Tensor] = {}
        if c.loss == "noisy_arcmix":
            if rng is None:
                raise ValueError("loss = 'noisy_arcmix' needs rng (a numpy Generator) to draw λ and the permutation")
            tensors = [logmel] if waveform is None else [waveform, logmel]
            mixed, y_i, y_j, lam = mixup(tensors, labels, c.noisy_arcmix_config.alpha, rng)
            wav_m, mel_m = (None, mixed[0]) if waveform is None else (mixed[0], mixed[1])
            emb = self.backbone(self.input_maps(wav_m, mel_m)[0])
            out["classification"] = noisy_arcmix_loss(self.arcface, emb, y_i, y_j, lam)
        else:
            emb = self.backbone(self.input_maps(waveform, logmel)[0])
            y_i, y_j, lam = labels, labels, 1.0
            out["classification"] = self.arcface.loss(emb, labels)
        total = out["classification"]
        if self.softtriple is not None:
            st = self.softtriple.loss(emb, y_i)
            if lam < 1.0:
                st = lam * st + (1.0 - lam) * self.softtriple.loss(emb, y_j)
            out["softtriple"] = st
            total = total + c.softtriple_config.weight * st
        out["loss"] = total
        return out


def anomaly_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A(x) = −log p(y|x): logits [B, C] (e.g. :attr:`ClassifierOutput.logits`), labels [B] → scores [B].

    Higher = more anomalous (the network doubts the clip's own machine ID). Issue 13; STgram-MFN's score.

    Raises:
        ValueError: shapes differ or a label is outside 0..C − 1.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"anomaly_score: logits [B, C] and labels [B]; got {tuple(logits.shape)}, {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"anomaly_score: labels must lie in 0..{logits.shape[1] - 1}")
    return -F.log_softmax(logits, dim=1).gather(1, labels.long().unsqueeze(1)).squeeze(1)


def score_gradient_map(
    model: MachineIDClassifier, waveform: torch.Tensor | None, logmel: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Anomaly map |∂A/∂F_LM| [B, M, T]: how strongly each mel band × frame of the log-mel moves the score A(x).

    The other map issue 13 names beside FGA's G (:attr:`ClassifierOutput.gate`). Run with the model in eval mode:
    in train mode BatchNorm couples the clips of a batch. The waveform path (TgramNet) is held fixed.
    """
    logmel = logmel.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = anomaly_score(model(waveform, logmel).logits, labels)
        (grad,) = torch.autograd.grad(scores.sum(), logmel)
    return grad.abs()


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (the FGASpecNet paper's Table 5 counts)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
