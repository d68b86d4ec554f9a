"""Tune overhead: the wall time of a Tune sweep of 8 short autoencoder trials against the sum of the trials' own times.

python benchmarks/tune_overhead.py [--trials 8] [--epochs 2] [--concurrent 1]
                                   [--out benchmarks/results/tune_overhead.json]

Data: a seeded synthetic DCASE 2020 tree (fan id 00, 12 training + 8 + 8 labelled test clips of 2 s), ingested
once before the sweep (not timed as Tune overhead). The sweep is a grid over the baseline's lr × latent_dim ×
batch_size (2 × 2 × 2 = 8 points), each trial a Ray Train run of ``--epochs`` epochs with a validation pass every
epoch, no scheduler.

Reported (seconds):
- ``sweep_wall``: wall time of ``Tuner.fit()`` (trial actors, searcher, scheduling, result handling included);
- ``sum_fit``: sum over trials of the wall time of each trial's ``training.fit`` call (a Ray Train run: its
  start-up, the epochs, checkpoints) — what the same runs cost without Tune;
- ``sum_epochs``: sum over trials of their epochs' own times (pure training + validation, no Ray Train start-up);
- ``overhead = sweep_wall / sum_fit − 1`` (target ≤ 0.30 on the 2-core dev machine with one trial at a time).
Writes the numbers and the per-trial table as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8, choices=[2, 4, 8])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--concurrent", type=int, default=1, help="max_concurrent_trials (0.5-CPU workers)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tune_overhead.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    import yaml

    torch.set_num_threads(1)
    from stethoscope.data.synthetic import make_dcase2020_tree
    from stethoscope.runtime import init_ray
    from stethoscope.tuning import ValidationSpec
    from stethoscope.tuning.runner import run_sweep

    work = Path(tempfile.mkdtemp(prefix="tune_overhead_"))
    root = make_dcase2020_tree(work / "data", machine_types=("fan",), machine_ids=("00",), n_train=12,
                               n_test_normal=8, n_test_anomaly=8, anomalies=("clicks",), severity=1.0,
                               duration_s=2.0, seed=7)
    values = {"lr": [1e-3, 1e-2], "latent_dim": [4, 8], "batch_size": [64, 128]}
    names = list(values)[: {2: 1, 4: 2, 8: 3}[args.trials]]
    space = {
        "method": "autoencoder", "metric": "val_auc_pauc_mean", "mode": "max", "sampler": "grid",
        "scheduler": "none",
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 0,
                      "max_concurrent_trials": args.concurrent},
        "fixed": {"epochs": args.epochs, "val_fraction": 0.1},
        "space": {n: {"choice": values[n]} for n in names},
    }
    space_path = work / "space.yaml"
    space_path.write_text(yaml.safe_dump(space))
    init_ray(num_cpus=os.cpu_count())
    res = run_sweep(space_path, machine_type="fan", data_root=root, storage_root=str(work / "tune"), name="overhead",
                    store=str(work / "store"), seed=0, validation=ValidationSpec(fraction=0.5, seed=0), verbose=0)
    t = res.trials
    sweep_wall = res.timings["tune_wall_s"]
    sum_fit = float(t["fit_seconds"].sum())
    sum_epochs = float(t["train_seconds"].sum())
    out = {
        "trials": int(len(t)), "epochs": args.epochs, "max_concurrent_trials": args.concurrent,
        "sweep_wall_s": sweep_wall, "sum_fit_s": sum_fit, "sum_epochs_s": sum_epochs,
        "overhead_vs_fit": sweep_wall / sum_fit - 1.0, "overhead_vs_epochs": sweep_wall / sum_epochs - 1.0,
        "ingest_s": res.timings["ingest_s"], "complete": res.complete,
        "per_trial": t[["trial_id", *names, "fit_seconds", "train_seconds", "time_total_s"]].to_dict("records"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m_at_end": os.getloadavg()[0]},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'':<34}{'seconds':>10}")
    print(f"{'Tune sweep wall time':<34}{sweep_wall:>10.1f}")
    print(f"{'sum of trials fit() wall times':<34}{sum_fit:>10.1f}")
    print(f"{'sum of trials epoch times':<34}{sum_epochs:>10.1f}")
    print(f"{'overhead vs fit()':<34}{100 * out['overhead_vs_fit']:>9.1f}%   (target <= 30%)")
    print(f"{'trials':<34}{len(t):>10d}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
