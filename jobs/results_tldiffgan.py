"""TLDiffGAN results (issue 14): the full model and its Table 3 ablations on the real slider id_00 clips and a synthetic
fan, beside the paper's Tables 1 and 3; writes section (e) of docs/results.md in place.

python jobs/results_tldiffgan.py [--out docs/results.md] [--runs runs/results] [--store store] [--seed 0]
                                 [--skip-real] [--skip-synthetic] [--epochs N] [--encoder aisfx] [--encoder-path P]

Each row is one ``stethoscope.pipeline.run`` (ingest → split → Ray Train fit → detector stage → evaluate), exactly what
``jobs/pipeline.py --method tldiffgan`` does; the section lists the command of every row. Rows: the full model, then
one switch off each (Table 3): ``diffusion=false`` (a plain GAN generator), ``encoder=none`` (no waveform branch),
``tmixup=false`` (no log-mel enhancement). The detector (s_r of Eq. 5, KNN, LOF, GMM or SOS) is chosen per row on
the run's validation clips; every AUC / pAUC is on the held-out test clips.

The model is reduced to fit a 2-core CPU (:data:`REDUCED`, printed in the section), and the waveform branch uses
aisfx (its weights ship in the wheel) instead of the paper's EAT, which cannot be downloaded here. The section sits
between the markers ``<!-- tldiffgan:begin -->`` and ``<!-- tldiffgan:end -->``; jobs/results.py keeps it when it
rewrites the rest of the page.
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

log = logging.getLogger("results_tldiffgan")

BEGIN, END = R.TLDIFFGAN_BEGIN, R.TLDIFFGAN_END
#: TLDiffGAN Table 1 (AUC / pAUC %, DCASE 2020 Task 2 development set) per machine type, and its average.
PAPER_TABLE_1 = {"fan": (85.88, 73.15), "pump": (87.60, 76.55), "slider": (94.78, 83.94), "ToyCar": (93.35, 82.97),
                 "ToyConveyor": (80.29, 65.21), "valve": (89.67, 64.26), "average": (88.60, 74.35)}
#: TLDiffGAN Table 3 (average AUC %): the ablations.
PAPER_TABLE_3 = {"full": 88.60, "w/o latent diffusion": 86.40, "w/o waveform branch (EAT)": 86.36,
                 "w/o log-mel enhancement (TMixup)": 87.64}
#: Rows: name → Config overrides.
VARIANTS = {"full": {}, "w/o latent diffusion": {"diffusion": False}, "w/o waveform branch (EAT)": {"encoder": "none"},
            "w/o log-mel enhancement (TMixup)": {"tmixup": False}}
#: Ours, to fit a 2-core CPU (paper / Config defaults in brackets): widths 8-64 (32-256), latent 64 (128), denoiser
#: width 128 (512), T = 200 with s = 40 (1000, 200: the same s / T), batch 32 (512), 20 epochs (150).
REDUCED = {"base_channels": 8, "max_channels": 64, "latent_dim": 64, "denoiser_hidden": 128,
           "num_diffusion_steps": 200, "start_step": 40, "batch_size": 32, "epochs": 20}


def section(rows: list[tuple[str, R.Row]], args, started: str, elapsed: float, commit: str | None, data: str) -> str:
    red = ", ".join(f"{k} {v}" for k, v in REDUCED.items())
    lines = [
        BEGIN,
        "## (e) TLDiffGAN and its ablations beside the paper's Tables 1 and 3",
        "",
        f"Produced by `{shlex.join(['python', 'jobs/results_tldiffgan.py', *sys.argv[1:]])}` on {started} (git commit "
        f"`{commit or 'unknown'}` at the start), seed {args.seed}, in {elapsed / 60:.1f} min on a {os.cpu_count()}-core CPU shared with other work "
        "(docs/tldiffgan.md). Every number was measured by that run. The paper's numbers are on the full DCASE 2020 "
        "development set (Table 1 per machine type; Table 3 the average AUC of each ablation); ours are on "
        f"{data}: smoke tests of the whole method, **not comparable** to the paper's.",
        "",
        f"- **Reduced to fit a CPU** (ours): {red}; the waveform branch is aisfx (weights in its wheel, 44.1 kHz, "
        "512-d) instead of EAT, which cannot be downloaded here.",
        "- The detector (s_r = ‖Enc(x) − Enc(x̂)‖², Eq. 5, or KNN / LOF / GMM / SOS on Z = Z_mel ⊕ Z_wave) is chosen per "
        "row on the run's validation clips (Eq. 6); AUC / pAUC are on its held-out test clips.",
        "",
        "| data | machine | model | paper AUC / pAUC (%) | AUC | pAUC | test clips normal/anomaly | detector (chosen on "
        "validation) | epochs | time s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        if name == "full":
            paper = "Table 1: " + " / ".join(f"{v:.2f}" for v in PAPER_TABLE_1.get(r.machine_type, ("–", "–")))
        else:
            paper = f"Table 3 (average): {PAPER_TABLE_3[name]:.2f} / –"
        if r.error:
            lines.append(f"| {r.dataset} | {r.machine_type} | {name} | {paper} | failed: {r.error} |" + " |" * 5)
            continue
        lines.append("| " + " | ".join([
            r.dataset, r.machine_type, name, paper, R.fmt(r.auc), R.fmt(r.pauc), f"{r.n_normal}/{r.n_anomaly}",
            f"`{r.variant}`" if r.variant else "–", str(r.epochs), f"{r.seconds:.0f}"]) + " |")
    lines += ["", f"Paper averages: Table 1 full model {PAPER_TABLE_1['average'][0]:.2f} / "
                  f"{PAPER_TABLE_1['average'][1]:.2f} (AEGAN-AD 86.08 / 72.08 in the same table).", "",
              "Each row alone:", "", "```", *[r.command for _, r in rows], "```", END]
    return "\n".join(lines) + "\n"


def splice(page: str, block: str) -> str:
    """``page`` with its TLDiffGAN block replaced by ``block`` (or ``block`` inserted before "## Below chance", or
    appended)."""
    return R.splice(page, block, BEGIN, END)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(_common.ROOT / "docs" / "results.md"))
    p.add_argument("--runs", default="runs/results", help="parent folder of the run folders and the synthetic set")
    p.add_argument("--data-root", default=str(R.REAL_ROOT), help="DCASE 2020 tree with slider id_00 training clips")
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per run (default {REDUCED['epochs']})")
    p.add_argument("--encoder", default="aisfx", help="the waveform branch's encoder")
    p.add_argument("--encoder-path", default=None, help="its local weights (aisfx: none needed)")
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)
    from stethoscope.data.synthetic import make_dcase2020_tree
    from stethoscope.errors import StethoscopeError

    started, commit, t_start = R.start_job()
    plan, data = [], []
    if not args.skip_real:
        plan.append(("real", Path(args.data_root), "slider", ["00"]))
        data.append("the real slider id_00 clips (75 training clips; 5 held-out test clips)")
    if not args.skip_synthetic:
        tree = make_dcase2020_tree(Path(args.runs) / "synthetic_tldiffgan", machine_types=("fan",),
                                   machine_ids=("00",), n_train=20, n_test_normal=12, n_test_anomaly=16,
                                   anomalies=R.SYNTHETIC_ANOMALIES, duration_s=10.0, seed=args.seed)
        plan.append(("synthetic", tree, "fan", None))
        data.append("a synthetic fan (`make_dcase2020_tree`, seed 0: 20 training clips, 12 normal and 16 anomalous "
                    "10 s test clips cycling through clicks and harmonic at severities 0.3 and 1)")
    encoder = {"encoder": args.encoder, **({"encoder_path": args.encoder_path} if args.encoder_path else {})}
    rows: list[tuple[str, R.Row]] = []
    for dataset, root, machine_type, ids in plan:
        for name, switch in VARIANTS.items():
            config = {**REDUCED, **encoder, **switch}
            if args.epochs is not None:
                config["epochs"] = args.epochs
            if config.get("encoder") == "none":
                config.pop("encoder_path", None)
            row = R.Row(dataset, machine_type, "tldiffgan", "none", config,
                        R.pipeline_command(root, machine_type, ids, "tldiffgan", False, config, "none", args))
            log.info("[%d/%d] tldiffgan %s on %s %s", len(rows) + 1, len(plan) * len(VARIANTS), name, dataset,
                     machine_type)
            try:
                R.run_one(row, root, ids, False, args)
                detect = json.loads((Path(row.run_dir) / "detect.json").read_text())
                row.variant = detect["machine_types"][machine_type]["selected"]
            except StethoscopeError as exc:
                row.error = str(exc).splitlines()[0]
                log.error("tldiffgan %s on %s %s failed: %s", name, dataset, machine_type, exc)
            log.info("tldiffgan %s on %s %s: AUC %s, pAUC %s, detector %s (%.0f s)", name, dataset, machine_type,
                     R.fmt(row.auc), R.fmt(row.pauc), row.variant or "–", row.seconds)
            rows.append((name, row))
    block = section(rows, args, started, time.perf_counter() - t_start, commit, " and ".join(data))
    out = Path(args.out)
    out.write_text(splice(out.read_text() if out.is_file() else "", block))
    print(block)
    print(f"written to {out}")
    return 1 if any(r.error for _, r in rows) else 0


if __name__ == "__main__":
    _common.run_main(main)
