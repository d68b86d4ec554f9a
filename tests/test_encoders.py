"""Pretrained waveform encoders (issue 12 item 3): tiny random models saved to temp folders by the tests themselves.

The transformers models are built from 1-layer configs and saved with ``save_pretrained``; BEATs and EAT are
random small copies of our architecture saved in the official checkpoint layouts; aisfx loads the real weights
from its wheel. Nothing is downloaded (a test blocks sockets while loading).
"""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from stethoscope import encoders
from stethoscope.encoders import EncoderError, EncoderInputError, EncoderRef
from stethoscope.encoders import beats as beats_mod
from stethoscope.encoders import eat as eat_mod
from stethoscope.encoders.cache import EmbeddingCache, EmbeddingSpec, cached_embeddings, embed_clips

SR = 16000
HF_NAMES = ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "ast"]


def _tiny_hf(name: str, seed: int = 0):
    """(model, feature extractor) of a 1-layer, 32-d transformers model of family ``name``."""
    import transformers as tf

    torch.manual_seed(seed)
    if name == "ast":
        cfg = tf.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           max_length=100, num_mel_bins=128)
        return tf.ASTModel(cfg).eval(), tf.ASTFeatureExtractor(max_length=100)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
                 conv_kernel=(10, 3), conv_stride=(5, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    config_cls, model_cls = {
        "wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model), "hubert": (tf.HubertConfig, tf.HubertModel),
        "wavlm": (tf.WavLMConfig, tf.WavLMModel), "data2vec-audio": (tf.Data2VecAudioConfig, tf.Data2VecAudioModel),
    }[name]
    if name == "data2vec-audio":
        small.update(conv_pos_kernel_size=5, num_conv_pos_embeddings=5)
    return model_cls(config_cls(**small)).eval(), tf.Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """name → (folder, in-memory model, feature extractor) for each transformers family."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name in HF_NAMES:
        model, fe = _tiny_hf(name)
        folder = root / name
        model.save_pretrained(folder)
        fe.save_pretrained(folder)
        out[name] = (folder, model, fe)
    return out


def _tiny_beats(seed: int = 0, **overrides) -> beats_mod.BEATs:
    torch.manual_seed(seed)
    cfg = dict(input_patch_size=16, embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
               encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, num_buckets=32, max_distance=64,
               deep_norm=True, relative_position_embedding=True, gru_rel_pos=True)
    cfg.update(overrides)
    model = beats_mod.BEATs(beats_mod.BEATsConfig(**cfg)).eval()
    with torch.no_grad():  # move every parameter off its init value (grep_a = 1, biases = 0 ...)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _tiny_eat(seed: int = 0, **overrides) -> eat_mod.EAT:
    torch.manual_seed(seed)
    cfg = dict(embed_dim=64, image_embed_dim=64, depth=2, num_heads=4, max_length=24, target_length=128)
    cfg.update(overrides)
    model = eat_mod.EAT(eat_mod.EATConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _wave(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, int(seconds * SR), generator=g) * 0.2


# -- registry and references --------------------------------------------------------------------------------------
def test_registry_names_and_unknown_name():
    assert set(encoders.names()) == {"aisfx", "ast", "beats", "data2vec-audio", "eat", "hubert", "wav2vec2", "wavlm"}
    assert encoders.get("beats") is beats_mod.BEATsEncoder
    with pytest.raises(EncoderError, match=r"unknown encoder 'beat'; known encoders: aisfx, ast, beats"):
        encoders.get("beat")


def test_encoder_ref_from_dict_rejects_bad_fields():
    good = {"name": "beats", "path": "/x.pt", "sha256": "a" * 64}
    assert EncoderRef.from_dict(good) == EncoderRef("beats", "/x.pt", "a" * 64)
    with pytest.raises(EncoderError, match=r"unknown keys \['weights'\]"):
        EncoderRef.from_dict({**good, "weights": 1})
    with pytest.raises(EncoderError, match="missing keys \\['sha256'\\]"):
        EncoderRef.from_dict({"name": "beats", "path": "/x.pt"})
    with pytest.raises(EncoderError, match="expected 64 hex digits"):
        EncoderRef.from_dict({**good, "sha256": "xyz"})


# -- transformers models -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HF_NAMES)
def test_hf_load_round_trip_and_shapes(hf_dirs, name):
    folder, model, fe = hf_dirs[name]
    enc = encoders.load(name, folder)
    wave = _wave(2, 1.0)
    inputs = fe(list(wave.numpy()), sampling_rate=SR, return_tensors="pt")["input_values"]
    with torch.no_grad():
        out = model(inputs)
    frames, pooled = enc.frames(wave), enc.embed(wave)
    assert enc.embed_dim == 32 and enc.sample_rate == SR
    assert pooled.shape == (2, 32)
    if name == "ast":
        # 98 fbank frames → ceil(98 / time_stride 10) = 10 time patches start inside the clip (of 9 in total).
        f_out, t_out = (128 - 16) // 10 + 1, (100 - 16) // 10 + 1
        assert frames.shape == (2, min(t_out, math.ceil(98 / 10)), 32)
        expected_frames = out.last_hidden_state[:, 2:].reshape(2, f_out, t_out, 32).mean(1)[:, : frames.shape[1]]
        torch.testing.assert_close(frames, expected_frames, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled, out.pooler_output, atol=1e-5, rtol=1e-5)
    else:
        t = (((SR - 10) // 5 + 1) - 3) // 4 + 1  # the two conv layers of the tiny feature encoder
        assert frames.shape == (2, t, 32) and enc.min_samples == 20 and enc.frame_hop == 20
        torch.testing.assert_close(frames, out.last_hidden_state, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled, out.last_hidden_state.mean(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc.embed(wave, pooling="max"), out.last_hidden_state.amax(1), atol=1e-5,
                                   rtol=1e-5)


def test_hf_loads_with_the_network_blocked(hf_dirs, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while loading a local encoder")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("wav2vec2", "ast"):
        assert encoders.load(name, hf_dirs[name][0]).embed(_wave(1, 0.5)).shape == (1, 32)


def test_hf_wrong_model_is_named(hf_dirs):
    with pytest.raises(EncoderError, match=r"'hubert' expects a 'hubert' model, but .*declares model_type "
                                           r"'wav2vec2'; load it as 'wav2vec2'"):
        encoders.load("hubert", hf_dirs["wav2vec2"][0])
    with pytest.raises(EncoderError, match="model_type 'audio-spectrogram-transformer'; load it as 'ast'"):
        encoders.load("wavlm", hf_dirs["ast"][0])


def test_missing_paths_say_which_files_go_where(tmp_path, hf_dirs):
    with pytest.raises(EncoderError, match=r"does not exist\. Put .*config\.json, preprocessor_config\.json and "
                                           r"model\.safetensors"):
        encoders.load("wav2vec2", tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((hf_dirs["wav2vec2"][0] / "config.json").read_text())
    with pytest.raises(EncoderError, match=r"lacks preprocessor_config\.json, model\.safetensors"):
        encoders.load("wav2vec2", partial)
    with pytest.raises(EncoderError, match=r"no checkpoint \(\*\.pt\) in .*BEATs_iter3_plus_AS2M\.pt"):
        encoders.load("beats", tmp_path)
    with pytest.raises(EncoderError, match=r"'eat' needs a local path to its weights: .*EAT-base_epoch30_pt\.pt"):
        encoders.load("eat", None)


def test_too_short_clip_names_the_minimum(hf_dirs):
    enc = encoders.load("wav2vec2", hf_dirs["wav2vec2"][0])
    enc.embed(torch.zeros(1, 20))  # exactly the minimum works
    with pytest.raises(EncoderInputError, match=r"needs at least 20 samples at 16000 Hz \(0\.001 s; 10 samples at "
                                                r"8000 Hz\); got 9 samples at 8000 Hz") as info:
        enc.embed(torch.zeros(1, 9), sample_rate=8000)
    assert info.value.reason == "too short"
    with pytest.raises(EncoderInputError, match="NaN or inf"):
        enc.embed(torch.full((1, 100), float("nan")))
    with pytest.raises(EncoderInputError, match=r"\[B, samples\]; got shape \(1, 2, 100\)"):
        enc.embed(torch.zeros(1, 2, 100))


def test_resampling_is_done_and_recorded(hf_dirs):
    enc = encoders.load("wav2vec2", hf_dirs["wav2vec2"][0])
    wave_8k = _wave(2, 0.5)[:, :4000]
    assert enc.conversion(8000) == ["resampled from 8000 Hz to 16000 Hz (torchaudio.functional.resample)"]
    assert enc.conversion(SR) == []
    by_encoder = enc.embed(wave_8k, sample_rate=8000)
    by_hand = enc.embed(torchaudio.functional.resample(wave_8k, 8000, SR), sample_rate=SR)
    torch.testing.assert_close(by_encoder, by_hand)
    assert not torch.allclose(by_encoder, enc.embed(wave_8k, sample_rate=SR))  # the rate matters
    ast = encoders.load("ast", hf_dirs["ast"][0])
    assert ast.max_samples == 400 + 160 * 99
    assert ast.conversion(SR, 20000)[-1].startswith("cut to the first 16240 samples (1.01 s) of 20000")
    assert ast.frames(_wave(1, 2.0)).shape[1] == ast.frames(_wave(1, 2.0)[:, :16240]).shape[1]


# -- references and SHA-256 ----------------------------------------------------------------------------------------
def test_sha_mismatch_is_refused(tmp_path):
    folder = tmp_path / "w2v"
    model, fe = _tiny_hf("wav2vec2", seed=0)
    model.save_pretrained(folder)
    fe.save_pretrained(folder)
    enc = encoders.load("wav2vec2", folder)
    ref = enc.reference()
    assert ref.name == "wav2vec2" and ref.path == str(folder) and len(ref.sha256) == 64
    encoders.verify(ref)
    enc.verify(ref.to_dict())
    assert encoders.load_ref(ref).sha256 == ref.sha256

    other, _ = _tiny_hf("wav2vec2", seed=1)  # same architecture, other weights, same folder
    other.save_pretrained(folder)
    with pytest.raises(EncoderError, match=f"have SHA-256 [0-9a-f]{{64}}, but the reference expects {ref.sha256}"):
        encoders.verify(ref)
    with pytest.raises(EncoderError, match=f"but {ref.sha256} was expected"):
        encoders.load_ref(ref)
    with pytest.raises(EncoderError, match="the reference is for encoder 'hubert'"):
        enc.verify(EncoderRef("hubert", ref.path, ref.sha256))
    with pytest.raises(EncoderError, match=f"expects {'0' * 64}"):
        enc.verify(EncoderRef("wav2vec2", ref.path, "0" * 64))


def test_digest_is_checked_before_unpickling(tmp_path):
    file = tmp_path / "beats.pt"
    beats_mod.save_checkpoint(_tiny_beats(), file)
    ref = encoders.load("beats", file).reference()
    copy = tmp_path / "elsewhere" / "BEATs_copy.pt"  # the same file copied to another machine's folder
    copy.parent.mkdir()
    copy.write_bytes(file.read_bytes())
    file.write_bytes(b"not a checkpoint at all")
    with pytest.raises(EncoderError, match="was expected"):  # the digest, not the unpickler, refuses it
        encoders.load_ref(ref)
    assert encoders.load_ref(ref, path=copy.parent).sha256 == ref.sha256


def test_frozen_weights_stay_out_of_state_dicts(tmp_path):
    file = tmp_path / "b.pt"
    beats_mod.save_checkpoint(_tiny_beats(), file)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoders.load("beats", file)
            self.fc = torch.nn.Linear(64, 2)

    head = Head()
    assert sorted(head.state_dict()) == ["fc.bias", "fc.weight"]
    assert not any(p.requires_grad for p in head.encoder.model.parameters())
    assert head.encoder.reference().to_dict() == {"name": "beats", "path": str(file),
                                                  "sha256": encoders.base.file_sha256(file)}


# -- BEATs ---------------------------------------------------------------------------------------------------------
BEATS_OFFICIAL_KEYS_ONE_LAYER = sorted([
    "patch_embedding.weight", "layer_norm.weight", "layer_norm.bias", "post_extract_proj.weight",
    "post_extract_proj.bias", "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.bias",
    "encoder.layer_norm.weight", "encoder.layer_norm.bias",
    *[f"encoder.layers.0.{k}" for k in (
        "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
        "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "self_attn.relative_attention_bias.weight", "self_attn.grep_linear.weight", "self_attn.grep_linear.bias",
        "self_attn.grep_a", "self_attn_layer_norm.weight", "self_attn_layer_norm.bias", "fc1.weight", "fc1.bias",
        "fc2.weight", "fc2.bias", "final_layer_norm.weight", "final_layer_norm.bias")],
])


def test_beats_state_dict_uses_the_official_key_names():
    assert sorted(_tiny_beats(encoder_layers=1).state_dict()) == BEATS_OFFICIAL_KEYS_ONE_LAYER


@pytest.mark.parametrize("variant", [
    {},  # iter3-style: DeepNorm post-LN, gated relative position bias
    {"deep_norm": False, "layer_norm_first": True, "gru_rel_pos": False},
    {"deep_norm": False, "relative_position_embedding": False, "gru_rel_pos": False, "embed_dim": 64},
])
def test_beats_official_checkpoint_round_trip(tmp_path, variant):
    model = _tiny_beats(**variant)
    file = tmp_path / "BEATs_tiny.pt"
    beats_mod.save_checkpoint(model, file)
    saved = torch.load(file, weights_only=True)
    assert set(saved) == {"cfg", "model"} and saved["cfg"]["encoder_layers"] == 2
    enc = encoders.load("beats", tmp_path)  # the folder with one *.pt
    wave = _wave(3, 1.2)
    with torch.no_grad():
        tokens = model(model.fbank(wave))
    n_frames = 1 + (wave.shape[1] - 400) // 160  # Kaldi fbank frames, 25 ms / 10 ms
    assert tokens.shape == (3, (n_frames // 16) * 8, 64)
    frames = enc.frames(wave)
    assert frames.shape == (3, n_frames // 16, 64)
    torch.testing.assert_close(frames, tokens.reshape(3, n_frames // 16, 8, 64).mean(2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.embed(wave), tokens.mean(1), atol=1e-5, rtol=1e-5)
    # the shared relative-position table is one tensor in every layer, as in the official layout
    if variant.get("relative_position_embedding", True):
        rel = [k for k in saved["model"] if k.endswith("relative_attention_bias.weight")]
        assert len(rel) == 2 and torch.equal(saved["model"][rel[0]], saved["model"][rel[1]])


def test_beats_minimum_and_bad_files(tmp_path):
    file = tmp_path / "b.pt"
    beats_mod.save_checkpoint(_tiny_beats(), file)
    enc = encoders.load("beats", file)
    assert enc.min_samples == 2800 and enc.frame_hop == 2560
    assert enc.frames(torch.randn(1, 2800) * 0.1).shape == (1, 1, 64)
    with pytest.raises(EncoderInputError, match="needs at least 2800 samples at 16000 Hz"):
        enc.embed(torch.randn(1, 2799))
    eat_file = tmp_path / "eat.pt"
    eat_mod.save_checkpoint(_tiny_eat(), eat_file)
    with pytest.raises(EncoderError, match="it is an EAT .*load it as 'eat'"):
        encoders.load("beats", eat_file)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "junk.pt")
    with pytest.raises(EncoderError, match=r"not an official BEATs checkpoint .*\['weights'\]"):
        encoders.load("beats", tmp_path / "junk.pt")
    ckpt = torch.load(file, weights_only=True)
    ckpt["cfg"]["activation_fn"] = "glu"
    torch.save(ckpt, tmp_path / "glu.pt")
    with pytest.raises(EncoderError, match="activation_fn 'glu'"):
        encoders.load("beats", tmp_path / "glu.pt")
    with pytest.raises(EncoderError, match=r"2 checkpoints in .*pass the file itself"):
        encoders.load("beats", _two_pt(tmp_path))


def _two_pt(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.pt", "b.pt"):
        beats_mod.save_checkpoint(_tiny_beats(), folder / name)
    return folder


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    import argparse
    import datetime

    file = tmp_path / "pickled.pt"
    torch.save({"cfg": {"when": datetime.date(2024, 1, 1)}, "model": {}}, file)
    with pytest.raises(EncoderError, match=r"pickled Python objects, which are never executed here \(Unsupported "
                                           r"global: GLOBAL datetime\.date"):
        encoders.load("beats", file)
    legacy = tmp_path / "legacy_args.pt"  # older fairseq checkpoints keep their arguments as a Namespace
    ckpt = {"args": argparse.Namespace(arch="x"), "cfg": _tiny_beats().cfg.to_checkpoint(),
            "model": _tiny_beats().state_dict()}
    torch.save(ckpt, legacy)
    assert encoders.load("beats", legacy).embed_dim == 64


# -- EAT -----------------------------------------------------------------------------------------------------------
EAT_OFFICIAL_KEYS_ONE_BLOCK = sorted([
    "modality_encoders.IMAGE.local_encoder.proj.weight", "modality_encoders.IMAGE.local_encoder.proj.bias",
    "modality_encoders.IMAGE.extra_tokens", "modality_encoders.IMAGE.fixed_positional_encoder.positions",
    "modality_encoders.IMAGE.context_encoder.norm.weight", "modality_encoders.IMAGE.context_encoder.norm.bias",
    *[f"blocks.0.{k}" for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                                "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                                "mlp.fc2.weight", "mlp.fc2.bias")],
])


def test_eat_state_dict_uses_the_official_key_names():
    assert sorted(_tiny_eat(depth=1).state_dict()) == EAT_OFFICIAL_KEYS_ONE_BLOCK


def test_eat_official_checkpoint_round_trip(tmp_path):
    model = _tiny_eat()
    file = tmp_path / "EAT-tiny_pt.pt"
    # what a pre-training checkpoint also holds: the CNN decoder and the EMA teacher (skipped on load)
    eat_mod.save_checkpoint(model, file, extra={"modality_encoders.IMAGE.decoder.blocks.0.0.weight": torch.randn(4, 4),
                                                "_ema": {"blocks.0.norm1.weight": torch.ones(64)}})
    saved = torch.load(file, weights_only=True)
    assert saved["cfg"]["model"]["modalities"]["image"]["patch_size"] == 16
    enc = encoders.load("eat", file)
    assert enc.model.cfg == model.cfg
    wave = _wave(2, 1.0)
    image, n_frames = model.fbank(wave)
    assert n_frames == 98 and image.shape == (2, 1, 128, 128)  # padded to target_length 128 frames
    with torch.no_grad():
        tokens = model(image)
    assert tokens.shape == (2, 1 + 8 * 8, 64)
    torch.testing.assert_close(enc.embed(wave), tokens[:, 0], atol=1e-5, rtol=1e-5)  # "cls" is the default
    frames = enc.frames(wave)
    assert frames.shape == (2, math.ceil(98 / 16), 64)  # the 7 time patches that start inside the clip
    torch.testing.assert_close(frames, tokens[:, 1:].reshape(2, 8, 8, 64).mean(2)[:, :7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.embed(wave, pooling="mean"), frames.mean(1), atol=1e-5, rtol=1e-5)
    with pytest.raises(EncoderError, match=r"no pooling 'first'; choose one of \['cls', 'mean', 'max'\]"):
        enc.embed(wave, pooling="first")


def test_eat_fine_tuned_layout_and_refusals(tmp_path):
    model = _tiny_eat()
    state = {"model." + k: v for k, v in model.state_dict().items()}
    state.update({"fc_norm.weight": torch.ones(64), "head.weight": torch.zeros(5, 64)})
    cfg = {"model": {"_name": "mae_image_classification", "pretrained_model_args": model.cfg.to_checkpoint()}}
    torch.save({"cfg": cfg, "model": state}, tmp_path / "ft.pt")
    wave = _wave(1, 1.0)
    with torch.no_grad():
        expected = model(model.fbank(wave)[0])[:, 0]
    torch.testing.assert_close(encoders.load("eat", tmp_path / "ft.pt").embed(wave), expected, atol=1e-5, rtol=1e-5)

    bad = model.cfg.to_checkpoint()
    bad["model"]["layer_norm_first"] = True
    torch.save({"cfg": bad, "model": model.state_dict()}, tmp_path / "preln.pt")
    with pytest.raises(EncoderError, match=r"layer_norm_first \(pre-LN blocks\)"):
        encoders.load("eat", tmp_path / "preln.pt")
    beats_file = tmp_path / "beats.pt"
    beats_mod.save_checkpoint(_tiny_beats(), beats_file)
    with pytest.raises(EncoderError, match="it is a BEATs checkpoint: load it as 'beats'"):
        encoders.load("eat", beats_file)


def test_eat_sincos_positions_by_hand():
    table = eat_mod.sincos_positions(8, height=3, width=2)  # rows (time, freq) = (0,0) (0,1) (1,0) ...
    assert table.shape == (6, 8)
    omega = torch.tensor([1.0, 0.01])  # 1 / 10000^(i / 2) for the 2 frequencies of each 4-d half
    row = 3  # time 1, frequency 1
    torch.testing.assert_close(table[row], torch.cat([torch.sin(1 * omega), torch.cos(1 * omega),
                                                      torch.sin(1 * omega), torch.cos(1 * omega)]))
    torch.testing.assert_close(table[4, :4], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # frequency 0
    torch.testing.assert_close(table[4, 4:], torch.cat([torch.sin(2 * omega), torch.cos(2 * omega)]))  # time 2


# -- aisfx (weights from the wheel) ----------------------------------------------------------------------------
def test_aisfx_loads_offline_from_its_package():
    pytest.importorskip("aisfx", reason="aisfx not installed: pip install --no-deps -r requirements-nodeps.txt")
    from stethoscope.encoders import aisfx

    enc = encoders.load("aisfx", None)
    assert enc.sample_rate == 44100 and enc.embed_dim == 512 and enc.path == aisfx.PACKAGE_PATH
    raw = encoders.base.load_checkpoint("aisfx", aisfx.package_checkpoint())[0]
    torch.testing.assert_close(enc.model.state_dict()["conv_block4.conv2.weight"],
                               raw["embedding_net.conv_block4.conv2.weight"])
    assert encoders.load_ref(enc.reference()).sha256 == enc.sha256  # "package:aisfx" resolves on any machine
    t = torch.arange(int(2.4 * SR)) / SR
    tone = 0.5 * torch.sin(2 * math.pi * 1000 * t)
    noise = torch.randn(t.shape[0], generator=torch.Generator().manual_seed(0)) * 0.2
    batch = torch.stack([tone, noise])
    frames = enc.frames(batch, sample_rate=SR)
    assert frames.shape == (2, 1, 512)  # 2.4 s at 44.1 kHz = 104 frames → one 100-frame block
    emb = enc.embed(batch, sample_rate=SR)
    torch.testing.assert_close(emb, enc.embed(batch, sample_rate=SR))
    assert torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0) < 0.95  # a tone is not noise
    with pytest.raises(EncoderInputError, match=r"needs at least 101376 samples at 44100 Hz \(2\.299 s; 36781 "
                                                r"samples at 16000 Hz\)"):
        enc.embed(tone[:36780], sample_rate=SR)


def test_aisfx_front_end_puts_a_tone_in_its_mel_band():
    from stethoscope.encoders import aisfx

    t = torch.arange(44100) / 44100
    spec = aisfx.spectrogram((0.3 * torch.sin(2 * math.pi * 1000 * t)).unsqueeze(0))
    assert spec.shape == (1, 1 + 44100 // 1024, 96)
    hz_to_mel = lambda f: 2595 * np.log10(1 + f / 700)  # HTK mel scale  # noqa: E731
    edges = np.linspace(hz_to_mel(0), hz_to_mel(22050), 98)  # 96 triangular bands: centres are edges[1:-1]
    expected = int(np.argmin(np.abs(edges[1:-1] - hz_to_mel(1000))))
    assert int(spec[0, 20].argmax()) == expected
    # each clip is scaled to peak 1 first: the tone at amplitude 0.3 and at 1.0 give the same spectrogram (within
    # float32 STFT rounding; without the scaling the tone's band differs by log10(1 / 0.09) / 9.4578 ≈ 0.11)
    tone = torch.sin(2 * math.pi * 1000 * t).unsqueeze(0)
    torch.testing.assert_close(spec, aisfx.spectrogram(tone), rtol=0, atol=1e-4)
    # log10(1e4 · mel + 1) / 9.4578: silence (mel 0) is exactly 0 in every cell
    assert torch.equal(aisfx.spectrogram(torch.zeros(1, 44100)), torch.zeros(1, 1 + 44100 // 1024, 96))
    assert float(spec[0, 20].max()) > 100 * float(spec[0, 20].median())  # the tone's band stands out of the rest


# -- embedding cache -----------------------------------------------------------------------------------------------
def test_embedding_spec_key_changes_with_every_field():
    base = EmbeddingSpec("beats", "a" * 64, 16000, "mean")
    variants = [EmbeddingSpec("beats", "b" * 64, 16000, "mean"), EmbeddingSpec("beats", "a" * 64, 44100, "mean"),
                EmbeddingSpec("beats", "a" * 64, 16000, "max"), EmbeddingSpec("eat", "a" * 64, 16000, "mean")]
    assert len({base.hash(), *(v.hash() for v in variants)}) == 5
    assert EmbeddingSpec.from_dict(base.to_dict()) == base
    with pytest.raises(EncoderError, match=r"encoder 'beats' offers \['mean', 'max'\]"):
        EmbeddingSpec("beats", "a" * 64, 16000, "cls")


def test_embed_clips_batches_mixed_lengths_in_order(tmp_path):
    file = tmp_path / "b.pt"
    beats_mod.save_checkpoint(_tiny_beats(), file)
    enc = encoders.load("beats", file)
    waves = [_wave(1, s, seed=i)[0].numpy() for i, s in enumerate((0.5, 0.8, 0.5, 0.8, 0.5))]
    out = embed_clips(enc, waves, SR, batch_size=2)
    one_by_one = np.stack([enc.embed(torch.from_numpy(w)).numpy()[0] for w in waves])
    np.testing.assert_allclose(out, one_by_one, atol=1e-5)


def test_cached_embeddings_of_real_clips(tmp_path, hf_dirs, dcase2020_root):
    from stethoscope.data.audio import load_audio

    enc = encoders.load("wav2vec2", hf_dirs["wav2vec2"][0])
    clips = sorted((dcase2020_root / "dev_data" / "slider" / "test").glob("*.wav"))[:3]
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(4, dtype=np.float32), 8000)  # 4 samples at 8 kHz: below the 20-sample minimum
    paths = [str(p) for p in clips] + [str(short)]
    loads = []

    def load_wave(path):
        loads.append(path)
        return load_audio(path, 8000)[0][:8000]  # 1 s at 8 kHz: the encoder resamples it to 16 kHz

    table, report, cached = cached_embeddings(enc, tmp_path / "store", "clipset1", paths, load_wave, 8000)
    assert not cached and table.column("path").to_pylist() == paths[:3]
    assert report["skipped"][0]["path"] == str(short) and report["skipped"][0]["reason"] == "too short"
    assert report["conversions"] == ["resampled from 8000 Hz to 16000 Hz (torchaudio.functional.resample)"]
    assert report["encoder"] == enc.reference().to_dict() and report["embed_dim"] == 32
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    expected = enc.embed(torch.from_numpy(load_wave(paths[1])), sample_rate=8000).numpy()[0]
    np.testing.assert_allclose(emb[1], expected, atol=1e-5)

    loads.clear()
    again, _, cached = cached_embeddings(enc, tmp_path / "store", "clipset1", paths, load_wave, 8000)
    assert cached and loads == [] and again.equals(table)  # reused: no clip decoded, no forward pass
    _, _, cached = cached_embeddings(enc, tmp_path / "store", "clipset1", paths, load_wave, 8000, pooling="max")
    assert not cached  # another pooling is another entry
    spec = EmbeddingSpec.of(enc, 8000)
    assert EmbeddingCache(tmp_path / "store").entry(spec, "clipset1").endswith(f"embeddings/{spec.hash()}/clipset1")
