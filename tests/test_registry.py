"""The bundle store and loaded bundles (stethoscope.publishing): write → load round trip, integrity checks, safe names, safe loading (no Ray needed)."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

from stethoscope import checkpoint, methods, publishing
from stethoscope.data.features import FeatureSpec, input_spec_to_dict, log_mel
from stethoscope.evaluation import Ensemble, Standardizer, fit_gamma_threshold
from stethoscope.data.labels import group_of
from stethoscope.errors import DataError
from stethoscope.publishing import BundleNotFound, RegistryError, store

SPEC = FeatureSpec(n_fft=512, hop_length=256, n_mels=32)
CFG = {"hidden_dim": 16, "num_hidden": 1, "latent_dim": 4, "epochs": 1, "batch_size": 32}


def _member(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    cls = methods.get("autoencoder")
    m = cls(cls.make_config(CFG), SPEC)
    m.eval()
    checkpoint.save(m, folder, {"seed": seed})
    return folder


def _waves(n: int = 3, seconds: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32) for _ in range(n)]


@pytest.fixture()
def published(tmp_path):
    a, b = _member(tmp_path / "ckpt_a", 1), _member(tmp_path / "ckpt_b", 2)
    ens = Ensemble(["ae-a", "ae-b"], [Standardizer(3.0, 2.0, 10), Standardizer(-1.0, 0.5, 10)], np.array([0.3, 0.7]))
    th = fit_gamma_threshold(np.random.default_rng(0).gamma(2.0, 1.0, 100))
    root = tmp_path / "registry"
    manifest = publishing.write_bundle(root, machine_type="slider", members=[("ae-a", a), ("ae-b", b)], ensemble=ens,
                                     threshold=th, metrics={"validation": {"auc": 0.75, "pauc": 0.6}})
    return root, manifest, (a, b), ens, th


def _bundle_dir(root: Path, manifest: dict) -> Path:
    return root / manifest["machine_type"] / manifest["scope"] / manifest["version"]


def test_round_trip_scores_like_the_members_and_records_everything(published):
    root, manifest, (a, b), ens, th = published
    assert manifest["format_version"] == publishing.FORMAT_VERSION and manifest["created"].endswith("Z")
    assert "git_commit" in manifest and manifest["input_specs"] == [[SPEC.hash(), input_spec_to_dict(SPEC)]]
    assert [m["inputs"] for m in manifest["members"]] == [{"log_mel": input_spec_to_dict(SPEC)}] * 2
    assert [m["groups"] for m in manifest["members"]] == [[], []]  # built without a vocabulary: no group labels
    assert manifest["threshold"]["value"] == th.value and manifest["metrics"]["validation"]["auc"] == 0.75
    assert sorted(manifest["files"]) == ["members/ae-a/meta.json", "members/ae-a/state.pt",
                                         "members/ae-b/meta.json", "members/ae-b/state.pt"]
    bundle = publishing.load_bundle(root, "slider")
    assert bundle.version == manifest["version"] and bundle.sample_rate == 16000 and bundle.min_samples == 1024
    waves = _waves()
    got = bundle.score_waveforms(waves, "id_00", want_map=True)
    # the same numbers by hand: each member's score → standardize → 0.3 / 0.7 combination → threshold
    mels = torch.stack([log_mel(w, SPEC) for w in waves])
    raw = []
    for folder in (a, b):
        m, _ = checkpoint.load(folder)
        raw.append(m.score({"log_mel": mels}).numpy())
    raw = np.stack(raw, axis=1).astype(np.float64)
    expected = 0.3 * (raw[:, 0] - 3.0) / 2.0 + 0.7 * (raw[:, 1] + 1.0) / 0.5
    assert [g["score"] for g in got] == pytest.approx(expected.tolist(), rel=1e-12)
    assert [g["raw"] for g in got] == [pytest.approx(r.tolist()) for r in raw]
    assert [g["is_anomaly"] for g in got] == [bool(e > th.value) for e in expected]
    assert set(got[0]["maps"]) == {"ae-a", "ae-b"} and got[0]["maps"]["ae-a"].shape == (32, 63)
    assert [s["machine_type"] for s in publishing.list_bundles(root)] == ["slider"]


def test_new_versions_move_current_and_keep_the_old_ones(published, tmp_path):
    root, manifest, (a, _), _, th = published
    ens = Ensemble(["ae-a"], [Standardizer(0.0, 1.0, 3)], np.array([1.0]))
    second = publishing.write_bundle(root, machine_type="slider", members=[("ae-a", a)], ensemble=ens, threshold=th,
                                   metrics={})
    assert publishing.current_version(root, "slider") == second["version"] != manifest["version"]
    assert len(publishing.load_bundle(root, "slider").members) == 1
    assert len(publishing.load_bundle(root, "slider", version=manifest["version"]).members) == 2


def test_a_changed_file_is_refused(published):
    root, manifest, *_ = published
    state = _bundle_dir(root, manifest) / "members" / "ae-b" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=r"members/ae-b/state.pt does not match its manifest hash"):
        publishing.load_bundle(root, "slider")


def test_a_missing_file_or_manifest_is_a_clear_error(published):
    root, manifest, *_ = published
    folder = _bundle_dir(root, manifest)
    (folder / "members" / "ae-a" / "meta.json").unlink()
    with pytest.raises(RegistryError, match=r"incomplete: members/ae-a/meta.json is missing"):
        publishing.load_bundle(root, "slider")
    (folder / "manifest.json").unlink()
    with pytest.raises(RegistryError, match="has no manifest.json"):
        publishing.load_bundle(root, "slider")


def test_an_unknown_format_version_is_refused(published):
    root, manifest, *_ = published
    path = _bundle_dir(root, manifest) / "manifest.json"
    m = json.loads(path.read_text())
    m["format_version"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(RegistryError, match="unknown bundle format_version 99"):
        publishing.load_bundle(root, "slider")


class _Payload:
    """Unpickling this would create a file: torch.load(weights_only=True) must refuse it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickled_object_in_a_bundle_is_never_run(published, tmp_path):
    root, manifest, *_ = published
    folder = _bundle_dir(root, manifest)
    marker = tmp_path / "payload-ran"
    state = folder / "members" / "ae-a" / "state.pt"
    torch.save({"modules": {}, "extra": _Payload(str(marker))}, state)
    # re-sign the manifest so only weights_only stands between the file and the unpickler
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m["files"]["members/ae-a/state.pt"]["sha256"] = store.sha256(state.read_bytes())
    path.write_text(json.dumps(m))
    with pytest.raises(RegistryError, match="member 'ae-a' cannot be loaded"):
        publishing.load_bundle(root, "slider")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["..", ".", "../etc", "a/b", "", "x" * 200, "slider\x00", "s p a c e"])
def test_unsafe_names_are_refused(published, name):
    root, manifest, (a, _), ens, th = published
    with pytest.raises(RegistryError, match="is not allowed"):
        publishing.validate_name(name)
    with pytest.raises(RegistryError):
        publishing.load_bundle(root, name)
    with pytest.raises(RegistryError):
        publishing.write_bundle(root, machine_type=name, members=[("ae-a", a), ("ae-b", a)], ensemble=ens,
                              threshold=th, metrics={})


def test_a_manifest_cannot_point_outside_the_bundle(published):
    root, manifest, *_ = published
    path = _bundle_dir(root, manifest) / "manifest.json"
    m = json.loads(path.read_text())
    m["files"]["../../../../outside.txt"] = {"sha256": "0" * 64, "bytes": 1}
    path.write_text(json.dumps(m))
    with pytest.raises(RegistryError, match="not allowed"):
        publishing.load_bundle(root, "slider")


def test_scopes_resolve_per_id_then_machine_wide_and_unknown_machines_list_the_known(published, tmp_path):
    root, _, (a, _), _, th = published
    ens = Ensemble(["ae-a"], [Standardizer(0.0, 1.0, 3)], np.array([1.0]))
    publishing.write_bundle(root, machine_type="slider", scope="id_04", members=[("ae-a", a)], ensemble=ens,
                          threshold=th, metrics={})
    assert publishing.resolve_scope(root, "slider", "id_04") == "id_04"
    assert publishing.resolve_scope(root, "slider", "id_00") == "all"
    with pytest.raises(BundleNotFound, match=r"unknown machine type 'fan'; published machine types: \['slider'\]") as e:
        publishing.resolve_scope(root, "fan", "id_00")
    assert e.value.known == ["slider"]
    assert group_of("section", "01") == "section_01"
    with pytest.raises(DataError, match="two digits"):
        group_of("machine_id", "0")


def test_a_filesystem_uri_root_works(tmp_path):
    a = _member(tmp_path / "ckpt", 5)
    ens = Ensemble(["ae"], [Standardizer(1.0, 2.0, 4)], np.array([1.0]))
    th = fit_gamma_threshold([1.0, 2.0, 3.0, 5.0, 8.0])
    uri = (tmp_path / "reg").as_uri()  # file:///...: the pyarrow-filesystem code path
    publishing.write_bundle(uri, machine_type="valve", members=[("ae", a)], ensemble=ens, threshold=th, metrics={})
    bundle = publishing.load_bundle(uri, "valve")
    assert bundle.members[0].name == "ae"
    assert (tmp_path / "reg" / "valve" / "all" / "CURRENT").is_file()


def test_a_members_score_variant_is_recorded_and_applied_when_the_bundle_loads(tmp_path):
    """A run that chose a score variant on validation (score_variant.json) publishes a member that serves with it;
    the checkpoint itself keeps the variant it was trained with."""
    spec = FeatureSpec(n_fft=512, hop_length=256, n_mels=32, db_ref="max")
    cls = methods.get("egbad")
    torch.manual_seed(0)
    m = cls(cls.make_config({"hidden_dim": 16, "num_hidden": 1, "latent_dim": 4, "batch_size": 8}), spec)
    m.eval()
    folder = tmp_path / "ckpt"
    checkpoint.save(m, folder, {"seed": 0})
    ens = Ensemble(["eg"], [Standardizer(0.0, 1.0, 3)], np.array([1.0]))
    th = fit_gamma_threshold([1.0, 2.0, 3.0, 5.0, 8.0])
    root = tmp_path / "registry"
    manifest = publishing.write_bundle(root, machine_type="fan", members=[("eg", folder)], ensemble=ens, threshold=th,
                                     metrics={}, score_variants={"eg": "feature_matching"})
    assert manifest["members"][0]["score_variant"] == "feature_matching"
    assert checkpoint.load(folder)[0].score_variant == "classification"  # the run's model is not rewritten
    bundle = publishing.load_bundle(root, "fan")
    assert bundle.members[0].method.score_variant == "feature_matching"
    waves = _waves(2)
    got = bundle.score_waveforms(waves, "id_00")
    mels = torch.stack([log_mel(w, spec) for w in waves])
    expected = m.score_variants({"log_mel": mels})
    assert [g["raw"][0] for g in got] == pytest.approx(expected["feature_matching"].tolist())
    assert expected["feature_matching"].tolist() != pytest.approx(expected["classification"].tolist())
    with pytest.raises(RegistryError, match="unknown egbad score variant 'nope'"):
        publishing.write_bundle(root, machine_type="fan", members=[("eg", folder)], ensemble=ens, threshold=th,
                              metrics={}, score_variants={"eg": "nope"})


def test_groups_are_named_in_one_place_and_requests_map_to_them():
    """data.labels names every group (machine_id for DCASE 2020, section for 2021+); publishing.scope_for picks the
    scope that serves one: the group's own bundle, else the machine-wide one."""
    from stethoscope.data.labels import (MissingGroupError, id_field, join_group_key, parse_group,
                                         request_group)

    assert id_field("dcase2020") == "machine_id" and id_field("dcase2021+") == "section"
    assert parse_group("id_00") == ("machine_id", "00") and parse_group("section_03") == ("section", "03")
    for bad in ("id_0", "sec_01", "id_00x", "all", ""):
        with pytest.raises(DataError, match="not valid"):
            parse_group(bad)
    assert join_group_key("fan", "id_02") == "fan/id_02"
    with pytest.raises(DataError):
        join_group_key("fan", "02")
    assert request_group("slider", "machine_id", "04", None) == "id_04"
    assert request_group("valve", "section", "99", "01") == "section_01"  # the other field is ignored
    with pytest.raises(MissingGroupError, match=r"identified by section .*send section, not machine_id"):
        request_group("valve", "section", "00", None)
    with pytest.raises(DataError, match=r"machine_id '7' is not valid: expected two digits"):
        request_group("slider", "machine_id", "7", None)
    assert publishing.scope_for(["all", "id_04"], "id_04") == "id_04"
    assert publishing.scope_for(["all", "id_04"], "id_00") == "all"
    assert publishing.scope_for(["id_04"], "id_00") is None
    assert publishing.scope_for(["all"], None) == "all"
