"""Results job: every method × machine on the real slider id_00 clips and on a synthetic set, in one table.

python jobs/results.py [--out docs/results.md] [--runs runs/results] [--store store] [--seed 0]
                       [--methods autoencoder ganomaly skip_ganomaly egbad aegan_ad] [--skip-real] [--skip-synthetic]

Each (method, machine) is one ``stethoscope.pipeline.run`` (ingest → Ray Train fit → score → evaluate; no
publish), exactly what ``jobs/pipeline.py`` does; the table lists the equivalent ``jobs/pipeline.py`` command of every
row.
Data:
  (a) real: ../shared/data/dcase2020_task2_dev_sample, slider id_00 (the only real machine with training clips;
      9 test clips, so its numbers are smoke tests, not benchmarks);
  (b) synthetic: ``stethoscope.data.synthetic.make_dcase2020_tree`` with several machine types (id_00 each) and test
      anomalies cycling through clicks and harmonic at severities 0.3 and 1.0, written under ``<runs>/synthetic``.
Epochs are reduced from the papers' defaults (see EPOCHS) so that the whole job fits a small CPU machine; the table
says so. AEGAN-AD's score variant is chosen on a validation half of the labelled test clips and its metrics cover
the other half only (``pipeline.evaluate_stage``); every method is also scored on that same held-out half.
Writes the markdown table to ``--out`` and the runs (metrics.json, scores, plots) under ``--runs``.
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
#: Epochs per method for this job (reduced from each Config's paper default, printed beside it in the table).
EPOCHS = {"autoencoder": 20, "ganomaly": 5, "skip_ganomaly": 5, "egbad": 5, "aegan_ad": 6}
#: Other Config overrides. AEGAN-AD keeps its 128 × 128 patches but is narrowed (8 channels instead of 32, latent 32
#: instead of 256: at 16 channels and latent 64 it trained at 11 patches/s on this shared CPU), its patches are
#: cut every 32 frames instead of every frame, and its batch is 32 instead of 512.
OVERRIDES = {
    "aegan_ad": {"base_channels": 8, "decoder_channels": 8, "latent_dim": 32, "patch_hop": 32, "batch_size": 32},
}
SYNTHETIC_MACHINES = ("fan", "pump")
SYNTHETIC_ANOMALIES = (("clicks", 0.3), ("clicks", 1.0), ("harmonic", 0.3), ("harmonic", 1.0))
REAL_ROOT = _common.ROOT.parent / "shared" / "data" / "dcase2020_task2_dev_sample"


@dataclasses.dataclass
class Row:
    dataset: str
    machine_type: str
    method: str
    epochs: int
    paper_epochs: int
    overrides: dict
    command: str
    run_dir: str = ""
    auc: float | None = None
    pauc: float | None = None
    n_normal: int = 0
    n_anomaly: int = 0
    half_auc: float | None = None
    half_pauc: float | None = None
    half_n: str = ""
    variant: str = ""
    conditions: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0
    error: str = ""


def paper_epochs(method: str) -> int:
    from stethoscope import methods

    return int(methods.get(method).make_config({}).epochs)


def pipeline_command(data_root: Path, machine_type: str, ids: list[str] | None, method: str, config: dict,
                     args) -> str:
    parts = ["python", "jobs/pipeline.py", "--data-root", str(data_root), "--machine-type", machine_type]
    if ids:
        parts += ["--ids", *ids]
    parts += ["--method", method, "--epochs", str(config["epochs"])]
    sets = [f"{k}={v}" for k, v in config.items() if k != "epochs"]
    if sets:
        parts += ["--set", *sets]
    parts += ["--seed", str(args.seed), "--runs", args.runs, "--store", args.store, "--registry", "none"]
    return shlex.join(parts)


def held_out_metrics(scores, seed: int) -> tuple[float | None, float | None, str, set]:
    """AUC / pAUC on the test half of the seeded stratified split that AEGAN-AD's variant selection uses
    (``stethoscope.splits.stratified_split``, fraction 0.5, the run seed), so every method is compared on the
    same clips. Returns (AUC, pAUC, "normal/anomaly" counts, test-half paths)."""
    from stethoscope.evaluation import auc, pauc
    from stethoscope.splits import stratified_split

    split = stratified_split(scores, fraction=0.5, seed=seed)
    test = scores[scores["path"].isin(set(split.test))]
    y = (test["label"] == "anomaly").to_numpy().astype(int)
    counts = f"{int((y == 0).sum())}/{int(y.sum())}"
    if y.min() == y.max():
        return None, None, counts, set(split.test)
    s = test["score"].to_numpy()
    return auc(y, s), pauc(y, s), counts, set(split.test)


def condition_metrics(scores, truth, reported: set | None) -> dict[str, dict[str, float]]:
    """Synthetic sets: AUC and pAUC of each anomaly condition (kind, severity) against every normal test clip of the
    machine; ``reported`` restricts the clips (AEGAN-AD: its reported test half)."""
    import numpy as np

    from stethoscope.evaluation import auc, pauc

    frame = scores.copy()
    if reported is not None:
        frame = frame[frame["path"].isin(reported)]
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


def run_one(row: Row, data_root: Path, ids: list[str] | None, config: dict, args, truth=None) -> Row:
    import pandas as pd

    from stethoscope.pipeline import run

    t0 = time.perf_counter()
    res = run(data_root, machine_type=row.machine_type, machine_ids=ids, method=row.method, config=config,
              store=args.store, runs_root=args.runs, seed=args.seed, registry=None)
    row.seconds = time.perf_counter() - t0
    row.run_dir = res.run_dir
    history = json.loads((Path(res.run_dir) / "train_history.json").read_text())
    row.steps = int(sum(h.get("steps", 0) for h in history))
    mean = res.metrics["machine_types"][row.machine_type]["mean"]
    row.auc, row.pauc = mean.get("auc"), mean.get("pauc")
    row.n_normal, row.n_anomaly = int(mean.get("n_normal", 0)), int(mean.get("n_anomaly", 0))
    scores = pd.read_parquet(Path(res.run_dir) / "scores.parquet")
    row.half_auc, row.half_pauc, row.half_n, half = held_out_metrics(scores, args.seed)
    selection = res.metrics.get("score_variant_selection")
    if selection:
        row.variant = selection["selected"]
    if truth is not None:
        row.conditions = condition_metrics(scores, truth, half if selection else None)
    return row


def fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown(rows: list[Row], args, started: str, elapsed: float, synthetic_desc: str, commit: str | None) -> str:
    cmd = shlex.join(["python", "jobs/results.py", *sys.argv[1:]])
    lines = [
        "# Results: every method × machine (AUC / pAUC)",
        "",
        f"Produced by `{cmd}` on {started} (git commit `{commit or 'unknown'}`, uncommitted changes possible), "
        f"seed {args.seed}, in {elapsed / 60:.1f} min on a {os.cpu_count()}-core CPU machine shared with other "
        f"work ({platform.machine()}, Python {platform.python_version()}). Every number below was measured by that "
        "run; "
        "each row's `jobs/pipeline.py` command reproduces it alone.",
        "",
        "How to read it:",
        "- AUC and pAUC (p = 0.1, McClish-standardized, as the official DCASE evaluators report it) per machine type, "
        "arithmetic mean over machine IDs (one ID here). Higher is better; 0.5 is chance.",
        "- **Epochs are reduced** from the papers' defaults (column *epochs (paper)*) so that the whole job runs in "
        "20-30 minutes on a shared 2-core CPU machine; AEGAN-AD is also narrowed (8 channels instead of 32, "
        "latent 32 instead of 256, 128 × 128 patches every 32 frames instead of every frame, batch 32 instead of "
        "512). These are not the papers' results and not tuned; no hyperparameter was chosen on test labels. "
        "*train steps* counts the optimizer steps of all epochs (generator steps for the GANs): a method with few "
        "steps (e.g. the autoencoder at its paper batch of 512 on the small synthetic sets, and AEGAN-AD, whose "
        "discriminator-embedding detectors then score embeddings of a barely trained network) is under-trained "
        "here.",
        "- **AEGAN-AD** chooses its score variant on a seeded stratified half of the labelled test clips "
        "(`stethoscope.splits.stratified_split`, fraction 0.5, the run seed) and its AUC/pAUC cover the other half "
        "only. The *held-out half* columns score **every** method on that same other half, so the methods can be "
        "compared on the same clips.",
        "- The JBCS 2024 per-machine presets (Tables 4/5) were not available, so GANomaly and Skip-GANomaly run "
        "with their Config defaults (4 hidden layers of 128, latent 8, batch 64).",
        "",
    ]
    real = [r for r in rows if r.dataset == "real"]
    if real:
        ok = [r for r in real if not r.error]
        full = [r for r in ok if not r.variant]
        n_norm, n_anom = (full[0].n_normal, full[0].n_anomaly) if full else (5, 4)
        half = [int(v) for v in ok[0].half_n.split("/")] if ok and ok[0].half_n else [3, 2]
        lines += [
            "## (a) Real clips: slider id_00 (DCASE 2020 Task 2 development sample)",
            "",
            f"**Smoke test, not a benchmark:** slider id_00 has only {n_norm + n_anom} labelled test clips "
            f"({n_norm} normal, {n_anom} anomalous) in ../shared/data (see its README.md), beside 75 training clips. "
            f"The AUC counts {n_norm * n_anom} normal/anomalous pairs, so one pair moves it by "
            f"{1 / max(1, n_norm * n_anom):.2f}; the held-out half has {sum(half)} clips ({half[0] * half[1]} "
            f"pairs, {1 / max(1, half[0] * half[1]):.2f} each). Do not rank methods on these numbers.",
            "",
        ]
        lines += _main_table(real) + [""]
    syn = [r for r in rows if r.dataset == "synthetic"]
    if syn:
        lines += ["## (b) Synthetic machine sounds", "", synthetic_desc, ""]
        lines += _main_table(syn)
        lines += [
            "",
            "AUC per anomaly condition (all normal test clips of the machine against the anomalies of one kind and "
            "severity; AEGAN-AD on its reported half only):",
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
        lines.append("(in brackets: the number of anomalous clips of that condition)")
    below = [r for r in rows if r.auc is not None and r.auc < 0.5]
    lines += ["", "## Below chance", ""]
    if below:
        lines.append("These rows have an AUC below 0.5 (worse than chance), reported as measured, not tuned away:")
        lines.append("")
        for r in below:
            lines.append(f"- {r.method} on {r.dataset} {r.machine_type}: AUC {fmt(r.auc)}, pAUC {fmt(r.pauc)}")
        if any(r.method == "egbad" for r in below):
            lines.append("")
            lines.append("JBCS 2024 also found EGBAD below chance on several machines.")
    else:
        lines.append("No row has an AUC below 0.5 in this run.")
    egbad = [r for r in rows if r.method == "egbad" and r.auc is not None]
    if egbad:
        lines.append("")
        lines.append("EGBAD, as measured: " + "; ".join(
            f"{r.dataset} {r.machine_type} AUC {fmt(r.auc)}" for r in egbad) + ".")
    failed = [r for r in rows if r.error]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r.method} on {r.dataset} {r.machine_type}: {r.error}"
                                               for r in failed]
    lines += ["", "## Commands", "", "Whole table:", "", "```", cmd, "```", "",
              "Each row alone (the synthetic rows need the synthetic tree, which the whole-table command writes "
              "first):", "", "```"]
    lines += [r.command for r in rows]
    lines += ["```", ""]
    return "\n".join(lines)


def _main_table(rows: list[Row]) -> list[str]:
    head = ["machine", "method", "epochs (paper)", "train steps", "AUC", "pAUC", "normal/anomaly", "held-out half AUC",
            "held-out half pAUC", "half normal/anomaly", "score variant", "time s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.error:
            out.append(f"| {r.machine_type} | {r.method} | {r.epochs} ({r.paper_epochs}) | – | failed: {r.error} |"
                       + " |" * (len(head) - 5))
            continue
        out.append("| " + " | ".join([
            r.machine_type, r.method, f"{r.epochs} ({r.paper_epochs})", str(r.steps), fmt(r.auc), fmt(r.pauc),
            f"{r.n_normal}/{r.n_anomaly}" + (" (half)" if r.variant else ""), fmt(r.half_auc), fmt(r.half_pauc),
            r.half_n, f"`{r.variant}`" if r.variant else "–", f"{r.seconds:.0f}",
        ]) + " |")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(_common.ROOT / "docs" / "results.md"))
    p.add_argument("--runs", default="runs/results", help="parent folder of the run folders and the synthetic set")
    p.add_argument("--data-root", default=str(REAL_ROOT), help="DCASE 2020 tree with slider id_00 training clips")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--epochs", type=int, default=None, help="one epoch count for every method (default: EPOCHS)")
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--synthetic-train", type=int, default=20, help="synthetic training clips per machine")
    p.add_argument("--synthetic-normal", type=int, default=12, help="synthetic normal test clips per machine")
    p.add_argument("--synthetic-anomaly", type=int, default=16,
                   help="synthetic anomalous test clips per machine (cycling through the 4 conditions)")
    p.add_argument("--synthetic-duration", type=float, default=10.0, help="synthetic clip length, seconds")
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)
    import pandas as pd
    import torch

    from stethoscope import methods
    from stethoscope.data.synthetic import make_dcase2020_tree
    from stethoscope.errors import StethoscopeError
    from stethoscope.pipeline import git_commit
    from stethoscope.runtime import init_ray

    torch.set_num_threads(1)
    for m in args.methods:
        methods.get(m)  # unknown names → ConfigError before any work
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    commit = git_commit()  # the code the run starts with
    t_start = time.perf_counter()
    init_ray(num_cpus=os.cpu_count())

    plan: list[tuple[str, Path, str, list[str] | None]] = []
    if not args.skip_real:
        plan += [("real", Path(args.data_root), "slider", ["00"])]
    synthetic_desc = ""
    truth = None
    if not args.skip_synthetic:
        syn_root = Path(args.runs) / "synthetic"
        tree = make_dcase2020_tree(
            syn_root, machine_types=SYNTHETIC_MACHINES, machine_ids=("00",), n_train=args.synthetic_train,
            n_test_normal=args.synthetic_normal, n_test_anomaly=args.synthetic_anomaly,
            anomalies=SYNTHETIC_ANOMALIES, duration_s=args.synthetic_duration, seed=args.seed,
        )
        gt = pd.read_csv(tree / "ground_truth.csv")
        truth = pd.DataFrame({"key": [f"{mt}/{Path(p).name}" for mt, p in zip(gt["machine_type"], gt["path"])],
                              "anomaly": gt["anomaly"], "severity": gt["severity"]})
        conds = ", ".join(f"{k} at {s:g}" for k, s in SYNTHETIC_ANOMALIES)
        synthetic_desc = (
            f"`stethoscope.data.synthetic.make_dcase2020_tree` (seed {args.seed}): machine types "
            f"{', '.join(SYNTHETIC_MACHINES)} (id_00 each), {args.synthetic_duration:g} s clips at 16 kHz, "
            f"{args.synthetic_train} training clips, {args.synthetic_normal} normal and {args.synthetic_anomaly} "
            f"anomalous test clips per machine; the anomalies cycle through {conds} "
            f"({args.synthetic_anomaly // len(SYNTHETIC_ANOMALIES)} clips each). Written to `{tree}`."
        )
        plan += [("synthetic", tree, mt, None) for mt in SYNTHETIC_MACHINES]

    rows: list[Row] = []
    total = len(plan) * len(args.methods)
    for dataset, root, machine_type, ids in plan:
        for method in args.methods:
            epochs = args.epochs if args.epochs is not None else EPOCHS.get(method, paper_epochs(method))
            config = {"epochs": epochs, **OVERRIDES.get(method, {})}
            row = Row(dataset, machine_type, method, config["epochs"], paper_epochs(method),
                      OVERRIDES.get(method, {}), pipeline_command(root, machine_type, ids, method, config, args))
            log.info("[%d/%d] %s on %s %s (%d epochs; %.1f min so far)", len(rows) + 1, total, method, dataset,
                     machine_type, config["epochs"], (time.perf_counter() - t_start) / 60)
            try:
                run_one(row, root, ids, config, args, truth if dataset == "synthetic" else None)
            except StethoscopeError as exc:
                row.error = str(exc).splitlines()[0]
                log.error("%s on %s %s failed: %s", method, dataset, machine_type, exc)
            log.info("[%d/%d] %s on %s %s: AUC %s, pAUC %s (%.0f s)", len(rows) + 1, total, method, dataset,
                     machine_type, fmt(row.auc), fmt(row.pauc), row.seconds)
            rows.append(row)
    elapsed = time.perf_counter() - t_start
    text = markdown(rows, args, started, elapsed, synthetic_desc, commit)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"\nwritten to {out}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    _common.run_main(main)
