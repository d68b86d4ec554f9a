"""AITHU's section classifiers (issue 15 §2): SC, MHCR and SC-wav2vec on the Method contract, registered as ``sc``,
``mhcr`` and ``sc_wav2vec``, and submission 1's domain classifier (``domain_classifier: true``).

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
- **SC-wav2vec** (:class:`SCWav2Vec`): the SC head and ArcFace on window statistics of a frozen wav2vec-family
  encoder's frames (:mod:`stethoscope.encoders.hf`, local weights).
- **Domain classifier** (submission 1, as issue 15 gives it): a Cnn6 beside SC / MHCR that predicts source vs target;
  the detector stage then standardizes each test clip's score with its predicted domain's training statistics
  (:meth:`stethoscope.detectors.stage.GroupedDetector.decision_function`). Per machine type (a preset switch).
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.data.features import FeatureSpec, InputSpec, WaveformSpec
from stethoscope.data.labels import ATTR_PREFIX, ATTR_VALUE_PREFIX
from stethoscope.errors import ConfigError, DataError
from stethoscope.methods.base import FrozenEncoder, Method, clip_arrays, crop_clip, crop_starts, register
from stethoscope.nn.backbones import BACKBONES, build_backbone
from stethoscope.nn.margins import ArcFace, ArcFaceConfig

FEATURES = ("stft", "log_mel")


@dataclass
class TrainingFields:
    """The fields SC, MHCR and SC-wav2vec share: ArcFace (margin 0.5, scale 30: ours), AdamW (lr 1e-3, weight decay
    1e-4, 25 epochs: §3.1.1), batch 32, clip_grad_norm (0 = off), val_fraction (ours 0.1), shuffle, and the detector
    stage's candidates (Table 5: maha, k-NN, LOF, cosine; chosen per machine type on the validation clips)."""

    arcface_margin: float = 0.5
    arcface_scale: float = 30.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 25
    batch_size: int = 32
    clip_grad_norm: float = 0.0
    val_fraction: float = 0.1
    shuffle: bool = True
    detectors: tuple[str, ...] = ("knn", "lof", "cosine", "mahalanobis")

    def _check_training(self, bad) -> None:
        """Validate the shared fields; ``bad(name, expected)`` raises the subclass's ConfigError."""
        if self.batch_size < 1:
            bad("batch_size", "an integer >= 1")
        if self.epochs < 0:
            bad("epochs", ">= 0")
        for name in ("lr", "arcface_scale"):
            if not getattr(self, name) > 0:
                bad(name, "> 0")
        if self.weight_decay < 0 or self.clip_grad_norm < 0:
            bad("weight_decay" if self.weight_decay < 0 else "clip_grad_norm", ">= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")
        ArcFaceConfig(self.arcface_margin, self.arcface_scale)


@dataclass
class Config(TrainingFields):
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
        domain_classifier: AITHU submission 1's domain classifier (§3.1.4 as issue 15 gives it): a second network
            (``domain_backbone``, Cnn6 in the report; ``domain_backbone_overrides``) on the same crops, trained
            with a class-balanced cross-entropy to tell source from target (its parameters are disjoint from the
            section classifier's: the summed loss trains each network on its own term).
            The detector stage then standardizes each test clip's score with the statistics of its *predicted*
            domain's training clips instead of taking the minimum over domains. A per-machine-type switch (off by
            default; on in a preset for machine types whose domains differ clearly).
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
    attribute_weight: float = 1.0
    attribute_weights: dict[str, float] = field(default_factory=dict)
    domain_classifier: bool = False
    domain_backbone: str = "cnn6"
    domain_backbone_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise ConfigError(f"section classifier config: {name} = {getattr(self, name)!r}; expected {expected}")

        if self.feature not in FEATURES:
            bad("feature", f"one of {list(FEATURES)}")
        for name in ("backbone", "domain_backbone"):
            if getattr(self, name) not in BACKBONES:
                bad(name, f"one of {list(BACKBONES)}")
        for name in ("n_fft", "hop_length", "n_mels", "n_frames", "crop_hop"):
            if getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if not self.attribute_weight > 0:
            bad("attribute_weight", "> 0")
        if any(not (isinstance(v, (int, float)) and v > 0) for v in self.attribute_weights.values()):
            bad("attribute_weights", "{attribute: λ > 0}")
        self._check_training(bad)

    def feature_spec(self) -> FeatureSpec:
        if self.feature == "stft":
            return FeatureSpec(kind="stft", scale="linear", power=1.0, n_fft=self.n_fft, hop_length=self.hop_length)
        return FeatureSpec(n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels)


class SectionClassifierMethod(Method):
    """SC (``attribute heads off``) or MHCR (``on``); subclasses set ``name`` and ``heads``. See the module docstring.

    Examples: ``{"x": float32 [N, F, n_frames], "group": int64 [N]}`` plus, for MHCR, ``attr:<name>`` int64 [N] and
    ``attr_value:<name>`` float32 [N] for numeric attributes, and ``domain`` int64 [N] with the domain classifier.
    Scoring batches: ``{"spectrogram": [B, F, frames]}``.

    Raises (construction):
        DataError: the domain classifier is on but the training clips do not hold two domains.
    """

    Config = Config
    default_scope = "per_machine_type"
    scopes = ("per_machine_type", "all_machine_types")
    scope_note = "a section classifier needs the sections of a machine type as its classes"
    labels = ("group",)
    heads: bool = False
    #: the batch column the crops are cut from
    input_name: str = "spectrogram"

    def __init__(self, config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        self.backbone, dim = self._make_backbone()
        self.arcface = ArcFace(dim, max(2, self.vocab.size("group")),
                               ArcFaceConfig(config.arcface_margin, config.arcface_scale))
        self.categorical = [a for a in self.vocab.attributes if a not in self.vocab.numeric_attributes] \
            if self.heads else []
        self.numeric = list(self.vocab.numeric_attributes) if self.heads else []
        self.attribute_heads = nn.ModuleDict(
            {**{f"cls_{a}": nn.Linear(dim, max(2, len(self.vocab.attributes[a]))) for a in self.categorical},
             **{f"reg_{a}": nn.Linear(dim, 1) for a in self.numeric}})
        self.domain_net = self._make_domain_net()
        params = [*self.backbone.parameters(), *self.arcface.parameters(), *self.attribute_heads.parameters()]
        if self.domain_net is not None:
            params += list(self.domain_net.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        #: numeric attributes' training mean and std (regression targets are standardised with them)
        self.attribute_scale: dict[str, list[float]] = self._numeric_scale()

    def _make_backbone(self) -> tuple[nn.Module, int]:
        """The embedding network [N, *crop] → [N, D] and D."""
        c = self.config
        net = build_backbone(c.backbone, self.inputs["spectrogram"].n_bins, c.n_frames, **c.backbone_overrides)
        return net, net.config.embedding_dim

    def _make_domain_net(self) -> nn.Module | None:
        """The domain classifier (``domain_classifier``): backbone + a linear layer over ``vocab.domain``; it adds
        ``"domain"`` to this model's labels. A clip without a domain at scoring (a request) is flagged, not refused:
        the prediction does not use it."""
        c = self.config
        if not getattr(c, "domain_classifier", False):
            return None
        if len(self.vocab.domain) < 2:
            raise DataError(
                f"{self.name}: domain_classifier is on, but the training clips hold the domain(s) "
                f"{self.vocab.domain or 'none'}; it learns source vs target and needs training clips of both. Turn it "
                "off for this machine type (domain_classifier: false) or add target-domain training clips")
        self.labels = (*type(self).labels, "domain")
        self.unknown_group = "flag"
        net = build_backbone(c.domain_backbone, self.inputs["spectrogram"].n_bins, c.n_frames,
                             **c.domain_backbone_overrides)
        return nn.Sequential(net, nn.Linear(net.config.embedding_dim, len(self.vocab.domain)))

    @property
    def predicts_domain(self) -> bool:
        """True when this model has the domain classifier (the detector stage then uses :meth:`predict_domain`)."""
        return self.domain_net is not None

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
        keys += ["domain"] * self.predicts_domain
        return keys

    # -- data -------------------------------------------------------------------------------------------------
    def _clip_crops(self, column: Any) -> list[np.ndarray]:
        """A batch's input column → each clip's crops [P_i, *crop] (float32)."""
        c = self.config
        return [crop_clip(a, c.n_frames, c.crop_hop) for a in clip_arrays(column)]

    def _crop_shape(self) -> tuple[int, ...]:
        return (self.inputs["spectrogram"].n_bins, self.config.n_frames)

    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops = self._clip_crops(clips[self.input_name])
        counts = [x.shape[0] for x in crops]
        out = {"x": np.concatenate(crops) if crops else np.zeros((0, *self._crop_shape()), np.float32)}
        for key in self.label_keys():
            if key in clips:
                out[key] = np.repeat(np.asarray(clips[key]).reshape(-1), counts)
        return out

    # -- training ---------------------------------------------------------------------------------------------
    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L = L_section (ArcFace) + Σ λ_i L_i over the attribute heads (Eq. 1), + the domain classifier's
        class-balanced cross-entropy when it is on (disjoint parameters: no weight). Returns every term and ``loss``."""
        if "group" not in batch:
            raise DataError(f"{self.name} trains on the section of each clip: the batch needs 'group'")
        emb = self.backbone(batch["x"])
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
        if self.domain_net is not None:
            if "domain" not in batch:
                raise DataError(f"{self.name} with the domain classifier trains on each clip's domain: the batch "
                                "needs 'domain'")
            out["domain"] = balanced_cross_entropy(self.domain_net(batch["x"]), batch["domain"].long())
            total = total + out["domain"]
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
    def _per_clip_mean(self, net: nn.Module, batch: dict[str, Any], softmax: bool = False) -> torch.Tensor:
        """``net`` on every crop of a scoring batch, ``batch_size`` crops at a time (bounded memory: one STFT crop
        through Cnn6's first block alone is ~50 MB), averaged per clip: [B, out] (softmax first if asked)."""
        if self.input_name not in batch:
            raise DataError(f"{self.name} reads {self.input_name!r}: the batch needs it")
        crops = self._clip_crops(batch[self.input_name])
        x = torch.from_numpy(np.concatenate(crops))
        self.eval()
        outs = []
        with torch.no_grad():
            for chunk in x.split(self.config.batch_size):
                y = net(chunk.to(self.device)).float()
                outs.append(F.softmax(y, dim=1) if softmax else y)
        y = torch.cat(outs)
        return torch.stack([e.mean(dim=0) for e in y.split([c.shape[0] for c in crops])])

    def _clip_embeddings(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean crop embedding of each clip: [B, D]."""
        return self._per_clip_mean(self.backbone, batch)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The clip embedding [B, D] (mean over its crops): what the detector stage scores."""
        return self._clip_embeddings(batch).cpu()

    def predict_domain(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The domain classifier's prediction per clip: int64 [B], an index into ``vocab.domain`` (the argmax of
        the mean softmax over the clip's crops).

        Raises:
            ConfigError: this model has no domain classifier. DataError: the batch lacks the input.
        """
        if self.domain_net is None:
            raise ConfigError(f"{self.name}: this model has no domain classifier (domain_classifier: false)")
        return self._per_clip_mean(self.domain_net, batch, softmax=True).argmax(dim=1).cpu()

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """−log p(section | x) of each clip's own section (ArcFace logits without margin): [B]. The published
        score comes from the detector stage; this one is the per-epoch validation metric. Needs ``group``."""
        if "group" not in batch:
            raise DataError(f"{self.name} scores a clip against its own section: the batch needs 'group'")
        g = torch.as_tensor(batch["group"]).long().reshape(-1, 1)
        if bool((g >= self.vocab.size("group")).any()):
            raise DataError(f"{self.name}: a clip of a section not seen in training (known: {self.vocab.group}); "
                            "−log p needs the clip's own section")
        emb = self._clip_embeddings(batch)
        with torch.no_grad():
            logp = F.log_softmax(self.arcface(emb), dim=1)
        g = g.to(logp.device)
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


def balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with each class present in the batch weighted by 1 / its count, so every present class counts
    alike (the domain classifier sees few target clips: DCASE 2022 gives 10 per section against 990 source).

    Args: logits [N, K]; target int64 [N] in [0, K). Returns: a scalar tensor.
    """
    counts = torch.bincount(target, minlength=logits.shape[1]).to(logits.dtype)
    weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return F.cross_entropy(logits, target, weight=weight)


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


@dataclass
class Wav2VecConfig(TrainingFields):
    """SC-wav2vec (issue 15 §2): the SC head on the frames of a frozen wav2vec-family encoder. *ours* where the
    issue gives no value.

    Fields:
        encoder: a wav2vec-family encoder of :mod:`stethoscope.encoders.hf` ("wav2vec2", "hubert", "wavlm",
            "data2vec-audio"); encoder_path: its local folder (what transformers' ``save_pretrained`` writes).
            Required: nothing is downloaded.
        window_seconds 2.0 / window_hop_seconds 1.0 (ours): the encoder's frames are cut into windows of this
            length every hop (plus one aligned to the clip's end; a shorter clip is one window), as SC cuts crops.
        hidden_dim 256, embedding_dim 128 (ours): the head, statistics pooling (mean ⊕ standard deviation of a
            window's frames, 2·D) → Linear → BatchNorm → ReLU → Linear → BatchNorm = the embedding.
        arcface_margin / arcface_scale, lr / weight_decay / epochs (AdamW, §3.1.1), batch_size, clip_grad_norm,
            val_fraction, shuffle, detectors: as :class:`Config`.
    Raises:
        ConfigError: a bad value (names the field). EncoderError: (from :meth:`SCWav2Vec.make_config`) an encoder
            that is not wav2vec-family, or no weights at ``encoder_path`` (the message says which files go where).
    """

    encoder: str = "wav2vec2"
    encoder_path: str | None = None
    window_seconds: float = 2.0
    window_hop_seconds: float = 1.0
    hidden_dim: int = 256
    embedding_dim: int = 128

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise ConfigError(f"sc_wav2vec config: {name} = {getattr(self, name)!r}; expected {expected}")

        if self.encoder not in WAV2VEC_FAMILY:
            bad("encoder", f"one of {list(WAV2VEC_FAMILY)} (a wav2vec-family encoder)")
        for name in ("window_seconds", "window_hop_seconds"):
            if not getattr(self, name) > 0:
                bad(name, "> 0")
        for name in ("hidden_dim", "embedding_dim"):
            if getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        self._check_training(bad)


#: The encoders SC-wav2vec takes (stethoscope.encoders.hf's wav2vec family).
WAV2VEC_FAMILY = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")


class _StatsHead(nn.Module):
    """[N, 2·D] window statistics → [N, embedding_dim]: Linear → BatchNorm → ReLU → Linear → BatchNorm."""

    def __init__(self, in_dim: int, hidden: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, out), nn.BatchNorm1d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register
class SCWav2Vec(SectionClassifierMethod):
    """SC-wav2vec (AITHU 2022 §3.1, Table 5): the SC head and ArcFace over sections on the frames of a frozen
    wav2vec-family encoder (transformers' ``Wav2Vec2Model`` and kin, local weights: :mod:`stethoscope.encoders.hf`).

    The encoder runs once per clip: ``examples`` turns each 16 kHz clip into its windows' frame statistics
    (mean ⊕ std over ``window_seconds`` of frames, [P, 2·D]), which Ray Data materializes once, so the epochs train
    only the head. The encoder is frozen (not fine-tuned: ours; the issue asks for "the same SC head on features
    from a wav2vec-family encoder"). Checkpoints and bundles keep the encoder's reference (name, path, SHA-256),
    never its weights; loading a checkpoint whose encoder files changed is refused.

    Examples: ``{"x": float32 [N, 2·D], "group": int64 [N]}``. Scoring batches: ``{"waveform": [B, samples]}``
    (16 kHz; the encoder resamples to its own rate).
    """

    name = "sc_wav2vec"
    Config = Wav2VecConfig
    input_name = "waveform"

    def __init__(self, config: Wav2VecConfig, inputs=None, vocab=None):
        self.frozen_encoder = FrozenEncoder("sc_wav2vec", config.encoder, config.encoder_path)
        super().__init__(config, inputs, vocab)

    @classmethod
    def make_config(cls, values=None) -> Wav2VecConfig:
        """``Config`` from a mapping; also finds and hashes the encoder's weights, so a missing folder fails before
        anything trains. Raises ConfigError (a bad value) or EncoderError (no weights; says which files go where)."""
        from stethoscope import encoders

        cfg = super().make_config(values)
        encoders.reference(cfg.encoder, cfg.encoder_path)
        return cfg

    @classmethod
    def input_specs(cls, config: Wav2VecConfig) -> dict[str, InputSpec]:
        """``{"waveform": WaveformSpec(16000)}``."""
        return {"waveform": WaveformSpec(sample_rate=16000)}

    @property
    def encoder_ref(self):
        """The frozen encoder's :class:`~stethoscope.encoders.EncoderRef` (kept in checkpoints and bundles)."""
        return self.frozen_encoder.ref

    @property
    def encoder(self):
        """The frozen encoder (loaded on first use; its SHA-256 is checked first). Raises EncoderError."""
        return self.frozen_encoder.load(self.device)

    def _encoder_dim(self) -> int:
        import json

        from stethoscope.encoders import EncoderError

        try:
            return int(json.loads((Path(self.encoder_ref.path) / "config.json").read_text())["hidden_size"])
        except (OSError, KeyError, ValueError) as exc:
            raise EncoderError(f"sc_wav2vec: {self.encoder_ref.path}/config.json gives no hidden_size ({exc})") from exc

    def _make_backbone(self) -> tuple[nn.Module, int]:
        c = self.config
        return _StatsHead(2 * self._encoder_dim(), c.hidden_dim, c.embedding_dim), c.embedding_dim

    def _crop_shape(self) -> tuple[int, ...]:
        return (2 * self._encoder_dim(),)

    def _clip_crops(self, column: Any) -> list[np.ndarray]:
        """Each 16 kHz clip → its windows' frame statistics [P, 2·D] (float32). Clips of one length share one
        encoder pass. Raises EncoderInputError: a clip shorter than the encoder's minimum (names the length)."""
        c, enc = self.config, self.encoder
        sr = self.inputs["waveform"].sample_rate
        window = max(1, round(c.window_seconds * enc.sample_rate / enc.frame_hop))
        hop = max(1, round(c.window_hop_seconds * enc.sample_rate / enc.frame_hop))
        waves = clip_arrays(column)
        out: list[np.ndarray | None] = [None] * len(waves)
        by_len: dict[int, list[int]] = {}
        for i, w in enumerate(waves):
            by_len.setdefault(w.shape[-1], []).append(i)
        for idx in by_len.values():
            frames = enc.frames(np.stack([waves[i] for i in idx]), sr).cpu()  # [b, T, D]
            for i, f in zip(idx, frames):
                t = f.shape[0]
                stats = []
                for start in crop_starts(t, window, hop):
                    seg = f[start:start + window]
                    stats.append(torch.cat([seg.mean(dim=0), seg.std(dim=0, unbiased=False)]))
                out[i] = torch.stack(stats).numpy().astype(np.float32)
        return out  # type: ignore[return-value]

    def to(self, device) -> "SCWav2Vec":
        super().to(device)
        self.frozen_encoder.to(self.device)
        return self

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "encoder": self.encoder_ref.to_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Also refuses a checkpoint trained with other encoder weights (EncoderError names both digests)."""
        super().load_extra_state(state)
        if state.get("encoder") is not None:
            self.frozen_encoder.check(state["encoder"])


__all__ = ["Config", "TrainingFields", "MHCR", "SC", "SCWav2Vec", "SectionClassifierMethod", "Wav2VecConfig", "balanced_cross_entropy"]
