"""AITHU's section classifiers (issue 15 §2): SC and MHCR on the Method contract, registered as ``sc`` and ``mhcr``.

Source: the AITHU technical report for DCASE 2022 Task 2 (Liu et al., Tsinghua), §3.1, as summarised in issue 15.

- **SC**: an embedding network (a backbone of :mod:`stethoscope.nn.backbones`: MobileFaceNet, MFNSE, ECAPA-TDNN or
  Cnn6) trained to tell the **sections** of one machine type apart with an ArcFace head
  (:class:`stethoscope.nn.margins.ArcFace`). A clip whose section the network doubts is anomalous; the scores come
  from the detector stage on the embeddings (k-NN, LOF, cosine, Mahalanobis; fitted per section with source and
  target apart; chosen per machine type on the validation clips: :mod:`stethoscope.stages.detect`).
- **MHCR** (multi-head classification and regression): SC plus one head per attribute in the file names, a
  classification head (cross-entropy) for a categorical attribute and a regression head (mean squared error on the
  attribute standardised with the mean and standard deviation of its distinct training values) for a numeric one; L = L_section +
  Σ_i λ_i·L_i (Eq. 1), λ_i > 0 (``attribute_weight``, or per attribute ``attribute_weights``).
- **Input**: the STFT magnitude (``feature = "stft"``: |STFT|, n_fft 2048 → 1025 bins, no log) or a log-mel
  (``"log_mel"``: dB, ``n_mels``), hop 512 (ours: the report does not give it), cut into crops of ``n_frames`` (192)
  frames every ``crop_hop`` frames (ours: 64) plus one aligned to the clip's end; a shorter clip is tiled. A clip's
  embedding is the mean over its crops. The per-machine-type choices of the report's Table 3 are presets.
- **Training** (Config defaults, §3.1.1 as issue 15 gives them): AdamW, lr 1e-3, weight decay 1e-4, 25 epochs.
  ArcFace margin 0.5 and scale 30, batch 32: ours (not given in the issue).
- **Scope**: one model per machine type (its sections are the classes); ``all_machine_types`` also works (the
  classes are then every (machine type, section) pair). A machine type with one section has one real class: the
  head gets a padding class no clip has, and the embeddings still feed the detectors.

Values the report does not give are marked *ours* in :class:`Config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.data.features import FeatureSpec, InputSpec
from stethoscope.data.labels import ATTR_PREFIX, ATTR_VALUE_PREFIX
from stethoscope.errors import ConfigError, DataError
from stethoscope.methods.base import Method, clip_arrays, crop_clip, register
from stethoscope.nn.backbones import BACKBONES, build_backbone
from stethoscope.nn.margins import ArcFace, ArcFaceConfig

FEATURES = ("stft", "log_mel")


@dataclass
class Config:
    """SC / MHCR. Defaults cite issue 15 (AITHU 2022 §3.1.1); *ours* where the issue gives no value.

    Fields:
        feature: "stft" (|STFT|, no log) or "log_mel" (dB) — per machine type in the report's Table 3.
        n_fft 2048 (Table 3), hop_length 512 (ours), n_mels 64 (the log-mel's mels: Table 3's ToyCar row).
        n_frames 192: frames per crop (Table 3). crop_hop: frames between training crops (ours 64).
        backbone: one of :data:`stethoscope.nn.backbones.BACKBONES` (ours: "mfnse", Table 3's choice for fan,
            slider and valve). backbone_overrides: fields of the backbone's config (e.g. a small MobileFaceNet
            ``setting`` for tests).
        arcface_margin 0.5, arcface_scale 30 (ours).
        attribute_weight: λ_i of Eq. 1 for every attribute head (MHCR; ours 1.0); attribute_weights: per-attribute
            overrides {name: λ}. Both > 0. Ignored by SC.
        lr 1e-3, weight_decay 1e-4, epochs 25: AdamW (§3.1.1). batch_size 32 (ours). clip_grad_norm: 0 = off.
        val_fraction: training clips held out for the validation loss (ours 0.1).
        detectors: the detector stage's candidates (Table 5: maha, k-NN, LOF, cosine), chosen per machine type on
            the validation clips.
    Raises:
        ConfigError: a bad value (names the field).
    """

    feature: str = "stft"
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 64
    n_frames: int = 192
    crop_hop: int = 64
    backbone: str = "mfnse"
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    arcface_margin: float = 0.5
    arcface_scale: float = 30.0
    attribute_weight: float = 1.0
    attribute_weights: dict[str, float] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 25
    batch_size: int = 32
    clip_grad_norm: float = 0.0
    val_fraction: float = 0.1
    shuffle: bool = True
    detectors: tuple[str, ...] = ("knn", "lof", "cosine", "mahalanobis")

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise ConfigError(f"section classifier config: {name} = {getattr(self, name)!r}; expected {expected}")

        if self.feature not in FEATURES:
            bad("feature", f"one of {list(FEATURES)}")
        if self.backbone not in BACKBONES:
            bad("backbone", f"one of {list(BACKBONES)}")
        for name in ("n_fft", "hop_length", "n_mels", "n_frames", "crop_hop", "batch_size"):
            if getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.epochs < 0:
            bad("epochs", ">= 0")
        for name in ("lr", "arcface_scale", "attribute_weight"):
            if not getattr(self, name) > 0:
                bad(name, "> 0")
        if any(not (isinstance(v, (int, float)) and v > 0) for v in self.attribute_weights.values()):
            bad("attribute_weights", "{attribute: λ > 0}")
        if self.weight_decay < 0 or self.clip_grad_norm < 0:
            bad("weight_decay" if self.weight_decay < 0 else "clip_grad_norm", ">= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")
        ArcFaceConfig(self.arcface_margin, self.arcface_scale)

    def feature_spec(self) -> FeatureSpec:
        if self.feature == "stft":
            return FeatureSpec(kind="stft", scale="linear", power=1.0, n_fft=self.n_fft, hop_length=self.hop_length)
        return FeatureSpec(n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels)


class SectionClassifierMethod(Method):
    """SC (``attribute heads off``) or MHCR (``on``); subclasses set ``name`` and ``heads``. See the module docstring.

    Examples: ``{"x": float32 [N, F, n_frames], "group": int64 [N]}`` plus, for MHCR, ``attr:<name>`` int64 [N] and
    ``attr_value:<name>`` float32 [N] for numeric attributes. Scoring batches: ``{"spectrogram": [B, F, frames]}``.
    """

    Config = Config
    default_scope = "per_machine_type"
    scopes = ("per_machine_type", "all_machine_types")
    scope_note = "a section classifier needs the sections of a machine type as its classes"
    labels = ("group",)
    heads: bool = False

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        spec = self.inputs["spectrogram"]
        self.backbone = build_backbone(config.backbone, spec.n_bins, config.n_frames, **config.backbone_overrides)
        dim = self.backbone.config.embedding_dim
        self.arcface = ArcFace(dim, max(2, self.vocab.size("group")),
                               ArcFaceConfig(config.arcface_margin, config.arcface_scale))
        self.categorical = [a for a in self.vocab.attributes if a not in self.vocab.numeric_attributes] \
            if self.heads else []
        self.numeric = list(self.vocab.numeric_attributes) if self.heads else []
        self.attribute_heads = nn.ModuleDict(
            {**{f"cls_{a}": nn.Linear(dim, max(2, len(self.vocab.attributes[a]))) for a in self.categorical},
             **{f"reg_{a}": nn.Linear(dim, 1) for a in self.numeric}})
        params = [*self.backbone.parameters(), *self.arcface.parameters(), *self.attribute_heads.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        #: numeric attributes' training mean and std (regression targets are standardised with them)
        self.attribute_scale: dict[str, list[float]] = self._numeric_scale()

    @classmethod
    def input_specs(cls, config: Config) -> dict[str, InputSpec]:
        """``{"spectrogram": FeatureSpec}``: |STFT| (no log) or a dB log-mel, n_fft 2048, hop 512."""
        return {"spectrogram": config.feature_spec()}

    def _numeric_scale(self) -> dict[str, list[float]]:
        out = {}
        for a in self.numeric:
            values = np.asarray([float(v) for v in self.vocab.attributes[a]], dtype=np.float64)
            out[a] = [float(values.mean()), float(values.std()) or 1.0]
        return out

    def attribute_lambda(self, name: str) -> float:
        """λ_i of Eq. 1 for attribute ``name``."""
        return float(self.config.attribute_weights.get(name, self.config.attribute_weight))

    def label_keys(self) -> list[str]:
        keys = ["group"]
        keys += [ATTR_PREFIX + a for a in self.categorical]
        keys += [ATTR_VALUE_PREFIX + a for a in self.numeric]
        return keys

    # -- data -------------------------------------------------------------------------------------------------
    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        c = self.config
        crops = [crop_clip(a, c.n_frames, c.crop_hop) for a in clip_arrays(clips["spectrogram"])]
        counts = [x.shape[0] for x in crops]
        f = self.inputs["spectrogram"].n_bins
        out = {"x": np.concatenate(crops) if crops else np.zeros((0, f, c.n_frames), np.float32)}
        for key in self.label_keys():
            if key in clips:
                out[key] = np.repeat(np.asarray(clips[key]).reshape(-1), counts)
        return out

    # -- training ---------------------------------------------------------------------------------------------
    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L = L_section (ArcFace) + Σ λ_i L_i over the attribute heads (Eq. 1). Returns every term and ``loss``."""
        emb = self.backbone(batch["x"])
        if "group" not in batch:
            raise DataError(f"{self.name} trains on the section of each clip: the batch needs 'group'")
        out = {"section": self.arcface.loss(emb, batch["group"].long())}
        total = out["section"]
        for a in self.categorical:
            y = batch[ATTR_PREFIX + a].long()
            loss = F.cross_entropy(self.attribute_heads[f"cls_{a}"](emb), y)
            out[f"attr_{a}"] = loss
            total = total + self.attribute_lambda(a) * loss
        for a in self.numeric:
            y = batch[ATTR_VALUE_PREFIX + a].float()
            ok = torch.isfinite(y)
            mean, std = self.attribute_scale[a]
            pred = self.attribute_heads[f"reg_{a}"](emb).squeeze(1)
            loss = F.mse_loss(pred[ok], (y[ok] - mean) / std) if ok.any() else emb.new_zeros(())
            out[f"attr_{a}"] = loss
            total = total + self.attribute_lambda(a) * loss
        out["loss"] = total
        return out

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if batch["x"].shape[0] < 2:  # BatchNorm needs two crops
            return {}
        self.train()
        with self.autocast():
            losses = self.losses(batch)
        self.optimize(self.optimizer, losses["loss"].float(), clip_grad_norm=self.config.clip_grad_norm or None)
        return {k: float(v.detach()) for k, v in losses.items()}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.eval()
        with torch.no_grad():
            return {f"val_{k}": float(v) for k, v in self.losses(batch).items()}

    # -- inference --------------------------------------------------------------------------------------------
    def _clip_embeddings(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean crop embedding of each clip: [B, D]."""
        if "spectrogram" not in batch:
            raise DataError(f"{self.name} embeds spectrograms: the batch needs 'spectrogram' [B, F, frames]")
        arrays = clip_arrays(batch["spectrogram"])
        crops = [crop_clip(a, self.config.n_frames, self.config.crop_hop) for a in arrays]
        x = torch.from_numpy(np.concatenate(crops)).to(self.device)
        self.eval()
        with torch.no_grad():
            emb = self.backbone(x).float()
        return torch.stack([e.mean(dim=0) for e in emb.split([c.shape[0] for c in crops])])

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The clip embedding [B, D] (mean over its crops): what the detector stage scores."""
        return self._clip_embeddings(batch).cpu()

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """−log p(section | x) of each clip's own section (ArcFace logits without margin): [B]. The published
        score comes from the detector stage; this one is the per-epoch validation metric. Needs ``group``."""
        if "group" not in batch:
            raise DataError(f"{self.name} scores a clip against its own section: the batch needs 'group'")
        emb = self._clip_embeddings(batch)
        with torch.no_grad():
            logp = F.log_softmax(self.arcface(emb), dim=1)
        g = torch.as_tensor(batch["group"], device=logp.device).long().reshape(-1, 1)
        if bool((g >= self.vocab.size("group")).any()):
            raise DataError(f"{self.name}: a clip of a section not seen in training (known: {self.vocab.group}); "
                            "−log p needs the clip's own section")
        return (-logp.gather(1, g)[:, 0]).float().cpu()

    def predict_attributes(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MHCR's heads on each clip's embedding: ``{name: class index [B]}`` for categorical attributes and
        ``{name: value [B]}`` (in the attribute's own units) for numeric ones."""
        emb = self._clip_embeddings(batch)
        out = {}
        with torch.no_grad():
            for a in self.categorical:
                out[a] = self.attribute_heads[f"cls_{a}"](emb).argmax(dim=1).cpu()
            for a in self.numeric:
                mean, std = self.attribute_scale[a]
                out[a] = (self.attribute_heads[f"reg_{a}"](emb).squeeze(1) * std + mean).cpu()
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"attribute_scale": {k: list(v) for k, v in self.attribute_scale.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.attribute_scale = {k: list(v) for k, v in dict(state.get("attribute_scale", {})).items()} or \
            self._numeric_scale()


@register
class SC(SectionClassifierMethod):
    """SC (AITHU 2022 §3.1): a section classifier with an ArcFace head; scores from the detector stage."""

    name = "sc"


@register
class MHCR(SectionClassifierMethod):
    """MHCR (AITHU 2022 §3.1, Eq. 1): SC plus a classification or regression head per file-name attribute."""

    name = "mhcr"
    labels = ("group", "attributes")
    #: an attribute value (or section) unseen in training is flagged at scoring, not an error: the attribute heads
    #: are not used for scores (the detectors on the embeddings are), and a section without a detector is refused
    #: by the detector stage with its own message.
    unknown_group = "flag"
    heads = True


__all__ = ["Config", "MHCR", "SC", "SectionClassifierMethod"]
