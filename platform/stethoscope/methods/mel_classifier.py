"""A small log-mel machine-ID / section classifier: the simplest self-supervised ASD method, and the platform's
reference embedding method.

Idea (Giri et al., "Self-supervised classification for detecting anomalous sounds", DCASE 2020 Workshop; the same idea
underlies STgram-MFN and the AITHU section classifiers): a network learns to tell the groups (machine IDs / sections)
of all machine types apart from normal clips only; a clip whose own group the network doubts is anomalous.

- Input: log-mel (dB), n_fft 1024, hop 512, ``n_mels`` (64) — cut into crops of ``crop_frames`` frames (hop
  ``crop_hop``); a clip's output is the mean over its crops.
- Network (ours, deliberately small): 3 × [Conv2d 3×3 → BatchNorm → ReLU → MaxPool 2×2] with ``channels`` (16, 32, 64),
  global average pooling → a ``embed_dim`` (32) embedding → a linear head over the groups of the vocabulary.
- Loss: cross-entropy over groups (Adam, ``lr`` 1e-3, cosine LR schedule over ``epochs``).
- Scores: ``embed`` = the clip's mean crop embedding; by default (``detectors`` = KNN, LOF, GMM, SOS) the pipeline's
  detector stage fits each candidate per group on the training embeddings and picks one per machine type on the
  validation clips. With ``detectors`` empty, ``score`` = −log p(y | x), the softmax posterior of the clip's own group
  (machine_id / section from its metadata).
- Scope: one model over all machine types (``default_scope = "all_machine_types"``: its classes are the
  (machine_type, group) pairs of every type, ``fan/id_00`` ...), or one per machine type (``--scope
  per_machine_type``); never per_id (one class). With one group only, −log p is constant and the detector stage's
  candidates are what can rank clips.
Every default here is ours (no paper's table): it exists to exercise the contract end to end on small data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.data.features import FeatureSpec
from stethoscope.errors import ConfigError, DataError
from stethoscope.methods.base import Method, clip_arrays, register


@dataclass
class Config:
    """Every value is ours (see the module docstring)."""

    n_mels: int = 64
    crop_frames: int = 64
    crop_hop: int = 32
    channels: tuple[int, int, int] = (16, 32, 64)
    embed_dim: int = 32
    lr: float = 1e-3
    epochs: int = 20
    batch_size: int = 64
    val_fraction: float = 0.1
    scheduler: str = "cosine"
    clip_grad_norm: float = 5.0
    shuffle: bool = True
    #: The detector stage's candidates on this method's embeddings (``embed()``), chosen per machine type on the
    #: validation clips; empty → the score is −log p(group). Names: :func:`stethoscope.detectors.detector_names`.
    detectors: tuple[str, ...] = ("knn", "lof", "gmm", "sos")

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> None:
            raise ConfigError(f"mel_classifier config: {field} = {getattr(self, field)!r}; expected {expected}")

        for field in ("n_mels", "crop_frames", "crop_hop", "embed_dim", "batch_size"):
            if getattr(self, field) < 1:
                bad(field, "an integer >= 1")
        if self.crop_frames < 8 or self.n_mels < 8:
            bad("crop_frames" if self.crop_frames < 8 else "n_mels", ">= 8 (three 2×2 poolings)")
        if len(self.channels) != 3 or min(self.channels) < 1:
            bad("channels", "three positive integers")
        if self.epochs < 0:
            bad("epochs", ">= 0")
        if not self.lr > 0:
            bad("lr", "> 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")
        if self.scheduler not in ("cosine", "step", "none"):
            bad("scheduler", "'cosine', 'step' or 'none'")


class CropNet(nn.Module):
    """[N, 1, n_mels, crop_frames] → (embedding [N, embed_dim], logits [N, num_classes])."""

    def __init__(self, channels: tuple[int, int, int], embed_dim: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Linear(c_in, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x).mean(dim=(2, 3))
        e = self.embed(h)
        return e, self.head(F.relu(e))


@register
class MelClassifier(Method):
    """Group classifier over log-mel crops (``name = "mel_classifier"``); see the module docstring.

    Examples: ``{"x": float32 [N, 1, n_mels, crop_frames], "group": int64 [N]}``. Scoring batches:
    ``{"log_mel": [B, n_mels, frames], "group": [B]}``.
    """

    name = "mel_classifier"
    Config = Config
    default_scope = "all_machine_types"
    scopes = ("per_machine_type", "all_machine_types")
    scope_note = "a classifier over groups needs several groups to tell apart; a per_id model would have one class"
    labels = ("group",)

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        self.net = CropNet(tuple(config.channels), config.embed_dim, self.num_classes)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.lr_schedule = self.make_scheduler(self.optimizer, config.scheduler)

    @classmethod
    def default_feature_spec(cls, config: Config) -> FeatureSpec:
        """16 kHz, n_fft 1024, hop 512, ``config.n_mels`` mels, dB (the DCASE 2020 baseline's front end)."""
        return FeatureSpec(n_mels=config.n_mels)

    # -- data -------------------------------------------------------------------------------------------------
    def _crops(self, log_mel: np.ndarray) -> np.ndarray:
        """[n_mels, T] → [P, 1, n_mels, crop_frames]: crops every ``crop_hop`` frames (a short clip is tiled)."""
        f, hop = self.config.crop_frames, self.config.crop_hop
        t = log_mel.shape[1]
        if t == 0:
            raise DataError("a log-mel clip has 0 frames")
        if t < f:
            log_mel = np.tile(log_mel, (1, -(-f // t)))[:, :f]
            t = f
        starts = range(0, t - f + 1, hop)
        return np.stack([log_mel[None, :, s:s + f] for s in starts]).astype(np.float32)

    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops = [self._crops(a) for a in clip_arrays(clips["log_mel"])]
        m, f = self.feature_spec.n_mels, self.config.crop_frames
        if not crops:
            return {"x": np.zeros((0, 1, m, f), np.float32), "group": np.zeros(0, np.int64)}
        groups = np.asarray(clips["group"], dtype=np.int64).reshape(-1)
        return {"x": np.concatenate(crops), "group": np.repeat(groups, [c.shape[0] for c in crops])}

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if batch["x"].shape[0] < 2:  # BatchNorm needs two crops
            return {}
        self.net.train()
        with self.autocast():
            _, logits = self.net(batch["x"])
            loss = F.cross_entropy(logits.float(), batch["group"])
        self.optimize(self.optimizer, loss, clip_grad_norm=self.config.clip_grad_norm)
        acc = (logits.argmax(1) == batch["group"]).float().mean()
        return {"loss": float(loss.detach()), "accuracy": float(acc)}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.net.eval()
        with torch.no_grad():
            _, logits = self.net(batch["x"])
            return {"val_loss": float(F.cross_entropy(logits, batch["group"])),
                    "val_accuracy": float((logits.argmax(1) == batch["group"]).float().mean())}

    # -- inference --------------------------------------------------------------------------------------------
    def _clip_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean crop embedding [B, D] and mean crop log-softmax [B, C] of each clip."""
        self.net.eval()
        log_mel = torch.as_tensor(batch["log_mel"]).detach().cpu().numpy()
        crops = [self._crops(a) for a in log_mel]
        counts = [c.shape[0] for c in crops]
        x = torch.from_numpy(np.concatenate(crops)).to(self.device)
        with torch.no_grad():
            e, logits = self.net(x)
        logp = F.log_softmax(logits, dim=1)
        idx = torch.repeat_interleave(torch.arange(len(counts), device=self.device),
                                      torch.tensor(counts, device=self.device))
        n = torch.tensor(counts, device=self.device, dtype=e.dtype)[:, None]
        emb = torch.zeros(len(counts), e.shape[1], device=self.device).index_add_(0, idx, e) / n
        lp = torch.zeros(len(counts), logp.shape[1], device=self.device).index_add_(0, idx, logp) / n
        return emb, lp

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """−log p(y | x) of each clip's own group (mean log-softmax over its crops). Needs ``group`` [B]."""
        if "group" not in batch:
            raise DataError("mel_classifier scores a clip against its own group: the batch needs 'group'")
        _, lp = self._clip_outputs(batch)
        g = torch.as_tensor(batch["group"], device=self.device).long()
        return (-lp.gather(1, g[:, None])[:, 0]).float().cpu()

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The clip embedding [B, embed_dim]: the mean over its crops."""
        emb, _ = self._clip_outputs(batch)
        return emb.float().cpu()
