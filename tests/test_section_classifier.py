"""AITHU's section classifiers SC and MHCR (issue 15 §2; stethoscope.methods.section_classifier), in process on
spectrograms whose sections and attributes are known: the Config defaults, the inputs, MHCR's heads learning their
attribute (regression error down, classification above chance), and unseen attributes flagged at scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stethoscope.data.labels import Vocab
from stethoscope.errors import ConfigError, DataError

#: 32 mel bins × 16-frame crops, a tiny MobileFaceNet (one bottleneck row), 32-d embeddings.
TINY = {"feature": "log_mel", "n_mels": 32, "n_frames": 16, "crop_hop": 8, "backbone": "mobilefacenet",
        "backbone_overrides": {"setting": [[2, 32, 1, 2]], "stem_channels": 16, "head_channels": 64,
                               "embedding_dim": 32},
        "batch_size": 32, "lr": 3e-3}
SPEEDS = (9, 10, 11, 13, 14)
VOCAB = Vocab(machine_type=["fan"], group=["fan/section_00", "fan/section_01"],
              attributes={"noise": ["A", "B"], "speed": [str(s) for s in SPEEDS]}, numeric_attributes=["speed"])


def _method(name: str, **overrides):
    from stethoscope import methods

    cls = methods.get(name)
    torch.manual_seed(0)
    return cls(cls.make_config({**TINY, **overrides}), vocab=VOCAB)


def _clips(n: int, seed: int) -> dict[str, np.ndarray]:
    """n spectrograms [32, 24] (dB-like): a section pattern (low or high bins), a peak at bin 2·speed − 10 (speed in
    9 … 14) and the whole clip 2 dB up for noise B; with the labels the way Vocab.encode gives them."""
    rng = np.random.default_rng(seed)
    section = rng.integers(0, 2, n)
    speed = rng.choice(SPEEDS, n)
    noise = rng.integers(0, 2, n)
    x = rng.normal(0.0, 1.0, (n, 32, 24))
    for i in range(n):
        x[i, slice(0, 4) if section[i] == 0 else slice(28, 32)] += 3.0
        x[i, 2 * speed[i] - 10] += 4.0
        x[i] += 2.0 * noise[i]
    return {"spectrogram": x.astype(np.float32), "group": section.astype(np.int64),
            "attr:noise": noise.astype(np.int64), "attr:speed": np.searchsorted(SPEEDS, speed).astype(np.int64),
            "attr_value:speed": speed.astype(np.float32)}


def test_defaults_are_the_reports_and_the_input_is_the_stft_magnitude():
    from stethoscope import methods
    from stethoscope.data.features import FeatureSpec

    cls = methods.get("sc")
    c = cls.Config()
    assert (c.lr, c.weight_decay, c.epochs, c.n_fft, c.n_frames) == (1e-3, 1e-4, 25, 2048, 192)  # §3.1.1, Table 3
    spec = cls.input_specs(c)["spectrogram"]
    assert spec == FeatureSpec(kind="stft", scale="linear", power=1.0, n_fft=2048, hop_length=512)
    assert spec.n_bins == 1025
    assert cls.input_specs(cls.make_config({"feature": "log_mel"}))["spectrogram"].n_mels == 64  # ToyCar's row
    assert methods.get("mhcr").labels == ("group", "attributes") and cls.labels == ("group",)
    for bad, match in (({"backbone": "resnet"}, "backbone"), ({"feature": "mfcc"}, "feature"),
                       ({"attribute_weights": {"speed": 0}}, "attribute_weights")):
        with pytest.raises(ConfigError, match=match):
            cls.make_config(bad)


def test_mhcr_heads_learn_the_attributes_and_sc_has_none():
    m = _method("mhcr")
    assert sorted(m.attribute_heads) == ["cls_noise", "reg_speed"]  # categorical noise, numeric speed
    assert not _method("sc").attribute_heads
    train, held = _clips(96, seed=0), _clips(48, seed=1)
    ex = m.examples(train)
    assert ex["x"].shape == (96 * 2, 32, 16) and ex["attr_value:speed"].shape == (192,)  # 24 frames → crops at 0, 8
    batch = {k: torch.from_numpy(v) for k, v in ex.items()}
    held_ex = {k: torch.from_numpy(v) for k, v in m.examples(held).items()}
    before = m.validation_step(held_ex)
    for step in range(60):
        idx = torch.randperm(len(batch["x"]), generator=torch.Generator().manual_seed(step))[:32]
        m.training_step({k: v[idx] for k, v in batch.items()})
    after = m.validation_step(held_ex)
    assert after["val_attr_speed"] < 0.5 * before["val_attr_speed"], (before, after)
    assert after["val_section"] < before["val_section"]
    pred = m.predict_attributes({"spectrogram": held["spectrogram"]})
    accuracy = float((pred["noise"].numpy() == held["attr:noise"]).mean())
    assert accuracy > 0.8  # chance: 0.5
    mae = float(np.abs(pred["speed"].numpy() - held["attr_value:speed"]).mean())
    assert mae < 0.5 * float(np.std(SPEEDS)), mae
    assert m.embed({"spectrogram": held["spectrogram"]}).shape == (48, 32)
    assert m.score({"spectrogram": held["spectrogram"][:4], "group": held["group"][:4]}).shape == (4,)
    with pytest.raises(DataError, match="needs 'group'"):
        m.score({"spectrogram": held["spectrogram"][:4]})


def test_an_attribute_unseen_in_training_is_flagged_not_fatal_at_scoring():
    from stethoscope.scoring import encode_labels

    meta = {"machine_type": ["fan"], "machine_id": [None], "section": ["00"], "path": ["x.wav"],
            "attributes": [[("speed", "12"), ("noise", "C")]]}
    labels = encode_labels(_method("mhcr"), meta)
    assert labels["attr:noise:unknown"].tolist() == [True] and labels["attr:noise"].tolist() == [2]
    with pytest.raises(DataError, match="noise 'C' was not in the training set"):
        encode_labels(_method("mhcr"), meta, unknown="error")  # what training does


def test_table3_presets_give_each_machine_type_its_input_and_backbone():
    from stethoscope import methods
    from stethoscope.presets import available_presets, load_preset

    table3 = {"bearing": ("stft", "mobilefacenet"), "fan": ("stft", "mfnse"), "gearbox": ("stft", "mobilefacenet"),
              "slider": ("stft", "mfnse"), "ToyCar": ("log_mel", "ecapa_tdnn"), "ToyTrain": ("stft", "cnn6"),
              "valve": ("stft", "mfnse")}
    assert sorted(available_presets()["sc"]) == sorted(table3)
    for machine_type, (feature, backbone) in table3.items():
        cfg = methods.get("sc").make_config(load_preset("sc", machine_type))
        assert (cfg.feature, cfg.backbone) == (feature, backbone)
    assert load_preset("sc", "ToyCar")["n_mels"] == 64  # "log-mel 64 mels"
