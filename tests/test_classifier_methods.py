"""STgram-MFN / TASTgram / FGASpecNet on the Method contract (issue 13; stethoscope.methods.machine_id_classifier).

Cheap unit tests in-process (configs, the clip-length rule, a loss that goes down, reproducible Noisy-ArcMix, the
unseen-ID policies, the anomaly maps), then two small Ray pipeline runs: a tiny FGASpecNet over a synthetic set with
several machine types and IDs (AUC bar, the score-variant choice on validation only, publish → bundle parity), and
STgram-MFN on the real slider clips (one machine ID: −log p is dropped and a detector on embeddings is used).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stethoscope.data.labels import Vocab
from stethoscope.errors import ConfigError, DataError

#: A tiny network for CPU tests: 1 s clips (16,000 samples → 32 frames at hop 512), 32 mels, one bottleneck row.
TINY = {"n_samples": 16000, "n_mels": 32, "mobilefacenet_setting": [[2, 32, 1, 2]], "batch_size": 8,
        "epochs": 2, "lr": 1e-3}


def _method(name: str, groups=("fan/id_00", "fan/id_02", "pump/id_00"), **overrides):
    from stethoscope import methods

    cls = methods.get(name)
    vocab = Vocab(machine_type=sorted({g.split("/")[0] for g in groups}), group=list(groups))
    torch.manual_seed(0)
    return cls(cls.make_config({**TINY, **overrides}), vocab=vocab)


def _batch(n: int, groups, samples: int = 16000, seed: int = 0) -> dict[str, torch.Tensor]:
    from stethoscope.data.features import compute
    from stethoscope.nn.frontend import CLASSIFIER_LOGMEL
    import dataclasses

    g = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(n, samples, generator=g)
    spec = dataclasses.replace(CLASSIFIER_LOGMEL, n_mels=32)
    return {"waveform": wav, "log_mel": compute(wav, spec), "group": torch.as_tensor(groups, dtype=torch.long)}


# -- config and registry --------------------------------------------------------------------------------------------
def test_three_registered_methods_with_the_paper_defaults_and_table3_switches():
    from stethoscope import methods

    for name, (tagram, specnet, fga, loss, st) in {
        "stgram_mfn": (False, False, False, "arcface", False),
        "tastgram": (True, False, False, "noisy_arcmix", False),
        "fgaspecnet": (True, True, True, "noisy_arcmix", True),
    }.items():
        cls = methods.get(name)
        cfg = cls.make_config({})
        assert (cfg.preset, cfg.lr, cfg.epochs, cfg.batch_size) == (name, 1e-4, 300, 64)
        assert (cfg.arcface_margin, cfg.arcface_scale, cfg.mixup_alpha) == (0.7, 30.0, 0.5)
        assert (cfg.st_gamma, cfg.st_lambda, cfg.st_delta, cfg.st_centers, cfg.st_tau, cfg.st_weight) == (
            0.1, 20.0, 0.02, 3, 0.0, 0.15)
        net = cfg.network()
        assert (net.tgram, net.tagram, net.specnet, net.fga, net.loss, net.softtriple) == (
            True, tagram, specnet, fga, loss, st)
        specs = cls.input_specs(cfg)
        mel = specs["log_mel"]
        assert (mel.n_fft, mel.win_length, mel.hop_length, mel.n_mels, mel.power) == (2048, None, 512, 128, 2.0)
        assert specs["waveform"].sample_rate == 16000 and cfg.n_frames == 313 == mel.num_frames(160000)
        assert cls.default_scope == "all_machine_types" and "per_id" not in cls.scopes
    # an ablation switch on top of a preset (Table 3), and the errors
    assert methods.get("tastgram").make_config({"specnet": True}).network().specnet is True
    with pytest.raises(ConfigError, match="fga = True needs specnet"):
        methods.get("tastgram").make_config({"fga": True})
    with pytest.raises(ConfigError, match="unknown_id"):
        methods.get("fgaspecnet").make_config({"unknown_id": "guess"})
    with pytest.raises(ConfigError, match="preset = 'tastgram'; expected 'fgaspecnet'"):
        methods.get("fgaspecnet")(methods.get("fgaspecnet").make_config({**TINY, "preset": "tastgram"}),
                                  vocab=Vocab(group=["a/id_00", "a/id_01"]))


def test_fit_length_crops_and_tiles_the_last_axis():
    from stethoscope.methods.machine_id_classifier import fit_length

    x = np.arange(10).reshape(2, 5)
    assert fit_length(x, 3).tolist() == [[0, 1, 2], [5, 6, 7]]
    assert fit_length(x, 12).tolist()[0] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert fit_length(torch.arange(3), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(DataError, match="0 samples"):
        fit_length(np.zeros((2, 0)), 4)


def test_clips_of_other_lengths_are_cropped_or_tiled_to_the_configured_size():
    m = _method("fgaspecnet")
    long, short = _batch(2, [0, 1], samples=24000), _batch(2, [0, 1], samples=8000)
    ex = m.examples({k: v.numpy() for k, v in long.items()})
    assert ex["waveform"].shape == (2, 16000) and ex["log_mel"].shape == (2, 32, 32)
    assert np.array_equal(ex["waveform"], long["waveform"][:, :16000].numpy())
    assert m.score(short).shape == (2,) and m.embed(short).shape == (2, 128)
    # scoring tiles the short clip exactly as the examples do
    tiled = m.examples({k: v.numpy() for k, v in short.items()})
    assert torch.allclose(m.score(short), m.score({k: torch.as_tensor(v) for k, v in tiled.items()}))


# -- training -------------------------------------------------------------------------------------------------------
def test_training_reduces_the_loss_and_noisy_arcmix_replays_with_the_seed():
    batch = _batch(8, [0, 1, 2, 0, 1, 2, 0, 1], seed=1)

    def losses(seed: int, steps: int) -> list[float]:
        m = _method("fgaspecnet")
        np.random.seed(seed)  # the train loop seeds the global numpy state per epoch; the mixes derive from it
        out = [m.training_step(batch)["loss"] for _ in range(steps)]
        m.on_epoch_end(1, {})
        return out

    a = losses(0, 10)
    assert losses(0, 3) == a[:3] and losses(1, 3) != a[:3]
    assert np.mean(a[-3:]) < np.mean(a[:3]), a
    m = _method("stgram_mfn", clip_grad_norm=1.0, scheduler="step")
    first = m.training_step(batch)
    assert set(first) == {"loss", "classification"} and m.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    m.on_epoch_end(1, {})  # StepLR(step_size 1, gamma 0.1) through make_scheduler
    assert m.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


# -- scoring --------------------------------------------------------------------------------------------------------
def test_score_is_minus_log_posterior_of_the_own_id_and_unseen_ids_follow_the_policy():
    from stethoscope.scoring import clip_batches

    m = _method("tastgram")
    batch = _batch(3, [0, 1, 2], seed=2)
    m.net.eval()
    with torch.no_grad():
        logits = m.net(batch["waveform"], batch["log_mel"]).logits
    expected = -torch.log_softmax(logits, 1)[torch.arange(3), batch["group"]]
    assert torch.allclose(m.score(batch), expected, atol=1e-5)

    clips = {"waveform": np.array(list(batch["waveform"].numpy()) + [batch["waveform"][0].numpy()], dtype=object),
             "log_mel": np.array(list(batch["log_mel"].numpy()) + [batch["log_mel"][0].numpy()], dtype=object),
             "machine_type": ["fan", "fan", "pump", "fan"], "machine_id": ["00", "02", "00", "04"],
             "section": [None] * 4, "path": ["a.wav", "b.wav", "c.wav", "fan_id04.wav"]}
    with pytest.raises(DataError, match=r"fan_id04.wav: group 'fan/id_04' was not in the training set"):
        list(clip_batches([clips], m))
    # unknown_id = "max_known": −log max p over the known IDs of the clip's machine type (fan: classes 0 and 1)
    fallback = _method("tastgram", unknown_id="max_known")
    fallback.net.load_state_dict(m.net.state_dict())
    (tensors, meta), = list(clip_batches([clips], fallback))
    scores = fallback.score(tensors)
    logp = torch.log_softmax(logits, 1)
    assert torch.allclose(scores[:3], expected, atol=1e-5)
    assert scores[3].item() == pytest.approx(-max(logp[0, 0].item(), logp[0, 1].item()), abs=1e-5)


def test_anomaly_maps_fga_gate_or_score_gradient():
    batch = _batch(2, [0, 1], seed=3)
    gate = _method("fgaspecnet").localize(batch)
    assert gate.shape == (2, 32, 32) and float(gate.min()) > 0 and float(gate.max()) < 1
    grad = _method("stgram_mfn").localize(batch)
    assert grad.shape == (2, 32, 32) and float(grad.abs().sum()) > 0


def test_one_machine_id_pads_the_head_and_says_why_minus_log_p_is_no_candidate():
    m = _method("stgram_mfn", groups=("slider/id_00",))
    assert m.net.num_classes == 2 and "constant" in m.score_undefined_reason
    assert _method("stgram_mfn").score_undefined_reason is None


def test_the_method_score_is_a_candidate_name_checked_before_training():
    from stethoscope.detectors.stage import split_own_score
    from stethoscope.stages.ingest import resolve_config

    assert split_own_score(["method", "knn", {"name": "lof", "n_neighbors": 3}]) == (
        True, ["knn", {"name": "lof", "n_neighbors": 3}])
    with pytest.raises(ConfigError, match="unknown detector 'nearest'"):
        resolve_config("fgaspecnet", "fan", {"detectors": ["method", "nearest"]})
