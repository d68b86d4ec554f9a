"""Ingest benchmark (issue "Foundation"): plain single-process loop vs Ray Data ingest, and memory vs dataset size.

(a) a plain loop: soundfile + torchaudio log-mel, torch threads = 1, one process, results written to Parquet;
(b) the Ray Data ingest (stethoscope.data.ingest.ingest) with 2 CPUs.
On the same N synthetic 10 s clips (default 2,000). Prints clips/s for each and the ratio (b)/(a), and the peak RSS
of the Ray ingest (driver + Ray worker processes, sampled) for N and for 4·N clips (default 8,000).
Target on the 2-core dev machine: ratio >= 1.5 and peak RSS at 8,000 within 1.2x of the value at 2,000.

python benchmarks/ingest.py [--clips 2000] [--scale 4] [--workdir /tmp/stethoscope-bench] [--skip-large]
Writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))


def make_tree(root: Path, n: int) -> Path:
    from stethoscope.data.synthetic import make_dcase2020_tree

    marker = root / f".done-{n}"
    if marker.exists():
        return root / "dev_data"
    shutil.rmtree(root, ignore_errors=True)
    per_id = n // 4
    t0 = time.perf_counter()
    out = make_dcase2020_tree(root, machine_types=("fan", "pump"), machine_ids=("00", "02"), n_train=per_id - 1,
                              n_test_normal=1, n_test_anomaly=0, duration_s=10.0, seed=0)
    print(f"generated {n} clips in {time.perf_counter() - t0:.1f} s", flush=True)
    marker.touch()
    return out


def plain_loop(paths: list[str], out: Path) -> float:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf
    import torch

    from stethoscope.data.features import FeatureSpec, log_mel

    torch.set_num_threads(1)
    spec = FeatureSpec()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    batch, part = [], 0
    for p in paths:
        wav, sr = sf.read(p, dtype="float32", always_2d=True)
        batch.append({"path": p, "log_mel": log_mel(wav[:, 0], spec).numpy().ravel()})
        if len(batch) == 64:
            pq.write_table(pa.Table.from_pylist(batch), out / f"part-{part}.parquet")
            batch, part = [], part + 1
    if batch:
        pq.write_table(pa.Table.from_pylist(batch), out / f"part-{part}.parquet")
    del np
    return time.perf_counter() - t0


class RssSampler:
    """Peak of the summed RSS of this process and all its descendants (Ray workers), sampled every 0.5 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_rss(self) -> int:
        import psutil

        try:
            procs = [psutil.Process()] + psutil.Process().children(recursive=True)
        except psutil.Error:
            return 0
        total = 0
        for pr in procs:
            try:
                total += pr.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            time.sleep(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def ray_ingest(tree: Path, store: Path) -> tuple[float, int]:
    from stethoscope.data.features import FeatureSpec
    from stethoscope.data.index import index
    from stethoscope.data.ingest import ingest

    table = index(tree).table
    shutil.rmtree(store, ignore_errors=True)
    with RssSampler() as rss:
        t0 = time.perf_counter()
        res = ingest(table, str(store), FeatureSpec(), force=True)
        elapsed = time.perf_counter() - t0
    assert res.report["n_ingested"] == table.num_rows, res.report["n_skipped"]
    return elapsed, rss.peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--workdir", default="/tmp/stethoscope-bench")
    ap.add_argument("--skip-large", action="store_true", help="skip the scale x clips memory run")
    args = ap.parse_args()
    work = Path(args.workdir)
    from stethoscope.runtime import init_ray

    small = make_tree(work / f"tree-{args.clips}", args.clips)
    paths = sorted(str(p) for p in small.rglob("*.wav"))
    t_plain = plain_loop(paths, work / "plain-out")
    init_ray(num_cpus=2)
    t_ray, rss_small = ray_ingest(small, work / "store-small")
    result = {
        "clips": len(paths), "plain_clips_per_s": len(paths) / t_plain, "ray_clips_per_s": len(paths) / t_ray,
        "ratio": t_plain / t_ray, "peak_rss_small_mb": rss_small / 2**20, "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
    }
    if not args.skip_large:
        large = make_tree(work / f"tree-{args.clips * args.scale}", args.clips * args.scale)
        t_large, rss_large = ray_ingest(large, work / "store-large")
        result.update(large_clips=args.clips * args.scale, ray_clips_per_s_large=args.clips * args.scale / t_large,
                      peak_rss_large_mb=rss_large / 2**20, rss_ratio=rss_large / rss_small)
    print()
    print(f"{'what':<34}{'value':>14}")
    print(f"{'plain loop clips/s':<34}{result['plain_clips_per_s']:>14.1f}")
    print(f"{'Ray Data ingest clips/s (2 CPUs)':<34}{result['ray_clips_per_s']:>14.1f}")
    print(f"{'ratio (b)/(a)  [target >= 1.5]':<34}{result['ratio']:>14.2f}")
    print(f"{'peak RSS, ' + str(len(paths)) + ' clips (MB)':<34}{result['peak_rss_small_mb']:>14.0f}")
    if "peak_rss_large_mb" in result:
        print(f"{'peak RSS, ' + str(result['large_clips']) + ' clips (MB)':<34}{result['peak_rss_large_mb']:>14.0f}")
        print(f"{'RSS ratio  [target <= 1.2]':<34}{result['rss_ratio']:>14.2f}")
    print(f"load average at end: {result['loadavg_at_end']}")
    out = ROOT / "benchmarks" / "results" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
