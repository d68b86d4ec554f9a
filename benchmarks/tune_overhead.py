"""Tune overhead: the wall time of a Tune sweep of 20 short autoencoder trials against the sum of the trials' own times.

python benchmarks/tune_overhead.py [--trials 20] [--epochs 2] [--concurrent 1]
                                   [--out benchmarks/results/tune_overhead.json]

Data: a seeded synthetic DCASE 2020 tree (fan id 00, 12 training + 8 + 8 labelled test clips of 2 s), ingested
once before the sweep (not timed as Tune overhead). The sweep is a grid over the baseline's learning rate
(``--trials`` values, log-spaced from 1e-4 to 1e-1), each trial a Ray Train run of ``--epochs`` epochs with a
validation pass every epoch, no scheduler. Ray is the embedded one of ``stethoscope.runtime.init_ray`` (127.0.0.1,
state API on), started before the timer.

Reported (seconds):
- ``sweep_wall``: wall time of ``Tuner.fit()`` (trial actors, searcher, scheduling, result handling included);
- ``sum_fit``: sum over trials of the wall time of each trial's ``training.fit`` call (a Ray Train run: its
  start-up, the epochs, checkpoints) — what the same runs cost without Tune;
- ``sum_epochs``: sum over trials of their epochs' own times (pure training + validation, no Ray Train start-up);
- ``overhead = sweep_wall / sum_fit − 1`` (target ≤ 0.30 on the 2-core dev machine with one trial at a time).
After the sweep it checks that every trial finished and that Ray's available CPUs are back to where they were (no
placement group left behind). Writes the numbers, the load average and the per-trial table as JSON.
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20, help="trials = grid points of the lr grid (default: 20)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--concurrent", type=int, default=1, help="max_concurrent_trials (0.5-CPU workers)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tune_overhead.json"))
    args = p.parse_args()
    if args.trials < 1:
        p.error("--trials must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import numpy as np
    import torch
    import yaml

    torch.set_num_threads(1)
    from stethoscope.data.synthetic import make_dcase2020_tree
    from stethoscope.runtime import init_ray, live_placement_groups
    from stethoscope.tuning import ValidationSpec
    from stethoscope.tuning.runner import run_sweep

    work = Path(tempfile.mkdtemp(prefix="tune_overhead_"))
    root = make_dcase2020_tree(work / "data", machine_types=("fan",), machine_ids=("00",), n_train=12,
                               n_test_normal=8, n_test_anomaly=8, anomalies=("clicks",), severity=1.0,
                               duration_s=2.0, seed=7)
    lrs = [float(f"{v:.3g}") for v in np.logspace(-4, -1, args.trials)]
    names = ["lr"]
    space = {
        "method": "autoencoder", "metric": "val_auc_pauc_mean", "mode": "max", "sampler": "grid",
        "scheduler": "none",
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 0,
                      "max_concurrent_trials": args.concurrent},
        "fixed": {"epochs": args.epochs, "val_fraction": 0.1},
        "space": {"lr": {"choice": lrs}},
    }
    space_path = work / "space.yaml"
    space_path.write_text(yaml.safe_dump(space))
    ray = init_ray(num_cpus=os.cpu_count())
    load_start = os.getloadavg()
    cpus_before, pgs_before = ray.available_resources().get("CPU", 0.0), set(live_placement_groups())
    res = run_sweep(space_path, machine_type="fan", data_root=root, storage_root=str(work / "tune"), name="overhead",
                    store=str(work / "store"), seed=0, validation=ValidationSpec(fraction=0.5, seed=0), verbose=0)
    t = res.trials
    deadline = time.monotonic() + 60  # the last trial's actors exit asynchronously
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0.0) < cpus_before - 1e-6:
        time.sleep(0.5)
    cpus_after, pgs_left = ray.available_resources().get("CPU", 0.0), set(live_placement_groups()) - pgs_before
    finished = int(t["status"].isin(["completed", "stopped_early"]).sum())
    sweep_wall = res.timings["tune_wall_s"]
    sum_fit = float(t["fit_seconds"].sum())
    sum_epochs = float(t["train_seconds"].sum())
    out = {
        "trials": int(len(t)), "epochs": args.epochs, "max_concurrent_trials": args.concurrent,
        "sweep_wall_s": sweep_wall, "sum_fit_s": sum_fit, "sum_epochs_s": sum_epochs,
        "overhead_vs_fit": sweep_wall / sum_fit - 1.0, "overhead_vs_epochs": sweep_wall / sum_epochs - 1.0,
        "ingest_s": res.timings["ingest_s"], "complete": res.complete, "trials_finished": finished,
        "cpus_available_before": cpus_before, "cpus_available_after": cpus_after,
        "placement_groups_left": sorted(pgs_left),
        "per_trial": t[["trial_id", *names, "fit_seconds", "train_seconds", "time_total_s"]].to_dict("records"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'':<34}{'seconds':>10}")
    print(f"{'Tune sweep wall time':<34}{sweep_wall:>10.1f}")
    print(f"{'sum of trials fit() wall times':<34}{sum_fit:>10.1f}")
    print(f"{'sum of trials epoch times':<34}{sum_epochs:>10.1f}")
    print(f"{'overhead vs fit()':<34}{100 * out['overhead_vs_fit']:>9.1f}%   (target <= 30%)")
    print(f"{'trials finished':<34}{finished:>10d}   (of {args.trials})")
    print(f"{'available CPUs before / after':<34}{cpus_before:>10.2f} / {cpus_after:.2f}")
    print(f"{'placement groups left':<34}{len(pgs_left):>10d}")
    print(f"load average (1, 5, 15 min) at start {load_start}, at end {os.getloadavg()}")
    print(f"wrote {args.out}")
    return 0 if finished == args.trials and not pgs_left and cpus_after >= cpus_before - 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
