"""The DCASE 2020 Task 2 autoencoder baseline, pinned to the paper (Koizumi et al., arXiv:2006.05822 §4) and the
official baseline's keras_model.py / baseline.yaml: 640 → 128×4 → 8 → 128×4 → 640, BatchNorm + ReLU on every layer
but the output (the 8-unit bottleneck included), Adam lr 1e-3, 100 epochs, batch 512, 10 % validation split, and
the baseline's log-mel front end (16 kHz, n_fft 1024, hop 512, 128 mels, 5 frames)."""

from __future__ import annotations

import torch
from torch import nn

from stethoscope import methods
from stethoscope.data.features import FeatureSpec


def _layers(seq: nn.Sequential) -> list[tuple]:
    """(kind, in, out) per layer: ("dense", 640, 128), ("bn", 128), ("relu",) ..."""
    out = []
    for m in seq:
        if isinstance(m, nn.Linear):
            out.append(("dense", m.in_features, m.out_features))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("bn", m.num_features))
        elif isinstance(m, nn.ReLU):
            out.append(("relu",))
        else:
            out.append((type(m).__name__,))
    return out


def test_architecture_and_defaults_are_the_dcase2020_baseline():
    cls = methods.get("autoencoder")
    cfg = cls.make_config()
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.val_fraction) == (1e-3, 100, 512, 0.1)
    spec = cls.default_feature_spec(cfg)
    assert spec == FeatureSpec()
    assert (spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels, spec.power, spec.n_frames, spec.db_ref) == (
        16000, 1024, 512, 128, 2.0, 5, "absolute")
    m = cls(cfg, spec)
    block = lambda i, o: [("dense", i, o), ("bn", o), ("relu",)]  # noqa: E731
    assert _layers(m.model.encoder) == block(640, 128) + block(128, 128) * 3 + block(128, 8)
    assert _layers(m.model.decoder) == block(8, 128) + block(128, 128) * 3 + [("dense", 128, 640)]
    assert sum(p.numel() for p in m.model.parameters()) == (
        (640 * 128 + 128) + 3 * (128 * 128 + 128) + (128 * 8 + 8)  # encoder dense layers
        + (8 * 128 + 128) + 3 * (128 * 128 + 128) + (128 * 640 + 640)  # decoder dense layers
        + 2 * (8 * 128 + 8)  # BatchNorm scale and shift: eight 128-wide layers and the 8-wide bottleneck
    )
    assert isinstance(m.optimizer, torch.optim.Adam) and m.optimizer.defaults["lr"] == 1e-3
    # MSE loss, the baseline's: one step's loss equals the mean squared reconstruction error of the batch
    x = torch.randn(16, 640)
    m.model.train()
    expected = float(torch.mean((m.model(x) - x) ** 2))
    torch.manual_seed(0)
    loss = m.training_step({"x": x})["loss"]
    assert abs(loss - expected) < 1e-5
