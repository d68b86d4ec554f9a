"""Interpolation mixture density networks (IMDN; AITHU DCASE 2022 technical report, §3.2, Table 6, Eq. 3-4).

IDNN-style interpolation (Suefusa et al., ICASSP 2020): from a window of ``n_frames`` consecutive log-mel frames with
its center frame removed, predict the center frame. IMDN predicts its *distribution*, a mixture of C diagonal
Gaussians over the M mel bins (:mod:`stethoscope.nn.mixture`); the loss is the center frame's negative
log-likelihood under it (Eq. 3-4), and a clip's anomaly score is that NLL averaged over its windows.

Layout: :func:`interpolation_windows` cuts a clip's log-mel [B, M, T] into windows; a network maps the context
frames [N, L, M] (L = n_frames − 1, frames in time order, the center left out) to :class:`MixtureParams` for the
center frame [N, M]. Every network is a per-frame *body* [N, L, M] → [N, L, W] followed by
:class:`stethoscope.nn.mixture.MixtureHead` over the flattened [N, L·W]:

- ``"ignn"`` (:class:`IGNN`, Table 6): FC(M→128), 3×GRU(128,128), FC(128→32), FC(32→128), 3×GRU(128,128),
  then FC((n_frames−1)·128 → 2·C·M) (plus our C-way weight map, see MixtureHead).
- ``"lrcgnn"`` (:class:`LRCGNN`): IGNN with a Conv1d over time after its first FC.
- ``"dfnet"`` (:class:`DFNet`): a simplified DeepFilterNet DF path (Schröter et al., "DeepFilterNet: a low complexity
  speech enhancement framework for full-band audio based on deep filtering", ICASSP 2022): its two convolution
  layers replaced by fully connected ones, and one more FC to match the mel bins.

Sizes the report does not give are fields of :class:`IMDNConfig`, marked *ours*; docs/nn.md lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive
from stethoscope.nn.mixture import MixtureHead, MixtureParams, diagonal_gmm_marginal_nll, diagonal_gmm_nll

NETWORKS = ("ignn", "lrcgnn", "dfnet")


@dataclass(frozen=True)
class IMDNConfig:
    """Sizes of the IMDN networks.

    Fields:
        network: "ignn", "lrcgnn" or "dfnet" (AITHU report Table 8 picks one per machine type).
        n_mels: M, mel bins of the input and of the predicted frame (Table 7: 128 or 64).
        n_frames: window length in frames, center included (Table 7's frames: 100, 60 or 30). The center is frame
            ``n_frames // 2``: for an even window, the later of the two middle frames (*ours*; the report does
            not say). The networks see L = n_frames − 1 context frames.
        n_components: C, Gaussians in the mixture. *Ours*: 4 (the report does not give C here).
        hidden: width of IGNN / LRCGNN's FCs and GRUs, 128 (Table 6).
        bottleneck: IGNN's FC(128→32) width, 32 (Table 6).
        gru_layers: GRUs in each of IGNN's two stacks, 3 (Table 6).
        conv_kernel: LRCGNN's Conv1d kernel over time (frames). *Ours*: 3 (padding keeps L frames).
        dfnet_width: DFNet's FC width, in place of its convolutions' channels. *Ours*: 128 (as IGNN).
        dfnet_emb_dim / dfnet_emb_layers: DFNet's embedding FC and GRU: 256, 1 layer (DeepFilterNet's defaults
            emb_hidden_dim / emb_num_layers in its public code).
        dfnet_df_hidden / dfnet_df_layers: DFNet's DF-decoder GRU: 256, 3 layers (DeepFilterNet's df_hidden_dim /
            df_num_layers defaults).
        min_scale: floor on every σ (*ours*, 1e-3), see :class:`stethoscope.nn.mixture.MixtureHead`.

    Raises:
        ConfigError: unknown network, a size < 1, n_frames < 2, an even conv_kernel, or min_scale <= 0.
    """

    network: Literal["ignn", "lrcgnn", "dfnet"] = "ignn"
    n_mels: int = 128
    n_frames: int = 100
    n_components: int = 4
    hidden: int = 128
    bottleneck: int = 32
    gru_layers: int = 3
    conv_kernel: int = 3
    dfnet_width: int = 128
    dfnet_emb_dim: int = 256
    dfnet_emb_layers: int = 1
    dfnet_df_hidden: int = 256
    dfnet_df_layers: int = 3
    min_scale: float = 1e-3

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ConfigError(f"IMDNConfig.network = {self.network!r}; expected one of {list(NETWORKS)}")
        require_positive(
            "IMDNConfig", n_mels=self.n_mels, n_components=self.n_components, hidden=self.hidden,
            bottleneck=self.bottleneck, gru_layers=self.gru_layers, conv_kernel=self.conv_kernel,
            dfnet_width=self.dfnet_width, dfnet_emb_dim=self.dfnet_emb_dim, dfnet_emb_layers=self.dfnet_emb_layers,
            dfnet_df_hidden=self.dfnet_df_hidden, dfnet_df_layers=self.dfnet_df_layers,
        )
        if self.n_frames < 2:
            raise ConfigError(f"IMDNConfig.n_frames = {self.n_frames}; expected >= 2 (a center and its context)")
        if self.conv_kernel % 2 == 0:
            raise ConfigError(f"IMDNConfig.conv_kernel = {self.conv_kernel}; expected odd (keeps the frame count)")
        if self.min_scale <= 0:
            raise ConfigError(f"IMDNConfig.min_scale = {self.min_scale}; expected > 0")

    @property
    def context_frames(self) -> int:
        """L = n_frames − 1, the frames a network sees."""
        return self.n_frames - 1

    @property
    def center(self) -> int:
        """Index of the predicted frame inside a window: n_frames // 2."""
        return self.n_frames // 2


def interpolation_windows(
    log_mel: torch.Tensor, n_frames: int, hop: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut log-mels into interpolation windows.

    Args:
        log_mel: [B, M, T] (frames on the last axis, as the feature store holds them).
        n_frames: window length in frames, center included; the center is frame ``n_frames // 2``.
        hop: frames between window starts (*ours*: 1, every window, as IDNN).
    Returns:
        (context [B, V, n_frames − 1, M], center [B, V, M]), V = (T − n_frames) // hop + 1; context frames in time
        order without the center. ``context[b, v, j]`` is frame ``v·hop + j`` (j < center) or ``v·hop + j + 1``.
    Raises:
        ValueError: log_mel not 3-D, n_frames < 2, hop < 1, or fewer than n_frames frames.
    """
    if log_mel.ndim != 3:
        raise ValueError(f"log_mel must be [B, M, T], got shape {tuple(log_mel.shape)}")
    if n_frames < 2 or hop < 1:
        raise ValueError(f"n_frames = {n_frames}, hop = {hop}; expected n_frames >= 2 and hop >= 1")
    t = log_mel.shape[2]
    if t < n_frames:
        raise ValueError(f"log-mel has {t} frames; an interpolation window needs n_frames = {n_frames}")
    win = log_mel.unfold(2, n_frames, hop).permute(0, 2, 3, 1)  # [B, V, n_frames, M]
    c = n_frames // 2
    context = torch.cat([win[:, :, :c], win[:, :, c + 1 :]], dim=2)
    return context, win[:, :, c]


class _FramewiseGRUs(nn.Module):
    """[N, L, in] → [N, L, out]: FC(in→hidden) + ReLU, then ``layers`` stacked GRU(hidden, hidden) (batch_first)."""

    def __init__(self, in_features: int, hidden: int, layers: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor, between: nn.Module | None = None) -> torch.Tensor:
        h = self.fc(x)
        if between is not None:
            h = between(h)
        return self.gru(h)[0]


class _Conv1dOverTime(nn.Module):
    """[N, L, C] → [N, L, C]: Conv1d(C, C, kernel, 'same' padding) over the frames, then ReLU (LRCGNN)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)


class IMDNNetwork(nn.Module):
    """Base: context frames [N, L, M] → :class:`MixtureParams` of the center frame (C components over M bins).

    Subclasses define ``body`` ([N, L, M] → [N, L, W]) and ``width`` W; the head is a
    :class:`MixtureHead` over the flattened [N, L·W].

    Raises (forward):
        ValueError: input not [N, n_frames − 1, n_mels] (the message gives both shapes).
    """

    width: int

    def __init__(self, config: IMDNConfig):
        super().__init__()
        self.config = config

    def _make_head(self) -> None:
        c = self.config
        self.head = MixtureHead(c.context_frames * self.width, c.n_components, c.n_mels, c.min_scale)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, context: torch.Tensor) -> MixtureParams:
        c = self.config
        expected = (c.context_frames, c.n_mels)
        if context.ndim != 3 or tuple(context.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects context frames [N, {expected[0]}, {expected[1]}] "
                f"(n_frames − 1, n_mels), got shape {tuple(context.shape)}"
            )
        h = self.body(context)
        return self.head(h.reshape(h.shape[0], -1))


class IGNN(IMDNNetwork):
    """Interpolation GRU network (AITHU report, Table 6), [N, L, M] → MixtureParams.

    Body: FC(M→128) + ReLU, 3×GRU(128,128), FC(128→32) + ReLU, FC(32→128) + ReLU, 3×GRU(128,128) → [N, L, 128];
    head over [N, L·128]. The activations are *ours* (Table 6 lists the layers only); GRUs are unidirectional.
    """

    def __init__(self, config: IMDNConfig):
        super().__init__(config)
        c = config
        self.width = c.hidden
        self.stack1 = _FramewiseGRUs(c.n_mels, c.hidden, c.gru_layers)
        self.squeeze = nn.Sequential(nn.Linear(c.hidden, c.bottleneck), nn.ReLU())
        self.stack2 = _FramewiseGRUs(c.bottleneck, c.hidden, c.gru_layers)
        self._make_head()

    def first_stack(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack1(x)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack2(self.squeeze(self.first_stack(x)))


class LRCGNN(IGNN):
    """IGNN with a Conv1d over the frames after its first FC (AITHU report §3.2), [N, L, M] → MixtureParams.

    The conv: Conv1d(128, 128, conv_kernel) with 'same' padding, then ReLU (*ours*: kernel 3 and the ReLU).
    """

    def __init__(self, config: IMDNConfig):
        super().__init__(config)
        self.conv = _Conv1dOverTime(config.hidden, config.conv_kernel)

    def first_stack(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack1(x, between=self.conv)


class DFNet(IMDNNetwork):
    """A simplified DeepFilterNet (Schröter et al., ICASSP 2022) as an IMDN body, [N, L, M] → MixtureParams.

    DeepFilterNet's DF path, frame by frame, with its two convolution layers (df_conv0, df_conv1) replaced by fully
    connected ones (AITHU report §3.2); its 1×1 pathway conv (df_convp, the U-Net-like skip from the first encoder
    layer to the decoder output) becomes a FC too, and one more FC maps to the M mel bins:

        c0  = ReLU(FC(M → W))                 (df_conv0 → FC)
        c1  = ReLU(FC(W → W))                 (df_conv1 → FC)
        e   = GRU_emb(FC(W → E))              (df_fc_emb; emb_gru, E = 256, 1 layer)
        d   = tanh(FC(H → W)(GRU_df(e)))      (df_gru, H = 256, 3 layers; df_fc_out with its tanh)
        out = FC(W → M)(d + FC(W → W)(c0))    (pathway skip; the extra FC to the mel bins) → [N, L, M]

    The ERB-gain branch (ERB encoder/decoder, masks) and the deep-filter operation itself are left out: our input is
    already a log-mel and the output is a mixture, not a filter. W = ``dfnet_width`` (*ours*, 128).
    """

    def __init__(self, config: IMDNConfig):
        super().__init__(config)
        c = config
        w, e, h = c.dfnet_width, c.dfnet_emb_dim, c.dfnet_df_hidden
        self.width = c.n_mels
        self.fc0 = nn.Sequential(nn.Linear(c.n_mels, w), nn.ReLU())
        self.fc1 = nn.Sequential(nn.Linear(w, w), nn.ReLU())
        self.fc_emb = nn.Linear(w, e)
        self.emb_gru = nn.GRU(e, e, num_layers=c.dfnet_emb_layers, batch_first=True)
        self.df_gru = nn.GRU(e, h, num_layers=c.dfnet_df_layers, batch_first=True)
        self.fc_out = nn.Sequential(nn.Linear(h, w), nn.Tanh())
        self.pathway = nn.Linear(w, w)
        self.to_mels = nn.Linear(w, c.n_mels)
        self._make_head()

    def body(self, x: torch.Tensor) -> torch.Tensor:
        c0 = self.fc0(x)
        emb = self.emb_gru(self.fc_emb(self.fc1(c0)))[0]
        d = self.fc_out(self.df_gru(emb)[0])
        return self.to_mels(d + self.pathway(c0))


def build_imdn_network(config: IMDNConfig) -> IMDNNetwork:
    """The network ``config.network`` names: IGNN, LRCGNN or DFNet."""
    return {"ignn": IGNN, "lrcgnn": LRCGNN, "dfnet": DFNet}[config.network](config)


def _center_frames_and_mixtures(
    network: IMDNNetwork, log_mel: torch.Tensor, hop: int
) -> tuple[torch.Tensor, MixtureParams, int, int]:
    """Windows of ``log_mel`` [B, M, T] → (center frames [B·V, M], the network's mixtures for them, B, V)."""
    context, center = interpolation_windows(log_mel, network.config.n_frames, hop)
    b, v = center.shape[:2]
    params = network(context.reshape(b * v, *context.shape[2:]))
    return center.reshape(b * v, -1), params, b, v


def imdn_nll(network: IMDNNetwork, log_mel: torch.Tensor, hop: int = 1) -> torch.Tensor:
    """Per-window IMDN loss (Eq. 4) of whole clips: log_mel [B, M, T] → NLL [B, V] (nats), V windows per clip.

    ``.mean()`` is the training loss; ``.mean(dim=1)`` is each clip's anomaly score (the NLL averaged over its
    windows). Raises ValueError as :func:`interpolation_windows` and the network.
    """
    center, params, b, v = _center_frames_and_mixtures(network, log_mel, hop)
    return diagonal_gmm_nll(center, params).view(b, v)


def imdn_bin_nll(network: IMDNNetwork, log_mel: torch.Tensor, hop: int = 1) -> torch.Tensor:
    """Per-window, per-mel-bin negative log marginal density of the center frame: log_mel [B, M, T] → [B, V, M]
    (nats; :func:`stethoscope.nn.mixture.diagonal_gmm_marginal_nll`), an anomaly map over the mel bins of each
    window's center frame ``v·hop + n_frames // 2``. Raises ValueError as :func:`imdn_nll`.
    """
    center, params, b, v = _center_frames_and_mixtures(network, log_mel, hop)
    return diagonal_gmm_marginal_nll(center, params).view(b, v, -1)
