"""AITHU DCASE 2022 subsystems (issues 15 and 16): SC, MHCR, SC with the domain classifier, SC-wav2vec, WSP-NFCDEE,
IMDN and the AE baseline on a synthetic DCASE 2022-style set, beside the report's Tables 1-3, 5, 7 and 8, then the
four submission recipes built from those runs beside Table 10; writes section (f) of docs/results.md in place.

python jobs/results_aithu.py [--out docs/results.md] [--runs runs/results] [--store store] [--seed 0]
                             [--epochs N] [--wav2vec-path FOLDER]

Each row is one ``stethoscope.pipeline.run`` (ingest → split → Ray Train fit → detector stage → evaluate), what
``jobs/pipeline.py`` does; the section lists the command of every row. The set is ``make_dcase2022_tree`` (fan, three
sections, 2 s clips, a target domain 1.3-1.4× faster with 15 dB more band noise and 4 training clips per section,
clicks and a harmonic at severity 0.5). The models are reduced to fit a 2-core CPU (:data:`REDUCED`, printed in the
section). SC-wav2vec needs a wav2vec 2.0 folder (``--wav2vec-path``); without one its row says so. The official score
is the h-mean of every section's AUC (source), AUC (target) and pAUC on the held-out test clips; the detector is
chosen per row on the validation clips. The section sits between ``<!-- aithu:begin -->`` and ``<!-- aithu:end -->``;
jobs/results.py keeps it when it rewrites the rest of the page.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import _common
import results as R

log = logging.getLogger("results_aithu")

BEGIN, END = R.AITHU_BEGIN, R.AITHU_END
#: The report's numbers as issue 15 quotes them (h-mean %, DCASE 2022 Task 2): Table 3 (SC with Table 3's input and
#: backbone) for fan, and Tables 1-2's baselines and best ensemble (over every machine type).
PAPER = {"sc": "Table 3, fan: 80.64", "autoencoder": "Tables 1-2, all types: 52.61",
         "mhcr": "– (not in the issue)", "sc + domain classifier": "– (not in the issue)",
         "sc_wav2vec": "– (Table 5 gives its detectors: fan maha)",
         "wsp_nfcdee": "Table 7, fan: 68.54", "imdn": "Table 8, fan: 62.24"}
#: Ours, to fit a 2-core CPU: a 64-mel log-mel instead of Table 3's |STFT| (1025 bins), 32-frame crops (192), a one-row
#: MobileFaceNet with 32-d embeddings (the "aithu" setting), a two-block Cnn6 domain classifier (four blocks), 15 epochs
#: (25); AE: the DCASE 2020 baseline, 20 epochs of batch 64.
SC_REDUCED = {"feature": "log_mel", "n_mels": 64, "n_frames": 32, "crop_hop": 16, "backbone": "mobilefacenet",
              "backbone_overrides": {"setting": [[2, 32, 1, 2]], "stem_channels": 16, "head_channels": 64,
                                     "embedding_dim": 32}, "lr": 3e-3, "epochs": 15}
DOMAIN = {"domain_classifier": True, "domain_backbone_overrides": {"channels": [8, 16], "embedding_dim": 16}}
REDUCED = {"autoencoder": {"epochs": 20, "batch_size": 64}, "sc": SC_REDUCED, "mhcr": SC_REDUCED,
           "sc + domain classifier": {**SC_REDUCED, **DOMAIN},
           "sc_wav2vec": {"window_seconds": 1.0, "window_hop_seconds": 0.5, "epochs": 15},
           # Table 7's fan features but 64 mels and 30-frame segments (2 s clips have 63 frames), a smaller flow
           "wsp_nfcdee": {"n_mels": 64, "n_frames": 30, "transforms": 2, "hidden_features": [64, 64], "epochs": 30},
           # Table 8's fan network (LRCGNN) on 64 mels and 30-frame windows, one GRU per stack, 8 windows per step
           "imdn": {"n_mels": 64, "n_frames": 30, "network": "lrcgnn", "gru_layers": 1, "train_frames": 62,
                    "windows_per_clip": 8, "epochs": 10}}
METHOD = {"sc + domain classifier": "sc"}


def section(rows: list[tuple[str, R.Row]], args, started: str, elapsed: float, commit: str | None) -> str:
    lines = [
        BEGIN,
        "## (f) AITHU's subsystems beside the report's Tables 1-3 and 5",
        "",
        f"Produced by `{shlex.join(['python', 'jobs/results_aithu.py', *sys.argv[1:]])}` on {started} (git commit "
        f"`{commit or 'unknown'}` at the start), seed {args.seed}, in {elapsed / 60:.1f} min on a {os.cpu_count()}-core "
        "CPU (docs/aithu.md). Every number was measured by that run. The report's numbers are on the DCASE 2022 "
        "development and evaluation data; ours are on a small synthetic DCASE 2022-style set (`make_dcase2022_tree`: "
        "fan, sections 00-02, 16 source + 4 target training clips per section, 6 normal + 6 anomalous test clips per "
        "section and domain, 2 s, target domain 1.3-1.4× faster with 15 dB more band noise, clicks and a harmonic at "
        "severity 0.5): smoke tests of each subsystem, **not comparable** to the report's.",
        "",
        "- **Reduced to fit a CPU** (ours): " + "; ".join(
            f"{name}: " + ", ".join(f"{k} {v}" for k, v in cfg.items()) for name, cfg in REDUCED.items()) + ".",
        "- The detector (k-NN / LOF / cosine / Mahalanobis) is chosen per row on the validation clips; the scores are "
        "on the held-out test clips. h-mean = the official score (every section's AUC (source), AUC (target), pAUC).",
        "",
        "| subsystem | report h-mean (%) | h-mean | AUC (source) | AUC (target) | pAUC | detector (chosen on validation)"
        " | domain accuracy (test) | time s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        if r.error:
            lines.append(f"| {name} | {PAPER[name]} | not run: {r.error} |" + " |" * 6)
            continue
        lines.append("| " + " | ".join([
            name, PAPER[name], R.fmt(r.official), R.fmt(r.auc_source), R.fmt(r.auc_target), R.fmt(r.pauc),
            f"`{r.variant}`" if r.variant else "–", r.conditions.get("domain_accuracy", "–"),
            f"{r.seconds:.0f}"]) + " |")
    lines += ["", "Each row alone:", "", "```", *[r.command for _, r in rows if not r.error], "```"]
    lines += recipe_lines(rows, args)
    lines.append(END)
    return "\n".join(lines) + "\n"


def recipe_lines(rows: list[tuple[str, R.Row]], args) -> list[str]:
    """The four submissions (issue 16, publishing/recipes.py) built from this job's runs, beside Table 10."""
    from stethoscope.errors import StethoscopeError
    from stethoscope.publishing import read_run
    from stethoscope.publishing.recipes import RECIPES, format_recipe_table, run_recipe

    infos = [read_run(r.run_dir) for _, r in rows if r.run_dir and not r.error]
    out = Path(args.runs) / f"ensembles-{time.strftime('%Y%m%d-%H%M%S')}"
    results, failed = [], []
    for n, recipe in RECIPES.items():
        try:
            results.append(run_recipe(recipe, infos, out / f"recipe-{n}" / "registry", out / f"recipe-{n}"))
        except StethoscopeError as exc:
            failed.append(f"recipe {n}: {str(exc).splitlines()[0]}")
    lines = ["", "### The submissions (Table 10) from these runs", "",
             "Built by `publishing/recipes.py` (what `python jobs/ensemble.py --runs <these runs>` does): each member "
             "standardized with its training-clip scores, convex weights on a 0.1 grid chosen by the **validation** "
             "official score (the report chose on its test set); the score columns are the official score (%) on the "
             "validation clips and on the held-out test clips. Member weights in the members column.", "", "```"]
    lines += format_recipe_table(results).splitlines() if results else []
    lines += ["```", *[f"- {f}" for f in failed]]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(_common.ROOT / "docs" / "results.md"))
    p.add_argument("--runs", default="runs/results", help="parent folder of the run folders and the synthetic set")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: REDUCED's)")
    p.add_argument("--wav2vec-path", default=None, help="a wav2vec 2.0 save_pretrained folder for the SC-wav2vec row")
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)
    from stethoscope.data.synthetic import make_dcase2022_tree
    from stethoscope.errors import StethoscopeError

    started, commit, t_start = R.start_job()
    tree = make_dcase2022_tree(Path(args.runs) / "synthetic_aithu", sections=("00", "01", "02"), n_train_source=16,
                               n_train_target=4, n_test_normal=6, n_test_anomaly=6, anomalies=("clicks", "harmonic"),
                               severity=0.5, target_noise_db=15.0, duration_s=2.0, seed=args.seed)
    rows: list[tuple[str, R.Row]] = []
    for name, reduced in REDUCED.items():
        method = METHOD.get(name, name)
        config = dict(reduced)
        if args.epochs is not None:
            config["epochs"] = args.epochs
        if method == "sc_wav2vec":
            config["encoder_path"] = args.wav2vec_path
        row = R.Row("synthetic 2022", "fan", method, "none", config,
                    R.pipeline_command(tree, "fan", None, method, False, config, "none", args))
        if method == "sc_wav2vec" and not args.wav2vec_path:
            row.error = "no wav2vec 2.0 weights here (pass --wav2vec-path <save_pretrained folder>)"
            rows.append((name, row))
            continue
        log.info("[%d/%d] %s", len(rows) + 1, len(REDUCED), name)
        try:
            R.run_one(row, tree, None, False, args)
            detect_file = Path(row.run_dir) / "detect.json"
            if detect_file.is_file():
                detect = json.loads(detect_file.read_text())["machine_types"]["fan"]
                row.variant = detect["selected"]
                acc = detect.get("domain_classifier", {}).get("accuracy_test")
                if acc is not None:
                    row.conditions["domain_accuracy"] = R.fmt(acc)
        except StethoscopeError as exc:
            row.error = str(exc).splitlines()[0]
            log.error("%s failed: %s", name, exc)
        log.info("%s: h-mean %s (%.0f s)", name, R.fmt(row.official), row.seconds)
        rows.append((name, row))
    block = section(rows, args, started, time.perf_counter() - t_start, commit)
    out = Path(args.out)
    out.write_text(R.splice(out.read_text() if out.is_file() else "", block, BEGIN, END))
    print(block)
    print(f"written to {out}")
    return 1 if any(r.error and r.method != "sc_wav2vec" for _, r in rows) else 0


if __name__ == "__main__":
    _common.run_main(main)
