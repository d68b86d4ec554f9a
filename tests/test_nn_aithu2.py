"""The blocks of AITHU part 2 (issue 16 §1-2): WSP, the section-conditional flow (NFCDEE), the GMM loss of IMDN, the
IMDN networks, and the Table 7 / Table 8 preset files. CPU, one torch thread, seeded."""

from __future__ import annotations

import math
from importlib import resources

import pytest
import torch
import yaml

from stethoscope.errors import ConfigError
from stethoscope.nn.flows import ConditionalFlowConfig, SectionConditionalFlow, WSPFlow
from stethoscope.nn.imdn import (
    DFNet,
    IGNN,
    IMDNConfig,
    LRCGNN,
    NETWORKS,
    build_imdn_network,
    imdn_nll,
    interpolation_windows,
)
from stethoscope.nn.mixture import MixtureHead, MixtureParams, diagonal_gmm_nll
from stethoscope.nn.wsp import WeightedStatisticPooling, WSPConfig, frame_segments
from stethoscope.presets import available_presets, load_preset, preset_info

MACHINES = ("bearing", "fan", "gearbox", "slider", "ToyCar", "ToyTrain", "valve")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and on a loaded 2-core machine far faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------------------------ WSP
def test_wsp_on_a_hand_computed_example():
    x = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # [B=1, M=2, T=2]: means (2, 2), population stds (1, 0)
    wsp = WeightedStatisticPooling(WSPConfig(init_alpha=0.75))
    assert torch.allclose(wsp.weights, torch.tensor([0.75, 0.25]))
    assert torch.allclose(wsp(x), torch.tensor([[0.75 * 2 + 0.25 * 1, 0.75 * 2 + 0.25 * 0]]))


def test_wsp_weights_stay_on_the_simplex_after_optimizer_steps():
    wsp = WeightedStatisticPooling()
    x = torch.randn(8, 4, 20) + 5.0  # mean ≈ 5 > std ≈ 1: maximising the output pushes α up
    opt = torch.optim.SGD(wsp.parameters(), lr=5.0)  # large steps: raw (α, β) parameters would leave the simplex
    history = []
    for _ in range(30):
        opt.zero_grad()
        (-wsp(x).mean()).backward()
        opt.step()
        w = wsp.weights.detach()
        history.append(w)
        assert torch.all(w > 0) and abs(float(w.sum()) - 1.0) < 1e-6, w
    assert float(history[-1][0]) > 0.95  # the optimizer did move α towards the larger statistic


def test_frame_segments_cut_non_overlapping_segments():
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).view(2, 3, 10)
    seg = frame_segments(x, 4)  # T = 10 → 2 whole segments, frames 8-9 dropped
    assert seg.shape == (2, 2, 3, 4)
    assert torch.equal(seg[1, 1], x[1, :, 4:8])
    assert frame_segments(x, 4, hop=3).shape == (2, 3, 3, 4)
    with pytest.raises(ValueError, match="n_frames = 11"):
        frame_segments(x, 11)


# ------------------------------------------------------------------------------------------------------- the flow
@pytest.mark.parametrize("flow", ["maf", "nsf"])
def test_flow_density_integrates_to_one_in_1d(flow):
    """∫ p(x | s) dx = 1 for each section, after training, with a non-unit standardization scale: this fails if the
    change of variables (the −Σ log scale term) or the library's log-determinant were wrong."""
    torch.manual_seed(1)
    section = torch.randint(0, 2, (512,))
    x = torch.where(section == 0, -4.0, 5.0) + torch.randn(512) * torch.where(section == 0, 1.0, 2.5)
    model = SectionConditionalFlow(ConditionalFlowConfig(features=1, num_sections=2, flow=flow, transforms=2,
                                                         hidden_features=(16,)))
    model.fit_standardization(x[:, None])
    assert float(model.scale) > 3.0  # the Jacobian term matters
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        model.nll(x[:, None], section).mean().backward()
        opt.step()
    grid = torch.linspace(-40.0, 40.0, 16001)
    with torch.no_grad():
        for s in (0, 1):
            density = model.log_prob(grid[:, None], torch.full((grid.numel(),), s)).exp()
            assert abs(float(torch.trapezoid(density, grid)) - 1.0) < 1e-2, (s, float(torch.trapezoid(density, grid)))


def test_flow_learns_the_section_conditional_density():
    """After 150 steps the held-out NLL is that of the true density (each section is N(center, 0.5² I)), it is lower
    on held-out normal points than on shifted ones, and a point scored under the wrong section gets a higher NLL:
    the flow learned p(x | section)."""
    torch.manual_seed(2)
    d = 4
    centers = torch.tensor([[2.0, -1.0, 0.0, 3.0], [-2.0, 1.0, 2.0, -3.0]])

    def sample(n):
        s = torch.randint(0, 2, (n,))
        return centers[s] + 0.5 * torch.randn(n, d), s

    x, s = sample(1024)
    model = SectionConditionalFlow(ConditionalFlowConfig(features=d, num_sections=2, transforms=2,
                                                         hidden_features=(32, 32)))
    model.fit_standardization(x)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    with torch.no_grad():
        start = float(model.nll(x, s).mean())
    for _ in range(150):
        opt.zero_grad()
        loss = model.nll(x, s).mean()
        loss.backward()
        opt.step()
    x_test, s_test = sample(256)
    with torch.no_grad():
        normal = model.nll(x_test, s_test)
        shifted = model.nll(x_test + 2.0, s_test)  # 4 standard deviations off in every dimension
        wrong_section = model.nll(x_test, 1 - s_test)
    true_nll = d * 0.5 * math.log(2 * math.pi * 0.5**2) + d / 2  # expected −log N(x; c, 0.25 I): 2.90 nats
    assert float(loss.detach()) < start - 1.0
    assert abs(float(normal.mean()) - true_nll) < 0.3, (float(normal.mean()), true_nll)  # ours: 2.81
    assert float(shifted.mean()) > float(normal.mean()) + 5.0
    assert float(wrong_section.mean()) > float(normal.mean()) + 5.0
    assert float((shifted > normal).float().mean()) > 0.95


def test_flow_one_hot_context_and_bad_sections():
    model = SectionConditionalFlow(ConditionalFlowConfig(features=3, num_sections=3, context="one_hot",
                                                         transforms=1, hidden_features=(8,)))
    assert model.embedding is None and model.context(torch.tensor([2])).tolist() == [[0.0, 0.0, 1.0]]
    assert model.log_prob(torch.randn(2, 3), torch.tensor([0, 2])).shape == (2,)
    with pytest.raises(ValueError, match=r"section values \[3, 7\] outside 0..2"):
        model.log_prob(torch.randn(3, 3), torch.tensor([3, 7, 1]))
    with pytest.raises(ValueError, match=r"x must be \[B, 3\]"):
        model.log_prob(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="section must be integer"):
        model.log_prob(torch.randn(2, 3), torch.tensor([0.0, 1.0]))


def test_wsp_flow_scores_shifted_spectra_higher_and_keeps_alpha_on_the_simplex():
    """WSP and the flow trained together on synthetic log-mels of two sections; a clip whose spectrum is raised by
    a few dB in some bands scores higher."""
    torch.manual_seed(3)
    m, t = 8, 24
    profile = torch.stack([torch.linspace(-60, -20, m), torch.linspace(-20, -60, m)])  # a spectral tilt per section

    def clips(n, section):
        return profile[section][:, :, None] + 2.0 * torch.randn(n, m, t)

    s = torch.randint(0, 2, (256,))
    x = clips(256, s)
    model = WSPFlow(ConditionalFlowConfig(features=m, num_sections=2, transforms=2, hidden_features=(32,)))
    model.fit_standardization(x)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(100):
        opt.zero_grad()
        model(x, s).mean().backward()
        opt.step()
    w = model.wsp.weights.detach()
    assert torch.all(w > 0) and abs(float(w.sum()) - 1.0) < 1e-6
    s_test = torch.randint(0, 2, (64,))
    normal = clips(64, s_test)
    anomalous = normal.clone()
    anomalous[:, 2:5] += 6.0
    with torch.no_grad():
        assert float((model(anomalous, s_test) > model(normal, s_test)).float().mean()) > 0.9


def test_flow_config_errors():
    with pytest.raises(ConfigError, match="flow = 'glow'"):
        ConditionalFlowConfig(features=4, num_sections=2, flow="glow")
    with pytest.raises(ConfigError, match="context = 'text'"):
        ConditionalFlowConfig(features=4, num_sections=2, context="text")
    with pytest.raises(ConfigError, match="num_sections = 0"):
        ConditionalFlowConfig(features=4, num_sections=0)
    with pytest.raises(ConfigError, match="init_alpha = 1.0"):
        WSPConfig(init_alpha=1.0)


# --------------------------------------------------------------------------------------------------- the GMM loss
def test_gmm_nll_equals_a_hand_computed_value_for_one_component():
    x = torch.tensor([[1.0, -1.0]])
    mu, sigma = (0.0, 0.5), (1.0, 2.0)
    # −log N(1; 0, 1) − log N(−1; 0.5, 4), written out
    expected = (0.5 * (1.0 - mu[0]) ** 2 / sigma[0] ** 2 + math.log(sigma[0]) + 0.5 * math.log(2 * math.pi)) + (
        0.5 * (-1.0 - mu[1]) ** 2 / sigma[1] ** 2 + math.log(sigma[1]) + 0.5 * math.log(2 * math.pi)
    )
    params = MixtureParams(
        logits=torch.tensor([[3.7]]),  # one component: its weight is 1 whatever the logit
        means=torch.tensor([[mu]]),
        log_scales=torch.log(torch.tensor([[sigma]])),
    )
    assert abs(float(diagonal_gmm_nll(x, params)) - expected) < 1e-5, (float(diagonal_gmm_nll(x, params)), expected)


def test_gmm_nll_matches_torch_distributions_for_three_components():
    torch.manual_seed(4)
    n, c, d = 5, 3, 6
    params = MixtureParams(torch.randn(n, c), torch.randn(n, c, d), 0.3 * torch.randn(n, c, d))
    x = torch.randn(n, d)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=params.logits),
        torch.distributions.Independent(torch.distributions.Normal(params.means, params.log_scales.exp()), 1),
    )
    assert torch.allclose(diagonal_gmm_nll(x, params), -reference.log_prob(x), atol=1e-5)
    # log-sum-exp form: a target far from every component gives a finite, large NLL rather than inf
    far = diagonal_gmm_nll(x + 1e3, params)
    assert torch.isfinite(far).all() and bool((far > 1e4).all())
    with pytest.raises(ValueError, match=r"means must be \[N, C, D\]"):
        diagonal_gmm_nll(x, MixtureParams(params.logits, params.means[:, :2], params.log_scales))


def test_mixture_head_shapes_and_scale_floor():
    head = MixtureHead(10, n_components=3, dim=4, min_scale=0.01)
    with torch.no_grad():
        p = head(torch.randn(7, 10))
        assert p.logits.shape == (7, 3) and p.means.shape == (7, 3, 4) and p.log_scales.shape == (7, 3, 4)
        head.params.bias[3 * 4 :] = -200.0  # raw scales far below 0: σ = 0.01 + softplus(−200) = the floor
        head.params.weight.zero_()
        floored = head(torch.randn(7, 10)).log_scales
    assert torch.allclose(floored, torch.full_like(floored, math.log(0.01)))
    assert head.params.out_features == 2 * 3 * 4 and head.weights.out_features == 3


# ----------------------------------------------------------------------------------------------- the IMDN networks
def test_interpolation_windows_leave_out_the_center_frame():
    x = torch.arange(10, dtype=torch.float32).repeat(1, 2, 1)  # [B=1, M=2, T=10], value = frame index
    context, center = interpolation_windows(x, 5)  # center = frame 2 of each window
    assert context.shape == (1, 6, 4, 2) and center.shape == (1, 6, 2)
    assert context[0, 3, :, 0].tolist() == [3.0, 4.0, 6.0, 7.0] and center[0, 3].tolist() == [5.0, 5.0]
    context, center = interpolation_windows(x, 4, hop=2)  # even window: the center is frame 4 // 2 = 2
    assert context.shape == (1, 4, 3, 2) and context[0, 1, :, 0].tolist() == [2.0, 3.0, 5.0]
    assert center[0, 1, 0] == 4.0
    with pytest.raises(ValueError, match="needs n_frames = 11"):
        interpolation_windows(x, 11)


@pytest.mark.parametrize(
    "network, cls, n_mels, n_frames",
    [("ignn", IGNN, 64, 30), ("lrcgnn", LRCGNN, 128, 60), ("dfnet", DFNet, 64, 100)],  # Table 8 rows: valve, fan, gearbox
)
def test_network_output_shapes_at_table_sizes(network, cls, n_mels, n_frames):
    config = IMDNConfig(network=network, n_mels=n_mels, n_frames=n_frames, n_components=4)
    net = build_imdn_network(config)
    assert type(net) is cls
    out = net(torch.randn(2, n_frames - 1, n_mels))
    assert out.logits.shape == (2, 4)
    assert out.means.shape == out.log_scales.shape == (2, 4, n_mels)
    # Table 6's last layer: FC((nF − 1)·W → 2·nC·nMels), W = 128 for IGNN / LRCGNN, n_mels for DFNet
    width = n_mels if network == "dfnet" else 128
    assert (net.head.params.in_features, net.head.params.out_features) == ((n_frames - 1) * width, 2 * 4 * n_mels)
    with pytest.raises(ValueError, match=rf"expects context frames \[N, {n_frames - 1}, {n_mels}\]"):
        net(torch.randn(2, n_frames, n_mels))


def test_ignn_layers_follow_table_6():
    net = IGNN(IMDNConfig(n_mels=64, n_frames=30))
    assert (net.stack1.fc[0].in_features, net.stack1.fc[0].out_features) == (64, 128)
    assert (net.stack1.gru.input_size, net.stack1.gru.hidden_size, net.stack1.gru.num_layers) == (128, 128, 3)
    assert (net.squeeze[0].in_features, net.squeeze[0].out_features) == (128, 32)
    assert (net.stack2.fc[0].in_features, net.stack2.fc[0].out_features) == (32, 128)
    assert (net.stack2.gru.input_size, net.stack2.gru.hidden_size, net.stack2.gru.num_layers) == (128, 128, 3)
    lrc = LRCGNN(IMDNConfig(n_mels=64, n_frames=30))
    assert (lrc.conv.conv.in_channels, lrc.conv.conv.out_channels, lrc.conv.conv.kernel_size) == (128, 128, (3,))


def _synthetic_log_mels(n: int, m: int, t: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth spectro-temporal patterns: a sinusoid over frames per mel band with a random phase per clip, so the
    center frame is predictable from its neighbours."""
    phase = torch.rand(n, 1, 1, generator=generator) * 2 * math.pi
    frames = torch.arange(t, dtype=torch.float32)[None, None, :]
    bands = torch.arange(m, dtype=torch.float32)[None, :, None]
    return torch.sin(0.4 * frames + 0.3 * bands + phase) + 0.05 * torch.randn(n, m, t, generator=generator)


@pytest.mark.parametrize("network", NETWORKS)
def test_tiny_imdn_loss_goes_down_and_scores_corrupted_frames_higher(network):
    g = torch.Generator().manual_seed(5)
    config = IMDNConfig(network=network, n_mels=8, n_frames=5, n_components=2, hidden=16, bottleneck=4,
                        gru_layers=1, dfnet_width=16, dfnet_emb_dim=16, dfnet_df_hidden=16, dfnet_df_layers=1)
    net = build_imdn_network(config)
    clips = _synthetic_log_mels(16, 8, 24, g)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch.no_grad():
        start = float(imdn_nll(net, clips).mean())
    for _ in range(60):
        opt.zero_grad()
        loss = imdn_nll(net, clips, hop=2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = float(imdn_nll(net, clips).mean())
        normal = _synthetic_log_mels(8, 8, 24, g)
        corrupted = normal + (torch.rand(normal.shape, generator=g) < 0.1) * 3.0  # random clicks
        scores_normal = imdn_nll(net, normal).mean(dim=1)
        scores_corrupted = imdn_nll(net, corrupted).mean(dim=1)
    assert end < start - 10.0, (start, end)  # nats per window (our run: about 8.7 → −10)
    assert bool((scores_corrupted > scores_normal).all()), (scores_normal, scores_corrupted)


def test_imdn_config_errors():
    with pytest.raises(ConfigError, match="network = 'cnn'"):
        IMDNConfig(network="cnn")
    with pytest.raises(ConfigError, match="n_frames = 1"):
        IMDNConfig(n_frames=1)
    with pytest.raises(ConfigError, match="conv_kernel = 4"):
        IMDNConfig(conv_kernel=4)
    with pytest.raises(ConfigError, match="n_components = 0"):
        IMDNConfig(n_components=0)


# --------------------------------------------------------------------------------------- Table 7 / Table 8 presets
TABLE_7 = {  # machine: (n_mels, n_fft, frames, reported h-mean %)
    "bearing": (128, 2048, 100, 68.12),
    "fan": (128, 2048, 60, 68.54),
    "gearbox": (64, 2048, 100, 79.96),
    "slider": (64, 2048, 100, 78.52),
    "ToyCar": (64, 2048, 100, 65.23),
    "ToyTrain": (64, 2048, 100, 60.29),
    "valve": (64, 1024, 30, 68.27),
}
TABLE_8 = {  # machine: (network, reported h-mean %); features as Table 7
    "bearing": ("lrcgnn", 60.92),
    "fan": ("lrcgnn", 62.24),
    "gearbox": ("dfnet", 67.73),
    "slider": ("lrcgnn", 73.17),
    "ToyCar": ("lrcgnn", 68.29),
    "ToyTrain": ("dfnet", 65.07),
    "valve": ("ignn", 86.19),
}


def _preset_file(name: str) -> dict:
    return yaml.safe_load(resources.files("stethoscope.presets").joinpath(name).read_text(encoding="utf-8"))


def test_wsp_nfcdee_presets_match_table_7():
    doc = _preset_file("wsp_nfcdee_aithu2022.yaml")
    assert doc["method"] == "wsp_nfcdee" and doc["source"]["table"] == 7
    assert list(doc["machines"]) == list(MACHINES)
    for machine, (n_mels, n_fft, frames, hmean) in TABLE_7.items():
        assert doc["machines"][machine] == {"n_mels": n_mels, "n_fft": n_fft, "n_frames": frames}, machine
        assert doc["reported"]["machines"][machine] == hmean, machine
        # the registered Method takes the row (the loader validates it against wsp_nfcdee's Config)
        assert load_preset("wsp_nfcdee", machine) == {"n_mels": n_mels, "n_fft": n_fft, "n_frames": frames}
    assert doc["reported"]["metric"] == "h-mean"


def test_imdn_presets_match_table_8_and_build_networks():
    doc = _preset_file("imdn_aithu2022.yaml")
    assert doc["method"] == "imdn" and doc["source"]["table"] == 8
    assert list(doc["machines"]) == list(MACHINES)
    for machine, (network, hmean) in TABLE_8.items():
        n_mels, n_fft, frames, _ = TABLE_7[machine]
        row = doc["machines"][machine]
        assert row == {"n_mels": n_mels, "n_fft": n_fft, "n_frames": frames, "network": network}, machine
        assert doc["reported"]["machines"][machine] == hmean, machine
        IMDNConfig(network=row["network"], n_mels=row["n_mels"], n_frames=row["n_frames"])  # valid sizes


def test_the_preset_loader_reads_both_files():
    """The package loader accepts both files (the Methods load_preset them: tests/test_wsp_nfcdee.py, test_imdn.py)."""
    presets = available_presets()
    assert presets["wsp_nfcdee"] == list(MACHINES) and presets["imdn"] == list(MACHINES)
    for method in ("wsp_nfcdee", "imdn"):
        info = preset_info(method)
        assert info["missing"] == {m: [] for m in MACHINES}, info
