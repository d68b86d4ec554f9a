"""Ingest benchmark (issue 12 item 6): the plain one-thread loop vs Ray Data ingest, memory as the data grows,
and several declared inputs at once vs each alone. Everything is printed side by side in one run.

(a) plain loop: one process, torch threads = 1, no Ray. Each batch of 64 index rows goes through
    ``stethoscope.data.ingest.featurize_clips`` (the very body of one ingest task: soundfile decode with the
    issue-11 checks, the log-mel, one Arrow tensor column per batch) and ``pyarrow.parquet.write_table`` with the
    store's write options. Its imports happen before its timer starts.
(b) Ray Data ingest (``stethoscope.data.ingest.ingest``) on ``--cpus`` CPUs (default 2):
    "cold" = the first ingest of a fresh Ray session: the worker processes import torch, torchaudio and Ray Data
    inside the timer, and Ray Data starts its two actors; "warm" = the same ingest again in that session (what every
    later ingest of a pipeline, sweep or notebook session costs). The driver imports ``ray.data`` before the timer
    (as (a) imports its modules before its own).

On N synthetic 10 s clips (default 2,000; stethoscope.data.synthetic, in a temp dir) and on 4 N (default 8,000):
clips/s, CPU seconds of every process involved (driver, Ray workers, Ray Data's actors, Ray's own processes), and
peak memory (summed RSS every 1 s and summed PSS every 5 s, of the process and all its descendants; RSS counts
shared pages, e.g. torch's libraries and the object store, once per process, PSS splits them).
Then, on N clips in the warm session: waveform + two log-mel specs (the DCASE 2020 baseline's 1024-point dB log-mel
and FGASpecNet's 2048-point natural-log one) in one ingest, against each of the three ingested alone.
The N-clip rows run ``--repeat`` times (default 3), interleaved (plain, then a fresh Ray session: cold, warm, the
several-inputs rows in a rotating order), and the table shows the best run (shortest wall time: the least
disturbed on a shared machine) and the median; the 4N rows run once (the plain loop after the first plain N, before
any Ray session; Ray in a fresh session at the end: cold, then warm). Memory "flat as the data grows" compares
4N with N in the same position: the plain loop's first two runs, and Ray's cold and warm rows.
``--profile`` first times the stages of one task (decode, log-mel, Arrow tensor column, Parquet write) in this
process; ``--compare-reservation`` adds cold and warm runs with Ray Data's default operator resource reservation
(what ingest turns off for its dataset; see docs/ingest.md).

Under the ratios, their **CPU bound**: ``--cpus`` divided by Ray's CPU seconds per clip (every process: workers,
driver, Ray Data's actors, Ray's own processes), over the plain loop's clips/s: the ratio Ray would reach at its
measured CPU cost with every core busy all the time.

Targets (issue 12 item 6), on 2 CPUs: Ray ingest >= 1.5x the plain loop; peak memory at 4 N within 1.2x of N;
the three inputs together cost less than the sum of each alone. The machine's load average is printed beside each
row: on a shared machine the wall-clock rows are only as good as that number.

python benchmarks/ingest.py [--clips 2000] [--scale 4] [--cpus 2] [--repeat 3] [--workdir DIR] [--skip-large]
                            [--skip-multi] [--profile] [--compare-reservation] [--batch-size N]
Writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))


def make_tree(root: Path, n: int, workers: int) -> Path:
    """N synthetic 10 s clips (fan and pump, IDs 00 and 02, n / 4 each) under ``root``; reused if complete."""
    from stethoscope.data.synthetic import make_dcase2020_tree

    marker = root / f".done-{n}"
    if marker.exists():
        return root / "dev_data"
    shutil.rmtree(root, ignore_errors=True)
    per_id = n // 4
    t0 = time.perf_counter()
    out = make_dcase2020_tree(root, machine_types=("fan", "pump"), machine_ids=("00", "02"), n_train=per_id - 1,
                              n_test_normal=1, n_test_anomaly=0, duration_s=10.0, seed=0, workers=workers)
    print(f"generated {4 * per_id} clips in {time.perf_counter() - t0:.1f} s", flush=True)
    marker.touch()
    return out


class Sampler:
    """Peak summed RSS and PSS (bytes) of this process (and, if ``tree``, every descendant), RSS sampled every
    1 s and PSS every 5 s (and at the end);
    CPU seconds (user + system, with reaped children) of the same processes between enter and exit."""

    PERIOD_S = 1.0  # RSS sample period
    PSS_EVERY = 5  # PSS every 5 s: a PSS sample of the ~12 Ray processes costs ~40 ms of CPU, an RSS one ~4 ms

    def __init__(self, tree: bool):
        import psutil

        self._psutil = psutil
        self.tree = tree
        self.peak_rss = self.peak_pss = 0
        self.peak_rss_by_group: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu: dict[str, float] = {}
        self.seen: dict[int, str] = {}  # pid -> group of every process a sample saw

    def _procs(self):
        me = self._psutil.Process()
        if not self.tree:
            return [me]
        try:
            return [me] + me.children(recursive=True)
        except self._psutil.Error:
            return [me]

    def _sample(self, pss: bool):
        rss = total_pss = 0
        by_group: dict[str, int] = {}
        for pr in self._procs():
            try:
                if pss or pr.pid not in self.seen:  # the latest name: a worker is renamed by its task
                    self.seen[pr.pid] = _group(pr, self._psutil)
                one = pr.memory_info().rss
                rss += one
                by_group[self.seen[pr.pid]] = by_group.get(self.seen[pr.pid], 0) + one
                if pss:  # reads smaps_rollup: ~4 ms per large process
                    total_pss += pr.memory_full_info().pss
            except self._psutil.Error:
                continue
        if rss > self.peak_rss:
            self.peak_rss, self.peak_rss_by_group = rss, by_group
        if pss:
            self.peak_pss = max(self.peak_pss, total_pss)

    def _run(self):
        tick = 0
        while not self._stop.is_set():
            self._sample(pss=tick % self.PSS_EVERY == 0)
            tick += 1
            time.sleep(self.PERIOD_S)

    def _cpu_snapshot(self) -> dict[int, tuple[str, float]]:
        out = {}
        for pr in self._procs():
            try:
                t = pr.cpu_times()
                out[pr.pid] = (_group(pr, self._psutil), t.user + t.system + t.children_user + t.children_system)
            except self._psutil.Error:
                pass
        return out

    def __enter__(self):
        self._cpu0 = self._cpu_snapshot()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample(pss=True)
        cpu1 = self._cpu_snapshot()
        for pid, (group, seconds) in cpu1.items():
            before = self._cpu0.get(pid, (group, 0.0))[1]
            self.cpu[group] = self.cpu.get(group, 0.0) + max(0.0, seconds - before)
        # processes that ran during the run and exited before its end are in their parent's children_* times
        # (Ray's workers are children of the raylet, which is counted above)


def _group(pr, psutil) -> str:
    """driver | ray workers | ray data actors | ray system (raylet, GCS, agents, log monitor, ...)."""
    if pr.pid == os.getpid():
        return "driver"
    try:
        cmd = " ".join(pr.cmdline())
    except psutil.Error:
        cmd = ""
    if cmd.startswith("ray::"):
        if "Agent" in cmd:
            return "ray system"
        if "Actor" in cmd:
            return "ray data actors"
        return "ray workers"
    return "ray system"


def load() -> float:
    return os.getloadavg()[0]


def plain_loop(table, specs, out: Path, batch: int) -> dict:
    """(a): featurize_clips per batch of index rows + one Parquet file per batch, one thread, no Ray."""
    import pyarrow.parquet as pq
    import torch

    from stethoscope.data.ingest import featurize_clips, parquet_options

    torch.set_num_threads(1)
    options = parquet_options(specs)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    load0 = load()
    with Sampler(tree=False) as s:
        t0 = time.perf_counter()
        n_ok = 0
        for part, start in enumerate(range(0, table.num_rows, batch)):
            result, bad = featurize_clips(table.slice(start, batch), specs)
            assert not bad, bad[:3]
            pq.write_table(result, out / f"part-{part:05d}.parquet", **options)
            n_ok += result.num_rows
        wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return _row(n_ok, wall, s, load0)


def ray_ingest(table, specs, store: Path, batch: int | None) -> dict:
    """(b): one ``ingest(force=True)`` with the Ray session as it is (cold or warm)."""
    from stethoscope.data.ingest import ingest

    shutil.rmtree(store, ignore_errors=True)
    load0 = load()
    with Sampler(tree=True) as s:
        t0 = time.perf_counter()
        res = ingest(table, str(store), specs, force=True, batch_size=batch)
        wall = time.perf_counter() - t0
    assert res.report["n_ingested"] == table.num_rows, res.report["n_skipped"]
    shutil.rmtree(store, ignore_errors=True)
    return _row(table.num_rows, wall, s, load0)


def _row(n: int, wall: float, s: Sampler, load0: float) -> dict:
    return {"clips": n, "wall_s": wall, "clips_per_s": n / wall, "cpu_s": sum(s.cpu.values()),
            "cpu_by_group_s": {k: round(v, 2) for k, v in sorted(s.cpu.items())},
            "peak_rss_mb": s.peak_rss / 2**20, "peak_pss_mb": s.peak_pss / 2**20,
            "peak_rss_by_group_mb": {k: round(v / 2**20) for k, v in sorted(s.peak_rss_by_group.items())},
            "processes_seen": {g: sum(1 for v in s.seen.values() if v == g) for g in sorted(set(s.seen.values()))},
            "load_start": load0, "load_end": load()}


def profile_stages(table, spec, n: int) -> dict:
    """CPU milliseconds per clip (this thread) of each stage of one ingest task, on the first ``n`` clips,
    in batches of 64: decode (load_audio), log-mel (compute_many), Arrow tensor column, Parquet write (one local file
    per batch, as an ingest task writes its shard; the page cache takes the bytes)."""
    import pyarrow.parquet as pq
    import torch

    from stethoscope.data.audio import load_audio
    from stethoscope.data.features import compute_many
    from stethoscope.data.ingest import METADATA_COLUMNS, _tensor_column, featurize_clips, input_column, \
        parquet_options

    torch.set_num_threads(1)
    options = parquet_options([spec])
    paths = table.column("path").to_pylist()[:n]
    clock = time.thread_time
    # warm-up: the first calls build the mel filterbank, register Ray's Arrow extension types and set up the Parquet
    # writer (one-time costs that would otherwise be charged to the first batch's clips)
    warm, _ = featurize_clips(table.slice(0, 2), [spec])
    out_dir = Path(tempfile.mkdtemp(prefix="stethoscope-ingest-profile-"))
    pq.write_table(warm, out_dir / "warm-up.parquet", **options)
    stages = {"decode (soundfile + checks)": 0.0, "log-mel (float64 STFT + mel + dB)": 0.0,
              "Arrow tensor column": 0.0, "Parquet write (snappy, local file)": 0.0}
    for start in range(0, len(paths), 64):
        feats = []
        for p in paths[start:start + 64]:
            t = clock()
            wav, _ = load_audio(p, spec.sample_rate, min_samples=spec.n_fft)
            t1 = clock()
            feats.append(compute_many(wav, [spec])[0].numpy())
            t2 = clock()
            stages["decode (soundfile + checks)"] += t1 - t
            stages["log-mel (float64 STFT + mel + dB)"] += t2 - t1
        t = clock()
        col = _tensor_column(feats)
        t1 = clock()
        batch = table.slice(start, len(feats)).select(METADATA_COLUMNS).append_column(input_column(spec), col)
        pq.write_table(batch, out_dir / f"part-{start:06d}.parquet", **options)
        t2 = clock()
        stages["Arrow tensor column"] += t1 - t
        stages["Parquet write (snappy, local file)"] += t2 - t1
    t = clock()
    featurize_clips(table.slice(0, min(64, len(paths))), [spec])
    whole_batch = (clock() - t) / min(64, len(paths))
    shutil.rmtree(out_dir, ignore_errors=True)
    out = {k: 1000 * v / len(paths) for k, v in stages.items()}
    out["featurize_clips, whole batch of 64"] = 1000 * whole_batch
    return out


def summarize(runs: list[dict]) -> dict:
    """Best (shortest wall time) and median of repeated runs: on a shared machine the best run is the least
    disturbed one."""
    walls = sorted(r["wall_s"] for r in runs)
    best = min(runs, key=lambda r: r["wall_s"])
    return {**best, "runs": len(runs), "median_wall_s": walls[len(walls) // 2],
            "median_clips_per_s": best["clips"] / walls[len(walls) // 2],
            "all_wall_s": [round(r["wall_s"], 2) for r in runs],
            "all_load_start": [round(r["load_start"], 1) for r in runs]}


def fmt_row(name: str, r: dict) -> str:
    med = f"{r['median_clips_per_s']:>8.1f}" if r.get("runs", 1) > 1 else f"{'':>8}"
    return (f"{name:<40}{r['clips']:>6}{r.get('runs', 1):>3}{r['wall_s']:>8.1f}{r['clips_per_s']:>8.1f}{med}"
            f"{r['cpu_s']:>7.1f}{r['cpu_by_group_s'].get('ray workers', r['cpu_s']):>7.1f}"
            f"{r['peak_rss_mb']:>8.0f}{r['peak_pss_mb']:>8.0f}  {r['load_start']:5.1f} / {r['load_end']:5.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=2000, help="N (a multiple of 4)")
    ap.add_argument("--scale", type=int, default=4, help="the memory run uses scale x N clips")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each N-clip row (plain, cold in a fresh Ray session each time, warm, several "
                         "inputs), interleaved; the table shows the best and the median (the 4N rows run once)")
    ap.add_argument("--workdir", default=None, help="keeps the synthetic trees for later runs (default: a temp dir, "
                                                    "removed at the end)")
    ap.add_argument("--batch-size", type=int, default=None, help="clips per task (default: ingest's default) and "
                                                                 "per plain-loop batch (default 64)")
    ap.add_argument("--skip-large", action="store_true", help="skip the scale x N runs")
    ap.add_argument("--skip-multi", action="store_true", help="skip the several-inputs runs")
    ap.add_argument("--profile", action="store_true", help="time the stages of one task first")
    ap.add_argument("--compare-reservation", action="store_true",
                    help="also run cold + warm with Ray Data's default operator resource reservation")
    args = ap.parse_args()
    if args.clips % 4 or args.clips < 8:
        ap.error("--clips must be a multiple of 4, at least 8")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    import pyarrow  # noqa: F401 - imports before the timers, as every row's code needs them
    import torch  # noqa: F401

    from stethoscope.data.features import FeatureSpec, WaveformSpec
    from stethoscope.data.index import index

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="stethoscope-ingest-bench-"))
    keep = args.workdir is not None
    spec = FeatureSpec()
    multi = {"waveform": WaveformSpec(16000), "log-mel dB n_fft 1024": spec,
             "log-mel ln n_fft 2048": FeatureSpec(n_fft=2048, scale="ln")}
    plain_batch = args.batch_size or 64
    result: dict = {"cpus": args.cpus, "machine_cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "clips": args.clips, "scale": args.scale, "repeat": args.repeat, "rows": {}}
    runs: dict[str, list[dict]] = {}

    def record(name: str, row: dict) -> None:
        runs.setdefault(name, []).append(row)
        print(f"  {name}: {row['wall_s']:.1f} s, {row['clips_per_s']:.1f} clips/s, CPU {row['cpu_s']:.1f} s, "
              f"load {row['load_start']:.1f}", flush=True)

    try:
        small = index(make_tree(work / f"tree-{args.clips}", args.clips, args.cpus)).table
        large = None
        if not args.skip_large:
            large = index(make_tree(work / f"tree-{args.clips * args.scale}", args.clips * args.scale,
                                    args.cpus)).table
        if args.profile:
            result["profile_ms_per_clip"] = profile_stages(small, spec, min(256, small.num_rows))
            result["profile_load"] = load()
            print("where one task's CPU time goes (ms per clip, this thread, load %.1f):" % result["profile_load"])
            for k, v in result["profile_ms_per_clip"].items():
                print(f"  {k:<44}{v:>8.2f}")

        import ray

        import ray.data  # noqa: F401 - the driver's import, before the timers
        from stethoscope.data import ingest as ingest_module
        from stethoscope.runtime import init_ray

        switch = ingest_module._start_every_task_at_once
        for rep in range(args.repeat):
            record("plain N", plain_loop(small, [spec], work / "plain-out", plain_batch))
            if rep == 0 and large is not None:  # before any Ray session, like the first plain N (memory)
                record("plain 4N", plain_loop(large, [spec], work / "plain-out", plain_batch))
            if args.compare_reservation:
                ingest_module._start_every_task_at_once = lambda ds: None
                init_ray(num_cpus=args.cpus)
                record("ray N cold, default reservation", ray_ingest(small, [spec], work / "store", args.batch_size))
                record("ray N warm, default reservation", ray_ingest(small, [spec], work / "store", args.batch_size))
                ray.shutdown()
                ingest_module._start_every_task_at_once = switch
            init_ray(num_cpus=args.cpus)
            record("ray N cold", ray_ingest(small, [spec], work / "store", args.batch_size))
            record("ray N warm", ray_ingest(small, [spec], work / "store", args.batch_size))
            if not args.skip_multi:  # rotate the order, so no configuration always runs first
                names = list(multi)
                order = [None] + names
                order = order[rep % len(order):] + order[:rep % len(order)]
                for name in order:
                    specs = list(multi.values()) if name is None else [multi[name]]
                    label = "multi: all three in one ingest" if name is None else f"multi: {name} alone"
                    record(label, ray_ingest(small, specs, work / "store", args.batch_size))
            ray.shutdown()
        if large is not None:  # a fresh session, as for the N rows: the same processes, 4x the clips
            init_ray(num_cpus=args.cpus)
            record("ray 4N cold", ray_ingest(large, [spec], work / "store", args.batch_size))
            record("ray 4N warm", ray_ingest(large, [spec], work / "store", args.batch_size))
            ray.shutdown()
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = result["rows"]
    for name in ["plain N", "plain 4N", "ray N cold, default reservation", "ray N warm, default reservation",
                 "ray N cold", "ray N warm", "ray 4N cold", "ray 4N warm"] + [k for k in runs if k.startswith("multi")]:
        if name in runs:
            rows[name] = summarize(runs[name])

    def ratio(a: str, b: str, key: str = "clips_per_s") -> float:
        return rows[a][key] / rows[b][key]

    ratios = {"cold N (best)": ratio("ray N cold", "plain N"), "warm N (best)": ratio("ray N warm", "plain N"),
              "cold N (median)": ratio("ray N cold", "plain N", "median_clips_per_s"),
              "warm N (median)": ratio("ray N warm", "plain N", "median_clips_per_s")}
    if "ray 4N warm" in rows:
        ratios["cold 4N"] = ratio("ray 4N cold", "plain 4N")
        ratios["warm 4N"] = ratio("ray 4N warm", "plain 4N")
        result["memory_ratio_4N_over_N"] = {
            "plain RSS": rows["plain 4N"]["peak_rss_mb"] / runs["plain N"][0]["peak_rss_mb"],  # both before Ray
            "ray RSS (cold)": rows["ray 4N cold"]["peak_rss_mb"] / rows["ray N cold"]["peak_rss_mb"],
            "ray PSS (cold)": rows["ray 4N cold"]["peak_pss_mb"] / rows["ray N cold"]["peak_pss_mb"],
            "ray RSS (warm)": rows["ray 4N warm"]["peak_rss_mb"] / rows["ray N warm"]["peak_rss_mb"],
            "ray PSS (warm)": rows["ray 4N warm"]["peak_pss_mb"] / rows["ray N warm"]["peak_pss_mb"],
        }
    if "ray N cold, default reservation" in rows:
        ratios["cold N, default reservation (best)"] = ratio("ray N cold, default reservation", "plain N")
        ratios["warm N, default reservation (best)"] = ratio("ray N warm, default reservation", "plain N")
    result["ratio_ray_over_plain"] = ratios
    # The most Ray could give on --cpus cores at its measured CPU cost per clip (every process: workers, driver, Ray
    # Data's actors, Ray's own), against the plain loop's wall time per clip on one core.
    bounds = {}
    for label, ray_row, plain_row in (("cold N", "ray N cold", "plain N"), ("warm N", "ray N warm", "plain N"),
                                      ("cold 4N", "ray 4N cold", "plain 4N"), ("warm 4N", "ray 4N warm", "plain 4N")):
        if ray_row in rows and plain_row in rows and rows[ray_row]["cpu_s"] > 0:
            ray_cpu_per_clip = rows[ray_row]["cpu_s"] / rows[ray_row]["clips"]
            bounds[label] = args.cpus / ray_cpu_per_clip / rows[plain_row]["clips_per_s"]
    result["ratio_cpu_bound"] = bounds
    if "multi: all three in one ingest" in rows:
        alone = [r for k, r in rows.items() if k.startswith("multi:") and k.endswith("alone")]
        together = rows["multi: all three in one ingest"]
        result["multi"] = {
            "together_wall_s": together["wall_s"], "sum_alone_wall_s": sum(r["wall_s"] for r in alone),
            "together_median_wall_s": together["median_wall_s"],
            "sum_alone_median_wall_s": sum(r["median_wall_s"] for r in alone),
            "together_worker_cpu_s": together["cpu_by_group_s"].get("ray workers", 0.0),
            "sum_alone_worker_cpu_s": sum(r["cpu_by_group_s"].get("ray workers", 0.0) for r in alone),
        }

    n, n4 = args.clips, args.clips * args.scale
    print()
    print(f"ingest benchmark: N = {n}, 4N = {n4} synthetic 10 s clips; Ray on {args.cpus} CPUs "
          f"(machine: {os.cpu_count()} CPUs); started {result['started']}; best of {args.repeat} interleaved runs "
          f"per N row")
    print(f"{'run':<40}{'clips':>6}{'n':>3}{'wall s':>8}{'clips/s':>8}{'median':>8}{'CPU s':>7}{'wkr s':>7}"
          f"{'RSS MB':>8}{'PSS MB':>8}  load avg start / end")
    for name, r in rows.items():
        print(fmt_row(name, r))
    print("(wall s, clips/s, CPU s: the best run; median: clips/s of the median run; CPU s: every process; "
          "wkr s: Ray's worker processes)")
    print()
    print("Ray / plain clips/s  [target >= 1.5]: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if bounds:
        print(f"CPU bound of that ratio ({args.cpus} cores / Ray's CPU s per clip, every process, over the plain "
              "loop's clips/s): " + ", ".join(f"{k} {v:.2f}" for k, v in bounds.items()))
    if "memory_ratio_4N_over_N" in result:
        print("peak memory 4N / N  [target <= 1.2]: " + ", ".join(
            f"{k} {v:.2f}" for k, v in result["memory_ratio_4N_over_N"].items()))
    if "multi" in result:
        m = result["multi"]
        print(f"three inputs in one ingest vs the sum of each alone  [target: less]: wall {m['together_wall_s']:.1f} s "
              f"vs {m['sum_alone_wall_s']:.1f} s (best), {m['together_median_wall_s']:.1f} s vs "
              f"{m['sum_alone_median_wall_s']:.1f} s (median); worker CPU {m['together_worker_cpu_s']:.1f} s vs "
              f"{m['sum_alone_worker_cpu_s']:.1f} s")
    print("CPU seconds by process group (best run):")
    for name, r in rows.items():
        if name.startswith(("ray", "multi")):
            print(f"  {name:<40}" + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_by_group_s"].items())
                  + "   (processes: " + ", ".join(f"{k} {v}" for k, v in r["processes_seen"].items()) + ")")
    print("RSS MB by process group at the peak (best run):")
    for name, r in rows.items():
        print(f"  {name:<40}" + ", ".join(f"{k} {v}" for k, v in r["peak_rss_by_group_mb"].items()))
    out = ROOT / "benchmarks" / "results" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result["runs"] = runs
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
