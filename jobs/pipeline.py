"""All stages in order: index → ingest (Ray Data) → split → train (Ray Train) → score → evaluate → publish.

Local:    python jobs/pipeline.py [--data-root ../shared/data/dcase2020_task2_dev_sample] [--machine-type slider]
Cluster:  ray job submit --working-dir . -- python jobs/pipeline.py ...   (RAY_ADDRESS set)
Every machine type:  --machine-type all (or several names): one run per machine type that has training clips, or,
in the all_machine_types scope, one run (one model) over all of them.
Scope:    --scope per_id | per_machine_type | all_machine_types (default: the method's default_scope): one model per
machine ID / section (models/<type>/<id_XX>/), per machine type (model/), or over every selected type (models/all/).
Evaluation, the detector stage and publishing stay per machine type: one bundle per type in every scope.
Paper presets:  --preset applies the method's per-machine row (e.g. JBCS 2024 Table 4 for --method ganomaly);
an explicit --config / --set / --epochs still wins, and run.json records the row under "preset".

Before training, the run writes validation_split.json (--val-fraction / --split-seed / --validation-split): the
training clips held out for the validation loss, the labelled clips used for selection (validation) and the held-out
test clips the reported numbers come from. Prints a per-ID/section AUC/pAUC table of the test clips and the run
folder; writes metrics.json, results.md, score CSVs and plots there, then publishes the model to the registry
(--registry, default: registry) so `serve run serve/config.yaml` can serve it.
"""

from __future__ import annotations

import argparse
import logging

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(_common.ROOT.parent / "shared/data/dcase2020_task2_dev_sample"),
                   help="DCASE tree (2020 or 2021-2024 layout); default: ../shared/data/dcase2020_task2_dev_sample")
    p.add_argument("--machine-type", nargs="+", default=["slider"],
                   help="one or more machine types, or 'all' (every machine type with training clips)")
    p.add_argument("--ids", nargs="*", default=None, help="machine_ids (2020) or sections (2021+), e.g. 00 02")
    p.add_argument("--method", default="autoencoder")
    _common.add_scope_arg(p)
    p.add_argument("--preset", action="store_true",
                   help="start from the method's paper preset for the machine type (stethoscope/presets)")
    p.add_argument("--epochs", type=int, default=None, help="override the method's epochs (paper default otherwise)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Config overrides, e.g. lr=0.001")
    p.add_argument("--config", default=None, help="YAML Config file (e.g. a sweep's best_config.yaml, whose "
                   "validation split the run then reuses)")
    p.add_argument("--runs", default="runs",
                   help="parent of the run folder: a folder or a URI such as s3://bucket/runs (default: runs)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--max-failures", type=int, default=0,
                   help="restart a failed Ray Train worker group this many times from its last checkpoint (-1: always)")
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--lenient", action="store_true", help="skip unparseable file names and report them")
    p.add_argument("--registry", default="registry",
                   help="publish the trained model to this registry (folder or URI; default: registry); "
                        "'none' skips publishing")
    _common.add_split_args(p)
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope.errors import StethoscopeError
    from stethoscope.pipeline import run
    from stethoscope.scopes import resolve_scope, run_machine_types

    scope = resolve_scope(args.method, args.scope)  # a scope the method cannot train in fails before any work
    config, split_from = _common.config_overrides(args, args.method)
    machine_types = _machine_types(args)
    groups = run_machine_types(scope, machine_types)
    failed: list[tuple[str, str]] = []
    for group in groups:
        machine_type = group[0] if len(group) == 1 else ", ".join(group)
        try:
            res = run(
                args.data_root,
                machine_type=group[0] if len(group) == 1 else group,
                machine_ids=args.ids,
                method=args.method,
                config=config,
                scope=scope,
                preset=args.preset,
                store=args.store,
                runs_root=args.runs,
                seed=args.seed,
                validation=_common.validation_spec(args),
                split_from=split_from,
                num_workers=args.num_workers,
                max_failures=args.max_failures,
                use_gpu={"auto": None, "yes": True, "no": False}[args.gpu],
                lenient=args.lenient,
                registry=None if args.registry.lower() in ("", "none") else args.registry,
            )
        except StethoscopeError as exc:
            if len(groups) == 1:
                raise
            logging.getLogger("pipeline").error("%s failed: %s", machine_type, exc)
            failed.append((machine_type, str(exc)))
            continue
        for unit, placed in res.extra.get("workers", {}).items():  # where each Ray Train worker ran (run.json)
            for w in placed:
                print(f"{unit}: worker rank {w['rank']}: node {w['node_id']} ({w['hostname']}, pid {w['pid']})")
        print()
        print(res.table)
        print(f"\nrun folder: {res.run_dir}")
    if len(groups) > 1:
        names = [g[0] for g in groups]
        print(f"\n{len(names) - len(failed)} of {len(names)} machine type(s) ran: "
              + ", ".join(m for m in names if m not in dict(failed)))
        for machine_type, reason in failed:
            print(f"error: {machine_type}: {reason}")
    return 2 if failed else 0


def _machine_types(args) -> list[str]:
    """The machine types to run: the names given, or with 'all' every machine type of the data root that has
    training clips (those without are listed and skipped)."""
    if [m.lower() for m in args.machine_type] != ["all"]:
        return list(args.machine_type)
    from stethoscope.data.index import index

    table = index(args.data_root, lenient=args.lenient).table.to_pandas()
    with_train = sorted(set(table.loc[table["split"] == "train", "machine_type"]))
    without = sorted(set(table["machine_type"]) - set(with_train))
    if without:
        print(f"skipping machine type(s) without training clips: {', '.join(without)}")
    if not with_train:
        from stethoscope.errors import DataError

        raise DataError(f"no machine type under {args.data_root} has training clips")
    return with_train


if __name__ == "__main__":
    _common.run_main(main)
