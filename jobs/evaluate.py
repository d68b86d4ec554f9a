"""Evaluate stage: score a trained run's clips and report its held-out test clips.

python jobs/evaluate.py --run runs/<run folder> [--data-root ROOT]
Uses the run's model(s) (<run>/model, or one per training unit under <run>/models/; never rewritten), the data
root / machine types / IDs recorded in its run.json and its
validation_split.json (refused if missing, changed since the run wrote it, or made for other clips). Writes
scores.parquet (every test clip, with its role in the split), train_scores.parquet (every training clip), and
metrics.json, results.md, score CSVs and plots for the test clips; a method with score variants gets its variant
chosen on the validation clips (score_variant.json). --maps N draws anomaly maps of N test clips per machine type.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder (or its s3:// URI) written by jobs/train.py or "
                                                "jobs/pipeline.py")
    p.add_argument("--data-root", default=None, help="override the data root recorded in run.json")
    p.add_argument("--lenient", action="store_true")
    p.add_argument("--maps", type=int, default=0, metavar="N",
                   help="also draw anomaly maps of the first N test clips per machine type (anomalies and normals "
                        "alternating) to <run>/maps/<machine_type>/: TLDiffGAN's three panels (reconstruction, "
                        "training-mean log-mel, difference), else the method's map; methods that cannot localize "
                        "draw none")
    p.add_argument("--verbose", action="store_true", help="debug logging, and Ray's INFO logs on the console")
    _common.add_ray_args(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope import checkpoint as ckpt_io
    from stethoscope import runs, storage
    from stethoscope.errors import StethoscopeError
    from stethoscope.evaluation import format_table
    from stethoscope.stages.evaluate import evaluate_stage, write_anomaly_maps
    from stethoscope.stages.ingest import ingest_stage

    if "://" in args.run:  # a run on object storage is evaluated in a local copy, uploaded back at the end
        storage.check_access(args.run, "--run")
    run_dir = runs.local_run(args.run)
    if not (run_dir / "run.json").is_file():
        raise StethoscopeError(f"--run {args.run}: not a trained run folder (expected run.json)")
    manifest = json.loads((run_dir / "run.json").read_text())
    units = runs.run_units(manifest)
    missing = [u.folder for u in units if not (run_dir / u.folder / ckpt_io.META_FILE).is_file()]
    if missing:
        raise StethoscopeError(f"--run {args.run}: not a trained run folder (missing the model folder(s) {missing})")
    split = runs.run_split(run_dir, manifest)
    loaded = [(u, *ckpt_io.load(run_dir / u.folder)) for u in units]
    method, meta = loaded[0][1], loaded[0][2]
    models = method if manifest.get("scope", "per_machine_type") == "per_machine_type" else [
        (u, m) for u, m, _ in loaded]
    prepared = ingest_stage(args.data_root or manifest["data_root"], method.inputs,
                            machine_type=runs.run_machine_types(manifest), machine_ids=manifest["ids"],
                            store=manifest.get("store", "store"), lenient=args.lenient)
    metrics, scores = evaluate_stage(prepared, run_dir, models, {**meta, "seed": manifest.get("seed")}, split)
    if args.maps < 0:
        raise StethoscopeError(f"--maps {args.maps}: expected a number of clips >= 0")
    maps = write_anomaly_maps(prepared, run_dir, models, args.maps, scores) if args.maps else []
    print(format_table(metrics))
    if args.maps:
        print(f"\nanomaly maps: {len(maps)} figure(s) under {run_dir / 'maps'}" if maps else
              f"\nanomaly maps: none ({method.name} cannot localize)")
    print(f"\nrun folder: {runs.sync_run(run_dir)}")  # a run read from a URI is uploaded back with its report
    return 0


if __name__ == "__main__":
    _common.run_main(main)
