"""Fully connected building blocks for the GAN family over stacked log-mel frame vectors.

Layout (de Oliveira Neto, Guedes & Figueiredo, "Anomaly Detection in Sound Activity with Generative Adversarial
Network Models", 2024, §3.2; the issue calls it "JBCS 2024"): every network is a stack of hidden layers
``Linear → BatchNorm1d → ReLU (→ Dropout)`` of width ``hidden_dim`` (128) followed by a head, over 640-dim vectors
(5 log-mel frames × 128 mels, DCASE 2020 baseline layout, see :func:`stethoscope.data.features.frame_stack`). In the
paper every layer except the decoder's output uses BatchNorm + ReLU, the 8-unit latent layer included: an encoder
built with ``head_norm=True`` ends in ``Linear → BatchNorm1d → ReLU``; a decoder's output is always linear.

- :class:`FCEncoder`: [N, D] → [N, latent_dim] (GANomaly's G_E and E, EGBAD's E, Skip-GANomaly's encoder half).
- :class:`FCDecoder`: [N, latent_dim] → [N, D], linear output; optional U-Net-style skip inputs (Skip-GANomaly).
- :class:`FCDiscriminator`: [N, D] → real/fake logit [N] and its last hidden layer [N, hidden_dim] (the feature
  extractor f of feature matching, Salimans et al. 2016 as used by GANomaly, Akçay et al. 2018).
- :func:`init_weights`: "glorot_uniform" (Keras' default) or "normal" (N(0, 0.02), Akçay et al.'s ``weights_init``).
- :func:`frame_vectors` / :func:`vectors_to_cells`: clip log-mel [B, n_mels, frames] ⇄ frame vectors, for scoring
  and per-cell anomaly maps.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

#: Weight initialisation schemes (JBCS 2024 Table 3 searches both).
INIT_SCHEMES = ("glorot_uniform", "normal")
#: Standard deviation of the "normal" scheme: N(0, 0.02) for Linear weights, N(1, 0.02) for BatchNorm scales, as in
#: the reference GANomaly / Skip-GANomaly code (Akçay et al. 2018, 2019, ``weights_init``).
NORMAL_INIT_STD = 0.02


def fc_block(in_dim: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """One hidden layer: ``Linear(in_dim, out_dim) → BatchNorm1d → ReLU`` (→ ``Dropout(dropout)`` if > 0).

    [N, in_dim] → [N, out_dim]. BatchNorm needs N ≥ 2 in training mode.
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if int(value) < 1:
            raise ValueError(f"{name} = {value}; expected >= 1")


class FCEncoder(nn.Module):
    """[N, input_dim] → [N, output_dim]: ``num_hidden`` hidden layers of ``hidden_dim``, then a linear head.

    Args:
        input_dim: vector length (640 = 5 frames × 128 mels).
        hidden_dim: width of every hidden layer (128 in JBCS 2024 §3.2.2).
        num_hidden: number of hidden layers (3 or 4, JBCS 2024 Tables 4/5).
        output_dim: latent size (8) or any head width.
        dropout: dropout probability after each hidden ReLU (0 = none).
        head_norm: the head is ``Linear → BatchNorm1d → ReLU`` (JBCS 2024 §3.2: the latent layer too) instead of a
            plain Linear (needs N ≥ 2 in training mode; outputs are ≥ 0).
    Raises:
        ValueError: a dimension < 1 or dropout outside [0, 1).
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_hidden: int, output_dim: int, dropout: float = 0.0,
                 head_norm: bool = False):
        super().__init__()
        _check_dims(input_dim=input_dim, hidden_dim=hidden_dim, num_hidden=num_hidden, output_dim=output_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout = {dropout}; expected in [0, 1)")
        dims = [input_dim] + [hidden_dim] * num_hidden
        self.blocks = nn.ModuleList(fc_block(a, b, dropout) for a, b in zip(dims[:-1], dims[1:]))
        self.head = (nn.Sequential(nn.Linear(hidden_dim, output_dim), nn.BatchNorm1d(output_dim), nn.ReLU())
                     if head_norm else nn.Linear(hidden_dim, output_dim))

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [N, input_dim] → (head output [N, output_dim], hidden outputs, each [N, hidden_dim], input side first)."""
        hidden = []
        h = x
        for block in self.blocks:
            h = block(h)
            hidden.append(h)
        return self.head(h), hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hidden(x)[0]


class FCDecoder(nn.Module):
    """[N, latent_dim] → [N, output_dim]: the mirror of :class:`FCEncoder`, with a linear output layer.

    With ``skip_dims`` (Skip-GANomaly, Akçay et al. 2019), the output of decoder hidden layer ``j`` (``j = 0`` next
    to the latent) is concatenated with ``skips[j]`` before it feeds the next layer, so that layer's input is
    ``hidden_dim + skip_dims[j]`` wide (U-Net-style concatenation, Ronneberger et al. 2015).

    Args:
        latent_dim, hidden_dim, num_hidden, output_dim, dropout: as :class:`FCEncoder`.
        skip_dims: None (plain decoder) or ``num_hidden`` widths, one per decoder hidden layer.
    Raises:
        ValueError: a dimension < 1, or ``len(skip_dims) != num_hidden``.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int,
        num_hidden: int,
        output_dim: int,
        dropout: float = 0.0,
        skip_dims: Sequence[int] | None = None,
    ):
        super().__init__()
        _check_dims(latent_dim=latent_dim, hidden_dim=hidden_dim, num_hidden=num_hidden, output_dim=output_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout = {dropout}; expected in [0, 1)")
        if skip_dims is not None and len(skip_dims) != num_hidden:
            raise ValueError(f"skip_dims has {len(skip_dims)} entries; expected one per hidden layer ({num_hidden})")
        self.skip_dims = tuple(int(d) for d in skip_dims) if skip_dims is not None else None
        extra = self.skip_dims or (0,) * num_hidden
        in_dims = [latent_dim] + [hidden_dim + e for e in extra[:-1]]
        self.blocks = nn.ModuleList(fc_block(d, hidden_dim, dropout) for d in in_dims)
        self.head = nn.Linear(hidden_dim + extra[-1], output_dim)

    def forward(self, z: torch.Tensor, skips: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """z [N, latent_dim] (+ ``skips[j]`` [N, skip_dims[j]]) → [N, output_dim].

        Raises:
            ValueError: skips given to a plain decoder, missing for a skip decoder, or of the wrong count.
        """
        if (skips is None) != (self.skip_dims is None):
            raise ValueError("skips must be given exactly when the decoder was built with skip_dims")
        if skips is not None and len(skips) != len(self.blocks):
            raise ValueError(f"got {len(skips)} skip tensors; expected {len(self.blocks)}")
        h = z
        for j, block in enumerate(self.blocks):
            h = block(h)
            if skips is not None:
                h = torch.cat([h, skips[j]], dim=1)
        return self.head(h)


class FCDiscriminator(nn.Module):
    """[N, input_dim] → (real/fake logit [N], features [N, hidden_dim]).

    An :class:`FCEncoder` with a 1-unit head; ``features`` is the last hidden layer, the feature extractor f used by
    feature matching (GANomaly's L_adv, Akçay et al. 2018 §3) and Skip-GANomaly's score (Akçay et al. 2019 §3).
    Logits, not probabilities: pair with ``binary_cross_entropy_with_logits``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.encoder = FCEncoder(input_dim, hidden_dim, num_hidden, 1, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, hidden = self.encoder.forward_with_hidden(x)
        return logit.squeeze(1), hidden[-1]


def init_weights(module: nn.Module, scheme: str) -> nn.Module:
    """Initialise every Linear and BatchNorm1d inside ``module`` in place; returns ``module``.

    - "glorot_uniform": Linear weights Glorot/Xavier uniform (Glorot & Bengio 2010; Keras' default), biases 0;
      BatchNorm scale 1, shift 0.
    - "normal": Linear weights N(0, 0.02²), biases 0; BatchNorm scale N(1, 0.02²), shift 0 (Akçay et al. 2018).
    Uses torch's global RNG (seed it for reproducible runs).

    Raises:
        ValueError: unknown scheme.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme {scheme!r}; expected one of {list(INIT_SCHEMES)}")
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if scheme == "glorot_uniform":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, NORMAL_INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            if scheme == "glorot_uniform":
                nn.init.ones_(m.weight)
            else:
                nn.init.normal_(m.weight, 1.0, NORMAL_INIT_STD)
            nn.init.zeros_(m.bias)
    return module


def frame_vectors(log_mel: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Clip log-mels [B, n_mels, frames] → frame vectors [B, V, n_frames · n_mels], V = frames − n_frames + 1.

    Row ``v`` of clip ``b`` equals ``frame_stack(log_mel[b], n_frames)[v]`` (frame-major: all mels of frame v, then
    frame v+1, ...), the DCASE 2020 baseline layout.

    Raises:
        ValueError: ``log_mel`` is not 3-D or has fewer than ``n_frames`` frames.
    """
    if log_mel.ndim != 3:
        raise ValueError(f"log_mel must be [B, n_mels, frames], got shape {tuple(log_mel.shape)}")
    b, m, t = log_mel.shape
    if t < n_frames:
        raise ValueError(f"log-mel has {t} frames; need at least n_frames={n_frames}")
    win = log_mel.unfold(2, n_frames, 1)  # [B, M, V, n]
    return win.permute(0, 2, 3, 1).reshape(b, t - n_frames + 1, n_frames * m)


def vectors_to_cells(values: torch.Tensor, n_mels: int, n_frames: int) -> torch.Tensor:
    """Per-element values on frame vectors [B, V, n_frames · n_mels] → per-cell map [B, n_mels, frames].

    Each (mel, frame) cell is covered by up to ``n_frames`` vectors; the map is the mean over them. The inverse
    layout of :func:`frame_vectors`, frames = V + n_frames − 1.
    """
    b, nv, d = values.shape
    if d != n_frames * n_mels:
        raise ValueError(f"vector length {d} != n_frames·n_mels = {n_frames}·{n_mels}")
    v = values.reshape(b, nv, n_frames, n_mels)
    t = nv + n_frames - 1
    out = values.new_zeros(b, n_mels, t)
    count = values.new_zeros(1, 1, t)
    for k in range(n_frames):
        out[:, :, k : k + nv] += v[:, :, k, :].permute(0, 2, 1)
        count[:, :, k : k + nv] += 1
    return out / count
