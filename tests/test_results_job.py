"""jobs/results.py: the paper's summary (average over machine types weighted by their test clips, its weighted
standard deviation, the arithmetic mean) beside JBCS 2024 Table 6, computed from real runs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from stethoscope.evaluation import weighted_mean_std

ROOT = Path(__file__).resolve().parents[1]


def _results_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    import importlib

    return importlib.import_module("results")


def test_weighted_mean_and_std_by_hand():
    # AUC 0.5 on a type with 1 test clip, 1.0 on a type with 3: μ = (0.5 + 3) / 4, σ² = (0.375² + 3 · 0.125²) / 4
    mu, sd = weighted_mean_std([0.5, 1.0], [1, 3])
    assert mu == pytest.approx(0.875) and sd == pytest.approx(math.sqrt(0.046875))
    assert weighted_mean_std([0.7], [12]) == (pytest.approx(0.7), pytest.approx(0.0, abs=1e-12))
    for bad in (([], []), ([0.5], [1, 2]), ([0.5], [-1]), ([0.5], [0])):
        with pytest.raises(ValueError):
            weighted_mean_std(*bad)


def test_summary_weights_each_machine_type_by_its_test_clips(monkeypatch):
    results = _results_module(monkeypatch)
    row = lambda mt, auc, pauc, n, a: results.Row("synthetic", mt, "ganomaly", "p", {}, "cmd", auc=auc, pauc=pauc,  # noqa: E731
                                                  n_normal=n, n_anomaly=a)
    rows = [row("fan", 0.6, 0.5, 3, 1), row("pump", 1.0, 0.9, 6, 6), row("valve", None, None, 1, 0)]
    s = results.summary(rows)
    assert s["machine_types"] == ["fan", "pump"] and s["n_test"] == [4, 12]  # valve: AUC undefined, left out
    assert s["auc"] == pytest.approx((4 * 0.6 + 12 * 1.0) / 16) and s["auc_mean"] == pytest.approx(0.8)
    assert s["auc_std"] == pytest.approx(math.sqrt((4 * 0.3 ** 2 + 12 * 0.1 ** 2) / 16))
    assert s["pauc"] == pytest.approx((4 * 0.5 + 12 * 0.9) / 16) and s["pauc_mean"] == pytest.approx(0.7)
    table = results.table6(rows, [("synthetic", "synthetic fan + pump")])
    assert "GANomaly | 88.16 / 78.05 | 90.00 ± 17.32 | 80.00 ± 17.32 | 80.00 / 70.00 |" in table[2]


def test_results_job_writes_the_page_from_real_runs(ray_session, tmp_path, capsys, monkeypatch):
    """One synthetic machine type, the autoencoder, 1 epoch: the page has Table 6 beside the weighted summary
    computed from the run's metrics.json, the row's preset and data, and the command that reproduces the row."""
    import runpy

    out = tmp_path / "results.md"
    # section (e) is jobs/results_tldiffgan.py's: a rewrite of the page keeps it as it is
    block = "<!-- tldiffgan:begin -->\n## (e) TLDiffGAN\n\n| a | b |\n<!-- tldiffgan:end -->"
    out.write_text("# an older page\n\n" + block + "\n\n## Below chance\n")
    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "jobs" / "results.py"), "--methods", "autoencoder", "--skip-real",
                                      "--skip-2023", "--synthetic-machines", "fan", "--synthetic-train", "6",
                                      "--synthetic-normal", "4", "--synthetic-anomaly", "4",
                                      "--synthetic-duration", "2", "--epochs", "1", "--out", str(out),
                                      "--runs", str(tmp_path / "runs"), "--store", str(tmp_path / "store")])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "jobs" / "results.py"), run_name="__main__")
    assert stop.value.code == 0, capsys.readouterr().err[-3000:]
    page = out.read_text()
    assert page.count(block) == 1 and "# an older page" not in page
    (row,) = json.loads((tmp_path / "runs" / "results.json").read_text())
    metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
    mean = metrics["machine_types"]["fan"]["mean"]
    assert (mean["n_normal"], mean["n_anomaly"]) == (2, 2) and metrics["clips"]["part"] == "test"
    assert (row["auc"], row["n_normal"] + row["n_anomaly"]) == (mean["auc"], 4)
    summary = f"| DCASE AE | 73.81 / 60.47 | {100 * mean['auc']:.2f} ± 0.00 | {100 * mean['pauc']:.2f} ± 0.00 |"
    assert summary in page
    assert "none (the DCASE 2020 baseline's defaults) (synthetic fan: fan (4 clips))" in page
    assert "## Summary beside JBCS 2024 Table 6" in page and "every AUC / pAUC here is on its held-out test" in page
    assert "python jobs/pipeline.py --data-root" in page and "--method autoencoder --epochs 1" in page


def test_the_tldiffgan_section_replaces_itself_in_the_page(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    import importlib

    tld = importlib.import_module("results_tldiffgan")
    page = "# Results\n\n## (d) classifiers\n\n## Below chance\n\n- x\n"
    first = tld.splice(page, f"{tld.BEGIN}\n## (e) one\n{tld.END}\n")
    assert first.index("## (e) one") < first.index("## Below chance") and first.startswith("# Results")
    second = tld.splice(first, f"{tld.BEGIN}\n## (e) two\n{tld.END}\n")
    assert "## (e) two" in second and "## (e) one" not in second and second.count(tld.BEGIN) == 1
    assert tld.splice("# no anchor", f"{tld.BEGIN}\nx\n{tld.END}\n").endswith(f"{tld.END}\n")
    assert set(tld.VARIANTS) == set(tld.PAPER_TABLE_3)  # each ablation row has the paper's number beside it
