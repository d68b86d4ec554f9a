"""The one generic training loop, shared by the Ray Train worker function and the in-process runner.

Nothing here imports Ray: :func:`run_epoch` and :func:`run_validation` take any iterable of example batches, so the
Ray Train worker (``stethoscope.training.trainer``) feeds them from ``get_dataset_shard(...).iter_batches``
and :func:`train_in_process` feeds them from memory (unit tests, debugging).
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from stethoscope.methods.base import COMM_STATS, Method

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one run seed."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for row in history:
        for k, v in row.items():
            sums[k] += float(v)
            counts[k] += 1
    return {k: sums[k] / counts[k] for k in sums}


def run_epoch(method: Method, batches: Iterable[dict[str, Any]], *, timings: bool = False) -> dict[str, float]:
    """One pass of ``method.training_step`` over example batches.

    Batches may hold numpy arrays or tensors; they are moved to ``method.device``.

    Returns:
        the mean of each reported loss, plus ``steps`` (batches that reported losses) and ``examples`` (examples in
        every batch, the first dimension). With ``timings`` also where the epoch's time went (the Ray Train loop
        asks for them; benchmarks/train_throughput.py reports them): ``data_seconds`` (waiting for the next batch),
        ``allreduce_seconds`` (averaging gradients over the workers,
        :func:`~stethoscope.methods.base.allreduce_gradients`), ``allreduce_calls`` and ``allreduce_values`` (how
        many all-reduces, and float32 values in all of them) and ``cpu_seconds`` (CPU time of this process, all
        its threads; well below the epoch's wall time when the worker waits for a CPU or for the other workers).
    """
    method.train()
    history = []
    examples = 0
    waited = 0.0
    comm0, cpu0 = COMM_STATS.seconds, time.process_time()
    calls0, values0 = COMM_STATS.calls, COMM_STATS.values
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        waited += time.perf_counter() - t0
        if batch is None:
            break
        tensors = method.to_tensors(batch)
        examples += _batch_len(tensors)
        history.append(method.training_step(tensors))
    out = _mean_metrics([h for h in history if h])
    out["steps"] = float(sum(1 for h in history if h))
    out["examples"] = float(examples)
    if timings:
        out["data_seconds"] = waited
        out["allreduce_seconds"] = COMM_STATS.seconds - comm0
        out["allreduce_calls"] = float(COMM_STATS.calls - calls0)
        out["allreduce_values"] = float(COMM_STATS.values - values0)
        out["cpu_seconds"] = time.process_time() - cpu0
    return out


def _batch_len(batch: dict[str, torch.Tensor]) -> int:
    """Examples in a batch: the first dimension of its first tensor (0 for an empty dict)."""
    for v in batch.values():
        return int(v.shape[0]) if v.dim() else 1
    return 0


def run_validation(method: Method, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Mean of ``method.validation_step`` over held-out example batches (no parameter changes)."""
    method.eval()
    with torch.no_grad():
        history = [method.validation_step(method.to_tensors(b)) for b in batches]
    return _mean_metrics([h for h in history if h])


def examples_of(method: Method, clip_batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate ``method.examples`` over clip batches into one in-memory example set (tests only)."""
    parts = [method.examples(c) for c in clip_batches]
    parts = [p for p in parts if p and len(next(iter(p.values()))) > 0]
    if not parts:
        raise ValueError("no training examples: every clip batch produced zero examples")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def minibatches(examples: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator | None) -> Iterator[dict]:
    """Shuffle (if ``rng``) and cut an in-memory example set into batches of ``batch_size`` (last one may be short)."""
    n = len(next(iter(examples.values())))
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield {k: v[idx] for k, v in examples.items()}


def train_in_process(
    method: Method,
    train_clips: Iterable[dict[str, np.ndarray]],
    *,
    epochs: int,
    seed: int = 0,
    val_clips: Iterable[dict[str, np.ndarray]] | None = None,
) -> list[dict[str, float]]:
    """Train ``method`` in this process, with the same semantics as the Ray Train loop.

    Args:
        train_clips / val_clips: clip batches, e.g. ``[{"log_mel": np.ndarray [B, n_mels, frames], ...}]``.
        epochs: passes over the examples; shuffled each epoch with a generator seeded from ``seed``.
    Returns:
        Per-epoch metrics (mean training losses, ``val_*`` losses when val_clips is given).
    """
    rng = np.random.default_rng(seed)
    train = examples_of(method, train_clips)
    fitted = method.fit_statistics(method.to_tensors(b) for b in minibatches(train, method.batch_size, None))
    del fitted
    val = examples_of(method, val_clips) if val_clips is not None else None
    history = []
    for epoch in range(epochs):
        row = {"epoch": float(epoch + 1), **run_epoch(method, minibatches(train, method.batch_size, rng))}
        if val is not None:
            row.update(run_validation(method, minibatches(val, method.batch_size, None)))
        log.info("epoch %d: %s", epoch + 1, row)
        history.append(row)
    return history
