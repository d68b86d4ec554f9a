"""Publish stage: pick the best ensemble per machine type from trained runs and write it to the registry.

python jobs/publish.py [--runs runs ...] [--machine-type slider ...] [--registry registry]

Reads every complete run folder (run.json, model/, scores.parquet, as written by jobs/pipeline.py, jobs/train.py +
jobs/evaluate.py, or tuning trials that keep the same layout) at or below the --runs folders. For each machine type
it splits the scored test clips into validation and held-out parts, keeps the best --max-members runs on validation,
grid-searches their convex weights on validation, fits the gamma decision threshold on the training normals, and
writes the bundle. Prints: machine → members, weights, threshold, validation AUC and pAUC (held-out test beside).
"""

from __future__ import annotations

import argparse
import logging

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["runs"], help="run folders or folders holding them (default: runs)")
    p.add_argument("--machine-type", nargs="*", default=None, help="publish only these machine types")
    p.add_argument("--registry", default="registry", help="registry root: a folder or pyarrow URI (default: registry)")
    p.add_argument("--scope", default=None,
                   help="'all' (default) for a machine-wide bundle, or id_XX / section_XX for one ID or section")
    p.add_argument("--data-root", default=None, help="override the data root recorded in each run.json")
    p.add_argument("--validation-fraction", type=float, default=0.5,
                   help="share of the labelled clips used to choose members and weights (default: 0.5)")
    p.add_argument("--quantile", type=float, default=0.9, help="gamma quantile of the decision threshold (0.9)")
    p.add_argument("--step", type=float, default=0.1, help="ensemble weight grid step, 1/K (default: 0.1)")
    p.add_argument("--max-members", type=int, default=4, help="best runs entering the weight search (default: 4)")
    p.add_argument("--out", default=None, help="folder for the ensemble score/decision CSVs (default: beside the runs)")
    p.add_argument("--lenient", action="store_true", help="skip unparseable file names when re-reading the data")
    p.add_argument("--store", default=None, help="override the feature store recorded in each run.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split (default: 0)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    _common.add_ray_args(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope.errors import StethoscopeError
    from stethoscope.registry import discover_runs, format_publish_table, publish_runs
    from stethoscope.runtime import init_ray

    runs, skipped = discover_runs(args.runs)
    for folder, reason in skipped:
        logging.getLogger("publish").warning("skipping %s: %s", folder, reason)
    if args.machine_type:
        runs = [r for r in runs if r.machine_type in set(args.machine_type)]
    if not runs:
        raise StethoscopeError(
            f"no complete run folder (run.json, model/, scores.parquet) under {args.runs}"
            + (f" for machine type(s) {args.machine_type}" if args.machine_type else "")
            + "; run jobs/pipeline.py first"
        )
    init_ray()
    results = publish_runs(
        runs, args.registry, scope=args.scope, data_root=args.data_root, store=args.store,
        validation_fraction=args.validation_fraction, seed=args.seed, quantile=args.quantile, step=args.step,
        max_members=args.max_members, out_dir=args.out, lenient=args.lenient,
    )
    print()
    print(format_publish_table(results))
    print(f"\nregistry: {args.registry}")
    for r in results:
        print(f"{r.machine_type}: score and decision CSVs in {r.out_dir}")
    return 0


if __name__ == "__main__":
    _common.run_main(main)
