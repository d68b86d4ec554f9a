"""Training throughput of every method through the one Ray Train loop, with 1 and 2 CPU workers.

python benchmarks/train_throughput.py [--methods autoencoder ganomaly ...] [--epochs 3] [--n-train 24]
                                      [--duration 5] [--seed 0] [--out benchmarks/results]

For each method it trains on the same seeded synthetic clips (stethoscope.data.synthetic: fan id_00, ``--n-train``
clips of ``--duration`` s) with ``stethoscope.training.fit`` twice: 1 worker (1 CPU, 1 torch thread) and 2 workers
(0.5 CPU each, 1 torch thread each, gradients all-reduced every step), no validation hold-out. It prints one table:

- samples/s: training examples (640-dim vectors, or AEGAN-AD patches) processed per second of training, all
  workers together, averaged over the epochs after the first (the first includes iterator start-up); Ray Train's
  own start-up is excluded (it is reported as ``wall s``: the whole ``fit`` call);
- speedup: 2-worker samples/s ÷ 1-worker samples/s;
- the final epoch's training losses for 1 and 2 workers (the worker mean), so that parity is visible. Two workers
  take half as many optimizer steps per epoch on the same data (each step averages 2 × batch_size examples), so the
  losses are close, not equal.

Writes ``<out>/train_throughput-<YYYYmmdd-HHMMSS>.json`` (git-ignored). Numbers depend on the machine and its load;
the JSON records the CPU count and the load average at the start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "platform") not in sys.path:
    sys.path.insert(0, str(ROOT / "platform"))

log = logging.getLogger("train_throughput")

#: Config overrides per method: the paper's networks and batch sizes, except AEGAN-AD, whose network is narrowed
#: (16 channels, latent 64) and whose patches are cut every 4 frames, so that a CPU benchmark finishes in minutes.
CONFIGS = {
    "autoencoder": {},
    "ganomaly": {},
    "skip_ganomaly": {},
    "egbad": {},
    "aegan_ad": {"base_channels": 16, "decoder_channels": 16, "latent_dim": 64, "patch_hop": 4, "batch_size": 32},
}
#: Training losses shown in the table (the ones a method reports; generator / discriminator for the GANs).
LOSS_KEYS = ("loss", "loss_g", "loss_d", "loss_con", "loss_rec")


def count_examples(method_name: str, config: dict, spec, clips) -> int:
    """Training examples the method cuts from ``clips`` (a list of [n_mels, frames] arrays)."""
    import numpy as np

    from stethoscope import methods

    cls = methods.get(method_name)
    m = cls(cls.make_config(config), spec, 1)
    out = m.examples({"log_mel": np.array(clips, dtype=object)})
    return int(len(next(iter(out.values()))))


def measure(method_name: str, config: dict, train_ds, spec, workers: int, n_examples: int, seed: int,
            run_root: Path) -> dict:
    """One ``fit`` with ``workers`` Ray Train workers; returns samples/s, wall time and final losses."""
    from stethoscope import methods
    from stethoscope.training import Scaling, fit

    cls = methods.get(method_name)
    cfg = cls.make_config(config)
    scaling = Scaling(num_workers=workers, use_gpu=False, cpus_per_worker=1.0 if workers == 1 else 0.5)
    t0 = time.perf_counter()
    res = fit(method_name, cfg, train_ds, scaling, feature_spec=spec, run_dir=run_root / f"{method_name}-{workers}w",
              seed=seed)
    wall = time.perf_counter() - t0
    hist = res.history
    timed = hist[1:] if len(hist) > 1 else hist
    # examples actually processed per epoch, all workers: steps (worker mean) × workers × batch, capped at the set
    # (2 workers drop their last partial batch; a 1-worker tail batch is short)
    per_epoch = [min(n_examples, h.get("steps", 0.0) * workers * cfg.batch_size) for h in timed]
    seconds = sum(h["epoch_seconds"] for h in timed)
    return {
        "workers": workers,
        "cpus_per_worker": scaling.cpus_per_worker,
        "samples_per_s": sum(per_epoch) / seconds if seconds > 0 else float("nan"),
        "epoch_seconds": [h["epoch_seconds"] for h in hist],
        "steps_per_epoch": hist[-1].get("steps"),
        "wall_s": wall,
        "final": {k: hist[-1][k] for k in LOSS_KEYS if k in hist[-1]},
        "first": {k: hist[0][k] for k in LOSS_KEYS if k in hist[0]},
    }


def format_table(rows: list[dict]) -> str:
    head = ["method", "examples", "1w samples/s", "2w samples/s", "speedup", "1w wall s", "2w wall s",
            "final loss 1w", "final loss 2w"]

    def losses(d: dict) -> str:
        return ", ".join(f"{k}={v:.4g}" for k, v in d.items())

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        one, two = r["runs"]["1"], r["runs"]["2"]
        lines.append("| " + " | ".join([
            r["method"], str(r["n_examples"]), f"{one['samples_per_s']:.0f}", f"{two['samples_per_s']:.0f}",
            f"{two['samples_per_s'] / one['samples_per_s']:.2f}×", f"{one['wall_s']:.0f}", f"{two['wall_s']:.0f}",
            losses(one["final"]), losses(two["final"]),
        ]) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=list(CONFIGS))
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2: the first is not timed)")
    p.add_argument("--n-train", type=int, default=24, help="synthetic training clips")
    p.add_argument("--duration", type=float, default=5.0, help="clip length in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import numpy as np
    import torch

    from stethoscope import methods
    from stethoscope.data.index import index, select
    from stethoscope.data.ingest import ingest, read_features
    from stethoscope.data.synthetic import make_dcase2020_tree
    from stethoscope.pipeline import feature_spec_for
    from stethoscope.runtime import init_ray

    torch.set_num_threads(1)
    unknown = [m for m in args.methods if m not in CONFIGS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(CONFIGS)}")
    load = os.getloadavg()
    init_ray(num_cpus=os.cpu_count())
    rows = []
    with tempfile.TemporaryDirectory(prefix="train_throughput-") as tmp:
        tmp = Path(tmp)
        tree = make_dcase2020_tree(tmp / "data", machine_types=("fan",), machine_ids=("00",), n_train=args.n_train,
                                   n_test_normal=1, n_test_anomaly=1, duration_s=args.duration, seed=args.seed)
        table = select(index(tree).table, machine_type="fan")
        for name in args.methods:
            config = {**CONFIGS[name], "epochs": args.epochs, "val_fraction": 0.0}
            cfg = methods.get(name).make_config(config)
            spec = feature_spec_for(name, cfg)
            features = ingest(table, str(tmp / "store"), spec)
            train_ds = read_features(features, split="train")
            clips = [np.asarray(x, dtype=np.float32) for x in train_ds.to_pandas()["log_mel"]]
            n_examples = count_examples(name, config, spec, clips)
            row = {"method": name, "config": config, "n_examples": n_examples, "runs": {}}
            for workers in (1, 2):
                log.info("%s: %d worker(s), %d examples × %d epochs", name, workers, n_examples, args.epochs)
                row["runs"][str(workers)] = measure(name, config, train_ds, spec, workers, n_examples, args.seed,
                                                    tmp / "runs")
                log.info("%s, %d worker(s): %.0f samples/s", name, workers,
                         row["runs"][str(workers)]["samples_per_s"])
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": load,
        "torch_threads_per_worker": 1,
        "epochs": args.epochs,
        "n_train_clips": args.n_train,
        "duration_s": args.duration,
        "seed": args.seed,
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(format_table(rows))
    print(f"\n{os.cpu_count()} CPUs, load average at start {load[0]:.1f}; JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
