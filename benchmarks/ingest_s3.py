"""Ingest to local disk vs to S3 (issue 17, benchmark "ingest clips/s on local disk vs S3"), side by side in one run.

The same N synthetic 10 s clips (stethoscope.data.synthetic, as benchmarks/ingest.py makes them) are ingested by
``stethoscope.data.ingest.ingest(force=True)`` into two feature stores: a local folder and an ``s3://`` URI. The
audio is read from local disk in both; only where the Parquet shards, the reports and the markers go differs. Then
the shards are read back the way training reads them (``ray.data.read_parquet`` of the store entry, materialized).

The S3 server is moto's standalone server, started here on 127.0.0.1 (tests/s3_server.py), unless ``--store-uri``
names another (MinIO, real S3: configured from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, see
README "Object storage"). moto keeps every object in its own process's memory, in Python: it is a stand-in for a
server on another machine, and its CPU competes with the ingest's on this one, so the S3 rows are a pessimistic
bound for a real object store, not a measure of one.

One warm-up ingest of a few clips first starts the Ray workers and Ray Data's actors (what benchmarks/ingest.py
calls "cold"), so every timed row is a warm ingest. Rows run ``--repeat`` times, interleaved (local, S3, local,
S3 ...); the table shows the best (shortest wall time: the least disturbed on a shared machine) and the median, with
the 1-minute load average at the start of the best run.

python benchmarks/ingest_s3.py [--clips 400] [--repeat 3] [--cpus 2] [--store-uri s3://bucket/prefix] [--workdir DIR]
Writes benchmarks/results/ingest_s3.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "tests"))  # s3_server: the test suite's moto fixture
sys.path.insert(0, str(ROOT / "benchmarks"))

from ingest import load, make_tree  # noqa: E402  (benchmarks/ingest.py)


def timed_ingest(table, spec, store: str) -> dict:
    """One ``ingest(force=True)`` into ``store`` and one read-back of its shards; the store entry is removed after."""
    import ray

    from stethoscope import storage
    from stethoscope.data.ingest import ingest

    load0 = load()
    t0 = time.perf_counter()
    res = ingest(table, store, spec, force=True)
    wall = time.perf_counter() - t0
    assert res.report["n_ingested"] == table.num_rows, res.report["n_skipped"]
    fs, path = storage.resolve(res.features_path)
    t1 = time.perf_counter()
    n_read = ray.data.read_parquet(path, filesystem=fs).materialize().count()
    read_wall = time.perf_counter() - t1
    assert n_read == table.num_rows
    fs, root = storage.resolve(store)
    fs.delete_dir(root)
    return {"clips": table.num_rows, "wall_s": wall, "clips_per_s": table.num_rows / wall,
            "read_wall_s": read_wall, "read_clips_per_s": n_read / read_wall, "load_start": load0, "load_end": load()}


def summarize(rows: list[dict]) -> dict:
    best = min(rows, key=lambda r: r["wall_s"])
    return {"best": best, "median_clips_per_s": statistics.median(r["clips_per_s"] for r in rows),
            "median_read_clips_per_s": statistics.median(r["read_clips_per_s"] for r in rows), "runs": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=400, help="N synthetic 10 s clips (a multiple of 4)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each row, interleaved")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    ap.add_argument("--store-uri", default=None,
                    help="an existing s3:// prefix to write to (default: a bucket on a moto server started here)")
    ap.add_argument("--workdir", default=None, help="keeps the synthetic tree for later runs (default: a temp dir)")
    args = ap.parse_args()
    if args.clips % 4 or args.clips < 8:
        ap.error("--clips must be a multiple of 4, at least 8")

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="stethoscope-ingest-s3-"))
    server = None
    if args.store_uri is None:
        from s3_server import MotoS3, configure_environment, reserve_port

        port = reserve_port()
        configure_environment(port)  # before Ray starts, so its workers reach the same server
        server = MotoS3(port, work / "moto.log").start()
        s3_base = f"{server.create_bucket('ingest-bench')}/store"
    else:
        s3_base = args.store_uri.rstrip("/")
    try:
        import pyarrow  # noqa: F401 - imports before the timers
        import torch  # noqa: F401

        from stethoscope.data.features import FeatureSpec
        from stethoscope.data.index import index
        from stethoscope.runtime import init_ray
        from stethoscope.storage import check_access

        check_access(s3_base, "--store-uri")
        tree = make_tree(work / "tree", args.clips, workers=args.cpus)
        table = index(tree).table
        spec = FeatureSpec()
        init_ray(num_cpus=args.cpus)
        import ray.data  # noqa: F401

        from stethoscope.data.ingest import ingest

        ingest(table.slice(0, 8), str(work / "warmup"), spec, force=True)  # Ray workers and Ray Data actors up
        shutil.rmtree(work / "warmup", ignore_errors=True)
        rows: dict[str, list[dict]] = {"local disk": [], "S3": []}
        for i in range(args.repeat):
            rows["local disk"].append(timed_ingest(table, spec, str(work / f"store-{i}")))
            rows["S3"].append(timed_ingest(table, spec, f"{s3_base}-{uuid.uuid4().hex[:8]}"))
            print(f"run {i + 1}/{args.repeat}: local {rows['local disk'][-1]['clips_per_s']:.1f} clips/s, "
                  f"S3 {rows['S3'][-1]['clips_per_s']:.1f} clips/s (load {load():.2f})", flush=True)
        result = {"clips": args.clips, "clip_s": 10.0, "cpus": args.cpus, "machine_cpus": os.cpu_count(),
                  "repeat": args.repeat, "s3": "moto (this machine)" if server else "--store-uri",
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "rows": {k: summarize(v) for k, v in rows.items()}}
    finally:
        if server is not None:
            server.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\ningest of {args.clips} synthetic 10 s clips (log-mel, 128 mels), Ray on {args.cpus} CPUs, best of "
          f"{args.repeat} (median); S3 = {result['s3']}")
    print(f"{'store':<12} {'ingest clips/s':>20} {'wall s':>8} {'read-back clips/s':>22} {'load avg':>9}")
    for name, r in result["rows"].items():
        b = r["best"]
        print(f"{name:<12} {b['clips_per_s']:>10.1f} ({r['median_clips_per_s']:>6.1f}) {b['wall_s']:>8.2f} "
              f"{b['read_clips_per_s']:>12.1f} ({r['median_read_clips_per_s']:>6.1f}) {b['load_start']:>9.2f}")
    local, s3 = result["rows"]["local disk"]["best"], result["rows"]["S3"]["best"]
    result["s3_over_local"] = {"ingest": s3["clips_per_s"] / local["clips_per_s"],
                               "read": s3["read_clips_per_s"] / local["read_clips_per_s"]}
    ratio = result["s3_over_local"]
    print(f"S3 / local: ingest {ratio['ingest']:.2f}x, read-back {ratio['read']:.2f}x")
    out = ROOT / "benchmarks" / "results" / "ingest_s3.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
