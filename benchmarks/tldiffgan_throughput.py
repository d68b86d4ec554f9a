"""Training and scoring speed of TLDiffGAN (issue 14) on the CPU, with and without the waveform branch, in one run.

python benchmarks/tldiffgan_throughput.py [--sizes paper cpu] [--batch 16] [--steps 2] [--infer-batch 8]
                                          [--encoder aisfx] [--encoder-path PATH] [--threads 1] [--seed 0]
                                          [--out benchmarks/results]

One process, no Ray, ``--threads`` torch threads, 10 s clips (160,000 samples at 16 kHz → a 128 × 313 log-mel). For
each size — ``paper`` (the Config defaults: 128 × 313, latent 128, widths 32-256, T = 1000, s = 200) and ``cpu``
(``presets/cpu/tldiffgan.yaml``: half widths, T = 200, s = 40) — it builds a model over random weights and measures:

- **training**: ``--steps`` calls of ``Method.training_step`` (one critic step and one generator step: TMixup, the
  4-step training chain D judges, L_noise, L_stat, L_rec, two Adam steps) on ``--batch`` seeded noise clips, after
  one warm-up step: clips/s, and the hours one epoch of 8,000 clips would take (our estimate of one DCASE 2020
  machine type's dev + additional training clips; the paper trains one model per machine type, 150 epochs; the JSON
  keeps clips/s, so scale it to your set). The waveform branch is not
  used in training, so there is one training number per size;
- **scoring**, ms per clip on batches of ``--infer-batch`` after a warm-up: the reconstruction score s_r (Eq. 5:
  encode, noise to s, s reverse steps, decode, re-encode), and the embedding Z for the detector stage without the
  waveform branch (Z_mel) and with it (Z_mel ⊕ Z_wave from the frozen ``--encoder``, default aisfx: its weights ship
  in the wheel; resampling 16 → 44.1 kHz included). A clip the detector stage scores costs the embedding plus the
  detector (microseconds).

It prints one table with the CPU count, threads and the load average (1 min) before and after each size, and writes
``<out>/tldiffgan_throughput-<YYYYmmdd-HHMMSS>.json`` (git-ignored) with every number and the command. Numbers depend
on the machine and its load: never compare runs made under different loads.
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

SIZES = ("paper", "cpu")
#: Our estimate of one machine type's training clips in DCASE 2020 (dev + additional training sets, ToyCar).
EPOCH_CLIPS = 8000


def load() -> float:
    return os.getloadavg()[0]


def _config(size: str, encoder: str, encoder_path: str | None, batch: int) -> dict:
    from stethoscope.presets import cpu_preset

    base = {} if size == "paper" else dict(cpu_preset("tldiffgan"))
    return {**base, "batch_size": batch, "encoder": encoder, "encoder_path": encoder_path}


def _timed(fn, batch: dict, n_clips: int, reps: int) -> float:
    """ms per clip of ``fn(batch)`` over ``reps`` calls after one warm-up call."""
    fn(batch)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(batch)
    return (time.perf_counter() - t0) / (reps * n_clips) * 1e3


def measure(size: str, args) -> dict:
    import numpy as np
    import torch

    from stethoscope import methods
    from stethoscope.data.features import compute

    cls = methods.get("tldiffgan")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    load0 = load()
    with_branch = cls(cls.make_config(_config(size, args.encoder, args.encoder_path, args.batch)))
    without = cls(cls.make_config(_config(size, "none", None, args.batch)))
    rng = np.random.default_rng(args.seed)
    n = max(args.batch, args.infer_batch)
    wav = torch.from_numpy((0.1 * rng.standard_normal((n, 160000))).astype(np.float32))
    log_mel = compute(wav, with_branch.inputs["log_mel"]).numpy()
    for m in (with_branch, without):
        ex = m.examples({"log_mel": log_mel})
        m.fit_statistics([{"x": torch.from_numpy(ex["x"])}])
    x = torch.from_numpy(without.examples({"log_mel": log_mel[:args.batch]})["x"])
    without.training_step({"x": x})  # warm-up (allocations, oneDNN kernels)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        without.training_step({"x": x})
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    clips_per_s = args.batch * args.steps / train_s
    b = args.infer_batch
    scoring = {"log_mel": log_mel[:b], "waveform": wav[:b].numpy()}
    with_branch.load_state_dict(without.state_dict() | {"extra": with_branch.extra_state()})
    with_branch.encoder  # load the frozen encoder outside the timing (once per process / replica)
    result = {
        "size": size, "batch": args.batch, "steps": args.steps, "infer_batch": b,
        "parameters": sum(p.numel() for p in without.model.parameters()),
        "train_seconds": train_s, "train_cpu_seconds": train_cpu, "train_clips_per_s": clips_per_s,
        "cpu_s_per_step": train_cpu / args.steps, "epoch_hours": EPOCH_CLIPS / clips_per_s / 3600,
        "score_ms_per_clip": _timed(without.score, scoring, b, args.reps),
        "embed_ms_per_clip": _timed(without.embed, scoring, b, args.reps),
        "embed_branch_ms_per_clip": _timed(with_branch.embed, scoring, b, args.reps),
        "encoder": with_branch.encoder_ref.to_dict(), "reverse_steps": without.config.start_step,
        "load_before": load0, "load_after": load(),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    p.add_argument("--batch", type=int, default=16, help="training batch (paper: 512; smaller to keep the run short)")
    p.add_argument("--steps", type=int, default=2, help="timed training steps after one warm-up step")
    p.add_argument("--infer-batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=2, help="timed scoring calls after one warm-up call")
    p.add_argument("--encoder", default="aisfx", help="the waveform branch's encoder (registry name)")
    p.add_argument("--encoder-path", default=None, help="its local weights (aisfx: none needed)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = [measure(s, args) for s in args.sizes]
    head = (f"{'size':<6} {'params':>10} {'train clips/s':>13} {'CPU s/step':>10} {'h/epoch*':>9} "
            f"{'s_r ms/clip':>11} {'Z_mel ms/clip':>13} {'Z_mel+Z_wave ms/clip':>20} {'load':>11}")
    print(f"CPUs {os.cpu_count()}, torch threads {args.threads}, training batch {args.batch}, {args.steps} timed "
          f"steps, scoring batch {args.infer_batch}, 10 s clips, waveform encoder {args.encoder}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['size']:<6} {r['parameters']:>10,} {r['train_clips_per_s']:>13.2f} {r['cpu_s_per_step']:>10.2f} "
              f"{r['epoch_hours']:>9.2f} {r['score_ms_per_clip']:>11.1f} {r['embed_ms_per_clip']:>13.1f} "
              f"{r['embed_branch_ms_per_clip']:>20.1f} {r['load_before']:>5.2f}→{r['load_after']:<5.2f}")
    print(f"* one epoch of {EPOCH_CLIPS:,} training clips (our estimate of one DCASE 2020 machine type, dev + "
          "additional training sets) at this speed; the paper trains 150 epochs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tldiffgan_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"command": sys.argv, "cpus": os.cpu_count(), "threads": args.threads,
                                "rows": rows}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
