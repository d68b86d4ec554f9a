"""Training and inference speed of the machine-ID classifiers (issue 13): STgram-MFN, TASTgram, FGASpecNet on the CPU.

python benchmarks/classifier_throughput.py [--methods stgram_mfn tastgram fgaspecnet] [--batch 64] [--steps 2]
                                           [--classes 41] [--infer-batch 16] [--threads 1] [--seconds 10]
                                           [--set KEY=VALUE ...] [--seed 0] [--out benchmarks/results]

One process, no Ray, ``--threads`` torch threads. For each method at its paper size (Config defaults: 10 s clips =
160,000 samples and a [128, 313] log-mel, MobileFaceNet "aithu", batch 64, ``--classes`` 41 machine IDs as DCASE 2020
dev + additional training data) it builds a model over random weights and:

- **training**: ``--steps`` calls of ``Method.training_step`` (forward, loss, backward, AdamW step: what one epoch
  repeats) on a batch of ``--batch`` seeded noise clips (waveform + the log-mel ingest computes,
  :func:`stethoscope.data.features.compute`), after one warm-up step. clips/s = batch × steps / seconds; an epoch of
  the paper's 36,283 training clips would take 36,283 / (clips/s) seconds, shown as "h per epoch" (× 300 epochs in
  the JSON). "CPU s/step" is the process's CPU time per step (with one thread: what a step costs when it has a core
  to itself, which other processes' load disturbs less than wall time);
- **inference**: ``Method.score`` (−log p of the clip's ID) on ``--infer-batch`` clips and on 1 clip, after a warm-up:
  ms per clip (the log-mel is given, as in a run; the endpoint computes it too, which is not counted here).

It prints one table with the CPU count, threads and the load average (1 min) before and after each method, and
writes ``<out>/classifier_throughput-<YYYYmmdd-HHMMSS>.json`` (git-ignored) with every number and the command.
Numbers depend on the machine and its load: never compare runs made under different loads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "platform") not in sys.path:
    sys.path.insert(0, str(ROOT / "platform"))

METHODS = ("stgram_mfn", "tastgram", "fgaspecnet")
#: Normal training clips of DCASE 2020 Task 2 dev + additional training sets (issue 13: "36,283 normal clips").
PAPER_TRAIN_CLIPS = 36283
PAPER_EPOCHS = 300


def load() -> float:
    return os.getloadavg()[0]


def clips(n: int, method, seed: int) -> dict:
    """``n`` seeded noise clips as one batch of ``method``'s inputs ([n, samples], [n, mels, frames]) and IDs."""
    import numpy as np
    import torch

    from stethoscope.data.features import FeatureSpec, compute

    rng = np.random.default_rng(seed)
    c = method.config
    wav = torch.from_numpy((0.1 * rng.standard_normal((n, c.n_samples))).astype(np.float32))
    batch = {"group": torch.from_numpy(rng.integers(0, method.net.num_classes, n))}
    for name, spec in method.inputs.items():
        batch[name] = compute(wav, spec) if isinstance(spec, FeatureSpec) else wav
    return batch


def measure(name: str, args) -> dict:
    import numpy as np
    import torch

    from stethoscope import methods
    from stethoscope.config import parse_scalar
    from stethoscope.data.labels import Vocab
    from stethoscope.nn.classifiers import count_parameters

    cls = methods.get(name)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = cls.make_config({**{k: parse_scalar(v) for k, v in overrides.items()}, "batch_size": args.batch})
    vocab = Vocab(machine_type=["m"], group=[f"m/id_{i:02d}" for i in range(args.classes)])
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    method = cls(cfg, vocab=vocab)
    load0 = load()
    batch = clips(args.batch, method, args.seed)
    method.training_step(batch)  # warm-up (allocations, oneDNN kernels)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        method.training_step(batch)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    clips_per_s = args.batch * args.steps / train_s
    infer = {}
    for b in (args.infer_batch, 1):
        small = {k: v[:b] for k, v in batch.items()}
        method.score(small)  # warm-up
        reps = max(1, 32 // b)
        t0 = time.perf_counter()
        for _ in range(reps):
            method.score(small)
        infer[b] = (time.perf_counter() - t0) / (reps * b) * 1e3
    return {
        "method": name, "parameters": count_parameters(method.net), "batch": args.batch, "steps": args.steps,
        "train_seconds": train_s, "train_cpu_seconds": train_cpu, "train_clips_per_s": clips_per_s,
        "s_per_step": train_s / args.steps, "cpu_s_per_step": train_cpu / args.steps,
        "train_clips_per_cpu_s": args.batch * args.steps / train_cpu,
        "paper_epoch_hours": PAPER_TRAIN_CLIPS / clips_per_s / 3600,
        "paper_training_days": PAPER_TRAIN_CLIPS * PAPER_EPOCHS / clips_per_s / 86400,
        "infer_ms_per_clip": {str(b): ms for b, ms in infer.items()},
        "load_before": load0, "load_after": load(), "config": {k: v for k, v in overrides.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--batch", type=int, default=64, help="training batch (paper: 64)")
    p.add_argument("--steps", type=int, default=2, help="timed training steps after one warm-up step")
    p.add_argument("--classes", type=int, default=41, help="machine IDs (DCASE 2020: 41)")
    p.add_argument("--infer-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Config overrides (e.g. n_samples=16000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = [measure(m, args) for m in args.methods]
    head = (f"{'method':<12} {'params':>9} {'train clips/s':>13} {'s/step':>7} {'CPU s/step':>10} {'h/epoch*':>9} "
            f"{'ms/clip b' + str(args.infer_batch):>12} {'ms/clip b1':>11} {'load':>11}")
    print(f"CPUs {os.cpu_count()}, torch threads {args.threads}, batch {args.batch}, {args.steps} timed steps, "
          f"{args.classes} classes" + (f", overrides {' '.join(args.set)}" if args.set else ""))
    print(head)
    print("-" * len(head))
    for r in rows:
        ms = r["infer_ms_per_clip"]
        print(f"{r['method']:<12} {r['parameters']:>9,} {r['train_clips_per_s']:>13.2f} {r['s_per_step']:>7.2f} "
              f"{r['cpu_s_per_step']:>10.2f} "
              f"{r['paper_epoch_hours']:>9.2f} {ms[str(args.infer_batch)]:>12.1f} {ms['1']:>11.1f} "
              f"{r['load_before']:>5.2f}→{r['load_after']:<5.2f}")
    print(f"* an epoch of the paper's {PAPER_TRAIN_CLIPS:,} training clips at this speed ({PAPER_EPOCHS} epochs: "
          f"the JSON's paper_training_days)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"classifier_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"command": sys.argv, "cpus": os.cpu_count(), "threads": args.threads,
                                "rows": rows}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
