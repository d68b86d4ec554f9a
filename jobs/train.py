"""Train stage: ingest (cached) + the run's validation split + Ray Train fit of one method on one machine type.

python jobs/train.py --method autoencoder --machine-type slider --ids 00 [--epochs N] [--set KEY=VALUE ...]
                     [--config best.yaml] [--preset] [--num-workers 2] [--resume RUN_DIR]
                     [--scope per_id|per_machine_type|all_machine_types]
                     [--validation-split FILE|all | --val-fraction 0.5 --split-seed 0] [--evaluate]
--preset loads the paper's per-machine preset for the method (e.g. JBCS 2024 Tables 4/5 for GANomaly); --config,
--set and --epochs win over it, in that order.
Before training the run writes validation_split.json: the training clips held out for the validation loss, the
labelled clips that validate, and the held-out test clips. With --config <a sweep's best_config.yaml> the run reuses
the sweep's split (it must match the data), so the validation metric equals the trial's (same --seed) and
--evaluate reports on the clips the sweep held out, never on the ones it selected on.
--scope (default: the method's default_scope) trains one model per machine ID / section (models/<type>/<id_XX>/),
one for the machine type (model/), or one over every machine type given (--machine-type fan pump ...; models/all/).
The job prints the validation metric (val_auc / val_pauc / val_auc_pauc_mean, computed as a sweep trial computes it)
and, with --evaluate, scores every clip and reports the held-out test clips (jobs/evaluate.py does the same later).
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
    p.add_argument("--machine-type", nargs="+", default=["slider"],
                   help="the machine type; several only with --scope all_machine_types (one model over all of them)")
    p.add_argument("--ids", nargs="*", default=None)
    p.add_argument("--method", default="autoencoder")
    p.add_argument("--preset", action="store_true", help="apply the method's per-machine-type paper preset")
    _common.add_scope_arg(p)
    p.add_argument("--config", default=None, help="YAML config (e.g. best_config.yaml written by jobs/tune.py)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--runs", default="runs", help="parent of the run folder: a folder or a URI (s3://bucket/runs)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue that run (a folder or a URI) from its latest checkpoint, up to --epochs")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--max-failures", type=int, default=0,
                   help="restart a failed Ray Train worker group this many times from its last checkpoint (-1: always)")
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--lenient", action="store_true")
    p.add_argument("--evaluate", action="store_true", help="also score every clip and report the held-out test clips")
    _common.add_split_args(p)
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope import runs, storage
    from stethoscope.errors import StethoscopeError
    from stethoscope.data.features import input_specs_to_dict
    from stethoscope.evaluation import format_table
    from stethoscope.errors import ConfigError
    from stethoscope.runs import git_commit, new_run_dir
    from stethoscope.scopes import resolve_scope
    from stethoscope.stages.evaluate import evaluate_stage
    from stethoscope.stages.ingest import ingest_stage, input_specs_for, resolve_config
    from stethoscope.stages.split import record_split, split_stage
    from stethoscope.stages.train import scope_units, train_stage, train_units

    scope = resolve_scope(args.method, args.scope)
    types = list(dict.fromkeys(args.machine_type))
    if len(types) > 1 and scope != "all_machine_types":
        raise ConfigError(f"--machine-type {' '.join(types)}: a {scope} run trains one machine type; run the job per "
                          "type, or pass --scope all_machine_types")
    if args.preset and len(types) > 1:
        raise ConfigError("--preset gives per-machine-type values; it cannot apply to several machine types")
    overrides, split_from = _common.config_overrides(args, args.method)
    if args.config:
        _warn_seed(args.config, args.seed)
    cfg, preset = resolve_config(args.method, types[0], overrides, args.preset)
    spec = input_specs_for(args.method, cfg)
    storage.check_access(args.runs, "--runs")  # a missing bucket fails before anything is ingested
    prepared = ingest_stage(args.data_root, spec, machine_type=types, machine_ids=args.ids,
                            store=args.store, lenient=args.lenient)
    if args.resume:
        # a run under a URI is copied down without its checkpoints (the workers read those from the URI) and
        # uploaded again at the end (runs.local_run / runs.sync_run)
        run_dir = runs.local_run(args.resume)
        if not (run_dir / runs.RUN_JSON).is_file():
            raise StethoscopeError(f"--resume {args.resume}: not a run folder (run.json missing)")
        manifest = runs.read_manifest(run_dir)
        if manifest.get("scope", "per_machine_type") != scope:
            raise ConfigError(f"--resume {args.resume}: the run was trained in scope {manifest.get('scope')!r}, not "
                              f"{scope!r}")
        split = runs.run_split(run_dir, manifest)  # a resumed run keeps the split it started with
        split.check_clips(prepared.clips(), f"the ingested {prepared.machine_type} clips")
        units = runs.run_units(manifest)
    else:
        split = split_stage(prepared, validation=_common.validation_spec(args), split_from=split_from,
                            train_validation_fraction=float(getattr(cfg, "val_fraction", 0.0)))
        run_dir = new_run_dir(args.runs, args.method, prepared.machine_type)
        units = scope_units(prepared, scope)
        manifest = {
            "stage": "train", "data_root": str(Path(args.data_root).resolve()), "machine_type": prepared.machine_type,
            "machine_types": prepared.machine_types, "scope": scope, "units": [u.to_dict() for u in units],
            "ids": prepared.ids, "method": args.method, "preset": preset, "config": dataclasses.asdict(cfg),
            "config_file": args.config, "inputs": input_specs_to_dict(spec),
            "input_spec_hashes": {k: v.hash() for k, v in spec.items()},
            "store": args.store, "seed": args.seed, "git_commit": git_commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        record_split(run_dir, split, manifest)
        storage.write_json(str(run_dir / runs.RUN_JSON), manifest)
    train_kw = dict(method=args.method, config=cfg, spec=spec, split=split, seed=args.seed,
                    num_workers=args.num_workers, use_gpu={"auto": None, "yes": True, "no": False}[args.gpu],
                    resume=bool(args.resume), max_failures=args.max_failures)
    if scope == "per_machine_type":  # today's layout: model/
        fitted = {units[0].name: train_stage(prepared, run_dir, **train_kw)}
        models = fitted[units[0].name].method
    else:
        fitted = train_units(prepared, run_dir, units, **train_kw)
        models = [(u, fitted[u.name].method) for u in units]
    for name, result in fitted.items():
        last = result.history[-1] if result.history else {}
        print(f"trained {args.method} ({name}) for {result.meta.get('epoch')} epoch(s); last metrics: "
              + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, (int, float))))
        for w in result.meta.get("workers", []):  # where each Ray Train worker ran (also in the model's meta.json)
            print(f"  worker rank {w['rank']}: node {w['node_id']} ({w['hostname']}, pid {w['pid']})")
    _print_validation_metrics(prepared, split, models, run_dir, args)
    if args.evaluate:
        result = next(iter(fitted.values()))
        metrics, _ = evaluate_stage(prepared, run_dir, models, {**result.meta, "seed": args.seed}, split)
        print(format_table(metrics))
    print(f"run folder: {runs.sync_run(run_dir, done=True)}")  # a run under a URI --runs is uploaded now
    return 0


def _print_validation_metrics(prepared, split, models, run_dir, args) -> None:
    """The validation metric of the trained model(s) on the split's validation clips, computed exactly as a sweep
    trial computes it each epoch (per machine type, then the mean over types); written to validation_metrics.json.
    Skipped (with the reason) when the validation clips lack a class."""
    from stethoscope import storage
    from stethoscope.errors import DataError
    from stethoscope.tuning.validation import unit_validation_metrics

    if not split.validation:
        print("validation split: no validation clips (nothing to compute a validation metric on)")
        return
    try:
        val = unit_validation_metrics(prepared, split, models)
    except DataError as exc:
        print(f"validation split ({split.source}, {len(split.validation)} clips): no validation metric: {exc}")
        return
    storage.write_json(str(run_dir / "validation_metrics.json"),
                       {**val, "seed": args.seed, "split_source": split.source, "split_seed": split.seed,
                        "n_clips": len(split.validation)})
    print("validation split (%s, %d clips): " % (split.source, len(split.validation))
          + ", ".join(f"{k}={v:.10f}" for k, v in val.items()))


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
