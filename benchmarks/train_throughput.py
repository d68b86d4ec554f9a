"""Training throughput: 1 vs 2 Ray Train workers, and every method's optimizer step against the machine's FLOP bound.

python benchmarks/train_throughput.py [--scaling-methods autoencoder aegan_ad:cpu aegan_ad] [--epochs N] [--n-train N]
                                      [--duration 10]
                                      [--methods autoencoder ganomaly skip_ganomaly egbad aegan_ad aegan_ad:cpu]
                                      [--steps 3] [--batch-cap aegan_ad=64] [--skip-scaling] [--skip-methods]
                                      [--seed 0] [--out benchmarks/results]

It prints three tables, in one run, with the CPU count and the load average (1 min) before and after each part:

1. **FLOP bound**: a float32 2048 × 2048 matmul (torch, MKL), best of 5, on 1 thread and on every CPU: GFLOP/s of
   wall time, and GFLOP per CPU-second (the speed of one core while it runs, which other processes' load disturbs
   less than wall time).
2. **Scaling** (issue 12 item 4): each of ``--scaling-methods`` (default: the DCASE 2020 baseline AE at its paper
   defaults, batch 512 and 100 epochs on 48 clips; AEGAN-AD with the CPU preset, batch 64, 3 epochs on 16 clips;
   AEGAN-AD at its paper defaults, batch 512, 3 epochs on 4 clips: about 9 min of the run, 5 GB per worker)
   through ``stethoscope.training.fit`` on seeded synthetic clips (fan id_00, ``--duration`` s; 10 % held out for the
   validation loss, as a run does), with 1 worker (the paper batch, 1 CPU) and with 2 workers (half the batch each,
   0.5 CPU each: the same examples per optimizer step), every worker on ONE torch thread. Columns: samples/s
   (training examples of every worker per second of the epochs after the first, which pays the iterator start-up),
   the speedup over 1 worker, samples per worker CPU-second (the same examples over the mean worker's CPU time in
   its training loop: what the workers' own work allows when each has a core to itself, which other processes on
   a shared machine take away; "CPU speedup" is its ratio), per-epoch seconds and where they went (waiting for
   data, all-reducing gradients, CPU time of the worker process), the final training loss and validation loss, and
   the 2-worker losses' difference from 1 worker's in %. Target on the 2-core machine: speedup >= 1.6 with the
   final loss within 2 %. Under each table a **bound**: the most synchronous data parallelism could give here, one
   worker's epoch halved plus the 2-worker run's all-reduces (count and size from its history) at their floor, a
   gloo all-reduce of that size timed between two bare processes of one thread (no Ray, no training).
3. **Methods**: one process, ``--threads`` torch threads (default 1), no Ray: each method's ``training_step`` on
   example batches cut (``Method.examples``) from the same kind of synthetic clips, at its paper defaults
   (``aegan_ad:cpu`` = AEGAN-AD with the CPU preset, stethoscope/presets/cpu/aegan_ad.yaml). FLOPs of one step are
   counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and backward,
   including the WGAN-GP double backward; elementwise ops and the optimizer are not counted); samples/s and GFLOP/s
   are the mean of ``--steps`` steps after one warm-up step; "% bound" divides the step's GFLOP/s by the matmul's on
   as many threads. ``--batch-cap aegan_ad=64`` (the default) measures AEGAN-AD's step at 64 of its 512 patches (a step
   held ~1.1 GB per 64 patches here, so 512 would need ~9 GB); GFLOP/step and "s per step" are then scaled to the
   paper batch (FLOPs grow linearly with the batch) and the row says so.

Writes ``<out>/train_throughput-<YYYYmmdd-HHMMSS>.json`` (git-ignored) with every number and the command.
Numbers depend on the machine and its load: never compare runs made under different loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "platform") not in sys.path:
    sys.path.insert(0, str(ROOT / "platform"))

log = logging.getLogger("train_throughput")

METHODS = ("autoencoder", "ganomaly", "skip_ganomaly", "egbad", "aegan_ad", "aegan_ad:cpu")
#: Training losses the tables show, in this order (the first a method reports is "the" loss of the scaling table).
LOSS_KEYS = ("loss", "loss_rec", "loss_g", "loss_d")
#: Scaling runs: method → (synthetic training clips, epochs). The AE trains its paper's 100 epochs (its loss is still
#: falling steeply after 10, so a short run compares two points of a steep curve); AEGAN-AD with the CPU preset
#: trains 3 epochs on 16 clips (14 after the hold-out, as the issue's measurement) because each step costs seconds.
#: Scaling runs: (training clips, epochs). AEGAN-AD at its paper defaults (512 patches per step, ~35 s of one core
#: per step) is the compute-bound case: 4 clips give 744 patches, 2 steps per epoch.
SCALING_RUNS = {"autoencoder": (48, 100), "aegan_ad:cpu": (16, 3), "aegan_ad": (4, 3)}


def load() -> float:
    return os.getloadavg()[0]


# -- 1. FLOP bound ------------------------------------------------------------------------------------------------


def matmul_bound(threads: int, n: int = 2048, repeats: int = 5) -> dict:
    """Best of ``repeats`` float32 n × n matmuls on ``threads`` torch threads: GFLOP/s (wall) and GFLOP per CPU-s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        flop = 2.0 * n**3
        best_wall, best_cpu = math.inf, math.inf
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            a @ b
            best_wall = min(best_wall, time.perf_counter() - w)
            best_cpu = min(best_cpu, time.process_time() - c)
    finally:
        torch.set_num_threads(before)
    return {"threads": threads, "n": n, "gflops_wall": flop / best_wall / 1e9, "gflop_per_cpu_s": flop / best_cpu / 1e9}


def _allreduce_worker(rank: int, port: int, values: int, repeats: int, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        t = torch.randn(values)
        for _ in range(10):  # warm-up
            dist.all_reduce(t)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(t)
        if rank == 0:
            out.put((time.perf_counter() - t0) / repeats)
    finally:
        dist.destroy_process_group()


def allreduce_floor(values: int, repeats: int = 200) -> float:
    """Seconds of one gloo all-reduce of ``values`` float32 between two bare processes of one torch thread each on
    this machine (no Ray, no training: the least a synchronous step of two workers can pay to average its
    gradients here)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_allreduce_worker, args=(rank, port, values, repeats, out)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        seconds = out.get(timeout=300)
    finally:
        for proc in procs:
            proc.join(timeout=60)
    return float(seconds)


def scaling_bound(one: dict, two: dict) -> dict:
    """The most 2 workers could gain over 1 with synchronous gradient averaging on this machine: one worker's epoch
    (training and validation) cut exactly in half, plus the epoch's all-reduces at their floor
    (:func:`allreduce_floor` of the mean all-reduce size the 2-worker run measured). An upper bound: it assumes that
    every fixed cost of a step halves too and that Ray's own processes take no CPU."""
    calls = sum(h.get("allreduce_calls", 0.0) for h in two["history"][1:]) / max(1, len(two["history"]) - 1)
    values = sum(h.get("allreduce_values", 0.0) for h in two["history"][1:]) / max(1, len(two["history"]) - 1)
    if not calls:
        return {}
    size = int(round(values / calls))
    floor = allreduce_floor(size)
    ideal = one["epoch_seconds"] / 2 + calls * floor
    return {"allreduce_calls_per_epoch": calls, "allreduce_values_per_call": size, "allreduce_floor_s": floor,
            "ideal_two_worker_epoch_s": ideal, "speedup_bound": one["epoch_seconds"] / ideal}


# -- 2. scaling: 1 vs 2 Ray Train workers ---------------------------------------------------------------------------


def scaling(entry: str, args, tmp: Path) -> dict:
    """``entry`` (a method, or ``NAME:cpu``) through ``training.fit`` with 1 worker and with 2 (same global batch)."""
    import pyarrow.dataset as pads

    from stethoscope import methods
    from stethoscope.data.index import index, select
    from stethoscope.data.ingest import ingest, read_features
    from stethoscope.data.synthetic import make_dcase2020_tree
    from stethoscope.splits import CLIP_COLUMNS, make_run_split
    from stethoscope.training import Scaling, fit

    name, overrides = method_config(entry)
    n_train, epochs = SCALING_RUNS.get(entry, (48, 8))
    n_train, epochs = args.n_train or n_train, args.epochs or epochs
    cls = methods.get(name)
    base = cls.make_config(overrides)
    if base.batch_size % 2:
        raise SystemExit(f"{entry}: batch_size {base.batch_size} is odd; two workers cannot split it evenly")
    tree = make_dcase2020_tree(tmp / entry.replace(":", "-") / "data", machine_types=("fan",), machine_ids=("00",),
                               n_train=n_train, n_test_normal=1, n_test_anomaly=1, duration_s=args.duration,
                               seed=args.seed)
    specs = cls.input_specs(base)
    features = ingest(select(index(tree).table, machine_type="fan"), str(tmp / "store"), specs)
    clips = pads.dataset(features.features_path, format="parquet").to_table(columns=CLIP_COLUMNS).to_pandas()
    held = make_run_split(clips, train_validation_fraction=0.1).train_validation
    runs = {}
    for workers in (1, 2):
        cfg = {**overrides, "epochs": epochs, "batch_size": base.batch_size // workers}
        sc = Scaling(num_workers=workers, use_gpu=False, cpus_per_worker=1.0 / workers)
        log.info("%s: %d worker(s) × batch %d, %d epochs", entry, workers, cfg["batch_size"], epochs)
        load0, t0 = load(), time.perf_counter()
        res = fit(name, cfg, read_features(features, split="train"), sc, inputs=specs,
                  run_dir=tmp / f"runs-{entry.replace(':', '-')}-{workers}w", seed=args.seed, held_out=held)
        wall = time.perf_counter() - t0
        timed = res.history[1:] if len(res.history) > 1 else res.history
        seconds = sum(h["epoch_seconds"] for h in timed)
        samples = sum(h["examples"] * workers for h in timed)  # "examples" is the mean over the workers
        last = res.history[-1]
        loss_key = next(k for k in LOSS_KEYS if k in last)

        def per_epoch(key: str) -> float:
            return sum(h.get(key, 0.0) for h in timed) / len(timed)

        cpu_seconds = sum(h["cpu_seconds"] for h in timed)  # the mean worker's CPU time in its training loops
        runs[str(workers)] = {
            "workers": workers, "batch_per_worker": cfg["batch_size"], "cpus_per_worker": sc.cpus_per_worker,
            "threads_per_worker": 1, "samples_per_s": samples / seconds,
            "samples_per_worker_cpu_s": samples / cpu_seconds, "epoch_seconds": per_epoch("epoch_seconds"),
            "data_seconds": per_epoch("data_seconds"), "allreduce_seconds": per_epoch("allreduce_seconds"),
            "cpu_seconds": per_epoch("cpu_seconds"), "steps_per_epoch": last["steps"],
            "examples_per_epoch": last["examples"] * workers, "loss_key": loss_key, "final_loss": last[loss_key],
            "final_val_loss": last.get("val_loss"), "replica_max_abs_diff": last.get("replica_max_abs_diff"),
            "fit_wall_s": wall, "load_before": load0, "load_after": load(),
            "history": res.history,
        }
    one, two = runs["1"], runs["2"]
    return {
        "bound": scaling_bound(one, two),
        "method": entry, "config": overrides, "n_train_clips": n_train, "duration_s": args.duration, "epochs": epochs,
        "held_out_clips": len(held), "runs": runs, "speedup": two["samples_per_s"] / one["samples_per_s"],
        "cpu_speedup": two["samples_per_worker_cpu_s"] / one["samples_per_worker_cpu_s"],
        "loss_diff_pct": 100.0 * (two["final_loss"] - one["final_loss"]) / one["final_loss"],
        "val_loss_diff_pct": (100.0 * (two["final_val_loss"] - one["final_val_loss"]) / one["final_val_loss"]
                              if one["final_val_loss"] else None),
    }


def format_scaling(s: dict) -> str:
    head = ["workers", "batch", "threads/worker", "samples/s", "speedup", "samples per worker CPU-s", "CPU speedup",
            "epoch s", "data s", "all-reduce s", "worker CPU s", "steps/epoch", f"final {s['runs']['1']['loss_key']}",
            "final val_loss", "load 1 min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in s["runs"].items():
        speed = r["samples_per_s"] / s["runs"]["1"]["samples_per_s"]
        batch = str(r["batch_per_worker"]) if r["workers"] == 1 else f"{r['workers']}×{r['batch_per_worker']}"
        val = "–" if r["final_val_loss"] is None else f"{r['final_val_loss']:.5g}"
        cpu_speed = r["samples_per_worker_cpu_s"] / s["runs"]["1"]["samples_per_worker_cpu_s"]
        lines.append("| " + " | ".join([
            key, batch, str(r["threads_per_worker"]), f"{r['samples_per_s']:.0f}", f"{speed:.2f}×",
            f"{r['samples_per_worker_cpu_s']:.0f}", f"{cpu_speed:.2f}×",
            f"{r['epoch_seconds']:.3f}", f"{r['data_seconds']:.3f}", f"{r['allreduce_seconds']:.3f}",
            f"{r['cpu_seconds']:.3f}", f"{r['steps_per_epoch']:.0f}", f"{r['final_loss']:.5g}", val,
            f"{r['load_before']:.1f} → {r['load_after']:.1f}",
        ]) + " |")
    val = s["val_loss_diff_pct"]
    lines.append(f"\n{s['method']}, {s['n_train_clips']} clips × {s['duration_s']:g} s "
                 f"({s['held_out_clips']} held out), "
                 f"{s['epochs']} epochs, the first not timed: 2 workers = {s['speedup']:.2f}× 1 worker "
                 f"({s['cpu_speedup']:.2f}× if each worker had a core to itself); final "
                 f"training loss {s['loss_diff_pct']:+.2f} %, final val_loss "
                 + ("–" if val is None else f"{val:+.2f} %") + " (2 workers vs 1)")
    b = s.get("bound") or {}
    if b:
        lines.append(f"Bound: at most {b['speedup_bound']:.2f}× — one worker's {s['runs']['1']['epoch_seconds']:.3f} s "
                     f"epoch halved, plus {b['allreduce_calls_per_epoch']:.0f} all-reduces of "
                     f"{b['allreduce_values_per_call']:,} float32 at their floor of "
                     f"{1e3 * b['allreduce_floor_s']:.2f} ms (gloo, two bare processes of 1 thread)")
    return "\n".join(lines)


# -- 3. every method's optimizer step -----------------------------------------------------------------------------


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker: its backward hooks break ``autograd.grad`` on a leaf input
    (the WGAN-GP penalty: "A leaf node was passed to _will_engine_execute_node ..."); the totals do not need it."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` counted by ``torch.utils.flop_counter.FlopCounterMode`` (total over every op)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    with counter:
        fn()
    return int(counter.get_total_flops())


def method_config(entry: str) -> tuple[str, dict]:
    """``"aegan_ad"`` → paper defaults; ``"aegan_ad:cpu"`` → the method's CPU preset."""
    from stethoscope.presets import cpu_preset

    name, _, variant = entry.partition(":")
    if variant not in ("", "cpu"):
        raise SystemExit(f"{entry}: unknown variant {variant!r}; use NAME or NAME:cpu")
    return name, (cpu_preset(name) if variant == "cpu" else {})


def method_step(entry: str, args, bound_gflops: float) -> dict:
    import numpy as np
    import torch

    from stethoscope import methods
    from stethoscope.data.features import compute_input
    from stethoscope.data.synthetic import synthesize_clip
    from stethoscope.training.loop import seed_everything

    name, overrides = method_config(entry)
    cls = methods.get(name)
    cfg = cls.make_config(overrides)
    seed_everything(args.seed)
    method = cls(cfg)
    paper_batch = method.batch_size
    batch_size = min(paper_batch, args.batch_cap.get(name, paper_batch))
    rng = np.random.default_rng(args.seed)
    waves = [synthesize_clip("fan", "00", duration_s=args.duration, rng=rng) for _ in range(args.method_clips)]
    clips = {k: np.stack([compute_input(w, spec).numpy() for w in waves]) for k, spec in method.inputs.items()}
    ex = method.examples(clips)
    n = len(next(iter(ex.values())))
    if n < batch_size:
        raise SystemExit(f"{entry}: {n} examples from {args.method_clips} clips < batch {batch_size}; "
                         "raise --method-clips")
    method.fit_statistics([method.to_tensors(ex)])
    batches = [method.to_tensors({k: v[i * batch_size:(i + 1) * batch_size] for k, v in ex.items()})
               for i in range(min(n // batch_size, args.steps + 1))]
    method.train()
    flop = count_flops(lambda: method.training_step(batches[0]))  # also the warm-up step
    load0 = load()
    wall, cpu = 0.0, 0.0
    for i in range(args.steps):
        b = batches[(i + 1) % len(batches)]
        w, c = time.perf_counter(), time.process_time()
        method.training_step(b)
        wall += time.perf_counter() - w
        cpu += time.process_time() - c
    wall, cpu = wall / args.steps, cpu / args.steps
    return {
        "method": entry, "config": overrides, "paper_batch": paper_batch, "measured_batch": batch_size,
        "examples_per_clip": n / args.method_clips, "gflop_per_example": flop / batch_size / 1e9,
        "gflop_per_step": flop / batch_size * paper_batch / 1e9, "step_seconds": wall,
        "step_cpu_seconds": cpu, "samples_per_s": batch_size / wall, "gflops": flop / wall / 1e9,
        "gflop_per_cpu_s": flop / cpu / 1e9, "bound_fraction": flop / wall / 1e9 / bound_gflops,
        "seconds_per_paper_step": wall * paper_batch / batch_size, "load_before": load0, "load_after": load(),
    }


def format_methods(rows: list[dict]) -> str:
    head = ["method", "batch", "GFLOP/example", "GFLOP/step", "samples/s", "GFLOP/s", "% bound", "GFLOP/CPU-s",
            "s per step", "load 1 min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        batch = str(r["paper_batch"]) if r["measured_batch"] == r["paper_batch"] else \
            f"{r['paper_batch']} (measured at {r['measured_batch']})"
        lines.append("| " + " | ".join([
            r["method"], batch, f"{r['gflop_per_example']:.4g}", f"{r['gflop_per_step']:.4g}",
            f"{r['samples_per_s']:.1f}", f"{r['gflops']:.1f}", f"{100 * r['bound_fraction']:.0f} %",
            f"{r['gflop_per_cpu_s']:.1f}", f"{r['seconds_per_paper_step']:.3g}",
            f"{r['load_before']:.1f} → {r['load_after']:.1f}",
        ]) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scaling-methods", nargs="*", default=list(SCALING_RUNS), metavar="METHOD",
                   help="methods of the 1 vs 2 worker runs (NAME or NAME:cpu)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per scaling run (>= 2: the first is not timed; default: SCALING_RUNS)")
    p.add_argument("--n-train", type=int, default=None, help="synthetic training clips per scaling run")
    p.add_argument("--duration", type=float, default=10.0, help="clip length in seconds")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per method (after one warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the methods table (the bound it is "
                                                          "compared with is the matmul's on as many threads)")
    p.add_argument("--batch-cap", nargs="*", default=["aegan_ad=64"], metavar="METHOD=N",
                   help="measure METHOD's step at batch N when its batch is larger (default: aegan_ad=64; a step "
                        "held ~1.1 GB per 64 patches, ~9 GB for its 512)")
    p.add_argument("--method-clips", type=int, default=8, help="synthetic clips the methods' examples are cut from")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--skip-methods", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    if args.epochs is not None and args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is not timed)")
    try:
        args.batch_cap = {k: int(v) for k, v in (item.split("=", 1) for item in args.batch_cap)}
    except ValueError:
        p.error(f"--batch-cap {args.batch_cap}: expected METHOD=N items, e.g. aegan_ad=64")
    for entry in args.methods + args.scaling_methods:
        if entry.partition(":")[0] not in {m.partition(":")[0] for m in METHODS}:
            p.error(f"unknown method {entry!r}; choose from {list(METHODS)}")
    from stethoscope.runtime import quiet_ray_output

    quiet_ray_output()  # Ray's per-report INFO lines of every worker would bury the tables
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import torch

    cpus = os.cpu_count() or 1
    doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "cpu_count": cpus, "loadavg_at_start": os.getloadavg(), "torch": torch.__version__, "seed": args.seed}
    torch.set_num_threads(1)
    bound = {"load_before": load(), "1": matmul_bound(1), str(cpus): matmul_bound(cpus)}
    bound["load_after"] = load()
    doc["flop_bound"] = bound
    out_tables = [
        f"FLOP bound (float32 2048×2048 matmul, best of 5; load {bound['load_before']:.1f} → "
        f"{bound['load_after']:.1f}): "
        f"1 thread {bound['1']['gflops_wall']:.1f} GFLOP/s ({bound['1']['gflop_per_cpu_s']:.1f} GFLOP per CPU-s), "
        f"{cpus} threads {bound[str(cpus)]['gflops_wall']:.1f} GFLOP/s"
    ]
    if not args.skip_scaling:
        from stethoscope.runtime import init_ray

        init_ray(num_cpus=cpus)
        doc["scaling"] = []
        with tempfile.TemporaryDirectory(prefix="train_throughput-") as tmp:
            for entry in args.scaling_methods:
                doc["scaling"].append(scaling(entry, args, Path(tmp)))
        import ray

        ray.shutdown()  # no worker log lines after the tables
        out_tables += [format_scaling(s) for s in doc["scaling"]]
    if not args.skip_methods:
        key = str(args.threads)
        if key not in bound:
            bound[key] = matmul_bound(args.threads)
        torch.set_num_threads(args.threads)
        rows = []
        for entry in args.methods:
            log.info("method %s on %d thread(s)", entry, args.threads)
            rows.append({**method_step(entry, args, bound[key]["gflops_wall"]), "threads": args.threads})
        torch.set_num_threads(1)
        doc["methods"] = rows
        out_tables.append(f"Methods, one process on {args.threads} torch thread(s), no Ray:\n" + format_methods(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc["loadavg_at_end"] = os.getloadavg()
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print("\n\n".join(out_tables))
    print(f"\n{cpus} CPUs; load average (1, 5, 15 min) at start {tuple(round(x, 1) for x in doc['loadavg_at_start'])}, "
          f"at end {tuple(round(x, 1) for x in doc['loadavg_at_end'])}; JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
