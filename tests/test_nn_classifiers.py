"""The neural blocks of the machine-ID / section classifiers (issues 13 and 15): shapes, hand-computed examples,
loss identities, parameter counts against the FGASpecNet paper's Table 5, and a loss that goes down."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from stethoscope.data.features import FeatureSpec, log_mel
from stethoscope.errors import ConfigError
from stethoscope.nn.backbones import BACKBONES, build_backbone
from stethoscope.nn.classifiers import (
    ClassifierConfig,
    MachineIDClassifier,
    anomaly_score,
    count_parameters,
    score_gradient_map,
)
from stethoscope.nn.fga import FGAConfig, FrequencyGatedAttention
from stethoscope.nn.frontend import CLASSIFIER_LOGMEL, LogMel
from stethoscope.nn.margins import (
    ArcFace,
    ArcFaceConfig,
    SoftTriple,
    SoftTripleConfig,
    mixup,
    noisy_arcmix_loss,
)
from stethoscope.nn.mobilefacenet import MobileFaceNet, MobileFaceNetConfig, SqueezeExcitation
from stethoscope.nn.specnet import FourierConv2d, SpecNet, SpectralBatchNorm2d
from stethoscope.nn.stgram import TgramNet, TgramNetConfig, tagram


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tensors are tiny: one intra-op thread is faster, and on a loaded 2-core machine far faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ---------------------------------------------------------------------------------------------- front end, Tgram
def test_logmel_front_end_gives_128x313_and_matches_the_data_layer(dcase2020_root):
    path = sorted((dcase2020_root / "dev_data" / "slider" / "train").glob("*.wav"))[0]
    wav, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and wav.shape == (160000,)
    batch = LogMel()(torch.from_numpy(np.stack([wav, wav[::-1].copy()])))
    assert batch.shape == (2, 128, 313) and batch.dtype == torch.float32
    reference = log_mel(wav, CLASSIFIER_LOGMEL)  # the ingest path (float64, one clip)
    assert torch.allclose(batch[0], reference, atol=1e-2), float((batch[0] - reference).abs().max())
    with pytest.raises(ValueError, match="n_fft"):
        LogMel()(torch.zeros(1, 1000))


def test_tgramnet_gives_the_log_mel_frame_grid():
    net = TgramNet()
    f_t = net(torch.randn(2, 160000))
    assert f_t.shape == (2, 128, 313)  # 10 s at 16 kHz: 1 + 160000 // 512 frames, like F_LM
    assert TgramNetConfig().num_frames(160000) == CLASSIFIER_LOGMEL.num_frames(160000) == 313
    with pytest.raises(ValueError, match="n_frames = 313"):
        net(torch.randn(1, 16000))


def test_tagram_on_a_hand_computed_example():
    f_lm = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])  # [B=1, M=2, T=2]
    # frame 0: mean 2 + max 3 = 5; frame 1: mean 1 + max 2 = 3
    expected = torch.tensor([[[sigmoid(5) * 1, sigmoid(3) * 2], [sigmoid(5) * 3, 0.0]]])
    assert torch.allclose(tagram(f_lm), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ FGA
def test_fga_on_a_hand_computed_example():
    fga = FrequencyGatedAttention(FGAConfig(n_mels=2, blend=0.5, time_kernel=3))
    with torch.no_grad():
        fga.freq_gate.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]))
        fga.freq_gate.bias.copy_(torch.tensor([0.0, 1.0]))
        fga.time_gate.weight.copy_(torch.tensor([[[0.0, 1.0, 0.0]]]))
        fga.time_gate.bias.fill_(-1.0)
    f_ta = torch.tensor([[[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]]])  # [1, M=2, T=3]
    f_lm = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]])
    f_s = torch.full((1, 2, 3), 10.0)
    # s_f = [max_t: 2, 3 | mean_t: 1, 4/3] → Linear → [2, 1 − 4/3] ; mean_f = [2, 0.5, 1] → conv − 1 → [1, −0.5, 0]
    g_f = [sigmoid(2.0), sigmoid(-1.0 / 3.0)]
    g_t = [sigmoid(1.0), sigmoid(-0.5), sigmoid(0.0)]
    gate = torch.tensor([[[gf * gt for gt in g_t] for gf in g_f]])
    expected = (1 - 0.5 * gate) * f_lm + 0.5 * gate * f_s
    enhanced, g = fga(f_ta, f_lm, f_s)
    assert torch.allclose(g, gate, atol=1e-6)
    assert torch.allclose(enhanced, expected, atol=1e-5)
    with pytest.raises(ValueError, match="share one shape"):
        fga(f_ta, f_lm, f_s[:, :, :2])
    with pytest.raises(ConfigError, match="blend"):
        FGAConfig(blend=1.5)


# -------------------------------------------------------------------------------------------------- SpecNet
def test_fourier_conv_is_a_complex_multiply_add():
    conv = FourierConv2d(1, 1, kernel_size=1)
    with torch.no_grad():
        conv.real.weight.fill_(2.0)
        conv.imag.weight.fill_(-3.0)
        conv.real.bias.fill_(0.5)
        conv.imag.bias.fill_(0.25)
    z = torch.randn(2, 1, 3, 4, dtype=torch.complex64)
    expected = complex(2.0, -3.0) * z + complex(0.5, 0.25)
    assert torch.allclose(conv(z), expected, atol=1e-5)


def test_spectral_bn_normalises_real_and_imaginary_parts_separately():
    torch.manual_seed(0)
    real = 5.0 + 3.0 * torch.randn(16, 2, 4, 5)
    imag = -2.0 + 0.5 * torch.randn(16, 2, 4, 5)
    out = SpectralBatchNorm2d(2).train()(torch.complex(real, imag))
    for part in (out.real, out.imag):
        mean = part.mean(dim=(0, 2, 3))
        var = part.var(dim=(0, 2, 3), unbiased=False)
        assert torch.allclose(mean, torch.zeros(2), atol=1e-5)
        assert torch.allclose(var, torch.ones(2), atol=1e-3)


def test_specnet_with_a_zero_residual_returns_the_log_mel():
    torch.manual_seed(0)
    logmel = torch.randn(2, 128, 313) * 20 - 40
    net = SpecNet()
    out = net(logmel)
    assert out.shape == logmel.shape
    assert not torch.allclose(out, logmel, atol=1e-3)  # a random Ŝ changes F_LM ...
    with torch.no_grad():
        for conv in (net.c2.real, net.c2.imag):
            conv.weight.zero_()
            conv.bias.zero_()
    assert torch.allclose(net(logmel), logmel, atol=1e-4)  # ... Ŝ = 0: Re(IFFT2(FFT2(x))) = x


# ------------------------------------------------------------------------------------------- MobileFaceNet
def test_mobilefacenet_shapes_and_global_depthwise_kernel():
    net = MobileFaceNet(MobileFaceNetConfig(in_channels=4, input_size=(128, 313)))
    assert net.gdc_kernel == (8, 20)  # the public STgram-MFN code's hard-coded (8, 20) for 128 × 313
    assert MobileFaceNet(MobileFaceNetConfig(setting="stgram_mfn")).gdc_kernel == (8, 20)
    assert net.eval()(torch.randn(2, 4, 128, 313)).shape == (2, 128)
    with pytest.raises(ValueError, match=r"\[B, 4, 128, 313\]"):
        net(torch.randn(2, 4, 128, 200))
    with pytest.raises(ConfigError, match="setting"):
        MobileFaceNetConfig(setting="resnet")


def test_mfnse_adds_squeeze_excitation_to_every_bottleneck():
    plain = MobileFaceNet(MobileFaceNetConfig(in_channels=1, input_size=(64, 192)))
    se = MobileFaceNet(MobileFaceNetConfig(in_channels=1, input_size=(64, 192), se=True))
    n_blocks = sum(row[2] for row in se.config.rows)
    assert sum(isinstance(m, SqueezeExcitation) for m in se.modules()) == n_blocks
    assert not any(isinstance(m, SqueezeExcitation) for m in plain.modules())
    x = torch.randn(2, 64, 192)
    assert se.eval()(x).shape == plain.eval()(x).shape == (2, 128)


# --------------------------------------------------------------------------------------------------- losses
def _embeddings_and_head(margin: float, scale: float, classes: int = 5):
    torch.manual_seed(1)
    head = ArcFace(16, classes, ArcFaceConfig(margin=margin, scale=scale))
    return torch.randn(8, 16), torch.randint(0, classes, (8,)), head


def test_arcface_reduces_to_cross_entropy_at_m0_s1():
    x, y, head = _embeddings_and_head(0.0, 1.0)
    cos = F.normalize(x) @ F.normalize(head.weight).t()
    assert torch.allclose(head.loss(x, y), F.cross_entropy(cos, y), atol=1e-6)
    # the margin does something: with m = 0.5 the true-class logit drops, so the loss rises
    x, y, margined = _embeddings_and_head(0.5, 1.0)
    assert margined.loss(x, y) > F.cross_entropy(margined(x), y) + 1e-3


def test_noisy_arcmix_reduces_to_cross_entropy_at_m0_s1_lambda1():
    x, y, head = _embeddings_and_head(0.0, 1.0)
    y_j = y.flip(0)
    cos = F.normalize(x) @ F.normalize(head.weight).t()
    assert torch.allclose(noisy_arcmix_loss(head, x, y, y_j, 1.0), F.cross_entropy(cos, y), atol=1e-6)
    # general λ with a margin: one set of logits, margin on y_i only, used for both labels
    x, y, head = _embeddings_and_head(0.7, 30.0)
    z = head(x, y)
    expected = 0.3 * F.cross_entropy(z, y) + 0.7 * F.cross_entropy(z, y_j)
    assert torch.allclose(noisy_arcmix_loss(head, x, y, y_j, 0.3), expected, atol=1e-5)


def test_mixup_mixes_every_input_with_one_lambda_and_permutation():
    wav, mel, y = torch.randn(6, 100), torch.randn(6, 4, 5), torch.arange(6)
    (wav_m, mel_m), y_i, y_j, lam = mixup([wav, mel], y, 0.5, np.random.default_rng(3))
    perm = y_j  # labels are 0..5, so y_j is the permutation itself
    ref = np.random.default_rng(3)  # λ ~ Beta(α, α), then the permutation, from the run's generator
    assert lam == float(ref.beta(0.5, 0.5)) and perm.tolist() == ref.permutation(6).tolist()
    assert torch.equal(y_i, y)
    assert torch.allclose(wav_m, lam * wav + (1 - lam) * wav[perm])
    assert torch.allclose(mel_m, lam * mel + (1 - lam) * mel[perm])
    assert mixup([wav], y, 0.5, np.random.default_rng(3))[3] == lam  # the seed reproduces λ


def test_softtriple_with_one_center_and_no_margin_is_normalized_softmax():
    torch.manual_seed(2)
    head = SoftTriple(16, 5, SoftTripleConfig(centers=1, delta=0.0, lam=20.0))
    x, y = torch.randn(8, 16), torch.randint(0, 5, (8,))
    cos = F.normalize(x) @ F.normalize(head.centers, dim=0)
    assert torch.allclose(head.loss(x, y), F.cross_entropy(20.0 * cos, y), atol=1e-5)
    # δ > 0 lowers the true class's logit, so the loss rises
    margined = SoftTriple(16, 5, SoftTripleConfig(centers=1, delta=0.1, lam=20.0))
    margined.load_state_dict(head.state_dict())
    assert margined.loss(x, y) > head.loss(x, y) + 1e-3


def test_softtriple_regulariser_on_merged_centers():
    head = SoftTriple(4, 2, SoftTripleConfig(centers=3, tau=0.2))
    with torch.no_grad():
        head.centers.copy_(torch.tensor([[1.0] * 3 + [0.0] * 3, [0.0] * 3 + [1.0] * 3, [0.0] * 6, [0.0] * 6]))
    # all K centers of each class coincide: every pair is at distance sqrt(eps), C·K(K−1)/2 pairs / (C·K·(K−1))
    assert torch.allclose(head.regulariser(), torch.tensor(math.sqrt(1e-5) / 2), rtol=0.05)  # float32 round-off
    x = torch.randn(3, 4)
    # K coincident centers act as one: S equals the single-center similarity
    assert torch.allclose(head.similarity(x)[:, 0], F.normalize(x)[:, 0], atol=1e-6)


def test_anomaly_score_is_minus_log_posterior():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    assert torch.allclose(anomaly_score(logits, torch.tensor([0, 1])), torch.tensor([math.log(4.0), math.log(4 / 3)]))
    with pytest.raises(ValueError, match="labels"):
        anomaly_score(logits, torch.tensor([0, 2]))


# ------------------------------------------------------------------------------------------ the family
@pytest.mark.parametrize(
    "preset, channels, has_gate, has_softtriple",
    [("stgram_mfn", 2, False, False), ("tastgram", 3, False, False), ("fgaspecnet", 4, True, True)],
)
def test_presets_build_the_table3_rows(preset, channels, has_gate, has_softtriple):
    config = ClassifierConfig.preset(preset, n_mels=16, n_frames=17, mobilefacenet_setting=[[2, 16, 1, 2]])
    model = MachineIDClassifier(config, num_classes=3).eval()
    wav = torch.randn(2, 8192)  # 1 + 8192 // 512 = 17 frames
    logmel = LogMel(FeatureSpec(n_fft=1024, hop_length=512, n_mels=16))(wav)
    out = model(wav, logmel)
    assert out.inputs.shape == (2, channels, 16, 17)
    assert out.embedding.shape == (2, 128) and out.logits.shape == (2, 3)
    assert (out.gate is not None) == has_gate and (model.softtriple is not None) == has_softtriple
    if has_gate:
        assert out.gate.shape == (2, 16, 17) and bool(((out.gate > 0) & (out.gate < 1)).all())
    expected_loss = "arcface" if preset == "stgram_mfn" else "noisy_arcmix"
    assert config.loss == expected_loss


def test_score_gradient_map_is_per_clip():
    torch.manual_seed(0)
    config = ClassifierConfig.preset("fgaspecnet", n_mels=16, n_frames=17, mobilefacenet_setting=[[2, 16, 1, 2]])
    model = MachineIDClassifier(config, num_classes=3).eval()
    wav = torch.randn(3, 8192)
    logmel = LogMel(FeatureSpec(n_fft=1024, hop_length=512, n_mels=16))(wav)
    labels = torch.tensor([0, 1, 2])
    maps = score_gradient_map(model, wav, logmel, labels)
    assert maps.shape == (3, 16, 17) and bool((maps >= 0).all()) and float(maps.sum()) > 0
    alone = score_gradient_map(model, wav[1:2], logmel[1:2], labels[1:2])  # the map of clip 1 needs only clip 1
    assert torch.allclose(maps[1:2], alone, rtol=1e-4, atol=1e-6)


def test_family_config_errors():
    with pytest.raises(ConfigError, match="needs specnet"):
        ClassifierConfig.preset("tastgram", fga=True)
    with pytest.raises(ConfigError, match="preset"):
        ClassifierConfig.preset("stgram")
    with pytest.raises(ValueError, match="rng"):
        model = MachineIDClassifier(ClassifierConfig.preset("tastgram", n_mels=16, n_frames=17), 3)
        model.loss(torch.randn(2, 8192), torch.randn(2, 16, 17), torch.tensor([0, 1]))


def test_full_size_fgaspecnet_forward_on_a_10s_clip():
    model = MachineIDClassifier(ClassifierConfig.preset("fgaspecnet"), num_classes=41).eval()
    wav = torch.randn(1, 160000) * 0.1
    with torch.no_grad():
        out = model(wav, LogMel()(wav))
    assert out.inputs.shape == (1, 4, 128, 313)
    assert out.embedding.shape == (1, 128) and out.logits.shape == (1, 41) and out.gate.shape == (1, 128, 313)


#: FGASpecNet paper, Table 5 (parameters, 41-class head).
TABLE5 = {"stgram_mfn": 1.1e6, "tastgram": 1.2e6, "fgaspecnet": 1.3e6}


def test_parameter_counts_match_table5_within_10_percent():
    counts = {}
    for preset, paper in TABLE5.items():
        n = count_parameters(MachineIDClassifier(ClassifierConfig.preset(preset), num_classes=41))
        counts[preset] = n
        print(f"{preset:12s} {n:>9,d} parameters  (paper {paper / 1e6:.1f} M, {100 * (n / paper - 1):+.1f} %)")
    original = count_parameters(
        MachineIDClassifier(ClassifierConfig.preset("stgram_mfn", mobilefacenet_setting="stgram_mfn"), num_classes=41)
    )
    print(f"stgram_mfn with the public STgram-MFN bottleneck setting: {original:,d} parameters")
    for preset, paper in TABLE5.items():
        assert abs(counts[preset] / paper - 1) <= 0.10, (preset, counts[preset])
    assert counts["stgram_mfn"] < counts["tastgram"] < counts["fgaspecnet"]


def test_a_tiny_fgaspecnet_learns_separable_machine_ids():
    """Three "machine IDs" = three tones in noise; the full FGASpecNet loss (Noisy-ArcMix + SoftTriple) trains."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t = torch.arange(8192) / 16000.0
    labels = torch.arange(3).repeat(4)
    freqs = torch.tensor([500.0, 2000.0, 5000.0])[labels]
    phase = torch.rand(12, 1) * 2 * math.pi
    wav = 0.3 * torch.sin(2 * math.pi * freqs[:, None] * t + phase) + 0.01 * torch.randn(12, 8192)
    logmel = LogMel(FeatureSpec(n_fft=1024, hop_length=512, n_mels=16))(wav)
    config = ClassifierConfig.preset("fgaspecnet", n_mels=16, n_frames=17, mobilefacenet_setting=[[2, 16, 1, 2]])
    model = MachineIDClassifier(config, num_classes=3).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def clean_loss() -> float:
        with torch.no_grad():
            return float(model.arcface.loss(model(wav, logmel).embedding, labels))

    before = clean_loss()
    for _ in range(40):
        optimizer.zero_grad()
        losses = model.loss(wav, logmel, labels, rng)
        losses["loss"].backward()
        optimizer.step()
    after = clean_loss()
    assert set(losses) == {"loss", "classification", "softtriple"}
    print(f"clean ArcFace loss {before:.3f} → {after:.3f} after 40 steps")
    assert after < 0.5 * before, (before, after)


# ------------------------------------------------------------------------------------ AITHU backbones (15)
@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("n_freq", [64, 1025])  # 64-band log-mel (ToyCar), n_fft 2048 STFT magnitude (the rest)
def test_section_backbones_embed_192_frame_spectrograms(name, n_freq):
    torch.manual_seed(0)
    net = build_backbone(name, n_freq, 192).eval()
    with torch.no_grad():
        emb = net(torch.randn(2, n_freq, 192).abs())
    expected = {"mobilefacenet": 128, "mfnse": 128, "ecapa_tdnn": 192, "cnn6": 512}[name]
    assert emb.shape == (2, expected) == (2, net.config.embedding_dim)
    assert torch.isfinite(emb).all() and not torch.allclose(emb[0], emb[1])
    with pytest.raises(ValueError):
        net(torch.randn(2, n_freq + 1, 192))


def test_build_backbone_rejects_unknown_names_and_keys():
    assert build_backbone("cnn6", 128, 192, embedding_dim=64).config.embedding_dim == 64
    with pytest.raises(ConfigError, match="backbone"):
        build_backbone("resnet", 128, 192)
    with pytest.raises(ConfigError, match="unknown key"):
        build_backbone("cnn6", 128, 192, width=3)
