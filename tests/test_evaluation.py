"""Tests of stethoscope.evaluation: AUC / pAUC arithmetic, the 2021+ harmonic mean, and the files evaluate() writes.

Tables are built from the real clip names under ../shared/data (the scores are hand-chosen, so the expected AUCs can
be worked out by hand); where the samples lack something (a second section, unlabelled evaluation clips) the
missing names follow the official grammar and the comment says so.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from stethoscope.errors import DataError
from stethoscope.evaluation import (
    ScoreError,
    auc,
    evaluate,
    format_table,
    pauc,
    pauc_unstandardized,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():  # the checkout may sit elsewhere; the shared data lives at /work/shared/data
    DATA = Path("/work/shared/data")
DEV2020 = DATA / "dcase2020_task2_dev_sample" / "dev_data"
DEV2023 = DATA / "dcase2023_task2_dev_sample" / "dev_data" / "raw"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ----------------------------------------------------------------------------------------------------------------
# metrics on hand-checked examples
# ----------------------------------------------------------------------------------------------------------------
def test_pauc_and_unstandardized_match_hand_computation():
    # 5 anomalies (1) and 5 normals (0); sorted by score (descending):
    #   A .9, A .8, {N .7, A .7 tied}, N .6, A .5, N .4, A .3, N .2, N .1
    # ROC points (FPR, TPR), TPR step 1/5, FPR step 1/5:
    #   (0, 0) -> (0, .2) -> (0, .4) -> tie: (.2, .6) diagonal -> (.4, .6) -> (.4, .8) -> (.6, .8) -> (.6, 1) -> (1, 1)
    # Partial area over FPR in [0, 0.1]: on the diagonal from (0, .4) to (.2, .6), TPR(0.1) = .4 + .2 * (.1/.2) = .5
    #   A = trapezoid 0.1 * (.4 + .5) / 2 = 0.045
    # Unstandardized (Koizumi et al. 2020, Eq. 3): A / p = 0.045 / 0.1 = 0.45
    # McClish: 0.5 * (1 + (A - min) / (max - min)), min = p^2/2 = 0.005, max = p = 0.1
    #   = 0.5 * (1 + 0.040 / 0.095) = 0.5 * (1 + 0.4210526...) = 0.7105263...
    # Full AUC (pairs, ties count 1/2): anomalies .9 -> 5, .8 -> 5, .7 -> 4 + 0.5, .5 -> 3, .3 -> 2 = 19.5 / 25 = 0.78
    y = np.array([1, 1, 0, 1, 0, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    order = np.random.default_rng(3).permutation(10)  # the input order must not matter
    y, s = y[order], s[order]
    partial_area, p = 0.045, 0.1
    assert pauc(y, s) == pytest.approx(0.5 * (1 + (partial_area - p**2 / 2) / (p - p**2 / 2)), abs=1e-12)
    assert pauc(y, s) == pytest.approx(0.7105263157894737, abs=1e-12)
    assert pauc_unstandardized(y, s) == pytest.approx(0.45, abs=1e-12)
    assert auc(y, s) == pytest.approx(0.78, abs=1e-12)
    # p = 1 covers the whole curve: both partial areas are the full AUC.
    assert pauc(y, s, max_fpr=1.0) == pytest.approx(0.78, abs=1e-12)
    assert pauc_unstandardized(y, s, max_fpr=1.0) == pytest.approx(0.78, abs=1e-12)


def test_auc_perfect_and_reversed():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9, 1.0])
    assert auc(y, s) == 1.0
    assert pauc(y, s) == 1.0
    assert pauc_unstandardized(y, s) == 1.0
    assert auc(y, -s) == 0.0
    assert pauc_unstandardized(y, -s) == 0.0
    # reversed: partial area 0 -> McClish 0.5 * (1 + (0 - 0.005) / 0.095)
    assert pauc(y, -s) == pytest.approx(0.5 * (1 - 0.005 / 0.095), abs=1e-12)


def test_metric_functions_reject_one_class_and_nan():
    with pytest.raises(ValueError, match="one class"):
        auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        pauc([0, 1, 0], [0.1, float("nan"), 0.3])


# ----------------------------------------------------------------------------------------------------------------
# DCASE 2021+: AUC per domain and the harmonic mean
# ----------------------------------------------------------------------------------------------------------------
def _row(dataset, machine_type, path, label, score, machine_id=None, section=None, domain=None):
    return dict(path=str(path), dataset=dataset, machine_type=machine_type, machine_id=machine_id,
                section=section, domain=domain, label=label, score=float(score))


def test_harmonic_mean_2021_matches_scipy_hmean(tmp_path):
    # fan, two sections. The 2023 sample has section 00 only, so the names follow the real fan names
    # (section_00_source_test_anomaly_0022_m-n_W.wav, section_00_target_test_normal_0021_m-n_Y.wav) with other
    # section and clip numbers. (domain, label, score) per clip:
    clips = {
        "00": [("source", "normal", 0.1), ("source", "normal", 0.4), ("target", "normal", 0.3),
               ("target", "normal", 0.7), ("source", "anomaly", 0.5), ("target", "anomaly", 0.35),
               ("target", "anomaly", 0.8)],
        "01": [("source", "normal", 0.2), ("source", "normal", 0.6), ("target", "normal", 0.4),
               ("target", "normal", 0.9), ("source", "anomaly", 0.7), ("source", "anomaly", 0.1),
               ("target", "anomaly", 0.95)],
    }
    # Official AUC (domain) = that domain's normals + ALL anomalies of the section (dcase2023_task2_evaluator):
    # section 00 source: N {.1,.4} vs A {.5,.35,.8}: .5 beats 2, .35 beats 1, .8 beats 2 -> 5/6
    # section 00 target: N {.3,.7} vs A {.5,.35,.8}: 1 + 1 + 2 -> 4/6
    # section 01 source: N {.2,.6} vs A {.7,.1,.95}: 2 + 0 + 2 -> 4/6
    # section 01 target: N {.4,.9} vs A {.7,.1,.95}: 1 + 0 + 2 -> 3/6
    expected_source, expected_target = [5 / 6, 4 / 6], [4 / 6, 3 / 6]
    rows, expected_pauc = [], []
    for sec, items in clips.items():
        for k, (dom, lab, sc) in enumerate(items):
            name = f"section_{sec}_{dom}_test_{lab}_{k:04d}_m-n_{'W' if dom == 'source' else 'Y'}.wav"
            rows.append(_row("dcase2021+", "fan", DEV2023 / "fan" / "test" / name, lab, sc, section=sec, domain=dom))
        # pAUC uses every clip of the section (both domains): sklearn roc_auc_score(max_fpr=0.1) by definition.
        y = [int(lab == "anomaly") for _, lab, _ in items]
        expected_pauc.append(roc_auc_score(y, [sc for *_, sc in items], max_fpr=0.1))
    # The "domain's anomalies only" variant would give section 00 source 1.0 (N {.1,.4} vs A {.5}); make sure
    # this example tells the two definitions apart.
    assert expected_source[0] != 1.0

    result = evaluate(pd.DataFrame(rows), tmp_path, plots=False)
    fan = result["machine_types"]["fan"]
    assert fan["averaging"] == "harmonic"
    for i, sec in enumerate(clips):
        g = fan["groups"][f"section_{sec}"]
        assert g["auc_source"] == pytest.approx(expected_source[i], abs=1e-12)
        assert g["auc_target"] == pytest.approx(expected_target[i], abs=1e-12)
        assert g["pauc"] == pytest.approx(expected_pauc[i], abs=1e-12)
        assert (g["n_normal"], g["n_anomaly"]) == (4, 3)
    mean = fan["mean"]
    assert mean["auc_source"] == pytest.approx(scipy.stats.hmean(expected_source), abs=1e-12)
    assert mean["auc_target"] == pytest.approx(scipy.stats.hmean(expected_target), abs=1e-12)
    assert mean["pauc"] == pytest.approx(scipy.stats.hmean(expected_pauc), abs=1e-12)
    assert mean["official_score"] == pytest.approx(
        scipy.stats.hmean(expected_source + expected_target + expected_pauc), abs=1e-12)
    # harmonic, not arithmetic: the two differ here (hmean(5/6, 4/6) = 0.7407 < 0.75)
    assert mean["auc_source"] < np.mean(expected_source) - 1e-3


# ----------------------------------------------------------------------------------------------------------------
# evaluate() end to end on real file names
# ----------------------------------------------------------------------------------------------------------------
_RE_2020 = re.compile(r"^(normal|anomaly)_id_(\d{2})_\d{8}\.wav$")


def _table_2020(machine_types: list[str]) -> pd.DataFrame:
    """Rows for every real DCASE 2020 test clip of the machine types; score: normals below anomalies except
    the deliberate inversions described in the test."""
    rows = []
    for mt in machine_types:
        for i, path in enumerate(sorted((DEV2020 / mt / "test").glob("*.wav"))):
            label, mid = _RE_2020.match(path.name).groups()
            base = 10.0 if label == "anomaly" else 1.0
            rows.append(_row("dcase2020", mt, path, label, base + 0.01 * i, machine_id=mid))
    return pd.DataFrame(rows)


def test_evaluate_2020_writes_official_files(tmp_path):
    df = _table_2020(["ToyCar", "slider"])
    # ToyCar id_02 reversed (normals above anomalies): AUC 0, pAUC = McClish of area 0
    rev = (df["machine_type"] == "ToyCar") & (df["machine_id"] == "02")
    df.loc[rev, "score"] = -df.loc[rev, "score"]
    # slider id_00: 5 normals, 4 anomalies; lift one normal above exactly one anomaly -> AUC = 19/20
    sl = df[(df["machine_type"] == "slider") & (df["machine_id"] == "00")]
    lowest_anomaly = sl[sl["label"] == "anomaly"]["score"].min()
    df.loc[sl[sl["label"] == "normal"].index[0], "score"] = lowest_anomaly + 0.001
    # Two unlabelled clips (evaluation-set grammar id_XX_NNNNNNNN.wav; the sample has none): in the CSV only.
    for k in (1, 2):
        df.loc[len(df)] = _row("dcase2020", "slider", DEV2020 / "slider" / "test" / f"id_00_0000900{k}.wav",
                               None, 50.0 + k, machine_id="00")

    result = evaluate(df, tmp_path, extra={"seed": 7, "method": "autoencoder"})

    # score CSVs: the official names, one per (machine type, ID), rows = base name + score, no header
    expected_names = {f"anomaly_score_{mt}_id_{mid}.csv"
                      for mt, mid in df[["machine_type", "machine_id"]].drop_duplicates().itertuples(index=False)}
    assert expected_names == {"anomaly_score_ToyCar_id_01.csv", "anomaly_score_ToyCar_id_02.csv",
                              "anomaly_score_ToyCar_id_04.csv", "anomaly_score_slider_id_00.csv",
                              "anomaly_score_slider_id_04.csv", "anomaly_score_slider_id_06.csv"}
    assert {p.name for p in tmp_path.glob("anomaly_score_*.csv")} == expected_names
    rows = _read_csv(tmp_path / "anomaly_score_slider_id_00.csv")
    sub = df[(df["machine_type"] == "slider") & (df["machine_id"] == "00")]
    assert rows == sorted([Path(p).name, repr(s)] for p, s in zip(sub["path"], sub["score"]))
    assert ["id_00_00009001.wav", "51.0"] in rows  # unlabelled clip written with its score
    assert rows[0][0] == "anomaly_id_00_00000000.wav"  # a real file name, not a path

    slider = result["machine_types"]["slider"]
    g00 = slider["groups"]["id_00"]
    assert (g00["n_normal"], g00["n_anomaly"], g00["n_unlabeled"]) == (5, 4, 2)  # unlabelled not counted
    assert g00["auc"] == pytest.approx(19 / 20, abs=1e-12)  # the 51.0 / 52.0 unlabelled scores would change it
    assert g00["reason"] is None
    # one-class groups: slider id_04 (1 normal), id_06 (1 anomaly) -> None + reason, and left out of the mean
    for key in ("id_04", "id_06"):
        g = slider["groups"][key]
        assert g["auc"] is None and g["pauc"] is None and g["pauc_unstandardized"] is None
        assert "only one class" in g["reason"]
    assert slider["mean"]["auc"] == pytest.approx(19 / 20, abs=1e-12)
    assert "id_04" in slider["mean"]["reason"]

    toycar = result["machine_types"]["ToyCar"]
    assert toycar["averaging"] == "arithmetic"
    assert [toycar["groups"][k]["auc"] for k in ("id_01", "id_02", "id_04")] == [1.0, 0.0, 1.0]
    reversed_pauc = 0.5 * (1 - 0.005 / 0.095)
    assert toycar["mean"]["auc"] == pytest.approx(2 / 3, abs=1e-12)
    assert toycar["mean"]["pauc"] == pytest.approx((1 + reversed_pauc + 1) / 3, abs=1e-12)
    assert toycar["mean"]["pauc_unstandardized"] == pytest.approx(2 / 3, abs=1e-12)

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == result
    assert on_disk["max_fpr"] == 0.1 and on_disk["seed"] == 7 and on_disk["method"] == "autoencoder"

    md = (tmp_path / "results.md").read_text()
    assert "## ToyCar" in md and "## slider" in md
    assert "| ID | AUC | pAUC | pAUC (unstandardized) |" in md
    assert "| 00 | 0.9500 |" in md and "**arithmetic mean**" in md

    for mt, key in [("ToyCar", "id_01"), ("ToyCar", "id_02"), ("slider", "id_00")]:
        for kind in ("roc", "hist"):
            png = tmp_path / "plots" / f"{mt}_{key}_{kind}.png"
            assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    # no ROC exists for a one-class group; its histogram is still drawn
    assert not (tmp_path / "plots" / "slider_id_04_roc.png").exists()
    assert (tmp_path / "plots" / "slider_id_04_hist.png").read_bytes()[:8] == PNG_MAGIC

    table = format_table(result)
    lines = table.splitlines()
    assert len(lines) == 2 + 6 + 2  # header, rule, 6 groups, 2 averages
    assert any(ln.split()[:3] == ["slider", "id_00", "0.9500"] for ln in lines)
    assert any(ln.split()[:3] == ["ToyCar", "a-mean", "0.6667"] for ln in lines)
    assert any(ln.split()[:3] == ["slider", "id_04", "-"] for ln in lines)


_RE_2023 = re.compile(r"^section_(\d{2})_(source|target)_(train|test)_(normal|anomaly)_")


def test_evaluate_2021_real_names(tmp_path):
    # All 28 real 2023 clips (7 machine types x section 00). The sample has 2 test clips per machine type, so
    # the 2 training clips (source normals) are scored too, giving most sections both classes.
    rows = []
    for path in sorted(DEV2023.glob("*/*/*.wav")):
        sec, dom, _, lab = _RE_2023.match(path.name).groups()
        rows.append(_row("dcase2021+", path.parent.parent.name, path, lab,
                         0.9 if lab == "anomaly" else 0.1 + 0.01 * len(rows), section=sec, domain=dom))
    df = pd.DataFrame(rows)
    result = evaluate(pa.Table.from_pandas(df), tmp_path)  # pyarrow input works as well

    names = {p.name for p in tmp_path.glob("*.csv")}
    assert names == {f"anomaly_score_{mt}_section_00_test.csv"
                     for mt in ["ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve"]}
    fan_rows = _read_csv(tmp_path / "anomaly_score_fan_section_00_test.csv")
    assert [r[0] for r in fan_rows] == sorted(p.name for p in (DEV2023 / "fan").glob("*/*.wav"))

    mts = result["machine_types"]
    # ToyTrain: target anomaly 0015 + target normal 0049 + 2 source normals (train)
    toytrain = mts["ToyTrain"]["groups"]["section_00"]
    assert (toytrain["n_normal"], toytrain["n_anomaly"]) == (3, 1)
    assert (toytrain["n_normal_source"], toytrain["n_normal_target"], toytrain["n_anomaly_target"]) == (2, 1, 1)
    assert toytrain["auc_source"] == 1.0 and toytrain["auc_target"] == 1.0 and toytrain["auc"] == 1.0
    # slider and ToyCar have normals only -> None with a reason, never a crash
    for mt in ("slider", "ToyCar"):
        g = mts[mt]["groups"]["section_00"]
        assert g["auc"] is None and g["auc_source"] is None and g["auc_target"] is None and g["pauc"] is None
        assert "only one class" in g["reason"]
        assert mts[mt]["mean"]["official_score"] is None
    # bearing: source normals only (no target normal) -> AUC (target) undefined, with its own reason
    bearing = mts["bearing"]["groups"]["section_00"]
    assert bearing["auc_source"] == 1.0 and bearing["auc_target"] is None
    assert "no target-domain normal clips" in bearing["reason"]
    assert mts["bearing"]["averaging"] == "harmonic"

    md = (tmp_path / "results.md").read_text()
    assert "| section | AUC (source) | AUC (target) | AUC (all) | pAUC | pAUC (unstandardized) |" in md
    assert "**harmonic mean**" in md
    assert (tmp_path / "plots" / "fan_section_00_roc.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "plots" / "fan_section_00_hist.png").stat().st_size > 1000


def test_evaluate_accepts_the_index_table(tmp_path):
    # The pipeline passes the index (pyarrow, extra columns, nulls) joined with scores.
    from stethoscope.data.index import index

    table = index(DEV2023).table
    scores = [0.9 if lab == "anomaly" else 0.2 for lab in table.column("label").to_pylist()]
    table = table.append_column("score", pa.array(scores, pa.float64()))
    result = evaluate(table, f"file://{tmp_path / 'via_uri'}", plots=False)  # a pyarrow filesystem URI
    assert json.loads((tmp_path / "via_uri" / "metrics.json").read_text()) == result
    assert result["machine_types"]["valve"]["groups"]["section_00"]["auc_target"] == 1.0


def test_nan_and_inf_scores_raise_naming_the_files(tmp_path):
    df = _table_2020(["ToyConveyor"])
    df.loc[2, "score"] = math.nan
    df.loc[5, "score"] = math.inf
    with pytest.raises(ScoreError) as err:
        evaluate(df, tmp_path / "out")
    assert isinstance(err.value, DataError)
    msg = str(err.value)
    assert df.loc[2, "path"] in msg and df.loc[5, "path"] in msg
    assert df.loc[0, "path"] not in msg
    assert sorted(err.value.paths) == sorted([df.loc[2, "path"], df.loc[5, "path"]])
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_tables_are_rejected(tmp_path):
    df = _table_2020(["ToyConveyor"])
    with pytest.raises(DataError, match="lacks column"):
        evaluate(df.drop(columns=["domain"]), tmp_path)
    bad = df.copy()
    bad.loc[0, "label"] = "abnormal"
    with pytest.raises(DataError, match=re.escape(bad.loc[0, "path"])):
        evaluate(bad, tmp_path)
    mixed = df.copy()
    mixed.loc[0, "dataset"] = "dcase2021+"
    with pytest.raises(DataError, match="one dataset"):
        evaluate(mixed, tmp_path)
