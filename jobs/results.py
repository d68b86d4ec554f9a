"""Results job: every method × machine on the real and synthetic clips, the paper's weighted summary beside JBCS 2024
Table 6, and the DCASE 2023 sample run end to end; writes docs/results.md.

python jobs/results.py [--out docs/results.md] [--runs runs/results] [--store store] [--seed 0]
                       [--methods autoencoder ganomaly skip_ganomaly egbad aegan_ad]
                       [--skip-real] [--skip-synthetic] [--skip-2023] [--epochs N]

Each (method, machine) is one ``stethoscope.pipeline.run`` (ingest → split → Ray Train fit → score → evaluate),
exactly what ``jobs/pipeline.py`` does; the table lists the equivalent ``jobs/pipeline.py`` command of every row.
Every run writes its validation_split.json before training (seeded half / half of the labelled clips, split seed 0):
score variants are chosen on the validation clips and every number here is on the held-out test clips.
Data:
  (a) real: ../shared/data/dcase2020_task2_dev_sample, slider id_00 (the only real DCASE 2020 machine with training
      clips; its test part has 5 clips, so its numbers are smoke tests, not benchmarks);
  (b) synthetic: ``stethoscope.data.synthetic.make_dcase2020_tree`` with several machine types (id_00 each) and test
      anomalies cycling through clicks and harmonic at severities 0.3 and 1.0, written under ``<runs>/synthetic``;
  (c) real: ../shared/data/dcase2023_task2_dev_sample, the autoencoder on every machine type with training clips,
      published to ``<runs>/registry2023`` (2 training and 2 test clips each: the table says what could not be
      computed).
Section (e), TLDiffGAN and its ablations, is written by jobs/results_tldiffgan.py; this job keeps it.
GANomaly, Skip-GANomaly and EGBAD run with their JBCS 2024 presets (Tables 4 and 5, the common values) where the
machine type has a row, AEGAN-AD with its AITHU 2022 preset where it has one; the autoencoder with the DCASE 2020
baseline's defaults (100 epochs, batch 512). AEGAN-AD alone is reduced to fit a CPU (see REDUCED).
The summary is the paper's: the average over machine types weighted by each type's number of test clips, with its
weighted standard deviation, beside the arithmetic mean, and JBCS 2024 Table 6 beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import _common

log = logging.getLogger("results")

METHODS = ("autoencoder", "ganomaly", "skip_ganomaly", "egbad", "aegan_ad")
#: JBCS 2024 Table 6 as issue 10 gives it: AUC / pAUC (%), the average over the six DCASE 2020 machine types (development
#: set) weighted by their numbers of test clips. "DCASE AE" is the DCASE 2020 autoencoder baseline.
PAPER_TABLE_6 = {"autoencoder": (73.81, 60.47), "egbad": (46.23, 52.55), "ganomaly": (88.16, 78.05),
                 "skip_ganomaly": (86.11, 72.64)}
PAPER_LABEL = {"autoencoder": "DCASE AE", "egbad": "EGBAD", "ganomaly": "GANomaly", "skip_ganomaly": "Skip-GANomaly",
               "aegan_ad": "AEGAN-AD"}
#: Methods run with ``--preset`` (when the machine type has a row).
PRESET_METHODS = ("ganomaly", "skip_ganomaly", "egbad", "aegan_ad")
#: Reductions from the papers' settings to fit a 2-core CPU (printed with every row). AEGAN-AD keeps its 128 × 128
#: patches but is narrowed (8 channels instead of 32, latent 32 instead of 256: at 16 channels and latent 64 it trained
#: at 11 patches/s on this shared CPU), its patches are cut every 32 frames instead of every frame, its batch is 32
#: instead of 512, and it trains 6 of its 60 epochs.
REDUCED = {
    "aegan_ad": {"epochs": 6, "base_channels": 8, "decoder_channels": 8, "latent_dim": 32, "patch_hop": 32,
                 "batch_size": 32},
}
SYNTHETIC_MACHINES = ("fan", "pump")
SYNTHETIC_ANOMALIES = (("clicks", 0.3), ("clicks", 1.0), ("harmonic", 0.3), ("harmonic", 1.0))
#: Markers of section (e), written by jobs/results_tldiffgan.py; a rewrite of the page keeps what lies between them.
TLDIFFGAN_BEGIN, TLDIFFGAN_END = "<!-- tldiffgan:begin -->", "<!-- tldiffgan:end -->"
AITHU_BEGIN, AITHU_END = "<!-- aithu:begin -->", "<!-- aithu:end -->"
#: Sections other jobs write (jobs/results_tldiffgan.py, jobs/results_aithu.py): this job keeps them.
KEPT_BLOCKS = ((TLDIFFGAN_BEGIN, TLDIFFGAN_END), (AITHU_BEGIN, AITHU_END))


def start_job() -> tuple[str, str | None, float]:
    """What a results job does before its runs: one torch thread per process, Ray on every core. Returns
    ``(started, git commit, perf_counter at the start)`` for the section's header."""
    import torch

    from stethoscope.runs import git_commit
    from stethoscope.runtime import init_ray

    torch.set_num_threads(1)
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    commit = git_commit()
    t_start = time.perf_counter()
    init_ray(num_cpus=os.cpu_count())
    return started, commit, t_start


def splice(page: str, block: str, begin: str, end: str) -> str:
    """``page`` with its ``begin`` … ``end`` block replaced by ``block`` (or ``block`` inserted before
    "## Below chance", or appended)."""
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        return head + block.rstrip("\n") + rest.split(end, 1)[1]
    head, anchor, rest = page.partition("## Below chance")
    if anchor:
        return head + block + "\n" + anchor + rest
    return page.rstrip("\n") + "\n\n" + block
REAL_ROOT = _common.ROOT.parent / "shared" / "data" / "dcase2020_task2_dev_sample"
REAL_2023 = _common.ROOT.parent / "shared" / "data" / "dcase2023_task2_dev_sample"


@dataclasses.dataclass
class Row:
    dataset: str
    machine_type: str
    method: str
    preset: str
    config: dict
    command: str
    run_dir: str = ""
    epochs: int = 0
    auc: float | None = None
    pauc: float | None = None
    auc_source: float | None = None
    auc_target: float | None = None
    official: float | None = None
    n_normal: int = 0
    n_anomaly: int = 0
    n_validation: int = 0
    n_train: int = 0
    variant: str = ""
    conditions: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0
    notes: list = dataclasses.field(default_factory=list)
    published: str = ""
    error: str = ""

    @property
    def n_test(self) -> int:
        return self.n_normal + self.n_anomaly


def preset_for(method: str, machine_type: str) -> tuple[bool, str]:
    """(use --preset, description) for a row: the preset's file and row, or why there is none."""
    from stethoscope.errors import ConfigError
    from stethoscope.presets import preset_info, preset_record

    if method not in PRESET_METHODS:
        return False, "none (the DCASE 2020 baseline's defaults)" if method == "autoencoder" else "none"
    try:
        record = preset_record(method, machine_type)
    except ConfigError:
        rows = ", ".join(preset_info(method)["missing"])
        return False, f"none: {method}'s preset has no {machine_type} row (rows: {rows})"
    src = record["source"]
    where = f"Table {src['table']}" if src.get("table") else "common values"
    return True, f"{record['file']} ({where}, {record['label']} row)"


def pipeline_command(data_root: Path, machine_type: str, ids: list[str] | None, method: str, preset: bool,
                     config: dict, registry: str, args) -> str:
    parts = ["python", "jobs/pipeline.py", "--data-root", str(data_root), "--machine-type", machine_type]
    if ids:
        parts += ["--ids", *ids]
    parts += ["--method", method] + (["--preset"] if preset else [])
    if "epochs" in config:
        parts += ["--epochs", str(config["epochs"])]
    sets = [f"{k}={v}" for k, v in config.items() if k != "epochs"]
    if sets:
        parts += ["--set", *sets]
    parts += ["--seed", str(args.seed), "--runs", args.runs, "--store", args.store, "--registry", registry]
    return shlex.join(parts)


def condition_metrics(scores, truth) -> dict[str, dict[str, float]]:
    """Synthetic sets: AUC and pAUC of each anomaly condition (kind, severity) against every normal clip of the
    machine, on the held-out test clips only."""
    import numpy as np

    from stethoscope.evaluation import auc, pauc

    frame = scores[scores["role"] == "test"].copy()
    frame["key"] = [f"{mt}/{Path(p).name}" for mt, p in zip(frame["machine_type"], frame["path"])]
    frame = frame.merge(truth, on="key", how="left")
    normal = frame[frame["label"] == "normal"]
    out = {}
    for kind, severity in SYNTHETIC_ANOMALIES:
        anomalous = frame[(frame["label"] == "anomaly") & (frame["anomaly"] == kind)
                          & np.isclose(frame["severity"].astype(float), severity)]
        name = f"{kind} {severity:g}"
        if normal.empty or anomalous.empty:
            out[name] = {"auc": None, "pauc": None, "n_anomaly": int(len(anomalous))}
            continue
        y = np.r_[np.zeros(len(normal), int), np.ones(len(anomalous), int)]
        s = np.r_[normal["score"].to_numpy(), anomalous["score"].to_numpy()]
        out[name] = {"auc": auc(y, s), "pauc": pauc(y, s), "n_anomaly": int(len(anomalous))}
    return out


def run_one(row: Row, data_root: Path, ids: list[str] | None, preset: bool, args, truth=None,
            registry: str | None = None) -> Row:
    import pandas as pd

    from stethoscope.pipeline import run

    t0 = time.perf_counter()
    res = run(data_root, machine_type=row.machine_type, machine_ids=ids, method=row.method, config=row.config,
              preset=preset, store=args.store, runs_root=args.runs, seed=args.seed, registry=registry)
    row.seconds = time.perf_counter() - t0
    row.run_dir = res.run_dir
    run_dir = Path(res.run_dir)
    manifest = json.loads((run_dir / "run.json").read_text())
    row.epochs = int(manifest["config"].get("epochs", 0))
    history = json.loads((run_dir / "train_history.json").read_text())
    row.steps = int(sum(h.get("steps", 0) for h in history))
    mean = res.metrics["machine_types"][row.machine_type]["mean"]
    row.auc, row.pauc = mean.get("auc"), mean.get("pauc")
    row.auc_source, row.auc_target, row.official = mean.get("auc_source"), mean.get("auc_target"), mean.get(
        "official_score")
    row.n_normal, row.n_anomaly = int(mean.get("n_normal", 0)), int(mean.get("n_anomaly", 0))
    split = manifest["validation_split"]
    row.n_validation = int(split["counts"]["validation"])
    row.n_train = int(split["counts"]["train"]) + int(split["counts"]["train_validation"])
    row.notes = list(split.get("notes") or [])
    for key, g in res.metrics["machine_types"][row.machine_type]["groups"].items():
        if g.get("reason"):
            row.notes.append(f"metrics {key}: {g['reason']}")
    selection = res.metrics.get("score_variant_selection")
    if selection:
        row.variant = selection["selected"] + (" (kept: validation cannot rank)" if selection.get("reason") else "")
    if registry:
        pub = manifest.get("published") or {}
        row.published = (f"yes ({pub['version']})" if pub.get("version") else f"no: {pub.get('error', '?')}")
        if "publish" in res.extra:
            row.notes += [f"publish: {n}" for n in res.extra["publish"].manifest["metrics"].get("notes", [])
                          if n not in row.notes]
    if truth is not None:
        row.conditions = condition_metrics(pd.read_parquet(run_dir / "scores.parquet"), truth)
    return row


def fmt(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summary(rows: list[Row]) -> dict | None:
    """The paper's summary of one method on one dataset: AUC and pAUC averaged over machine types weighted by each
    type's number of test clips, their weighted standard deviations, and the arithmetic means. None if no row has a
    defined AUC."""
    from stethoscope.evaluation.metrics import weighted_mean_std

    ok = [r for r in rows if not r.error and r.auc is not None and r.pauc is not None]
    if not ok:
        return None
    w = [r.n_test for r in ok]
    auc_w, auc_sd = weighted_mean_std([r.auc for r in ok], w)
    pauc_w, pauc_sd = weighted_mean_std([r.pauc for r in ok], w)
    return {"machine_types": [r.machine_type for r in ok], "n_test": w, "auc": auc_w, "auc_std": auc_sd,
            "pauc": pauc_w, "pauc_std": pauc_sd, "auc_mean": sum(r.auc for r in ok) / len(ok),
            "pauc_mean": sum(r.pauc for r in ok) / len(ok)}


def pct(v: float | None, sd: float | None = None) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def table6(rows: list[Row], datasets: list[tuple[str, str]]) -> list[str]:
    """The comparison with JBCS 2024 Table 6: per method, the paper's weighted AUC / pAUC and ours per dataset."""
    head = ["method", "JBCS 2024 Table 6 AUC / pAUC (%)"]
    for _, title in datasets:
        head += [f"{title}: weighted AUC ± σ (%)", f"{title}: weighted pAUC ± σ (%)",
                 f"{title}: arithmetic mean AUC / pAUC (%)"]
    head.append("preset (data)")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in METHODS:
        mine = [r for r in rows if r.method == method]
        if not mine:
            continue
        paper = PAPER_TABLE_6.get(method)
        cells = [PAPER_LABEL[method], f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else "– (not in Table 6)"]
        presets = []
        for dataset, title in datasets:
            s = summary([r for r in mine if r.dataset == dataset])
            if s is None:
                cells += ["–", "–", "–"]
                continue
            cells += [pct(s["auc"], s["auc_std"]), pct(s["pauc"], s["pauc_std"]),
                      f"{pct(s['auc_mean'])} / {pct(s['pauc_mean'])}"]
            types = ", ".join(f"{m} ({n} clips)" for m, n in zip(s["machine_types"], s["n_test"]))
            presets.append(f"{title}: {types}")
        cells.append("; ".join(sorted({r.preset for r in mine})) + " (" + "; ".join(presets) + ")")
        out.append("| " + " | ".join(cells) + " |")
    return out


def _main_table(rows: list[Row]) -> list[str]:
    head = ["machine", "method", "preset", "epochs", "train steps", "AUC", "pAUC", "test clips normal/anomaly",
            "validation clips", "score variant (chosen on validation)", "time s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.error:
            out.append(f"| {r.machine_type} | {r.method} | {r.preset} | – | – | failed: {r.error} |" + " |" * 5)
            continue
        out.append("| " + " | ".join([
            r.machine_type, r.method, r.preset, str(r.epochs), str(r.steps), fmt(r.auc), fmt(r.pauc),
            f"{r.n_normal}/{r.n_anomaly}", str(r.n_validation), f"`{r.variant}`" if r.variant else "–",
            f"{r.seconds:.0f}",
        ]) + " |")
    return out


def _table_2023(rows: list[Row]) -> list[str]:
    head = ["machine", "method", "training clips", "validation clips", "test clips normal/anomaly", "AUC (source)",
            "AUC (target)", "AUC (all)", "pAUC", "official score (h-mean)", "published", "what could not be computed"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.error:
            out.append(f"| {r.machine_type} | {r.method} | failed: {r.error} |" + " |" * (len(head) - 3))
            continue
        out.append("| " + " | ".join([
            r.machine_type, r.method, str(r.n_train), str(r.n_validation), f"{r.n_normal}/{r.n_anomaly}",
            fmt(r.auc_source), fmt(r.auc_target), fmt(r.auc), fmt(r.pauc), fmt(r.official), r.published,
            "; ".join(r.notes) or "–",
        ]) + " |")
    return out


#: Section (d): the machine-ID classifiers of issue 13 beside the FGASpecNet paper's Table 2. Static: this page's
#: command does not train them (one model over the six DCASE 2020 machine types needs the full development set plus
#: the additional training set and 300 epochs on a GPU; docs/classifiers.md).
CLASSIFIER_SECTION = [
    "## (d) Machine-ID classifiers beside the FGASpecNet paper's Table 2",
    "",
    "One classifier over the machine IDs of all six DCASE 2020 machine types (`--method stgram_mfn | tastgram | "
    "fgaspecnet`, docs/classifiers.md). The paper's numbers are its Table 2 averages over the six machine types "
    "(full development set; trained on the development and additional training sets, 36,283 normal clips, 300 "
    "epochs). Ours are not measured: this machine has neither the full sets nor a GPU, and the small sets above "
    "cannot train a 41-class model (slider has one machine ID with training clips).",
    "",
    "| method | FGASpecNet Table 2 AUC / pAUC (%) | ours AUC / pAUC (%) |",
    "|---|---|---|",
    "| STgram-MFN (`stgram_mfn`) | 92.36 / 86.34 | not run here: needs the full dev set + additional set, 300 epochs |",
    "| TASTgram (`tastgram`) | 94.07 / 88.96 | not run here: needs the full dev set + additional set, 300 epochs |",
    "| FGASpecNet (`fgaspecnet`) | 95.04 / 89.68 | not run here: needs the full dev set + additional set, 300 epochs |",
    "",
    "Command (GPU cluster): `python jobs/pipeline.py --data-root DIR --machine-type fan pump slider valve ToyCar "
    "ToyConveyor --method fgaspecnet --gpu yes` (DIR holding the development and additional training clips; "
    "docs/classifiers.md).",
    "",
    '**Against the AE baseline on a synthetic set** (measured by '
    '`tests/test_classifier_methods.py::test_fgaspecnet_beats_the_autoencoder_baseline_on_the_same_clips`, '
    '2026-12-04, seed 0): `make_dcase2020_tree(seed=3)` with fan and pump × IDs 00 and 02, 16 training clips per '
    'ID, 1 s clips, the hum amplitude-modulated at severity 0.5 in every anomalous clip; a tiny FGASpecNet (1 s '
    'input, 32 mels, one bottleneck row, 2 epochs) over both types against the DCASE 2020 AE (20 epochs, batch 64) '
    'per type, scored on the same held-out test clips (4 normal + 4 anomalous per ID). A smoke-scale check, not '
    'comparable to Table 2:',
    "",
    '| machine type | FGASpecNet (tiny) AUC / pAUC | AE baseline AUC / pAUC |',
    '|---|---|---|',
    '| fan | 0.969 / 0.934 | 0.875 / 0.803 |',
    '| pump | 1.000 / 1.000 | 0.469 / 0.474 |',
    "",
    'The AE reconstructs 5 log-mel frames (0.16 s) at a time, less than one period of the 2-8 Hz modulation, and '
    "each frame's level stays inside the normal range; the classifier sees the whole clip. On the harmonic kind at "
    'severity 1.0 both methods reach AUC 1.0.',
]


def markdown(rows: list[Row], args, started: str, elapsed: float, synthetic_desc: str, commit: str | None,
             load: str) -> str:
    cmd = shlex.join(["python", "jobs/results.py", *sys.argv[1:]])
    lines = [
        "# Results: every method × machine (AUC / pAUC)",
        "",
        f"Produced by `{cmd}` on {started} (git commit `{commit or 'unknown'}`, uncommitted changes possible), "
        f"seed {args.seed}, in {elapsed / 60:.1f} min on a {os.cpu_count()}-core CPU machine shared with other "
        f"work ({platform.machine()}, Python {platform.python_version()}; load average {load}). Every number below "
        "was measured by that run; each row's `jobs/pipeline.py` command reproduces it alone.",
        "",
        "How to read it:",
        "- **One split per run.** Before training, every run writes `validation_split.json` (seeded half / half of "
        "the labelled test clips per machine_id/section, domain and label, split seed 0; 10 % of the training clips "
        "held out for the validation loss). Score variants (AEGAN-AD, EGBAD) are chosen on its validation clips; "
        "**every AUC / pAUC here is on its held-out test clips**, never on clips used for a choice.",
        "- AUC and pAUC (p = 0.1, McClish-standardized, as the official DCASE evaluators report it) per machine type: "
        "arithmetic mean over machine IDs (one ID here) for DCASE 2020, harmonic mean over sections for 2021+. "
        "Higher is better; 0.5 is chance.",
        "- **Presets.** GANomaly and Skip-GANomaly run with JBCS 2024 Tables 4 and 5 (`--preset`: the machine "
        "type's row plus the values common to every model), EGBAD with the common values (it was not "
        "grid-searched), AEGAN-AD with its per-machine AITHU 2022 choices where the machine type has a row, and the "
        "autoencoder with the DCASE 2020 baseline's defaults (100 epochs, batch 512). The *preset* column names the "
        "row. AEGAN-AD alone is reduced to fit a CPU: " + ", ".join(f"{k} {v}" for k, v in REDUCED["aegan_ad"].items())
        + " (paper: 60 epochs, 32 channels, latent 256, every frame, batch 512). No hyperparameter was chosen on "
        "test labels.",
        "- **The data is tiny.** Only slider id_00 has real DCASE 2020 training clips here (its test part: 5 clips); "
        "the synthetic machines are generated; the DCASE 2023 sample has 2 training and 2 test clips per machine "
        "type. These are smoke tests of the whole platform, not benchmarks, and not comparable to the paper's "
        "numbers, which come from the full DCASE 2020 development set.",
        "",
    ]
    datasets = []
    if any(r.dataset == "real" for r in rows):
        datasets.append(("real", "real slider id_00"))
    if any(r.dataset == "synthetic" for r in rows):
        datasets.append(("synthetic", "synthetic " + " + ".join(args.synthetic_machines)))
    if datasets:
        lines += [
            "## Summary beside JBCS 2024 Table 6",
            "",
            "The paper's summary: per method, AUC and pAUC averaged over machine types weighted by each type's number "
            "of test clips, ± the weighted standard deviation (√(Σ nᵢ(xᵢ − μ)² / Σ nᵢ); 0 with one machine type), "
            "and the plain arithmetic mean over machine types beside it. The paper's values are its Table 6 "
            "(six DCASE 2020 machine types, full development set); ours cover the machine types and clips named in "
            "the last column.",
            "",
        ]
        lines += table6(rows, datasets) + [""]
    real = [r for r in rows if r.dataset == "real"]
    if real:
        lines += [
            "## (a) Real clips: slider id_00 (DCASE 2020 Task 2 development sample)",
            "",
            "**Smoke test, not a benchmark:** slider id_00 has 75 training clips and 9 labelled test clips (5 normal, "
            "4 anomalous) in ../shared/data (see its README.md); the split validates on 4 of them and reports on the "
            "other 5 (3 normal, 2 anomalous): 6 normal/anomalous pairs, so one pair moves the AUC by 0.17. Do not "
            "rank methods on these numbers.",
            "",
        ]
        lines += _main_table(real) + [""]
    syn = [r for r in rows if r.dataset == "synthetic"]
    if syn:
        lines += ["## (b) Synthetic machine sounds", "", synthetic_desc, ""]
        lines += _main_table(syn)
        lines += [
            "",
            "AUC per anomaly condition on the held-out test clips (all normal test clips of the machine against the "
            "anomalies of one kind and severity):",
            "",
        ]
        names = [f"{k} {s:g}" for k, s in SYNTHETIC_ANOMALIES]
        lines.append("| machine | method | " + " | ".join(names) + " |")
        lines.append("|---|---|" + "---|" * len(names))
        for r in syn:
            cells = [fmt(r.conditions.get(n, {}).get("auc")) + f" ({r.conditions.get(n, {}).get('n_anomaly', 0)})"
                     if r.conditions else "–" for n in names]
            lines.append(f"| {r.machine_type} | {r.method} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("(in brackets: the number of anomalous test clips of that condition)")
    d23 = [r for r in rows if r.dataset == "dcase2023"]
    if d23:
        lines += [
            "",
            "## (c) Real clips: the DCASE 2023 Task 2 development sample, every machine type",
            "",
            "The whole pipeline (ingest → split → train → evaluate → publish) on every machine type of "
            "../shared/data/dcase2023_task2_dev_sample with training clips, with the autoencoder "
            f"({rows and next((r.epochs for r in d23 if not r.error), 0)} epochs). Each type has 2 training clips "
            "and 2 test clips, so each stratum (section, domain, label) holds one clip: the split cannot give the "
            "validation part a clip of every stratum, the metrics are defined only where the test part has a normal "
            "and an anomalous clip of the right domain, and the decision threshold falls back to the largest "
            "training-normal score (a gamma fit needs 3 scores). The last column lists what could not be computed, "
            "as the run recorded it.",
            "",
        ]
        lines += _table_2023(d23)
    lines += [""] + CLASSIFIER_SECTION
    below = [r for r in rows if r.auc is not None and r.auc < 0.5]
    lines += ["", "## Below chance", ""]
    if below:
        lines.append("These rows have an AUC below 0.5 (worse than chance), reported as measured, not tuned away:")
        lines.append("")
        for r in below:
            lines.append(f"- {r.method} on {r.dataset} {r.machine_type}: AUC {fmt(r.auc)}, pAUC {fmt(r.pauc)} "
                         f"({r.n_normal} normal / {r.n_anomaly} anomalous test clips)")
        if any(r.method == "egbad" for r in below):
            lines += ["", "JBCS 2024 also found EGBAD below chance (Table 6: AUC 46.23 %)."]
    else:
        lines.append("No row has an AUC below 0.5 in this run.")
    failed = [r for r in rows if r.error]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r.method} on {r.dataset} {r.machine_type}: {r.error}"
                                               for r in failed]
    lines += ["", "## Commands", "", "Whole page:", "", "```", cmd, "```", "",
              "Each row alone (the synthetic rows need the synthetic tree, which the whole-page command writes "
              "first):", "", "```"]
    lines += [r.command for r in rows]
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(_common.ROOT / "docs" / "results.md"))
    p.add_argument("--runs", default="runs/results", help="parent folder of the run folders and the synthetic set")
    p.add_argument("--data-root", default=str(REAL_ROOT), help="DCASE 2020 tree with slider id_00 training clips")
    p.add_argument("--data-root-2023", default=str(REAL_2023), help="DCASE 2021+ tree for section (c)")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--epochs", type=int, default=None, help="one epoch count for every run (default: each method's "
                   "preset or Config, AEGAN-AD reduced)")
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--skip-2023", action="store_true")
    p.add_argument("--synthetic-machines", nargs="*", default=list(SYNTHETIC_MACHINES))
    p.add_argument("--synthetic-train", type=int, default=20, help="synthetic training clips per machine")
    p.add_argument("--synthetic-normal", type=int, default=12, help="synthetic normal test clips per machine")
    p.add_argument("--synthetic-anomaly", type=int, default=16,
                   help="synthetic anomalous test clips per machine (cycling through the 4 conditions)")
    p.add_argument("--synthetic-duration", type=float, default=10.0, help="synthetic clip length, seconds")
    p.add_argument("--epochs-2023", type=int, default=20, help="autoencoder epochs for section (c)")
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)
    import pandas as pd
    import torch

    from stethoscope import methods
    from stethoscope.data.index import index
    from stethoscope.data.synthetic import make_dcase2020_tree
    from stethoscope.errors import StethoscopeError
    from stethoscope.runs import git_commit
    from stethoscope.runtime import init_ray

    torch.set_num_threads(1)
    for m in args.methods:
        methods.get(m)  # unknown names → ConfigError before any work
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()
    commit = git_commit()  # the code the run starts with
    t_start = time.perf_counter()
    init_ray(num_cpus=os.cpu_count())

    # (dataset, data root, machine type, ids, methods, registry)
    plan: list[tuple[str, Path, str, list[str] | None, list[str], str | None]] = []
    if not args.skip_real:
        plan.append(("real", Path(args.data_root), "slider", ["00"], list(args.methods), None))
    synthetic_desc = ""
    truth = None
    if not args.skip_synthetic:
        syn_root = Path(args.runs) / "synthetic"
        tree = make_dcase2020_tree(
            syn_root, machine_types=tuple(args.synthetic_machines), machine_ids=("00",), n_train=args.synthetic_train,
            n_test_normal=args.synthetic_normal, n_test_anomaly=args.synthetic_anomaly,
            anomalies=SYNTHETIC_ANOMALIES, duration_s=args.synthetic_duration, seed=args.seed,
        )
        gt = pd.read_csv(tree / "ground_truth.csv")
        truth = pd.DataFrame({"key": [f"{mt}/{Path(p).name}" for mt, p in zip(gt["machine_type"], gt["path"])],
                              "anomaly": gt["anomaly"], "severity": gt["severity"]})
        conds = ", ".join(f"{k} at {s:g}" for k, s in SYNTHETIC_ANOMALIES)
        synthetic_desc = (
            f"`stethoscope.data.synthetic.make_dcase2020_tree` (seed {args.seed}): machine types "
            f"{', '.join(args.synthetic_machines)} (id_00 each), {args.synthetic_duration:g} s clips at 16 kHz, "
            f"{args.synthetic_train} training clips, {args.synthetic_normal} normal and {args.synthetic_anomaly} "
            f"anomalous test clips per machine (half of each validates, half is the test part); the anomalies "
            f"cycle through {conds}. Written to `{tree}`."
        )
        plan += [("synthetic", tree, mt, None, list(args.methods), None) for mt in args.synthetic_machines]
    if not args.skip_2023 and "autoencoder" in args.methods:
        table = index(args.data_root_2023).table.to_pandas()
        with_train = sorted(set(table.loc[table["split"] == "train", "machine_type"]))
        registry = str(Path(args.runs) / "registry2023")
        plan += [("dcase2023", Path(args.data_root_2023), mt, None, ["autoencoder"], registry) for mt in with_train]

    rows: list[Row] = []
    total = sum(len(p[4]) for p in plan)
    for dataset, root, machine_type, ids, run_methods, registry in plan:
        for method in run_methods:
            use_preset, preset_desc = preset_for(method, machine_type)
            config = dict(REDUCED.get(method, {}))
            if dataset == "dcase2023":
                config["epochs"] = args.epochs_2023
            if args.epochs is not None:
                config["epochs"] = args.epochs
            row = Row(dataset, machine_type, method, preset_desc, config,
                      pipeline_command(root, machine_type, ids, method, use_preset, config, registry or "none", args))
            log.info("[%d/%d] %s on %s %s (%s; %.1f min so far)", len(rows) + 1, total, method, dataset,
                     machine_type, preset_desc, (time.perf_counter() - t_start) / 60)
            try:
                run_one(row, root, ids, use_preset, args, truth if dataset == "synthetic" else None, registry)
            except StethoscopeError as exc:
                row.error = str(exc).splitlines()[0]
                log.error("%s on %s %s failed: %s", method, dataset, machine_type, exc)
            log.info("[%d/%d] %s on %s %s: AUC %s, pAUC %s (%.0f s)", len(rows) + 1, total, method, dataset,
                     machine_type, fmt(row.auc), fmt(row.pauc), row.seconds)
            rows.append(row)
    elapsed = time.perf_counter() - t_start
    load_after = os.getloadavg()
    load = f"{load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end"
    text = markdown(rows, args, started, elapsed, synthetic_desc, commit, load)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.is_file() else ""
    for begin, end in KEPT_BLOCKS:  # sections (e), (f) are jobs/results_tldiffgan.py's and results_aithu.py's
        if begin in old and end in old:
            text = splice(text, begin + old.split(begin, 1)[1].split(end, 1)[0] + end + "\n", begin, end)
    out.write_text(text)
    rows_json = Path(args.runs) / "results.json"
    rows_json.parent.mkdir(parents=True, exist_ok=True)
    rows_json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1, default=str))
    print(text)
    print(f"\nwritten to {out} (rows as JSON: {rows_json})")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    _common.run_main(main)
