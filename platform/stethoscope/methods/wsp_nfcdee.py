"""WSP-NFCDEE (issue 16 §1): weighted statistic pooling of a log-mel and a section-conditional normalizing flow,
registered as ``wsp_nfcdee``.

Source: the AITHU technical report for DCASE 2022 Task 2 (Liu et al., Tsinghua), §3.2, Eq. 2 and Table 7; NFCDEE:
Lopez et al., "Normalizing flow conditional density estimation", DCASE 2021 Task 2. The blocks are
:mod:`stethoscope.nn.wsp` and :mod:`stethoscope.nn.flows` (flow layers from zuko); their own choices are in
docs/nn.md.

- **Input**: one dB log-mel (``log_mel``: ``n_fft``, ``hop_length``, ``n_mels``; Table 7 per machine type, hop 512
  ours), [n_mels, frames].
- **Segments**: a clip is cut into segments of ``n_frames`` frames (Table 7's "frames", read as the frames one WSP
  vector is pooled over: docs/nn.md), every ``segment_hop`` frames (ours: ``n_frames``, no overlap); frames after the
  last whole segment are dropped (:func:`stethoscope.nn.wsp.frame_segments`). A 10 s clip at hop 512 has 313 frames:
  3 segments of 100, 5 of 60, 10 of 30. A clip shorter than ``n_frames`` is a DataError (never padded).
- **WSP** (Eq. 2): WSP(X) = α·mean_t(X) + β·std_t(X) with (α, β) = softmax of two trainable logits, so α + β = 1 and
  α, β > 0. Mean and std do not depend on (α, β), so the training examples are each segment's two statistics
  [2, n_mels] (exact, and n_frames / 2 times smaller than the segment), and α, β train on them.
- **Density** (NFCDEE): a zuko flow (MAF by default) models p(WSP | section), the section entering every layer's
  conditioner as a learned embedding; before the flow the WSP vector is standardized with per-dimension mean and std
  fitted once, before epoch 1, on every training segment pooled with the initial α (:meth:`WSPNFCDEE.fit_statistics`,
  summed over the Ray Train workers), with the change of variables kept, so the NLL is that of the WSP vector itself.
- **Loss and score**: the mean NLL (nats) over a batch of segments; a clip's score is the mean NLL over its segments
  (higher = more anomalous).
- **Sections**: the section (the vocabulary's ``group``) is the condition. A clip of a section not seen in training
  is refused with a DataError that names it and the known sections (``unknown_group = "error"``: its density was
  never learned). Scope: one model per machine type by default (its sections are the classes); ``all_machine_types``
  (classes = every (machine type, section) pair) and ``per_id`` (one section: an unconditional flow) also work.
- **Training** (the report gives none of these; all *ours*): Adam, lr 1e-3, no weight decay, 100 epochs, batch 64
  segments, gradient norm clipped at 5, 10 % of the training clips held out for the validation loss. The flow runs in
  float32 (no autocast under mixed precision).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist

from stethoscope.data.features import FeatureSpec, InputSpec
from stethoscope.errors import ConfigError, DataError
from stethoscope.methods.base import Method, clip_arrays, register
from stethoscope.nn.flows import ConditionalFlowConfig, WSPFlow
from stethoscope.nn.wsp import WSPConfig, frame_segments

log = logging.getLogger(__name__)


@dataclass
class Config:
    """WSP-NFCDEE. Defaults: Table 7's **fan** row for the features (n_mels 128, n_fft 2048, n_frames 60); every other
    value is *ours* (the report gives none). ``--preset`` applies the machine type's Table 7 row
    (``presets/wsp_nfcdee_aithu2022.yaml``).

    Fields:
        n_mels: mel bands (Table 7). n_fft: STFT size in samples (Table 7). hop_length: samples between frames
            (512 = 32 ms at 16 kHz; ours).
        n_frames: frames per segment, one WSP vector each (Table 7's "frames"). segment_hop: frames between segment
            starts (None = n_frames: non-overlapping; ours).
        init_alpha: α at initialisation (β = 1 − α), in (0, 1); ours 0.5. unbiased_std: Bessel's correction in
            std_t (ours False). Passed to :class:`stethoscope.nn.wsp.WSPConfig`.
        flow ("maf" | "nsf"), transforms, hidden_features, context ("embedding" | "one_hot"), embedding_dim, bins,
            min_scale: passed to :class:`stethoscope.nn.flows.ConditionalFlowConfig` (its defaults, all ours).
        lr 1e-3, weight_decay 0, epochs 100, batch_size 64 (segments per step), clip_grad_norm 5 (0 = off):
            Adam (ours). val_fraction 0.1: training clips held out for the validation loss (ours). shuffle: True.
    Raises:
        ConfigError: a bad value; the message names the field (``wsp_nfcdee config: <field> = ...``).
    """

    n_mels: int = 128
    n_fft: int = 2048
    hop_length: int = 512
    n_frames: int = 60
    segment_hop: int | None = None
    init_alpha: float = 0.5
    unbiased_std: bool = False
    flow: str = "maf"
    transforms: int = 4
    hidden_features: tuple[int, ...] = (256, 256)
    context: str = "embedding"
    embedding_dim: int = 8
    bins: int = 8
    min_scale: float = 1e-6
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 100
    batch_size: int = 64
    clip_grad_norm: float = 5.0
    val_fraction: float = 0.1
    shuffle: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise ConfigError(f"wsp_nfcdee config: {name} = {getattr(self, name)!r}; expected {expected}")

        for name in ("n_mels", "n_fft", "hop_length", "n_frames", "batch_size"):
            if getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.segment_hop is not None and self.segment_hop < 1:
            bad("segment_hop", "None (= n_frames) or an integer >= 1")
        if self.unbiased_std and self.n_frames < 2:
            bad("n_frames", ">= 2 with unbiased_std (the std of one frame divides by 0)")
        if self.epochs < 0:
            bad("epochs", ">= 0")
        if not self.lr > 0:
            bad("lr", "> 0")
        for name in ("weight_decay", "clip_grad_norm"):
            if getattr(self, name) < 0:
                bad(name, ">= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")
        try:  # the blocks check their own fields (flow, context, sizes, init_alpha), named as here
            self.flow_config(1)
            self.wsp_config()
        except ConfigError as exc:
            raise ConfigError(f"wsp_nfcdee config: {exc}") from exc

    def flow_config(self, num_sections: int) -> ConditionalFlowConfig:
        """The flow's config for ``num_sections`` sections (features = n_mels)."""
        return ConditionalFlowConfig(
            features=self.n_mels, num_sections=num_sections, flow=self.flow, transforms=self.transforms,
            hidden_features=tuple(self.hidden_features), context=self.context, embedding_dim=self.embedding_dim,
            bins=self.bins, min_scale=self.min_scale)

    def wsp_config(self) -> WSPConfig:
        return WSPConfig(init_alpha=self.init_alpha, unbiased=self.unbiased_std)

    @property
    def hop(self) -> int:
        """Frames between segment starts."""
        return self.segment_hop or self.n_frames


@register
class WSPNFCDEE(Method):
    """WSP-NFCDEE (AITHU 2022 §3.2): see the module docstring.

    Examples (training batches): ``{"stats": float32 [N, 2, n_mels] (dB: mean_t and std_t of one segment),
    "group": int64 [N]}``. Scoring batches: ``{"log_mel": float32 [B, n_mels, frames] (dB), "group": int64 [B]}``;
    ``group`` may be left out only when the model knows at most one section.

    Raises (construction):
        ConfigError: an input log-mel whose mel count is not ``n_mels``.
    """

    name = "wsp_nfcdee"
    Config = Config
    default_scope = "per_machine_type"
    labels = ("group",)
    unknown_group = "error"

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        if self.feature_spec.n_mels != config.n_mels:
            raise ConfigError(f"wsp_nfcdee: the log-mel input has {self.feature_spec.n_mels} mels but the flow is "
                              f"built for n_mels = {config.n_mels}")
        self.model = WSPFlow(config.flow_config(self.num_classes), config.wsp_config())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        #: set by fit_statistics (or a checkpoint): the flow's standardization has been fitted
        self.standardized = False

    @classmethod
    def input_specs(cls, config: Config) -> dict[str, InputSpec]:
        """``{"log_mel": FeatureSpec(n_fft, hop_length, n_mels)}`` (dB, Slaney mel, power 2)."""
        return {"log_mel": FeatureSpec(n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels)}

    # -- data -------------------------------------------------------------------------------------------------
    def _segment_statistics(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log-mels [B, M, T] (equal T) → WSP statistics [B, S, 2, M] of their segments.

        Raises:
            DataError: T < n_frames (names both and the clip length in seconds).
        """
        c = self.config
        if log_mel.shape[2] < c.n_frames:
            spec = self.feature_spec
            raise DataError(
                f"wsp_nfcdee: a clip of {log_mel.shape[2]} frames (about {log_mel.shape[2] * spec.hop_length / spec.sample_rate:.2f} s) "
                f"is shorter than one segment of n_frames = {c.n_frames} frames; use longer clips or a smaller n_frames")
        seg = frame_segments(log_mel.float(), c.n_frames, c.hop)  # [B, S, M, n]
        b, s, m, n = seg.shape
        return self.model.wsp.statistics(seg.reshape(b * s, m, n)).reshape(b, s, 2, m)

    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Clip batch → ``{"stats": [N, 2, n_mels], "group": [N]}``, one row per segment (see the class docstring)."""
        stats, counts = [], []
        with torch.no_grad():
            for a in clip_arrays(clips["log_mel"]):
                st = self._segment_statistics(torch.from_numpy(a)[None])[0]
                stats.append(st.numpy())
                counts.append(st.shape[0])
        out = {"stats": np.concatenate(stats).astype(np.float32) if stats
               else np.zeros((0, 2, self.config.n_mels), np.float32)}
        if "group" in clips:
            out["group"] = np.repeat(np.asarray(clips["group"], dtype=np.int64).reshape(-1), counts)
        return out

    def _sections(self, batch: dict[str, Any], n: int) -> torch.Tensor:
        """The batch's section indices [n] (int64, on the device).

        Raises:
            DataError: no ``group`` while the model knows several sections, or an index outside the known sections
                (a section not seen in training; names the known ones).
        """
        if "group" not in batch:
            if self.num_classes > 1:
                raise DataError(f"wsp_nfcdee: p(x | section) needs each clip's section: the batch lacks 'group' "
                                f"(known sections: {self.vocab.group})")
            return torch.zeros(n, dtype=torch.long, device=self.device)
        g = torch.as_tensor(batch["group"]).long().reshape(-1).to(self.device)
        bad = (g < 0) | (g >= self.num_classes)
        if bool(bad.any()):
            raise DataError(f"wsp_nfcdee: section index {sorted(set(g[bad].tolist()))} is not a section seen in "
                            f"training (known: {self.vocab.group or ['one unnamed section']}); the flow has no "
                            "density for it")
        return g

    def fit_statistics(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Fit the flow's standardization: per-dimension mean and std (Bessel-corrected) of every training WSP vector
        pooled with the initial (α, β), summed over the ``torch.distributed`` workers when initialised, so every
        worker standardizes alike.

        Raises:
            DataError: fewer than two training segments, or non-finite statistics.
        """
        m = self.config.n_mels
        acc = torch.zeros(1 + 2 * m, dtype=torch.float64)  # count, Σy, Σy²
        with torch.no_grad():
            for b in batches:
                y = self.model.wsp.combine(b["stats"].to("cpu", torch.float32)).double()
                acc += torch.cat([y.new_tensor([y.shape[0]]), y.sum(dim=0), y.square().sum(dim=0)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            t = acc.to(dev)
            dist.all_reduce(t)
            acc = t.cpu()
        n = float(acc[0])
        if n < 2:
            raise DataError(f"wsp_nfcdee: {int(n)} training segment(s); the standardization needs at least 2")
        mean = acc[1:1 + m] / n
        var = ((acc[1 + m:] - n * mean.square()) / (n - 1)).clamp_min(0.0)
        if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(var).all())):
            raise DataError("wsp_nfcdee: the training log-mels give non-finite WSP statistics")
        self.model.density.set_standardization(mean.float(), var.sqrt().float())
        self.standardized = True
        log.info("wsp_nfcdee standardization from %d segments: mean %.3f dB, std %.3f dB (averaged over mels)",
                 int(n), float(mean.mean()), float(var.sqrt().mean()))

    def _require_standardized(self) -> None:
        if not self.standardized:
            raise RuntimeError("wsp_nfcdee: the flow's standardization is not fitted; call fit_statistics (or load "
                               "a checkpoint)")

    # -- training ---------------------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        stats = batch["stats"].to(self.device, torch.float32)
        return self.model.nll_of_statistics(stats, self._sections(batch, stats.shape[0])).mean()

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One Adam step on the mean NLL (nats) of the batch's segments. Returns ``loss``, ``alpha``."""
        self._require_standardized()
        if batch["stats"].shape[0] == 0:
            return {}
        self.model.train()
        loss = self._loss(batch)
        self.optimize(self.optimizer, loss, clip_grad_norm=self.config.clip_grad_norm or None)
        return {"loss": float(loss.detach()), "alpha": float(self.model.wsp.weights[0].detach())}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            return {"val_loss": float(self._loss(batch))}

    # -- inference --------------------------------------------------------------------------------------------
    def segment_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """NLL (nats) of each segment of each clip: [B, S]."""
        self._require_standardized()
        self.model.eval()
        with torch.no_grad():
            stats = self._segment_statistics(torch.as_tensor(batch["log_mel"]).to(self.device))  # [B, S, 2, M]
            b, s = stats.shape[:2]
            g = self._sections(batch, b).repeat_interleave(s)
            return self.model.nll_of_statistics(stats.reshape(b * s, 2, -1), g).reshape(b, s)

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """−log p(WSP | section) averaged over the clip's segments: float32 [B], higher = more anomalous.

        Raises:
            DataError: a clip shorter than n_frames, or a section not seen in training (see :meth:`_sections`).
        """
        return self.segment_scores(batch).mean(dim=1).float().cpu()

    def enable_mixed_precision(self, enabled: bool = True) -> None:
        """No-op: the flow's log-determinants run in float32 (ours)."""
        super().enable_mixed_precision(False)

    def extra_state(self) -> dict[str, Any]:
        return {"standardized": self.standardized}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.standardized = bool(state.get("standardized", False))


__all__ = ["Config", "WSPNFCDEE"]
