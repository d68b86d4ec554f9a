"""Publish stage: pick the best ensemble per machine type from trained runs and write it to the registry.

python jobs/publish.py [--runs runs ...] [--machine-type slider ...] [--registry registry] [--scope id_00]

Reads every run folder (run.json, model/, validation_split.json, scores.parquet, train_scores.parquet, as written by
jobs/pipeline.py, or jobs/train.py + jobs/evaluate.py) at or below the --runs folders. It never re-ingests or
re-scores: the runs' stored scores are used, with each clip's role taken from the runs' validation_split.json.
A run whose split file is missing, was changed after the run wrote it, or does not match its scores is refused
(with the reason), and so is a set of runs of one machine type made with different splits.
For each machine type it keeps the best --max-members runs on the validation clips, grid-searches their convex
weights on the validation clips, fits the gamma decision threshold on the training normals, and writes the bundle.
Prints: machine → members, weights, threshold, validation AUC and pAUC, and the held-out test AUC and pAUC beside.
"""

from __future__ import annotations

import argparse
import logging

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["runs"],
                   help="run folders or folders holding them, or their s3:// URIs (default: runs)")
    p.add_argument("--machine-type", nargs="*", default=None, help="publish only these machine types")
    p.add_argument("--registry", default="registry", help="registry root: a folder or pyarrow URI (default: registry)")
    p.add_argument("--scope", default=None,
                   help="'all' (default) for a machine-wide bundle, or id_XX / section_XX for one ID or section")
    p.add_argument("--quantile", type=float, default=0.9, help="gamma quantile of the decision threshold (0.9)")
    p.add_argument("--step", type=float, default=0.1, help="ensemble weight grid step, 1/K (default: 0.1)")
    p.add_argument("--max-members", type=int, default=4, help="best runs entering the weight search (default: 4)")
    p.add_argument("--objective", default="auto", choices=["auto", "auc_pauc", "official_score"],
                   help="what chooses members and weights on validation: auto = the DCASE 2022+ official score "
                        "(h-mean) for sectioned data, (AUC + pAUC) / 2 for DCASE 2020")
    p.add_argument("--weights", default="search", choices=["search", "uniform"],
                   help="search: grid-search the convex weights on validation (default); uniform: equal weights "
                        "over the --max-members best runs on validation")
    p.add_argument("--out", default=None, help="folder for the ensemble score/decision CSVs (default: beside the runs)")
    p.add_argument("--skip-inconsistent", action="store_true",
                   help="publish the consistent runs and skip (with a warning) those whose files disagree, instead "
                        "of refusing")
    p.add_argument("--verbose", action="store_true", help="debug logging, and Ray's INFO logs on the console")
    _common.add_ray_args(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope.errors import StethoscopeError
    from stethoscope.publishing import RegistryError, discover_runs, format_publish_table, publish_runs

    log = logging.getLogger("publish")
    wanted = set(args.machine_type) if args.machine_type else None
    runs, skipped = discover_runs(args.runs)
    bad = [(folder, reason) for folder, reason in skipped
           if wanted is None or _machine_type(folder) in wanted or _machine_type(folder) is None]
    if bad and not args.skip_inconsistent:
        raise RegistryError("refusing to publish: " + "; ".join(f"{folder}: {reason}" for folder, reason in bad)
                            + " (--skip-inconsistent publishes the other runs)")
    for folder, reason in bad:
        log.warning("skipping %s: %s", folder, reason)
    if wanted:  # a run over several machine types (all_machine_types) publishes the wanted ones among them
        runs = [r for r in runs if wanted & set(r.machine_types)]
    if not runs:
        raise StethoscopeError(
            f"no complete run folder (run.json, model/, validation_split.json, scores.parquet, train_scores.parquet) "
            f"under {args.runs}" + (f" for machine type(s) {args.machine_type}" if args.machine_type else "")
            + "; run jobs/pipeline.py first"
        )
    results, failed = [], []
    for machine_type in sorted({mt for r in runs for mt in r.machine_types if wanted is None or mt in wanted}):
        try:
            results += publish_runs(
                [r for r in runs if machine_type in r.machine_types], args.registry, scope=args.scope,
                machine_types=[machine_type],
                quantile=args.quantile, step=args.step, max_members=args.max_members, out_dir=args.out,
                objective=args.objective, weights=args.weights,
            )
        except StethoscopeError as exc:
            failed.append((machine_type, str(exc)))
    if results:
        print()
        print(format_publish_table(results))
        print(f"\nregistry: {args.registry}")
        for r in results:
            print(f"{r.machine_type}: score and decision CSVs in {r.out_dir}")
            for note in r.manifest["metrics"].get("notes", []):
                print(f"{r.machine_type}: note: {note}")
    for machine_type, reason in failed:
        print(f"error: {machine_type} not published: {reason}")
    if failed and not results:
        raise StethoscopeError("nothing was published: " + "; ".join(f"{m}: {r}" for m, r in failed))
    return 2 if failed else 0


def _machine_type(folder: str) -> str | None:
    from stethoscope import storage
    from stethoscope.errors import StethoscopeError

    try:  # a folder or a URI
        return storage.read_json(storage.join(folder, "run.json")).get("machine_type")
    except (OSError, ValueError, StethoscopeError):
        return None


if __name__ == "__main__":
    _common.run_main(main)
