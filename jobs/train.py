"""Train stage: ingest (cached) + Ray Train fit of one method on one machine type; saves <run>/model.

python jobs/train.py --method autoencoder --machine-type slider --ids 00 [--epochs N] [--set KEY=VALUE ...]
                     [--config best.yaml] [--preset] [--num-workers 2] [--resume RUN_DIR]
--preset loads the paper's per-machine preset for the method (e.g. JBCS 2024 Tables 4/5 for GANomaly).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(_common.ROOT.parent / "shared/data/dcase2020_task2_dev_sample"))
    p.add_argument("--machine-type", default="slider")
    p.add_argument("--ids", nargs="*", default=None)
    p.add_argument("--method", default="autoencoder")
    p.add_argument("--preset", action="store_true", help="apply the method's per-machine-type paper preset")
    p.add_argument("--config", default=None, help="YAML config (e.g. written by jobs/tune.py)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--runs", default="runs")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue that run from its latest checkpoint")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--lenient", action="store_true")
    p.add_argument("--evaluate", action="store_true", help="also score and evaluate the test clips")
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope import methods, storage
    from stethoscope.config import load_config_file
    from stethoscope.evaluation import format_table
    from stethoscope.pipeline import evaluate_stage, feature_spec_for, git_commit, ingest_stage, new_run_dir, train_stage

    cls = methods.get(args.method)
    config: dict = {}
    if args.preset:
        from stethoscope.presets import load_preset

        config.update(load_preset(args.method, args.machine_type))
    if args.config:
        config.update(load_config_file(args.config, args.method))
    config.update(_common.parse_overrides(args.set))
    if args.epochs is not None:
        config["epochs"] = args.epochs
    cfg = cls.make_config(config)
    spec = feature_spec_for(args.method, cfg)
    prepared = ingest_stage(args.data_root, spec, machine_type=args.machine_type, machine_ids=args.ids,
                            store=args.store, lenient=args.lenient)
    if args.resume:
        run_dir = Path(args.resume).resolve()
        if not (run_dir / "run.json").is_file():
            from stethoscope.errors import StethoscopeError

            raise StethoscopeError(f"--resume {args.resume}: not a run folder (run.json missing)")
    else:
        run_dir = new_run_dir(args.runs, args.method, args.machine_type)
    storage.write_json(str(run_dir / "run.json"), {
        "stage": "train", "data_root": str(Path(args.data_root).resolve()), "machine_type": args.machine_type,
        "ids": prepared.ids, "method": args.method, "config": dataclasses.asdict(cfg), "preset": args.preset,
        "feature_spec": spec.to_dict(), "feature_spec_hash": spec.hash(), "store": args.store, "seed": args.seed,
        "git_commit": git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    result = train_stage(prepared, run_dir, method=args.method, config=cfg, spec=spec, seed=args.seed,
                         num_workers=args.num_workers, use_gpu={"auto": None, "yes": True, "no": False}[args.gpu],
                         resume=bool(args.resume))
    last = result.history[-1] if result.history else {}
    print(f"trained {args.method} for {result.meta.get('epoch')} epoch(s); last metrics: "
          + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, (int, float))))
    if args.evaluate:
        metrics, _ = evaluate_stage(prepared, run_dir, result.method, {**result.meta, "seed": args.seed})
        print(format_table(metrics))
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    _common.run_main(main)
