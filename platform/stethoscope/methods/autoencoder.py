"""The DCASE 2020 Task 2 autoencoder baseline.

Source: Koizumi et al., "Description and discussion on DCASE2020 Challenge Task2: Unsupervised anomalous sound
detection for machine condition monitoring", arXiv:2006.05822 (2020), §4 "Baseline system", and the official
baseline code's ``keras_model.py`` / ``baseline.yaml``:
Dense 640→128→128→128→128→8→128→128→128→128→640 with BatchNorm + ReLU on every hidden layer (the 8-unit
bottleneck included), linear output, MSE loss, Adam (lr 1e-3), 100 epochs, batch 512, 10 % held out for the
validation loss. A clip's score is the mean squared reconstruction error over its 640-dim vectors (Eq. 1 of the
task description with the AE as the reconstruction function).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stethoscope.data.features import frame_stack
from stethoscope.methods.base import Method, clip_arrays, register


@dataclass
class Config:
    """Defaults: DCASE 2020 Task 2 baseline (arXiv:2006.05822 §4; baseline.yaml ``fit`` section).

    val_fraction is the held-out share of the training data for the validation loss (baseline
    ``validation_split: 0.1``). We hold out whole clips, not vectors, because neighbouring 5-frame vectors overlap
    by 4 frames and a vector-level split would leak.
    """

    hidden_dim: int = 128
    num_hidden: int = 4  # hidden layers on each side of the bottleneck
    latent_dim: int = 8
    lr: float = 1e-3
    epochs: int = 100
    batch_size: int = 512
    val_fraction: float = 0.1
    shuffle: bool = True

    def __post_init__(self) -> None:
        from stethoscope.errors import ConfigError

        for field in ("hidden_dim", "num_hidden", "latent_dim", "batch_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"autoencoder config: {field} = {getattr(self, field)}; expected >= 1")
        if self.epochs < 0:
            raise ConfigError(f"autoencoder config: epochs = {self.epochs}; expected >= 0")
        if self.lr < 0:
            raise ConfigError(f"autoencoder config: lr = {self.lr}; expected >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"autoencoder config: val_fraction = {self.val_fraction}; expected in [0, 1)")


def _dense(i: int, o: int) -> list[nn.Module]:
    return [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]


class DenseAutoencoder(nn.Module):
    """[N, D] → [N, D]: D→h×num_hidden→latent→h×num_hidden→D, BatchNorm + ReLU on hidden layers, linear output."""

    def __init__(self, input_dim: int, hidden_dim: int, num_hidden: int, latent_dim: int):
        super().__init__()
        enc: list[nn.Module] = []
        d = input_dim
        for _ in range(num_hidden):
            enc += _dense(d, hidden_dim)
            d = hidden_dim
        enc += _dense(d, latent_dim)
        dec: list[nn.Module] = []
        d = latent_dim
        for _ in range(num_hidden):
            dec += _dense(d, hidden_dim)
            d = hidden_dim
        dec.append(nn.Linear(d, input_dim))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@register
class Autoencoder(Method):
    """DCASE 2020 baseline AE over 5-frame log-mel vectors (``name = "autoencoder"``).

    Examples: ``{"x": [N, n_frames·n_mels]}`` frame vectors. Score: mean over a clip's vectors of the
    squared reconstruction error, Tensor [B]. ``localize`` gives the error per (mel, frame) cell, [B, n_mels, frames].
    """

    name = "autoencoder"
    Config = Config

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        self.model = DenseAutoencoder(self.feature_spec.vector_dim, config.hidden_dim, config.num_hidden, config.latent_dim)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)

    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = clip_arrays(clips["log_mel"])
        n = self.feature_spec.n_frames
        vecs = [frame_stack(a, n).numpy() for a in arrays if a.shape[-1] >= n]
        if not vecs:
            return {"x": np.zeros((0, self.feature_spec.vector_dim), dtype=np.float32)}
        return {"x": np.concatenate(vecs).astype(np.float32)}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        x = batch["x"]
        if x.shape[0] < 2:  # BatchNorm needs two samples; a 1-vector tail batch is skipped
            return {}
        self.model.train()
        loss = torch.mean((self.model(x) - x) ** 2)
        self.optimize(self.optimizer, loss)
        return {"loss": float(loss.detach())}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            x = batch["x"]
            return {"val_loss": float(torch.mean((self.model(x) - x) ** 2))}

    def _vectors(self, log_mel: torch.Tensor) -> torch.Tensor:
        """[B, M, T] → [B, V, n_frames·M] (V = T - n_frames + 1)."""
        n = self.feature_spec.n_frames
        b, m, t = log_mel.shape
        win = log_mel.unfold(2, n, 1)  # [B, M, V, n]
        return win.permute(0, 2, 3, 1).reshape(b, t - n + 1, n * m)

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            v = self._vectors(batch["log_mel"].to(self.device))
            b, nv, d = v.shape
            err = (self.model(v.reshape(b * nv, d)) - v.reshape(b * nv, d)) ** 2
            return err.reshape(b, nv * d).mean(dim=1)

    def localize(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared reconstruction error per (mel, frame) cell, averaged over the vectors that cover the cell."""
        self.model.eval()
        with torch.no_grad():
            x = batch["log_mel"].to(self.device)
            b, m, t = x.shape
            n = self.feature_spec.n_frames
            v = self._vectors(x)
            nv = v.shape[1]
            err = ((self.model(v.reshape(b * nv, -1)) - v.reshape(b * nv, -1)) ** 2).reshape(b, nv, n, m)
            out = torch.zeros(b, m, t, device=x.device)
            count = torch.zeros(1, 1, t, device=x.device)
            for k in range(n):
                out[:, :, k : k + nv] += err[:, :, k, :].permute(0, 2, 1)
                count[:, :, k : k + nv] += 1
            return out / count
