"""IMDN: interpolation mixture density networks (AITHU DCASE 2022 Task 2 technical report, §3.2), ``--method imdn``.

Sources: Liu et al. (Tsinghua), AITHU technical report for DCASE 2022 Task 2, §3.2 (IMDN), Eq. 3-4 (the loss),
Table 6 (IGNN), Table 8 (the per-machine-type features and networks: ``presets/imdn_aithu2022.yaml``); the
interpolation idea is IDNN (Suefusa et al., "Anomalous sound detection based on interpolation deep neural network",
ICASSP 2020). The networks and the loss are :mod:`stethoscope.nn.imdn` and :mod:`stethoscope.nn.mixture`.

- **Input**: one dB log-mel (``n_mels``, ``n_fft``, ``hop_length``; 16 kHz), standardised with the mean and standard
  deviation of every training log-mel value (*ours*: one scalar pair, so the NLL is in standardised units).
- **Model**: from a window of ``n_frames`` frames with its center frame (``n_frames // 2``) removed, the network
  (``network``: IGNN, LRCGNN or the simplified DeepFilterNet) predicts the center frame's distribution, a mixture of
  C diagonal Gaussians over the mel bins. Loss: the center frame's negative log-likelihood (Eq. 3-4, log-sum-exp).
- **Training** (all *ours*, the report gives none): a clip has far more windows than a step can afford (a 10 s clip
  at hop 512 has 313 frames, 214 windows of 100), so each training example is a segment of ``train_frames`` frames
  (a 10 s clip is one segment) and every step draws ``windows_per_clip`` windows at random positions from each
  segment of the batch (a new draw every step, from :meth:`Method.epoch_rng`). Adam, lr 1e-3, 50 epochs, batch 16
  segments (256 windows), gradient norm clipped at 1.0.
- **Score**: a clip's NLL averaged over its windows, one every ``score_hop`` frames (*ours*: 4; IDNN takes every
  window). ``localize`` gives, for every (mel bin, frame), the negative log marginal density of that bin under the
  mixture predicted for the window centered nearest to the frame ([B, n_mels, frames], nats).
- **Scope**: one model per machine type (the report trains one per machine type: Table 8's rows); the section is not
  an input (IDNN is unconditional), so ``per_id`` (a model per section) and ``all_machine_types`` also run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Iterable

import numpy as np
import torch

from stethoscope.data.features import FeatureSpec
from stethoscope.errors import ConfigError, DataError
from stethoscope.methods.base import Method, clip_arrays, crop_starts, register, standardisation
from stethoscope.nn.imdn import IMDNConfig, build_imdn_network, imdn_bin_nll, imdn_nll

log = logging.getLogger(__name__)

#: The IMDNConfig fields a Config passes through unchanged.
NETWORK_FIELDS = tuple(f.name for f in fields(IMDNConfig))


@dataclass(frozen=True)
class Config(IMDNConfig):
    """IMDN. Defaults: Table 8's bearing row (128 mels, n_fft 2048, 100 frames, LRCGNN) and Table 6's sizes; *ours*
    where the report gives no value. The network fields are :class:`stethoscope.nn.imdn.IMDNConfig`'s, inherited.

    Fields:
        n_mels 128, n_fft 2048 (samples), n_frames 100 (window length in frames, center included; >= 3 so the
            center has context on both sides), network "lrcgnn" ("ignn" | "lrcgnn" | "dfnet"): Table 8 per machine
            type (``--preset``). hop_length 512 samples (ours).
        n_components (C, ours 4), hidden 128, bottleneck 32, gru_layers 3 (Table 6), conv_kernel (ours 3),
            dfnet_width (ours 128), dfnet_emb_dim / dfnet_emb_layers (256, 1), dfnet_df_hidden / dfnet_df_layers
            (256, 3), min_scale (ours 1e-3): :class:`~stethoscope.nn.imdn.IMDNConfig` (docs/nn.md).
        train_frames: frames per training segment (ours 313: a 10 s clip at 16 kHz and hop 512 is one segment;
            longer clips are cut into several, a shorter one is one segment padded, its padding never sampled).
        windows_per_clip: windows drawn at random from each segment per training step (ours 16).
        score_hop: frames between the windows a clip is scored on (ours 4).
        lr 1e-3, weight_decay 0, epochs 50, batch_size 16 segments, clip_grad_norm 1.0 (0 = off), Adam (all ours).
        val_fraction: training clips held out for the validation loss (ours 0.1). shuffle: shuffle examples.
        score_chunk: windows per forward pass when scoring (memory only; no effect on the result).
    Raises:
        ConfigError: a bad value (the message names the field).
    """

    network: str = "lrcgnn"
    n_fft: int = 2048
    hop_length: int = 512
    train_frames: int = 313
    windows_per_clip: int = 16
    score_hop: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 16
    clip_grad_norm: float = 1.0
    val_fraction: float = 0.1
    shuffle: bool = True
    score_chunk: int = 1024

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise ConfigError(f"imdn config: {name} = {getattr(self, name)!r}; expected {expected}")

        try:
            super().__post_init__()
        except ConfigError as exc:
            raise ConfigError(f"imdn config: {str(exc).replace('IMDNConfig.', '')}") from None
        if self.n_frames < 3:
            bad("n_frames", "an integer >= 3 (a center frame with context on both sides)")
        if self.train_frames < self.n_frames:
            bad("train_frames", f">= n_frames = {self.n_frames} (a segment must hold a window)")
        for name in ("n_fft", "hop_length", "windows_per_clip", "score_hop", "batch_size", "score_chunk"):
            if getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.epochs < 0:
            bad("epochs", ">= 0")
        if not self.lr > 0:
            bad("lr", "> 0")
        if self.weight_decay < 0 or self.clip_grad_norm < 0:
            bad("weight_decay" if self.weight_decay < 0 else "clip_grad_norm", ">= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")

    def network_config(self) -> IMDNConfig:
        """The network's own :class:`IMDNConfig` (these fields without the method's)."""
        return IMDNConfig(**{name: getattr(self, name) for name in NETWORK_FIELDS})

    def feature_spec(self) -> FeatureSpec:
        """The dB log-mel: 16 kHz, ``n_fft``, ``hop_length``, ``n_mels`` (the rest: :class:`FeatureSpec` defaults)."""
        return FeatureSpec(n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels)


@register
class IMDN(Method):
    """IMDN on the Method contract (``name = "imdn"``); see the module docstring.

    Examples: ``{"x": float32 [N, n_mels, train_frames] (dB, zero-padded), "frames": int64 [N] (valid frames)}``.
    Scoring batches: ``{"log_mel": float32 [B, n_mels, frames]}`` with frames >= n_frames.
    """

    name = "imdn"
    Config = Config
    default_scope = "per_machine_type"
    labels = ()

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        if self.feature_spec.n_mels != config.n_mels:
            raise ConfigError(f"imdn: the log-mel input has {self.feature_spec.n_mels} mels but n_mels = "
                              f"{config.n_mels}")
        self.network = build_imdn_network(config.network_config())
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        #: standardisation of the log-mel (dB): identity until :meth:`fit_statistics` runs
        self.mean, self.std = 0.0, 1.0

    @classmethod
    def default_feature_spec(cls, config: Config) -> FeatureSpec:
        return config.feature_spec()

    # -- data -------------------------------------------------------------------------------------------------
    def _check_length(self, frames: int, where: str) -> None:
        n = self.config.n_frames
        if frames < n:
            raise DataError(f"imdn: a {where} clip has {frames} frames, fewer than one window (n_frames = {n}); "
                            "use longer clips or a smaller n_frames")

    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Clip batch → segments of ``train_frames`` frames: every ``train_frames`` frames plus one aligned to the
        clip's end (:func:`~stethoscope.methods.base.crop_starts`); a clip shorter than that is one zero-padded
        segment, and ``frames`` says how many of its frames are real.

        Raises:
            DataError: a clip shorter than ``n_frames`` (names both).
        """
        s, m = self.config.train_frames, self.config.n_mels
        xs, lengths = [], []
        for a in clip_arrays(clips["log_mel"]):
            t = a.shape[1]
            self._check_length(t, "training")
            for start in crop_starts(t, s, s):
                seg = np.zeros((m, s), np.float32)
                seg[:, : min(s, t)] = a[:, start:start + s]
                xs.append(seg)
                lengths.append(min(s, t))
        if not xs:
            return {"x": np.zeros((0, m, s), np.float32), "frames": np.zeros(0, np.int64)}
        return {"x": np.stack(xs), "frames": np.asarray(lengths, np.int64)}

    def fit_statistics(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Mean and standard deviation (dB) of every real (not padding) training log-mel value, the same on every
        ``torch.distributed`` worker (:func:`~stethoscope.methods.base.standardisation`).

        Raises:
            DataError: no training frame, non-finite values, or a constant log-mel.
        """
        def real_values(b: dict[str, torch.Tensor]) -> torch.Tensor:
            x = b["x"].detach().cpu()
            real = torch.arange(x.shape[2])[None, :] < b["frames"].cpu()[:, None]  # [N, S]
            return x.transpose(1, 2)[real]

        self.mean, self.std = standardisation((real_values(b) for b in batches), "imdn", self.device)
        log.info("imdn standardisation: mean %.3f dB, std %.3f dB", self.mean, self.std)

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.device, torch.float32) - self.mean) / self.std

    def sample_windows(self, batch: dict[str, torch.Tensor], rng: np.random.Generator) -> torch.Tensor:
        """``windows_per_clip`` windows from each segment, at start frames drawn uniformly from the positions where
        a whole window lies in its real frames: [N·windows_per_clip, n_mels, n_frames] (standardised)."""
        c = self.config
        x, frames = batch["x"], batch["frames"].cpu().numpy()
        high = frames - c.n_frames + 1  # start positions per segment
        starts = torch.from_numpy(rng.integers(0, high[:, None], size=(len(frames), c.windows_per_clip)))
        idx = (starts[:, :, None] + torch.arange(c.n_frames)).to(x.device)  # [N, K, n_frames]
        rows = torch.arange(x.shape[0], device=x.device)[:, None, None]
        win = x.transpose(1, 2)[rows, idx]  # [N, K, n_frames, M]
        return self._standardise(win.reshape(-1, c.n_frames, c.n_mels).transpose(1, 2))

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One Adam step on the mean NLL (Eq. 4, nats) of freshly drawn windows. Returns ``{"loss"}``."""
        windows = self.sample_windows(batch, self.epoch_rng())
        self.network.train()
        with self.autocast():
            loss = imdn_nll(self.network, windows).mean()
        self.optimize(self.optimizer, loss.float(), clip_grad_norm=self.config.clip_grad_norm or None)
        return {"loss": float(loss.detach())}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean NLL of windows drawn with a fixed seed (the same windows every epoch): ``{"val_loss"}``."""
        windows = self.sample_windows(batch, np.random.default_rng(0))
        self.network.eval()
        with torch.no_grad():
            return {"val_loss": float(imdn_nll(self.network, windows).mean())}

    # -- inference --------------------------------------------------------------------------------------------
    def _per_window(self, batch: dict[str, torch.Tensor], fn) -> torch.Tensor:
        """``fn(network, standardised log-mel, score_hop)`` on the clips of a scoring batch, a few clips at a time
        (at most ``score_chunk`` windows per pass), concatenated over clips: [B, V, ...].

        Raises:
            DataError: no ``log_mel`` in the batch, or clips shorter than ``n_frames``.
        """
        if "log_mel" not in batch:
            raise DataError("imdn reads 'log_mel': the scoring batch needs it")
        c = self.config
        x = torch.as_tensor(batch["log_mel"])
        if x.ndim != 3 or x.shape[1] != c.n_mels:
            raise DataError(f"imdn: log_mel must be [B, {c.n_mels}, frames], got shape {tuple(x.shape)}")
        self._check_length(x.shape[2], "scored")
        per_clip = (x.shape[2] - c.n_frames) // c.score_hop + 1
        step = max(1, c.score_chunk // per_clip)
        self.network.eval()
        with torch.no_grad():
            return torch.cat([fn(self.network, self._standardise(part), c.score_hop) for part in x.split(step)])

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean NLL (nats, standardised units) over each clip's windows, every ``score_hop`` frames: [B] float32
        on the CPU. Raises DataError as :meth:`_per_window`."""
        return self._per_window(batch, imdn_nll).mean(dim=1).float().cpu()

    def localize(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Anomaly map [B, n_mels, frames] (nats): cell (d, t) is −log of mel bin d's marginal density
        (:func:`stethoscope.nn.imdn.imdn_bin_nll`) under the mixture predicted for the window whose center frame
        is nearest to t (the first and last frames, which no window centers on, take the nearest window's).
        Raises DataError as :meth:`_per_window`."""
        c = self.config
        maps = self._per_window(batch, imdn_bin_nll)  # [B, V, M]
        t = torch.as_tensor(batch["log_mel"]).shape[2]
        nearest = torch.round((torch.arange(t, dtype=torch.float32) - c.n_frames // 2) / c.score_hop)
        nearest = nearest.clamp(0, maps.shape[1] - 1).long()
        return maps[:, nearest.to(maps.device)].transpose(1, 2).float().cpu()

    # -- state ------------------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"mean": float(self.mean), "std": float(self.std)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.mean = float(state.get("mean", 0.0))
        self.std = float(state.get("std", 1.0))


__all__ = ["Config", "IMDN"]
