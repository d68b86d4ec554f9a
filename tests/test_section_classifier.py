"""AITHU's section classifiers SC and MHCR (issue 15 §2; stethoscope.methods.section_classifier), in process on
spectrograms whose sections and attributes are known: the Config defaults, the inputs, MHCR's heads learning their
attribute (regression error down, classification above chance), and unseen attributes flagged at scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


# -- the domain classifier (AITHU submission 1) and the detector stage's predicted-domain standardization ---------
DOMAIN_VOCAB = Vocab(machine_type=["fan"], group=["fan/section_00", "fan/section_01"], domain=["source", "target"])
#: a small Cnn6 for the domain classifier
TINY_DOMAIN = {"domain_classifier": True, "domain_backbone_overrides": {"channels": [8, 16], "embedding_dim": 16}}


def _domain_clips(n: int, seed: int, target_share: float = 0.25) -> dict[str, np.ndarray]:
    """n spectrograms [32, 24]: the section pattern of _clips, and target-domain clips carry a peak 6 bins up (the
    known shift); about ``target_share`` of them are target."""
    rng = np.random.default_rng(seed)
    base = _clips(n, seed)
    domain = (rng.random(n) < target_share).astype(np.int64)
    x = base["spectrogram"]
    x[domain == 1, 20:23] += 4.0
    return {"spectrogram": x, "group": base["group"], "domain": domain}


def test_balanced_cross_entropy_weights_each_present_class_alike():
    from stethoscope.methods.section_classifier import balanced_cross_entropy

    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    target = torch.tensor([0, 0, 0, 1])
    # hand-checked: class 0 loss = log(1 + e^-2) = 0.126928, class 1 loss = log(1 + e^2) = 2.126928; each class's
    # mean counts once → (0.126928 + 2.126928) / 2 = 1.126928 (the plain mean would be 0.626928)
    assert float(balanced_cross_entropy(logits, target)) == pytest.approx(1.126928, abs=1e-5)


def test_domain_classifier_learns_a_known_shift_and_needs_both_domains():
    torch.manual_seed(0)
    from stethoscope import methods

    cls = methods.get("sc")
    m = cls(cls.make_config({**TINY, **TINY_DOMAIN}), vocab=DOMAIN_VOCAB)
    assert m.predicts_domain and m.labels == ("group", "domain") and "domain" in m.label_keys()
    train, held = _domain_clips(128, seed=2), _domain_clips(64, seed=3, target_share=0.5)
    batch = {k: torch.from_numpy(v) for k, v in m.examples(train).items()}
    assert batch["domain"].shape == batch["group"].shape == (256,)
    for step in range(80):
        idx = torch.randperm(len(batch["x"]), generator=torch.Generator().manual_seed(step))[:32]
        losses = m.training_step({k: v[idx] for k, v in batch.items()})
    assert "domain" in losses
    pred = m.predict_domain({"spectrogram": held["spectrogram"]}).numpy()
    accuracy = float((pred == held["domain"]).mean())
    assert accuracy > 0.9, accuracy  # chance 0.5 on these held-out clips (half target)
    with pytest.raises(ConfigError, match="no domain classifier"):
        _method("sc").predict_domain({"spectrogram": held["spectrogram"]})
    source_only = Vocab(machine_type=["fan"], group=["fan/section_00"], domain=["source"])
    with pytest.raises(DataError, match=r"domain\(s\) \['source'\].*needs training clips of both"):
        cls(cls.make_config({**TINY, **TINY_DOMAIN}), vocab=source_only)


def test_predicted_domain_standardizes_with_that_domains_training_statistics():
    from stethoscope.detectors.stage import GroupedDetector

    rng = np.random.default_rng(0)
    src = rng.normal(0.0, 1.0, (40, 2))
    tgt = rng.normal(10.0, 1.0, (10, 2))
    det = GroupedDetector("knn", {"n_neighbors": 1}).fit(
        np.vstack([src, tgt]), ["s0"] * 50, ["source"] * 40 + ["target"] * 10)
    q = np.array([[0.0, 0.0], [10.0, 10.0]])
    fit = det.fitted["s0"]
    z = {d: (f.detector.decision_function(q) - f.mean) / f.std for d, f in fit.items()}
    by_pred = det.decision_function(q, ["s0", "s0"], ["target", "source"])
    assert by_pred.tolist() == pytest.approx([z["target"][0], z["source"][1]])
    assert det.decision_function(q, ["s0", "s0"]).tolist() == pytest.approx(np.minimum(z["source"], z["target"]))
    # a prediction without a detector in the section falls back to the minimum, and is listed
    assert det.decision_function(q[:1], ["s0"], ["other"]).tolist() == pytest.approx([min(z["source"][0],
                                                                                            z["target"][0])])
    assert det.missing_domains(["s0", "s0"], ["source", "other"]).tolist() == [False, True]


def test_input_notes_name_a_section_without_target_training_clips_and_unseen_attributes():
    import pandas as pd

    from stethoscope.stages.detect import domain_classifier_record, input_notes

    train = pd.DataFrame({"machine_type": "fan", "machine_id": None, "section": ["00", "00", "01"],
                          "domain": ["source", "target", "source"],
                          "attributes": ['{"speed": "10"}', '{"speed": "10"}', '{"speed": "12"}']})
    test = pd.DataFrame({"machine_type": "fan", "machine_id": None, "section": ["00", "01", "01"],
                         "domain": ["target", "target", "source"],
                         "attributes": ['{"speed": "10"}', '{"speed": "14"}', '{"speed": "14"}']})
    notes = input_notes("fan", train, test)
    assert notes == [
        "fan/section_01: no target-domain training clip; its 1 target-domain test clip(s) are scored against the "
        "detector(s) of ['source'] (the minimum over the fitted domains)",
        "fan: attribute speed=14 in 2 test clip(s) is not in the training clips (known: ['10', '12']); the detectors "
        "score these clips as usual (they read the embeddings, not the attributes)"]
    rec = domain_classifier_record(test, ["target", "source", "source"], np.array([False, False, True]))
    assert rec["accuracy_test"] == pytest.approx(2 / 3) and rec["fallback_min"] == 1 and "1 test clip(s)" in rec["note"]


# -- SC-wav2vec: the SC head on a frozen wav2vec-family encoder (a tiny random wav2vec2 saved by the test) ---------
@pytest.fixture(scope="module")
def tiny_wav2vec(tmp_path_factory):
    from test_encoders import _tiny_hf

    folder = tmp_path_factory.mktemp("w2v") / "wav2vec2"
    model, fe = _tiny_hf("wav2vec2")
    model.save_pretrained(folder)
    fe.save_pretrained(folder)
    return folder


def _tone_clips(n: int, seed: int, seconds: float = 0.5) -> dict[str, np.ndarray]:
    """n 16 kHz clips: section 0 a 440 Hz tone, section 1 a 2 kHz tone, both in noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    section = rng.integers(0, 2, n)
    waves = [0.3 * np.sin(2 * np.pi * (440 if s == 0 else 2000) * t + rng.uniform(0, 6.28))
             + 0.05 * rng.normal(size=t.size) for s in section]
    return {"waveform": np.stack(waves).astype(np.float32), "group": section.astype(np.int64)}


def test_sc_wav2vec_trains_its_head_on_frozen_encoder_frames(tiny_wav2vec, tmp_path):
    from stethoscope import encoders, methods

    cls = methods.get("sc_wav2vec")
    cfg = cls.make_config({"encoder_path": str(tiny_wav2vec), "window_seconds": 0.2, "window_hop_seconds": 0.1,
                           "hidden_dim": 32, "embedding_dim": 16, "lr": 3e-3})
    torch.manual_seed(0)
    m = cls(cfg, vocab=VOCAB)
    train, held = _tone_clips(32, 0), _tone_clips(16, 1)
    ex = m.examples(train)
    # 0.5 s = 400 frames of the tiny encoder (hop 20 samples); 0.2 s windows every 0.1 s → starts 0, 80, 160, 240
    assert ex["x"].shape == (32 * 4, 64) and ex["group"].shape == (128,)
    batch = {k: torch.from_numpy(v) for k, v in ex.items()}
    held_ex = {k: torch.from_numpy(v) for k, v in m.examples(held).items()}
    before = m.validation_step(held_ex)["val_section"]
    frozen = [p.clone() for p in m.encoder.model.parameters()]
    for step in range(30):
        idx = torch.randperm(len(batch["x"]), generator=torch.Generator().manual_seed(step))[:32]
        m.training_step({k: v[idx] for k, v in batch.items()})
    assert m.validation_step(held_ex)["val_section"] < 0.5 * before
    assert all(torch.equal(a, b) for a, b in zip(frozen, m.encoder.model.parameters()))  # the encoder stays frozen
    assert m.embed({"waveform": held["waveform"]}).shape == (16, 16)
    # checkpoints keep the encoder's reference, never its weights; other weights at the path are refused
    state = m.state_dict()
    assert set(state["modules"]) == {"backbone", "arcface", "attribute_heads"}
    assert state["extra"]["encoder"]["sha256"] == encoders.reference("wav2vec2", tiny_wav2vec).sha256
    state["extra"]["encoder"]["sha256"] = "0" * 64
    with pytest.raises(encoders.EncoderError, match="not the weights the model was trained with"):
        cls(cfg, vocab=VOCAB).load_state_dict(state)


def test_sc_wav2vec_config_errors_name_the_field_or_the_files(tmp_path):
    from stethoscope import methods
    from stethoscope.encoders import EncoderError

    cls = methods.get("sc_wav2vec")
    assert cls.Config().lr == 1e-3 and cls.Config().epochs == 25  # §3.1.1
    with pytest.raises(EncoderError, match="config.json"):
        cls.make_config({"encoder_path": str(tmp_path)})
    with pytest.raises(ConfigError, match="encoder = 'ast'.*wav2vec-family"):
        cls.make_config({"encoder": "ast"})
    with pytest.raises(ConfigError, match="window_seconds"):
        cls.make_config({"window_seconds": 0})


# -- through the pipeline (Ray) -----------------------------------------------------------------------------------
# The SC + domain classifier pipeline on a synthetic DCASE 2022 set, and the ensembles built on it with the other
# AITHU subsystems: tests/test_aithu_pipeline.py.
