"""Train stage: ingest (cached) + Ray Train fit of one method on one machine type; saves <run>/model.

python jobs/train.py --method autoencoder --machine-type slider --ids 00 [--epochs N] [--set KEY=VALUE ...]
                     [--config best.yaml] [--preset] [--num-workers 2] [--resume RUN_DIR]
                     [--validation-split FILE|all | --val-fraction 0.5 --split-seed 0] [--evaluate]
--preset loads the paper's per-machine preset for the method (e.g. JBCS 2024 Tables 4/5 for GANomaly).
--validation-split / --val-fraction: also score the validation split exactly as a jobs/tune.py trial does (the
same val_auc / val_pauc / val_auc_pauc_mean; with the trial's seed, a best config from jobs/tune.py reproduces its
trial's value) and, with --evaluate, report test metrics on the held-out clips only.
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
    p.add_argument("--evaluate", action="store_true", help="also score and evaluate the test clips (with a "
                   "validation split: only the clips outside it)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--validation-split", default=None, metavar="FILE|all",
                   help="validation clips: a file list (one path or file name per line) or 'all' labelled clips")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="seeded stratified validation split of the labelled clips (jobs/tune.py uses 0.5)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the stratified validation split (default: 0)")
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
        _warn_seed(args.config, args.seed)
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
    split = None
    if args.validation_split or args.val_fraction is not None:
        from stethoscope.tuning.validation import (ValidationSpec, labelled_clips, make_split, validation_dataset,
                                                   validation_metrics, write_split)

        spec_v = ValidationSpec(file=args.validation_split, fraction=args.val_fraction or 0.5, seed=args.split_seed)
        split = make_split(labelled_clips(prepared), spec_v)
        write_split(split, str(run_dir))
        val = validation_metrics(result.method, validation_dataset(prepared, split), result.meta.get("class_names"))
        storage.write_json(str(run_dir / "validation_metrics.json"),
                           {**val, "seed": args.seed, "validation": spec_v.to_dict(), "n_clips": len(split.validation)})
        print("validation split (%s, %d clips): " % (split.source, len(split.validation))
              + ", ".join(f"{k}={v:.10f}" for k, v in val.items()))
    if args.evaluate:
        from stethoscope.tuning.validation import held_out

        where = prepared if split is None else held_out(prepared, split)
        metrics, _ = evaluate_stage(where, run_dir, result.method, {**result.meta, "seed": args.seed},
                                    None if split is None else {"held_out_from_validation": True,
                                                                "n_test_clips": len(split.test)})
        print(format_table(metrics))
    print(f"run folder: {run_dir}")
    return 0


def _warn_seed(path: str, seed: int) -> None:
    """A config exported by jobs/tune.py records its trial's seed; say so if --seed differs."""
    import logging

    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        return
    if isinstance(data, dict) and "seed" in data and data["seed"] != seed:
        logging.getLogger("train").warning("%s was selected with seed %s; this run uses --seed %s (pass --seed %s "
                                           "to reproduce its validation metric)", path, data["seed"], seed,
                                           data["seed"])


if __name__ == "__main__":
    _common.run_main(main)
