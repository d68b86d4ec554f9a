"""Bulk scoring (jobs/score.py's Ray Data actor pool) against the offline evaluate path on the same clips (issue 18
§3).

python benchmarks/bulk_score.py [--registry REG] [--data-root ROOT] [--machine-type slider] [--repeat 24]
                                [--actors 2] [--batch-size 16] [--num-cpus 2]

The clips are the machine type's test clips under --data-root (default: the real DCASE 2020 sample in ../shared/data),
copied --repeat times into a temporary DCASE tree (rep<k>/<machine_type>/test/<name>.wav) so that there are enough
of them. Without --registry a registry is made first: one pipeline run of the DCASE 2020 autoencoder (--epochs,
default 1; the cost of scoring does not depend on how well it was trained), published as the machine-wide bundle.

Measured, one after the other in one process, each over every clip:
- offline: the evaluate path in this process: load_bundle once, then per batch of --batch-size clips read the files,
  decode them (decode_audio, resampled to the bundle's rate) and score them with Bundle.score_waveforms (torch with
  --num-cpus threads). clips/s is given with and without the bundle load.
- bulk, 1 clip: the same job on one clip first: the pool's fixed cost (actors start and import, bundle load).
- bulk: stethoscope.publishing.bulk.bulk_score (what jobs/score.py runs): list, route, Ray Data from_items →
  map_batches(BundleScorer, compute=ActorPoolStrategy(size=--actors)), write scores.parquet / CSVs / report.json.
  clips/s is the report's (scored clips / the Ray Data run, its actors' start and bundle loads included); the
  elapsed time covers listing to written outputs. "clips/s (no start/load)" is (clips - 1) / (its seconds - the 1-clip run's seconds).
Both score every clip; their scores are compared (max |difference| is printed). Results go to
benchmarks/results/bulk_score-<time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

log = logging.getLogger("bulk_score")


def _make_registry(data_root: str, machine_type: str, epochs: int, base: Path) -> str:
    from stethoscope.pipeline import run

    registry = str(base / "registry")
    run(data_root, machine_type=machine_type, config={"epochs": epochs}, store=str(base / "store"),
        runs_root=str(base / "runs"), registry=registry)
    return registry


def _offline(registry: str, machine_type: str, files: list[Path], batch_size: int) -> dict:
    """The evaluate path in this process; returns timings and {path: score}."""
    from stethoscope.data.audio import decode_audio
    from stethoscope.data.index import parse_path
    from stethoscope.data.labels import group_of
    from stethoscope.publishing import load_bundle, resolve_scope

    t0 = time.perf_counter()
    bundle = load_bundle(registry, machine_type, resolve_scope(registry, machine_type, None))
    t1 = time.perf_counter()
    scores: dict[str, float] = {}
    for i in range(0, len(files), batch_size):
        by_group: dict[str, list[tuple[Path, object]]] = {}
        for f in files[i:i + batch_size]:
            wave, _ = decode_audio(f.read_bytes(), bundle.sample_rate, min_samples=bundle.min_samples, name=str(f))
            by_group.setdefault(group_of("machine_id", parse_path(f)["machine_id"]), []).append((f, wave))
        for group, items in by_group.items():
            for (f, _), s in zip(items, bundle.score_waveforms([w for _, w in items], group)):
                scores[str(f)] = s["score"]
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "score_s": t2 - t1, "clips_per_s": len(files) / (t2 - t1),
            "clips_per_s_with_load": len(files) / (t2 - t0), "scores": scores}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default=None, help="a registry with a bundle for --machine-type (default: make one)")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared/data/dcase2020_task2_dev_sample"))
    p.add_argument("--machine-type", default="slider")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the registry's run, when one is made (default 1)")
    p.add_argument("--repeat", type=int, default=24, help="copies of the test clips (default: 24)")
    p.add_argument("--actors", type=int, default=2, help="bulk actor pool size (default: 2)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per batch, both paths (default: 16)")
    p.add_argument("--num-cpus", type=int, default=2,
                   help="CPUs of the embedded Ray; torch threads offline (default 2)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    from stethoscope.runtime import init_ray, quiet_ray_output

    quiet_ray_output()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import torch

    from stethoscope.data.index import index, select
    from stethoscope.publishing.bulk import bulk_score

    init_ray(num_cpus=args.num_cpus)
    base = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    try:
        registry = args.registry or _make_registry(args.data_root, args.machine_type, args.epochs, base)
        table = select(index(args.data_root).table, machine_type=args.machine_type, split="test")
        files = []
        for k in range(args.repeat):
            folder = base / "input" / f"rep{k}" / args.machine_type / "test"
            folder.mkdir(parents=True)
            for src in table.column("path").to_pylist():
                files.append(Path(shutil.copy(src, folder / Path(src).name)))
        files.sort()
        log.info("%d clips (%d test clips x %d); registry %s", len(files), table.num_rows, args.repeat, registry)

        torch.set_num_threads(args.num_cpus)
        offline = _offline(registry, args.machine_type, files, args.batch_size)
        per_actor = max(1, args.num_cpus // args.actors)
        # the pool's fixed cost: the same job on one clip (actors start, import, load the bundle, score one batch)
        one = bulk_score(registry, files[0], base / "output-one", actors=args.actors, batch_size=args.batch_size,
                         num_cpus=per_actor).report
        bulk = bulk_score(registry, base / "input", base / "output", actors=args.actors, batch_size=args.batch_size,
                          num_cpus=per_actor)
        r = bulk.report
        steady = (len(files) - 1) / (r["scoring_s"] - one["scoring_s"]) if r["scoring_s"] > one["scoring_s"] else None
        got = dict(zip(bulk.table["path"], bulk.table["score"]))
        diff = max(abs(got[str(f)] - s) for f, s in offline["scores"].items())
        head = ["path", "clips", "clips/s (no start/load)", "clips/s incl. start+load", "seconds"]
        rows = [
            ["offline (in-process)", str(len(files)), f"{offline['clips_per_s']:.1f}",
             f"{offline['clips_per_s_with_load']:.1f}", f"{offline['score_s'] + offline['load_s']:.2f}"],
            [f"bulk (Ray Data, {r['actors']} actors)", str(r["n_scored"]), f"{steady:.1f}" if steady else "-",
             f"{r['clips_per_s']:.1f}", f"{r['scoring_s']:.2f} (elapsed {r['elapsed_s']:.2f})"],
            [f"bulk, 1 clip ({one['actors']} actor)", str(one["n_scored"]), "-", f"{one['clips_per_s']:.2f}",
             f"{one['scoring_s']:.2f} (elapsed {one['elapsed_s']:.2f})"],
        ]
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
        print()
        print("\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head, *rows]))
        print(f"bulk / offline (incl. load): {r['clips_per_s'] / offline['clips_per_s_with_load']:.2f}; "
              + (f"without the pool's start (the 1-clip run's seconds): {steady / offline['clips_per_s']:.2f}; "
                 if steady else "")
              + 
              f"max |score difference| {diff:.2e}; errors {r['n_errors']}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"bulk_score-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps({
            "registry": registry if args.registry else "made by this run", "machine_type": args.machine_type,
            "clips": len(files), "batch_size": args.batch_size, "actors": r["actors"], "num_cpus": args.num_cpus,
            "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "offline": {k: v for k, v in offline.items() if k != "scores"},
            "bulk": {k: r[k] for k in ("n_scored", "n_errors", "clips_per_s", "scoring_s", "elapsed_s")},
            "bulk_one_clip": {k: one[k] for k in ("n_scored", "clips_per_s", "scoring_s", "elapsed_s")},
            "bulk_clips_per_s_without_start": steady,
            "max_abs_score_difference": diff,
        }, indent=2) + "\n")
        print(f"results: {path}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
