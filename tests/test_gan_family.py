"""The GAN family (issue 3): GANomaly, Skip-GANomaly and EGBAD over 640-dim log-mel vectors, and the JBCS presets.

Data: seeded synthetic "fan" id 00 clips (stethoscope.data.synthetic), 2 s each, as JBCS 2024 log-mels
(dB re the clip maximum, floor −80 dB). Each method is trained once per module (8 epochs, seed 0) and the trained
model is shared by the tests below; the reproducibility test trains its own small runs.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from stethoscope import methods
from stethoscope.data.features import FeatureSpec, log_mel
from stethoscope.data.synthetic import ANOMALY_KINDS, synthesize_clip
from stethoscope.errors import ConfigError
from stethoscope.methods.skip_ganomaly import FCUNet
from stethoscope.presets import available_presets, load_preset, preset_info
from stethoscope.training.loop import seed_everything, train_in_process

GAN_METHODS = ("ganomaly", "skip_ganomaly", "egbad")
SEED = 0
EPOCHS = 8
OVERRIDES = {"batch_size": 128}  # paper defaults otherwise (lr 2e-4, β1 0.5, 3 hidden layers of 128, latent 8)
# Which modules belong to the generator side and which to the discriminator, per method.
G_MODULES = {
    "ganomaly": ("encoder_g", "decoder", "encoder"),
    "skip_ganomaly": ("generator",),
    "egbad": ("generator", "encoder"),
}
D_MODULES = {"ganomaly": ("discriminator",), "skip_ganomaly": ("discriminator",), "egbad": ("discriminator",)}

SPEC = FeatureSpec(db_ref="max", top_db=80.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    """log-mel clips [n, 128, 63]: train/val normals, test normals, severe (severity 1) and moderate (0.3)
    anomalies cycling through the four synthetic kinds."""
    rng = np.random.default_rng(SEED)

    def make(n: int, severity: float | None = None) -> np.ndarray:
        out = []
        for i in range(n):
            kind = ANOMALY_KINDS[i % len(ANOMALY_KINDS)] if severity is not None else None
            wave = synthesize_clip("fan", "00", anomaly=kind, severity=severity or 0.0, duration_s=2.0, rng=rng)
            out.append(log_mel(wave, SPEC).numpy())
        return np.stack(out)

    return {
        "train": make(24),
        "val": make(4),
        "normal": make(10),
        "severe": make(12, 1.0),
        "moderate": make(12, 0.3),
    }


@dataclasses.dataclass
class Run:
    method: methods.Method
    untrained: methods.Method  # same initial weights and input standardisation, no training step
    initial: dict[str, dict[str, torch.Tensor]]
    history: list[dict[str, float]]


@pytest.fixture(scope="module")
def runs(clips) -> dict[str, Run]:
    out = {}
    for name in GAN_METHODS:
        cls = methods.get(name)
        config = cls.make_config(OVERRIDES)
        seed_everything(SEED)
        method = cls(config, cls.default_feature_spec(config))
        untrained = copy.deepcopy(method)
        initial = {k: {n: t.detach().clone() for n, t in m.state_dict().items()} for k, m in method.modules().items()}
        history = train_in_process(
            method, [{"log_mel": clips["train"]}], epochs=EPOCHS, seed=SEED, val_clips=[{"log_mel": clips["val"]}]
        )
        untrained.load_extra_state(method.extra_state())
        out[name] = Run(method, untrained, initial, history)
    return out


def auc(method: methods.Method, normal: np.ndarray, anomalous: np.ndarray) -> float:
    scores = method.score({"log_mel": torch.from_numpy(np.concatenate([normal, anomalous]))}).numpy()
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return float(roc_auc_score(labels, scores))


def train_reconstruction_error(method: methods.Method, log_mels: np.ndarray) -> float:
    """Mean |x − x̂| over the training vectors, eval mode, standardised units."""
    method.eval()
    with torch.no_grad():
        x = method.normalize(torch.from_numpy(method.examples({"log_mel": log_mels})["x"]))
        return float(F.l1_loss(method.reconstruct(x), x))


# -- training ---------------------------------------------------------------------------------------------------
def test_ganomaly_losses_move_the_right_way(runs):
    h = runs["ganomaly"].history
    first, last = h[0], h[-1]
    assert last["loss_con"] < 0.7 * first["loss_con"], (first, last)  # G reconstructs better
    assert last["loss_enc"] < 0.5 * first["loss_enc"], (first, last)  # E(G(x)) comes to match G_E(x)
    assert last["loss_g"] < first["loss_g"]
    assert last["loss_d"] < first["loss_d"], (first, last)  # D learns to tell x from G(x)
    assert last["val_loss"] < h[0]["val_loss"]  # held-out clips too


def test_skip_ganomaly_losses_move_the_right_way(runs):
    h = runs["skip_ganomaly"].history
    first, last = h[0], h[-1]
    assert last["loss_con"] < 0.7 * first["loss_con"], (first, last)
    assert last["loss_lat"] < first["loss_lat"], (first, last)  # f(x̂) comes closer to f(x)
    assert last["loss_g"] < first["loss_g"]
    assert last["loss_d"] < first["loss_d"], (first, last)
    assert last["val_loss"] < h[0]["val_loss"]


def test_egbad_discriminator_learns(runs):
    """BiGAN: the only loss with a "right way" is D's (it learns to tell (x, E(x)) from (G(z), z)); G/E's loss is
    the adversary's. That G and E do learn is shown by the parameter and AUC tests below."""
    h = runs["egbad"].history
    assert h[-1]["loss_d"] < h[0]["loss_d"], (h[0], h[-1])
    assert all(math.isfinite(row[k]) for row in h for k in ("loss_d", "loss_g", "loss_rec", "val_loss"))


@pytest.mark.parametrize("name", GAN_METHODS)
def test_alternating_steps_update_generator_and_discriminator(runs, name):
    """Every parameter tensor of every G-side and D-side module changed, and each optimizer took exactly one step
    per training_step (the G step and the D step both happen every batch)."""
    run = runs[name]
    mods = run.method.modules()
    assert set(mods) == set(G_MODULES[name]) | set(D_MODULES[name])
    for key, module in mods.items():
        for pname, p in module.named_parameters():
            assert not torch.equal(p.detach(), run.initial[key][pname]), f"{name}.{key}.{pname} never changed"
    steps = sum(int(row["steps"]) for row in run.history)
    assert steps == EPOCHS * math.ceil(24 * 59 / OVERRIDES["batch_size"])  # 24 clips × 59 vectors
    optimizers = run.method.optimizers()
    assert len(optimizers) == 2
    for opt_name, opt in optimizers.items():
        counts = {int(st["step"]) for st in opt.state.values()}
        assert counts == {steps}, f"{name}.{opt_name} stepped {counts} times, expected {steps}"


@pytest.mark.parametrize("name", GAN_METHODS)
def test_seeded_run_is_reproducible(clips, name):
    cls = methods.get(name)
    config = cls.make_config(OVERRIDES)
    train = [{"log_mel": clips["train"][:6]}]

    def run(seed: int):
        seed_everything(seed)
        m = cls(config, cls.default_feature_spec(config))
        history = train_in_process(m, train, epochs=2, seed=seed)
        return history, m.state_dict()["modules"]

    h1, s1 = run(7)
    h2, s2 = run(7)
    h3, s3 = run(8)
    assert h1 == h2
    for key in s1:
        for pname in s1[key]:
            assert torch.equal(s1[key][pname], s2[key][pname]), f"{key}.{pname} differs between identical runs"
    assert any(not torch.equal(s1[k][p], s3[k][p]) for k in s1 for p in s1[k] if s1[k][p].is_floating_point())


# -- detection --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ganomaly", "skip_ganomaly"])
def test_auc_on_severe_anomalies(runs, clips, name, record_property):
    """Severe anomalies (severity 1, all four kinds), paper defaults: GANomaly and Skip-GANomaly must reach
    AUC ≥ 0.85 (issue 3)."""
    value = auc(runs[name].method, clips["normal"], clips["severe"])
    record_property(f"auc_severe_{name}", value)
    assert value >= 0.85, f"{name}: AUC {value:.3f} on severe anomalies"


def test_egbad_in_the_papers_form_and_with_a_linear_latent(runs, clips, record_property):
    """EGBAD as JBCS §3.2 builds it (BatchNorm + ReLU on E's latent too) ranks severe anomalies above chance
    (measured AUC 0.80 with the classification score, 0.88 with feature matching). Its codes are then non-negative
    while the prior z ~ N(0, I) is not, so D can separate the pairs by the sign of z; with a plain Linear latent
    (``latent_activation="linear"``, Zenati et al.'s design) the same training reaches AUC 1.0 on both. This pins
    that trade-off: the paper's form stays the default, reported as measured."""
    paper = runs["egbad"].method
    x = torch.from_numpy(np.concatenate([clips["normal"], clips["severe"]]))
    y = np.r_[np.zeros(len(clips["normal"])), np.ones(len(clips["severe"]))]
    got = {k: float(roc_auc_score(y, v.numpy())) for k, v in paper.score_variants({"log_mel": x}).items()}
    record_property("auc_severe_egbad", got)
    assert set(got) == {"classification", "feature_matching"}
    assert got["classification"] >= 0.7 and got["feature_matching"] >= 0.7, got
    cls = methods.get("egbad")
    config = cls.make_config({**OVERRIDES, "latent_activation": "linear"})
    seed_everything(SEED)
    linear = cls(config, cls.default_feature_spec(config))
    train_in_process(linear, [{"log_mel": clips["train"]}], epochs=EPOCHS, seed=SEED)
    lin = {k: float(roc_auc_score(y, v.numpy())) for k, v in linear.score_variants({"log_mel": x}).items()}
    record_property("auc_severe_egbad_linear_latent", lin)
    assert min(lin.values()) >= 0.85 and lin["classification"] > got["classification"], (lin, got)


@pytest.mark.parametrize("name", GAN_METHODS)
def test_training_improves_auc_on_moderate_anomalies(runs, clips, name, record_property):
    """Moderate anomalies (severity 0.3): the trained model beats the same network before training by ≥ 0.1 AUC,
    so the severe-set AUC is not just a property of a random projection."""
    trained = auc(runs[name].method, clips["normal"], clips["moderate"])
    untrained = auc(runs[name].untrained, clips["normal"], clips["moderate"])
    record_property(f"auc_moderate_{name}", trained)
    record_property(f"auc_moderate_untrained_{name}", untrained)
    assert trained >= untrained + 0.1, f"{name}: trained AUC {trained:.3f}, untrained {untrained:.3f}"


# -- skip connections -------------------------------------------------------------------------------------------
def test_skip_connections_lower_training_reconstruction_error(runs, clips, monkeypatch, record_property):
    """At equal epochs (8, paper defaults: 3 hidden layers, BatchNorm + ReLU latent), Skip-GANomaly reconstructs its
    training data better than GANomaly (measured 0.342 vs 0.436 standardised units, mean |x − x̂|), its trained
    decoder relies on the skips (zeroing them at inference raises its error to 0.489), and it beats the same model
    trained with its skip tensors replaced by zeros (0.358).

    The last two isolate the skips: part of the gap to GANomaly comes from the losses (GANomaly's L_enc also pulls
    on G_E), so "lower than GANomaly" alone would pass with dead skips. Caveat, measured with the earlier 4-layer
    default: trained to convergence the plain and skip generators reach nearly the same floor (0.195 vs 0.188), set
    by the noise in the log-mels; the gap at 8 epochs is mostly one of speed, and with 3 layers it is small.
    """
    skip = train_reconstruction_error(runs["skip_ganomaly"].method, clips["train"])
    plain = train_reconstruction_error(runs["ganomaly"].method, clips["train"])
    record_property("rec_skip_ganomaly", skip)
    record_property("rec_ganomaly", plain)
    assert skip < 0.95 * plain, (skip, plain)

    def zero_skips(self, x):
        z, hidden = self.encoder.forward_with_hidden(x)
        skips = [torch.zeros_like(h) for h in hidden]
        return self.decoder(z, skips), z, skips

    monkeypatch.setattr(FCUNet, "forward_with_skips", zero_skips)  # ablation: same model and seed, skips carry nothing
    zeroed = train_reconstruction_error(runs["skip_ganomaly"].method, clips["train"])
    record_property("rec_skip_ganomaly_skips_zeroed_at_inference", zeroed)
    assert zeroed > 1.2 * skip, (zeroed, skip)
    cls = methods.get("skip_ganomaly")
    config = cls.make_config(OVERRIDES)
    seed_everything(SEED)
    ablated = cls(config, cls.default_feature_spec(config))
    train_in_process(ablated, [{"log_mel": clips["train"]}], epochs=EPOCHS, seed=SEED)
    no_skip = train_reconstruction_error(ablated, clips["train"])
    record_property("rec_skip_ganomaly_zeroed_skips", no_skip)
    assert skip < no_skip, (skip, no_skip)


def test_skip_tensor_shapes_and_use():
    net = FCUNet(input_dim=640, hidden_dim=128, num_hidden=4, latent_dim=8).eval()
    x = torch.randn(5, 640)
    out, z, skips = net.forward_with_skips(x)
    assert out.shape == (5, 640) and z.shape == (5, 8)
    assert [tuple(s.shape) for s in skips] == [(5, 128)] * 4
    # Decoder layer j takes the previous decoder output concatenated with the mirrored encoder output.
    widths = [block[0].in_features for block in net.decoder.blocks] + [net.decoder.head.in_features]
    assert widths == [8, 256, 256, 256, 256]
    # Every skip reaches the output: the output's gradient with respect to each skip tensor is non-zero.
    skips = [s.detach().requires_grad_(True) for s in skips]
    net.decoder(z.detach(), skips).sum().backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in skips)


# -- inference contract -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GAN_METHODS)
def test_score_localize_and_state_round_trip(runs, clips, name):
    method = runs[name].method
    batch = torch.from_numpy(np.concatenate([clips["normal"][:2], clips["severe"][:1]]))
    scores = method.score({"log_mel": batch})
    assert scores.shape == (3,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    # Eval mode: a clip's score does not depend on the other clips in its batch.
    alone = method.score({"log_mel": batch[2:3]})
    torch.testing.assert_close(alone, scores[2:3])
    maps = method.localize({"log_mel": batch})
    assert maps.shape == batch.shape and (maps >= 0).all()
    # A fresh instance loaded from state_dict (weights, optimizers, input standardisation) scores identically.
    cls = type(method)
    fresh = cls(method.config, method.feature_spec)
    fresh.load_state_dict(method.state_dict())
    torch.testing.assert_close(fresh.score({"log_mel": batch}), scores)


# -- configs ----------------------------------------------------------------------------------------------------
def test_registry_feature_spec_and_shared_config_names():
    table3 = {"epochs", "lr", "latent_dim", "dropout", "init", "beta1", "num_hidden", "batch_size"}
    for name in GAN_METHODS:
        cls = methods.get(name)
        assert cls.name == name and name in methods.names()
        config = cls.make_config()
        assert cls.default_feature_spec(config) == SPEC
        fields = {f.name for f in dataclasses.fields(config)}
        assert table3 <= fields and config.val_fraction == 0.1
        assert (config.lr, config.beta1, config.latent_dim, config.hidden_dim) == (2e-4, 0.5, 8, 128)
        # JBCS §3.2: three hidden layers, BatchNorm + ReLU on the latent too; epochs / batch: Table 4's common row
        assert (config.num_hidden, config.latent_activation, config.epochs, config.batch_size) == (3, "bn_relu", 10, 16)
    for name in ("ganomaly", "skip_ganomaly"):
        config = methods.get(name).make_config()
        assert (config.lambda_adv, config.lambda_con, config.lambda_enc) == (1.0, 50.0, 1.0)
        assert config.adv_loss == "bce"  # JBCS Eq. 5; feature matching is the option
    assert methods.get("ganomaly").make_config().enc_loss == "l2_norm"  # JBCS Eq. 7: a norm, not a mean square
    assert methods.get("skip_ganomaly").make_config().enc_loss == "mse"  # Akçay 2019's L_lat
    assert methods.get("skip_ganomaly").make_config().score_weight == 0.9
    assert methods.get("egbad").make_config().score_weight == 0.9
    assert methods.get("egbad").make_config().score_variant == "classification"  # JBCS §2


@pytest.mark.parametrize(
    "name,values,needle",
    [
        ("ganomaly", {"batch_size": 1}, "batch_size"),
        ("ganomaly", {"dropout": 1.0}, "dropout"),
        ("ganomaly", {"init": "he_normal"}, "init"),
        ("ganomaly", {"lambda_con": -1.0}, "lambda_con"),
        ("ganomaly", {"adv_loss": "hinge"}, "adv_loss"),
        ("ganomaly", {"num_hidden": 0}, "num_hidden"),
        ("skip_ganomaly", {"score_weight": 1.5}, "score_weight"),
        ("egbad", {"lr": 0.0}, "lr"),
        ("egbad", {"lambda_adv": 1.0}, "lambda_adv"),  # EGBAD has no λ weights: unknown key
    ],
)
def test_config_validation(name, values, needle):
    with pytest.raises(ConfigError, match=needle):
        methods.get(name).make_config(values)


def test_normal_init_scheme():
    cls = methods.get("ganomaly")
    config = cls.make_config({"init": "normal"})
    seed_everything(SEED)
    m = cls(config, SPEC)
    w = m.encoder_g.blocks[0][0].weight.detach()
    bn = m.encoder_g.blocks[0][1].weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(bn.mean()) - 1.0) < 0.01 and float(bn.std()) > 0.01


# -- presets ----------------------------------------------------------------------------------------------------
MACHINE_TYPES = ["fan", "pump", "slider", "ToyCar", "ToyConveyor", "valve"]
COLUMNS = ("epochs", "num_hidden", "lambda_adv", "lambda_con", "lambda_enc", "batch_size")

# JBCS 2024 (DOI 10.5753/jisa.2024.3897) Tables 4 and 5, typed in from the paper's rows as issue 10 quotes them,
# independently of the YAML files. Columns: Epochs, HL, λadv, λcon, λlat (our lambda_enc), Batch.
JBCS_TABLE_4 = {  # GANomaly (FCN adaptation), best per label
    "fan": (10, 3, 1, 50, 1, 16),
    "pump": (10, 3, 50, 1, 50, 1024),
    "slider": (10, 3, 1, 50, 1, 16),  # "Slide Rail"
    "ToyCar": (90, 4, 1, 50, 1, 512),
    "ToyConveyor": (30, 4, 1, 50, 1, 512),
    "valve": (10, 3, 1, 50, 1, 16),
}
JBCS_TABLE_5 = {  # Skip-GANomaly (FCN adaptation), best per label
    "fan": (10, 3, 1, 50, 1, 16),
    "pump": (10, 3, 50, 1, 50, 1024),
    "slider": (10, 3, 50, 50, 50, 512),
    "ToyCar": (20, 3, 1, 1, 50, 128),
    "ToyConveyor": (30, 4, 1, 50, 1, 512),
    "valve": (30, 4, 1, 50, 1, 512),
}
# The paper's text after Table 3: common to every model.
JBCS_COMMON = {"lr": 0.0002, "latent_dim": 8, "init": "glorot_uniform", "dropout": 0.0, "beta1": 0.5}


@pytest.mark.parametrize("method,table", [("ganomaly", JBCS_TABLE_4), ("skip_ganomaly", JBCS_TABLE_5)])
def test_presets_match_the_published_tables_value_by_value(method, table):
    assert available_presets()[method] == MACHINE_TYPES
    info = preset_info(method)
    assert info["source"]["doi"] == "10.5753/jisa.2024.3897"
    assert info["source"]["table"] == (4 if method == "ganomaly" else 5)
    assert info["table_fields"] == list(COLUMNS) and info["labels"]["slider"] == "Slide Rail"
    assert not any(info["missing"].values())
    for machine, row in table.items():
        expected = {**JBCS_COMMON, **dict(zip(COLUMNS, row))}
        got = load_preset(method, machine)
        assert got == expected, machine
        for name, value in expected.items():  # type and value: 50 and 50.0 are both fine, "16" is not
            assert isinstance(got[name], (int, float, str)) and got[name] == value, (machine, name)
        config = methods.get(method).make_config(got)  # the Config takes every value as it is
        assert all(getattr(config, k) == v for k, v in expected.items()), machine


def test_egbad_preset_is_the_common_values_for_every_machine_type():
    assert available_presets()["egbad"] == MACHINE_TYPES
    assert preset_info("egbad")["table_fields"] == []
    for machine in MACHINE_TYPES:
        assert load_preset("egbad", machine) == JBCS_COMMON


def test_a_machine_type_without_a_row_is_a_clear_error_listing_the_rows():
    with pytest.raises(ConfigError, match=r"'autoencoder'.*methods with presets: .*ganomaly") as e:
        load_preset("autoencoder", "fan")
    with pytest.raises(ConfigError) as e:
        load_preset("ganomaly", "bearing")
    message = str(e.value)
    assert "no row for machine type 'bearing'" in message
    assert "fan, pump, slider (Slide Rail), ToyCar, ToyConveyor, valve" in message
    with pytest.raises(ConfigError, match=r"'Slide Rail'.*slider \(Slide Rail\)"):
        load_preset("ganomaly", "Slide Rail")


def test_overrides_win_over_the_preset_and_the_run_records_the_row():
    from stethoscope.stages.ingest import resolve_config

    cfg, record = resolve_config("ganomaly", "slider", {"epochs": 2, "batch_size": 64}, preset=True)
    assert (cfg.epochs, cfg.batch_size) == (2, 64)  # --set / --epochs win
    assert (cfg.num_hidden, cfg.lambda_adv, cfg.lambda_con, cfg.lambda_enc, cfg.lr) == (3, 1.0, 50.0, 1.0, 2e-4)
    assert record["row"] == dict(zip(COLUMNS, JBCS_TABLE_4["slider"])) and record["label"] == "Slide Rail"
    assert record["overridden"] == ["batch_size", "epochs"] and record["source"]["table"] == 4
    cfg, record = resolve_config("ganomaly", "slider", {"epochs": 2})
    assert record is None and cfg.epochs == 2
