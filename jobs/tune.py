"""Tune stage: per-machine-type hyperparameter sweeps with Ray Tune + Optuna over a search space in search_spaces/.

python jobs/tune.py --space search_spaces/ganomaly.yaml --machine-type slider [fan ...] [--ids 00 02]
                    [--num-samples N] [--storage PATH_OR_URI] [--name NAME] [--resume]
                    [--validation-split FILE|all | --val-fraction 0.5 --split-seed 0] [--seed 0]
                    [--sampler grid|tpe] [--no-scheduler] [--max-concurrent N] [--preset]
                    [--scope per_id|per_machine_type|all_machine_types]

The sweep writes one validation_split.json (the labelled clips it selects on, the test clips it holds out, the
training clips held out for the validation loss) before any trial; every trial reads it. Each trial is a Ray Train
run of the method, scored on the validation clips after every epoch (ASHA stops bad trials early). With --preset
the paper's per-machine preset (stethoscope/presets) is the first trial (Optuna enqueue_trial). Tune prints a live
trial table. For each machine type the sweep folder <storage>/<name> gets best_config.yaml (for jobs/train.py
--config, which reuses the sweep's split), results.parquet / results.csv (one row per trial), plots/sweep.png and
validation_split.json. An interrupted sweep continues with the same command plus --resume.
--scope (default: the method's default_scope): a trial trains one training unit. per_machine_type: one sweep per
machine type; all_machine_types: one sweep whose trials train one model over every --machine-type given, with the
objective averaged over the types (each type's validation AUC / pAUC, then the mean); per_id: one sweep per machine
type and ID / section (named <name>-<type>-<id>), each on that ID's validation clips.
On a cluster: ray job submit --working-dir . -- python jobs/tune.py ... --storage s3://bucket/tune
"""

from __future__ import annotations

import argparse
import sys

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, help="search-space YAML (see search_spaces/README.md)")
    p.add_argument("--machine-type", nargs="+", required=True, help="one sweep per machine type, in order")
    p.add_argument("--ids", nargs="*", default=None, help="machine IDs / sections (default: all)")
    p.add_argument("--data-root", default=str(_common.ROOT.parent / "shared/data/dcase2020_task2_dev_sample"))
    p.add_argument("--num-samples", type=int, default=None, help="trials (default: the space file's num_samples; "
                   "grid: the grid size)")
    p.add_argument("--storage", default="runs/tune", help="Tune storage_path: a folder or a URI (default: runs/tune)")
    p.add_argument("--name", default=None, help="experiment name (default: <method>-<machine_type>); with several "
                   "machine types, <name>-<machine_type>")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep of that name")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--validation-split", default=None, metavar="FILE|all",
                   help="validation clips: a file list (one path or file name per line), or 'all' labelled clips "
                        "(DCASE: the development test set, when results are reported on the evaluation set)")
    g.add_argument("--val-fraction", type=float, default=0.5,
                   help="otherwise a seeded stratified split: this share of the labelled clips validates (default 0.5)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the stratified validation split (default: 0)")
    p.add_argument("--sampler", choices=["grid", "tpe"], default=None, help="override the file's sampler (grid: "
                   "every point, e.g. the full JBCS Table 3 grid)")
    p.add_argument("--no-scheduler", action="store_true", help="no ASHA: every trial trains all its epochs")
    p.add_argument("--max-concurrent", type=int, default=None, help="override resources.max_concurrent_trials")
    p.add_argument("--preset", action="store_true", help="start from the method's paper preset for the machine type "
                   "(its point is the first trial; its values of unsearched parameters are held fixed)")
    p.add_argument("--lenient", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no live trial table")
    _common.add_scope_arg(p)
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope.runtime import init_ray
    from stethoscope.tuning import ValidationSpec, load_space
    from stethoscope.tuning.runner import run_sweep

    overrides = {}
    if args.sampler:
        overrides["sampler"] = args.sampler
        if args.sampler == "grid":
            overrides["num_samples"] = None  # every point unless --num-samples says otherwise
    if args.no_scheduler:
        overrides["scheduler"] = None
    from stethoscope.scopes import resolve_scope

    for mt in args.machine_type:
        space = load_space(args.space, mt, overrides=overrides)  # fail fast on a bad file, before starting Ray
    scope = resolve_scope(space.method, args.scope)  # and on a scope the method cannot train in
    init_ray()
    validation = ValidationSpec(file=args.validation_split, fraction=args.val_fraction, seed=args.split_seed)
    results = []
    sweeps = _sweeps(args, scope)
    for mt, ids, suffix in sweeps:
        if args.name:
            name = args.name if len(sweeps) == 1 else f"{args.name}-{suffix}"
        else:  # run_sweep's default, <method>-<machine type or "all">; per_id sweeps add the ID
            name = f"{space.method}-{suffix}" if scope == "per_id" else None
        res = run_sweep(
            args.space, machine_type=mt, data_root=args.data_root, ids=ids, num_samples=args.num_samples, scope=scope,
            storage_root=args.storage, name=name, resume=args.resume, seed=args.seed, validation=validation,
            store=args.store, lenient=args.lenient, max_concurrent_trials=args.max_concurrent, overrides=overrides,
            verbose=0 if args.quiet else 1, preset=args.preset,
        )
        results.append(res)
        if not res.complete:
            break
    print()
    print(f"{'machine type':<14} {'trials':>6}  {'best ' + results[0].metric:>26}  best config")
    for res in results:
        ran = int(res.trials["status"].isin(["completed", "stopped_early"]).sum()) if len(res.trials) else 0
        value = f"{res.best[res.metric]:.6f}" if res.best else "-"
        print(f"{res.machine_type:<14} {ran:>6}  {value:>26}  {res.best_config_path or '-'}")
    for res in results:
        print(f"sweep folder ({res.machine_type}): {res.sweep_dir}")
    if not results[-1].complete:
        print("interrupted: continue with the same command plus --resume", file=sys.stderr)
        return 130
    return 0


def _sweeps(args, scope: str) -> list[tuple]:
    """``(machine type(s), ids, name suffix)`` of each sweep the job runs in ``scope``."""
    types = list(dict.fromkeys(args.machine_type))
    if scope == "all_machine_types":
        return [(types, args.ids, "all" if len(types) > 1 else "")]
    if scope != "per_id":
        return [(mt, args.ids, mt) for mt in types]
    from stethoscope.data.index import index
    from stethoscope.data.labels import group_of, id_field

    table = index(args.data_root, lenient=args.lenient).table.to_pandas()
    out = []
    for mt in types:
        rows = table[(table["machine_type"] == mt) & (table["split"] == "train")]
        col = id_field(rows["dataset"].iloc[0]) if len(rows) else "machine_id"  # machine_id / section: data.labels
        ids = args.ids or sorted(set(rows[col].dropna()))
        out += [(mt, [i], f"{mt}-{group_of(col, i)}") for i in ids]
    return out


if __name__ == "__main__":
    _common.run_main(main)
