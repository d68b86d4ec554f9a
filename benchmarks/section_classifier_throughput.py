"""Training and inference speed of AITHU's SC section classifier (issue 15) per backbone on the CPU.

python benchmarks/section_classifier_throughput.py [--backbones mobilefacenet mfnse ecapa_tdnn cnn6]
                                                   [--feature stft|log_mel] [--batch 32] [--steps 2]
                                                   [--sections 3] [--infer-batch 4] [--threads 1] [--seconds 10]
                                                   [--set KEY=VALUE ...] [--seed 0] [--out benchmarks/results]

One process, no Ray, ``--threads`` torch threads. For each backbone of :data:`stethoscope.nn.backbones.BACKBONES` it
builds ``methods.get("sc")`` at the report's input (Config defaults: ``feature`` "stft" = |STFT|, n_fft 2048 → 1025
bins, or ``--feature log_mel`` → 64 mels; hop 512, crops of ``n_frames`` 192 frames every ``crop_hop`` 64 frames plus
one aligned to the clip's end; batch 32) over random weights, with a Vocab of ``--sections`` sections of one machine
type (the classes of one per-machine-type model), and seeded random spectrograms of ``--seconds`` clips (10 s at
16 kHz, hop 512 → 313 frames → crops at frames 0, 64 and 121: 3 crops per clip), turned into examples with
``method.examples`` (one example = one crop, labelled with its clip's section). Then:

- **training**: ``--steps`` calls of ``Method.training_step`` (forward, ArcFace loss, backward, AdamW step: what an
  epoch repeats) on one batch of ``--batch`` examples, after one warm-up step. What is counted: a step trains on
  ``--batch`` **examples (crops)**, not clips; "ex/s" = batch × steps / seconds, and "clips/s" = ex/s ÷ crops per clip
  (3 at 313 frames), i.e. 10 s clips whose every crop was trained on once, which is what an epoch does (the Train
  loop iterates over every crop of every training clip, ``training.loop.minibatches``). "h/epoch" = the crops of
  :data:`DCASE2022_TRAIN_CLIPS` clips / (ex/s) in hours (× 25 epochs, the report's, in the JSON). "CPU s/step" is
  the process's CPU time per step (with one thread: what a step costs when it has a core to itself, which other
  processes' load disturbs less than wall time). Spectrogram computation (ingest) is not counted;
- **inference**: ``Method.embed`` (the clip embedding: the mean over the clip's crops, what the detector stage
  scores) on ``--infer-batch`` clips and on 1 clip, after a warm-up: ms per **clip** (all its crops, cropping
  included; the spectrogram is given, as in a run).

It prints one table with the CPU count, threads and the load average (1 min) before and after each backbone, and
writes ``<out>/section_classifier_throughput-<YYYYmmdd-HHMMSS>.json`` (git-ignored) with every number and the
command. Numbers depend on the machine and its load: never compare runs made under different loads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "platform") not in sys.path:
    sys.path.insert(0, str(ROOT / "platform"))

BACKBONES = ("mobilefacenet", "mfnse", "ecapa_tdnn", "cnn6")  # stethoscope.nn.backbones.BACKBONES (checked in main)
FEATURES = ("stft", "log_mel")
#: Normal training clips of ONE machine type in the DCASE 2022 Task 2 development set: 3 sections × (990 source +
#: 10 target) = 3 × 1000 = 3000 clips. Our count, from the dev set's layout (the report does not state it); the
#: additional training set (sections 03–05) would add as many again, for a model of all six sections.
DCASE2022_TRAIN_CLIPS = 3000
#: AITHU 2022 §3.1.1 (issue 15): 25 epochs.
REPORT_EPOCHS = 25
SAMPLE_RATE = 16000


def load() -> float:
    return os.getloadavg()[0]


def clips(n: int, method, frames: int, sections: int, seed: int) -> dict:
    """``n`` seeded random spectrograms [n, F, frames] of ``method``'s input (|STFT| ≥ 0, or dB), their sections."""
    import numpy as np

    rng = np.random.default_rng(seed)
    spec = method.inputs["spectrogram"]
    shape = (n, spec.n_bins, frames)
    if spec.kind == "stft":
        x = np.abs(rng.standard_normal(shape))  # a magnitude: non-negative
    else:
        x = -40.0 + 10.0 * rng.standard_normal(shape)  # dB-like
    return {"spectrogram": x.astype(np.float32), "group": rng.integers(0, sections, n).astype(np.int64)}


def measure(backbone: str, args) -> dict:
    import numpy as np
    import torch

    from stethoscope import methods
    from stethoscope.config import parse_scalar
    from stethoscope.data.labels import Vocab
    from stethoscope.methods.base import crop_starts
    from stethoscope.nn.classifiers import count_parameters

    cls = methods.get("sc")
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = cls.make_config({**{k: parse_scalar(v) for k, v in overrides.items()}, "feature": args.feature,
                           "backbone": backbone, "batch_size": args.batch})
    vocab = Vocab(machine_type=["fan"], group=[f"fan/section_{i:02d}" for i in range(args.sections)])
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    method = cls(cfg, vocab=vocab)
    spec = method.inputs["spectrogram"]
    frames = spec.num_frames(int(args.seconds * spec.sample_rate))
    crops_per_clip = len(crop_starts(frames, cfg.n_frames, cfg.crop_hop))
    load0 = load()
    n_clips = max(math.ceil(args.batch / crops_per_clip), args.infer_batch)
    data = clips(n_clips, method, frames, args.sections, args.seed)
    ex = method.examples(data)
    batch = {k: torch.from_numpy(v[:args.batch]) for k, v in ex.items()}
    method.training_step(batch)  # warm-up (allocations, oneDNN kernels)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        method.training_step(batch)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    examples_per_s = args.batch * args.steps / train_s
    clips_per_s = examples_per_s / crops_per_clip
    epoch_s = DCASE2022_TRAIN_CLIPS / clips_per_s
    infer = {}
    for b in (args.infer_batch, 1):
        small = {"spectrogram": data["spectrogram"][:b]}
        method.embed(small)  # warm-up
        reps = max(1, args.infer_batch // b)
        t0 = time.perf_counter()
        for _ in range(reps):
            method.embed(small)
        infer[b] = (time.perf_counter() - t0) / (reps * b) * 1e3
    return {
        "backbone": backbone, "feature": args.feature, "input": [spec.n_bins, cfg.n_frames],
        "clip_frames": frames, "crops_per_clip": crops_per_clip, "sections": args.sections,
        "parameters": sum(p.numel() for g in method.optimizer.param_groups for p in g["params"]),  # all it trains
        "backbone_parameters": count_parameters(method.backbone),
        "embedding_dim": method.backbone.config.embedding_dim,
        "batch_examples": args.batch, "steps": args.steps,
        "train_seconds": train_s, "train_cpu_seconds": train_cpu,
        "train_examples_per_s": examples_per_s, "train_clips_per_s": clips_per_s,
        "s_per_step": train_s / args.steps, "cpu_s_per_step": train_cpu / args.steps,
        "train_clips_per_cpu_s": args.batch * args.steps / train_cpu / crops_per_clip,
        "dcase2022_train_clips": DCASE2022_TRAIN_CLIPS, "dcase2022_epoch_hours": epoch_s / 3600,
        "report_epochs": REPORT_EPOCHS, "report_training_hours": epoch_s * REPORT_EPOCHS / 3600,
        "infer_ms_per_clip": {str(b): ms for b, ms in infer.items()},
        "load_before": load0, "load_after": load(), "config": {k: v for k, v in overrides.items()},
    }


def main(argv: list[str] | None = None) -> int:
    from stethoscope.nn.backbones import BACKBONES as REGISTERED

    assert tuple(REGISTERED) == BACKBONES, f"backbones changed: {REGISTERED}"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--feature", default="stft", choices=FEATURES, help="stft: |STFT| 1025 bins (default); log_mel: 64")
    p.add_argument("--batch", type=int, default=32, help="training batch in examples = crops (Config default: 32)")
    p.add_argument("--steps", type=int, default=2, help="timed training steps after one warm-up step")
    p.add_argument("--sections", type=int, default=3, help="classes: sections of one machine type (DCASE 2022: 3)")
    p.add_argument("--infer-batch", type=int, default=4, help="clips per Method.embed call (besides 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (DCASE 2022: 10 s at 16 kHz)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Config overrides (e.g. crop_hop=192)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = [measure(b, args) for b in args.backbones]
    r0 = rows[0]
    head = (f"{'backbone':<13} {'params':>10} {'ex/s':>7} {'clips/s':>8} {'s/step':>7} {'CPU s/step':>10} "
            f"{'h/epoch*':>9} {'ms/clip b' + str(args.infer_batch):>11} {'ms/clip b1':>11} {'load':>11}")
    print(f"CPUs {os.cpu_count()}, torch threads {args.threads}, feature {args.feature} {r0['input'][0]}×"
          f"{r0['input'][1]} crops, batch {args.batch} crops, {args.steps} timed steps, {args.sections} sections, "
          f"{args.seconds:g} s clips = {r0['clip_frames']} frames = {r0['crops_per_clip']} crops"
          + (f", overrides {' '.join(args.set)}" if args.set else ""))
    print(head)
    print("-" * len(head))
    for r in rows:
        ms = r["infer_ms_per_clip"]
        print(f"{r['backbone']:<13} {r['parameters']:>10,} {r['train_examples_per_s']:>7.2f} "
              f"{r['train_clips_per_s']:>8.2f} {r['s_per_step']:>7.2f} {r['cpu_s_per_step']:>10.2f} "
              f"{r['dcase2022_epoch_hours']:>9.2f} {ms[str(args.infer_batch)]:>11.1f} {ms['1']:>11.1f} "
              f"{r['load_before']:>5.2f}→{r['load_after']:<5.2f}")
    print(f"ex = one training example (a crop); clips/s = ex/s ÷ {r0['crops_per_clip']} crops per clip. "
          f"* an epoch of {DCASE2022_TRAIN_CLIPS:,} training clips (DCASE 2022 dev, one machine type: 3 sections × "
          f"1000) at this speed ({REPORT_EPOCHS} epochs: the JSON's report_training_hours)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"section_classifier_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"command": sys.argv, "cpus": os.cpu_count(), "threads": args.threads,
                                "feature": args.feature, "rows": rows}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
