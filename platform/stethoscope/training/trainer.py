"""Ray Train glue (DESIGN.md step 3): one generic TorchTrainer loop for every Method.

``fit(method_name, config, dataset, scaling, held_out=...)``:
- holds out the training clips the run's split names (``RunSplit.train_validation``, stethoscope.splits: whole clips,
  so overlapping frame vectors never leak) for the validation loss; fit draws no split of its own,
- turns clips into the method's examples with Ray Data ``map_batches`` (``Method.examples``),
- runs :func:`_worker_loop` on ``num_workers`` Ray Train workers, each on ``int(cpus_per_worker)`` torch threads
  (at least 1). Each reads the examples with ``get_dataset_shard``. One worker iterates them with Ray Data's
  local shuffle (``local_shuffle_seed = seed + epoch``). Several workers: materialized examples (the default) are
  not split by Ray; each rank reads them once and holds every world-th example in memory (:class:`RankCache`,
  when its share fits ``CACHE_SHARE_BYTES``), then shuffles its share every epoch, so no Ray Data iterator and no
  split coordinator runs per epoch; a larger share is streamed every epoch: every rank reads the same global
  batches of ``num_workers · batch_size`` and keeps its rows (:func:`rank_rows`); unmaterialized examples are
  split with ``streaming_split``. With several workers every rank takes the same number of batches, so the
  ranks step in lockstep (every example each epoch, the last batch as short on every rank; a last batch of one
  example per rank is left out on every path, for BatchNorm); gradients are averaged by one flat all-reduce per
  optimizer step (``Method.optimize``);
- reports per epoch the mean losses, ``steps``, ``examples`` (per worker), where the epoch's time went
  (``data_seconds``, ``train_seconds``, ``val_seconds``, ``allreduce_seconds`` / ``_calls`` / ``_values``,
  ``cpu_seconds``, ``epoch_seconds``; see
  :func:`stethoscope.training.loop.run_epoch`) and, with several workers, ``replica_max_abs_diff``, the largest
  difference between the workers' copies of any parameter (0 when the gradient all-reduce keeps the replicas
  identical),
- reports metrics and saves a checkpoint every epoch (Method state + config + FeatureSpec + seed + history),
- resumes from the latest checkpoint of the same run folder when ``resume=True``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from stethoscope import checkpoint as ckpt_io
from stethoscope import methods
from stethoscope.data.features import FeatureSpec, InputSpec, WaveformSpec, input_spec_from_dict, input_spec_to_dict
from stethoscope.data.ingest import input_column, named_inputs
from stethoscope.data.labels import Vocab
from stethoscope.errors import ConfigError, DataError, StethoscopeError

log = logging.getLogger(__name__)

#: Ray Train V2's controller drains each worker's one-slot result queue once per health-check interval
#: (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default), so every ``ray.train.report`` after the first waited up to
#: 2 s: on short epochs (tuning trials, small machines, the tests) most of a run was that wait (measured: 20 epochs
#: of 0.2 s took 40 s). :func:`fit` sets this interval unless the user has set the variable; the controller passes it
#: on to its workers (Ray Train propagates it from the process that builds the trainer).
REPORT_POLL_S = 0.2


@dataclass
class Scaling:
    """Ray Train resources. ``use_gpu=None`` auto-detects (GPU if the cluster has one).

    cpus_per_worker may be fractional (e.g. 0.5) so that Tune trials with several workers never deadlock on a
    small machine. Each worker runs ``max(1, int(cpus_per_worker))`` torch threads: the CPUs Ray reserved for it,
    so workers never oversubscribe the node. On a CPU machine one worker with the default 1 CPU uses one core;
    ``Scaling(1, cpus_per_worker=N)`` reserves and uses N (e.g. all of a 2-core machine's).
    With ``use_gpu`` each worker gets one GPU.
    """

    num_workers: int = 1
    use_gpu: bool | None = None
    cpus_per_worker: float = 1.0
    #: torch.autocast (float16) + GradScaler in training steps; only takes effect on GPU workers.
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"num_workers = {self.num_workers}; expected >= 1")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"cpus_per_worker = {self.cpus_per_worker}; expected > 0")


@dataclass
class FitResult:
    """``checkpoint_path``: latest checkpoint folder; ``history``: per-epoch metrics; ``method``: loaded on the driver."""

    checkpoint_path: str
    run_dir: str
    history: list[dict[str, float]]
    method: methods.Method
    meta: dict[str, Any] = field(default_factory=dict)


def clips_dict(ds) -> dict:
    """A (small) Ray Dataset of clips, or the :class:`~stethoscope.data.ingest.LocalFeatures` of a small store
    (read in this process: no Ray Data job) → one numpy column dict, tensor columns as object arrays of per-clip
    arrays (what :func:`stethoscope.scoring.clip_batches` reads). Used for the per-epoch validation clips."""
    if hasattr(ds, "to_pandas"):
        frame = ds.to_pandas()
        columns = {k: frame[k].to_numpy() for k in frame.columns}
    else:  # LocalFeatures: its numpy batches, joined
        batches = list(ds.iter_batches(batch_size=1 << 30, batch_format="numpy"))
        columns = {k: np.concatenate([b[k] for b in batches]) for k in (batches[0] if batches else {})}
    out = {}
    for k, col in columns.items():
        if len(col) and (col.ndim > 1 or isinstance(col[0], np.ndarray)):
            arr = np.empty(len(col), dtype=object)
            for i, v in enumerate(col):
                arr[i] = np.asarray(v)
            out[k] = arr
        else:
            out[k] = col
    return out


#: Metadata columns the training loop reads besides the inputs (labels are encoded from these).
META_COLUMNS = ["path", "machine_type", "machine_id", "section", "domain", "attributes"]


def build_method(name: str, config: dict, inputs: dict, vocab: dict) -> methods.Method:
    """A fresh Method from JSON-able parts (config overrides, ``{name: input spec dict}``, vocab dict)."""
    cls = methods.get(name)
    return cls(cls.make_config(config), {k: input_spec_from_dict(v) for k, v in inputs.items()}, Vocab.from_dict(vocab))


def _examples_fn(batch: dict, method_name: str, config: dict, inputs: dict, vocab: dict):
    """Ray Data map_batches body: clip batch (store columns) → the method's example batch (numpy)."""
    from stethoscope.scoring import encode_labels

    method = _cached_method(method_name, json.dumps(config, sort_keys=True), json.dumps(inputs, sort_keys=True),
                            json.dumps(vocab, sort_keys=True))
    clips = dict(named_inputs(batch, method.inputs))
    clips.update(encode_labels(method, batch, unknown="error"))
    return method.examples(clips)


_METHOD_CACHE: dict[tuple, methods.Method] = {}


def _cached_method(name: str, config_json: str, inputs_json: str, vocab_json: str) -> methods.Method:
    key = (name, config_json, inputs_json, vocab_json)
    if key not in _METHOD_CACHE:
        import torch

        torch.set_num_threads(1)
        _METHOD_CACHE[key] = build_method(name, json.loads(config_json), json.loads(inputs_json),
                                          json.loads(vocab_json))
    return _METHOD_CACHE[key]


def _allreduce_mean(values: dict[str, float]) -> dict[str, float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def worker_placement(rank: int) -> list[dict[str, Any]]:
    """Where each Ray Train worker runs: ``[{"rank", "node_id", "hostname", "pid"}]`` for every rank, gathered over
    the ``torch.distributed`` group (one entry with one worker). Recorded in the checkpoint's meta (``workers``) so a
    run's report shows which node each worker ran on (a 2-worker run on a 2-node cluster: two node IDs) and which
    process to look at."""
    import socket

    import ray
    import torch.distributed as dist

    mine = {"rank": int(rank), "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "pid": os.getpid()}
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return sorted(every, key=lambda w: w["rank"])


def replica_divergence(method) -> float:
    """Largest absolute difference between the workers' copies of any parameter of ``method`` (float64), 0.0 when
    ``torch.distributed`` is not initialised or has one worker. Collective: every worker must call it."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0.0
    params = [p.detach().reshape(-1).double() for m in method.modules().values() for p in m.parameters()]
    if not params:
        return 0.0
    device = method.device if dist.get_backend() == "nccl" else torch.device("cpu")
    hi = torch.cat(params).to(device)
    lo = hi.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).abs().max())


def rank_rows(batches: Iterable[dict[str, np.ndarray]], rank: int, world: int, per_rank: int, *,
              balance: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """DistributedSampler-style sharding of global batches: rows ``[rank·per_rank, (rank+1)·per_rank)`` of each
    full batch (numpy arrays sharing their first dimension, ``world · per_rank`` rows).

    Every rank reads the same global batches, so the ``world`` ranks together take exactly the examples, in the
    order, of one worker with batch ``world · per_rank``. A short (last) batch of m rows is dealt round-robin (rank
    r takes rows r, r + world, ...), so the ranks' parts differ by at most one row. With ``balance`` (training) a
    part one row short repeats its own first row, so every rank takes a batch of ceil(m / world) rows and the
    all-reduces pair up; when that is a single row, the batch is left out on every rank (BatchNorm cannot train on
    one example, and with fewer rows than ranks some rank would have none to step on). Without ``balance`` (a
    statistics pass) every rank takes its rows once and nothing is repeated.
    """
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    for batch in batches:
        n = len(next(iter(batch.values()))) if batch else 0
        if n >= world * per_rank:
            yield {k: v[lo:hi] for k, v in batch.items()}
            continue
        size = -(-n // world)
        if n == 0 or (balance and size == 1 and world > 1):
            continue
        part = {k: v[rank::world] for k, v in batch.items()}
        short = size - len(next(iter(part.values())))
        if balance and short:
            part = {k: np.concatenate([v, v[:short]]) for k, v in part.items()}
        if len(next(iter(part.values()))):
            yield part


def without_single_tail(batches: Iterable[dict[str, np.ndarray]],
                        batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """``batches`` less a partial last batch of ONE example (``batch_size`` > 1) after at least one other batch
    (BatchNorm cannot train on one example; every rank of a ``streaming_split(equal=True)`` shard sees the same
    sizes, so all ranks leave it out). With ``batch_size`` 1 every batch is kept."""
    previous, count = None, 0
    for batch in batches:
        if previous is not None:
            yield previous
        previous, count = batch, count + 1
    if previous is not None:
        n = len(next(iter(previous.values()))) if previous else 0
        if n != 1 or count == 1 or batch_size == 1:
            yield previous


class RankCache:
    """This rank's share of the (materialized) training examples, held in the worker's memory.

    :meth:`read` makes one pass over the examples in order, in global batches of ``world · batch_size``, and keeps
    every ``world``-th row from row ``rank`` on (strided, so the shares differ by at most one example and together
    hold every example once). A share one example short of the largest repeats its first example, so every share
    has the same length and every rank takes the same ``steps`` = ceil(share / batch_size) batches per epoch, the
    last one as short on every rank as on the others (the all-reduces pair up, and the mean of the ranks' gradients
    is the gradient of the global batch). Together the ranks take what one worker with batch ``world · batch_size``
    takes: the same number of steps, every example each epoch, the last batch partial (plus at most ``world - 1``
    repeated examples; a last batch of one example per rank is left out). Each epoch, :meth:`batches` yields the share in batches of ``batch_size``: in a new random
    order (a full shuffle of the share, seeded by the caller) or in order.

    Why: with several workers on a small machine every rank otherwise reshuffles and converts every example of
    the epoch in Ray Data's iterator and keeps 1/world of them, a per-step cost that does not shrink with more
    workers (benchmarks/train_throughput.py). Used when a share fits ``CACHE_SHARE_BYTES``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], steps: int, real: int | None = None):
        self.arrays = arrays
        self.steps = steps
        #: examples of the share before padding (the statistics pass and in-order iteration see only these)
        self.real = len(self) if real is None else real

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    @classmethod
    def read(cls, shard, rank: int, world: int, batch_size: int, device) -> "RankCache":
        """Read this rank's share from ``shard`` (a Ray DataIterator over every example); a collective: every
        rank calls it (the largest and the smallest share are all-reduced), then :meth:`balanced`.

        Raises:
            DataError: fewer examples than workers (some rank's share would be empty; raised on every rank).
        """
        import torch
        import torch.distributed as dist

        arrays = cls.share(shard, rank, world, batch_size)
        n = len(next(iter(arrays.values()))) if arrays else 0
        sizes = torch.tensor([n, -n], dtype=torch.int64)  # one MAX all-reduce gives the largest and the smallest
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sizes = sizes.to(device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
        return cls.balanced(arrays, int(sizes[0].item()), -int(sizes[1].item()), batch_size, rank, world)

    @staticmethod
    def share(shard, rank: int, world: int, batch_size: int) -> dict[str, np.ndarray]:
        """Rows ``rank, rank + world, ...`` of every column of ``shard``, read in one pass in batches of
        ``world · batch_size`` (owned, writable copies)."""
        parts: dict[str, list[np.ndarray]] = {}
        for batch in shard.iter_batches(batch_size=batch_size * world, batch_format="numpy"):
            for k, v in batch.items():
                parts.setdefault(k, []).append(np.asarray(v)[rank::world])
        return {k: np.concatenate(v) for k, v in parts.items()}

    @classmethod
    def balanced(cls, arrays: dict[str, np.ndarray], largest: int, smallest: int, batch_size: int, rank: int,
                 world: int) -> "RankCache":
        """The rank's cache from its :meth:`share` and the largest / smallest share of all ranks: padded to
        ``largest`` with its own first examples, ``steps`` = ceil(largest / batch_size), less a last batch of one.

        Raises:
            DataError: ``smallest`` is 0 while some rank holds examples (fewer examples than workers).
        """
        n = len(next(iter(arrays.values()))) if arrays else 0
        if smallest == 0 and largest > 0:
            raise DataError(f"{world} workers share fewer training examples than workers (rank {rank} holds {n}): "
                            "use fewer workers (--num-workers) or more training clips")
        if n < largest:  # strided shares differ by at most one: repeat the share's first example(s)
            arrays = {k: np.concatenate([v, v[: largest - n]]) for k, v in arrays.items()}
        steps = -(-largest // batch_size)
        if steps > 1 and largest % batch_size == 1:
            steps -= 1  # a last batch of ONE example per rank is left out: BatchNorm cannot train on one example
        return cls(arrays, steps, real=n)

    def batches(self, batch_size: int, rng: np.random.Generator | None,
                steps: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """``steps`` batches of ``batch_size`` examples of the (padded) share, the last one possibly short, in the
        order of ``rng.permutation`` (None: in order). ``steps`` None: the share's own examples once (the padding
        left out), in batches of ``batch_size``."""
        n = len(self) if steps is not None else self.real
        order = rng.permutation(n) if rng is not None else None
        count = -(-n // batch_size) if steps is None else steps
        for i in range(count):
            lo, hi = i * batch_size, min((i + 1) * batch_size, n)
            if order is None:
                yield {k: v[lo:hi] for k, v in self.arrays.items()}
            else:
                idx = order[lo:hi]
                yield {k: v[idx] for k, v in self.arrays.items()}


#: Largest share of the training examples (bytes) a worker holds in memory (:class:`RankCache`; ours: 1 GiB, well
#: under a worker's memory on the machines we target). Larger sets stream from the object store every epoch.
CACHE_SHARE_BYTES = 1 << 30


def _worker_loop(cfg: dict) -> None:
    """Runs on every Ray Train worker: the one generic loop for every Method."""
    import ray.train
    import torch
    import ray.train.torch as rtt

    from stethoscope.training.loop import run_epoch, run_validation, seed_everything

    torch.set_num_threads(max(1, int(cfg["threads"])))
    # Each epoch iterates the worker's shard: without this, every iteration prints Ray Data progress bars and
    # "execution finished" lines from every worker, which bury the job's result table (issue 12 §5).
    import ray.data

    data_ctx = ray.data.DataContext.get_current()
    data_ctx.enable_progress_bars = False
    data_ctx.print_on_execution_start = False
    if cfg.get("ray_log_level", "INFO") != "INFO":
        # Ray Train 2.60 logs "Reporting training result <n>: ..." once per report through a logger named after its
        # file (ray/train/v2/_internal/execution/context.py: logging.getLogger(__file__)), which RunConfig's
        # LoggingConfig does not reach; quiet it like the ray.train loggers (runtime.quiet_ray_output).
        import sys

        ctx_module = sys.modules.get("ray.train.v2._internal.execution.context")
        if ctx_module is not None:
            logging.getLogger(ctx_module.__file__).setLevel(cfg["ray_log_level"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    workers = worker_placement(rank)
    seed = int(cfg["seed"])
    seed_everything(seed)
    method = build_method(cfg["method"], cfg["config"], cfg["inputs"], cfg["vocab"])
    method.to(rtt.get_device())
    method.enable_mixed_precision(bool(cfg.get("mixed_precision")))
    history: list[dict] = []
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()  # set when Ray Train restarts a failed worker group
    if checkpoint is None and cfg.get("resume_from"):
        checkpoint = ray.train.Checkpoint(cfg["resume_from"])  # an earlier run's latest checkpoint (folder or URI)
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / ckpt_io.STATE_FILE, map_location=method.device, weights_only=True)
            method.load_state_dict(state)
            meta = ckpt_io.read_meta(d)
        start_epoch, history = int(meta["epoch"]), list(meta.get("history", []))
        log.info("resuming %s at epoch %d", cfg["method"], start_epoch + 1)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if cfg["has_val"] else None
    bs = method.batch_size
    replicated = bool(cfg.get("replicated")) and world > 1
    cache = None
    if replicated and cfg.get("cache_share"):
        cache = RankCache.read(train_shard, rank, world, bs, method.device)
        log.info("rank %d holds %d of the training examples in memory (%d steps per epoch)", rank, len(cache),
                 cache.steps)

    def train_batches(balance: bool = True, **kwargs):
        """The rank's example batches (numpy). Replicated: every rank reads the same global batches of
        ``bs · world`` examples (same shuffle seed) and keeps rows [rank·bs, (rank+1)·bs) of each; split: the
        rank's own streaming_split shard in batches of ``bs``."""
        read = train_shard.iter_batches(batch_size=bs * world if replicated else bs, batch_format="numpy", **kwargs)
        return rank_rows(read, rank, world, bs, balance=balance) if replicated else read

    val_cache = None
    if val_shard is not None and cfg.get("cache_val"):
        # The validation batches, read once (the same batches, in the same order, as iterating the materialized
        # set): iterating a Ray dataset starts an execution, ~40 ms per epoch for a few batches (issue 12 §4).
        val_cache = [{k: np.array(v) for k, v in b.items() if np.asarray(v).dtype.kind in "fiub"}
                     for b in val_shard.iter_batches(batch_size=bs, batch_format="numpy")]

    if start_epoch == 0:
        stats = cache.batches(bs, None) if cache is not None else train_batches(balance=False)
        method.fit_statistics(method.to_tensors(b) for b in stats)

    eval_clips = None
    if cfg.get("eval_clips") and rank == 0:
        eval_clips = cfg["eval_clips"]

    for epoch in range(start_epoch, int(cfg["epochs"])):
        seed_everything(seed * 100_003 + epoch)  # per-epoch seed: a resumed run replays the same epochs
        t0 = time.perf_counter()
        if cache is not None:
            rng = np.random.default_rng([seed, epoch, rank]) if cfg["shuffle_buffer"] else None
            batches = cache.batches(bs, rng, cache.steps)
        else:
            # Every example each epoch, the last batch partial, on every path: rank_rows deals a short global
            # batch evenly over the ranks; streaming_split(equal=True) gives every rank as many rows. A last batch
            # of one example is left out (BatchNorm), on every rank alike.
            batches = without_single_tail(train_batches(
                local_shuffle_buffer_size=cfg["shuffle_buffer"] or None,
                local_shuffle_seed=seed + epoch if cfg["shuffle_buffer"] else None,
            ), bs)
        metrics = run_epoch(method, batches, timings=True)
        metrics["train_seconds"] = time.perf_counter() - t0
        if val_shard is not None:
            t_val = time.perf_counter()
            val_batches = (val_cache if val_cache is not None
                           else val_shard.iter_torch_batches(batch_size=bs, device=method.device))
            metrics.update(run_validation(method, val_batches))
            metrics["val_seconds"] = time.perf_counter() - t_val
        metrics = _allreduce_mean(metrics)
        if world > 1:
            metrics["replica_max_abs_diff"] = replica_divergence(method)
        method.on_epoch_end(epoch + 1, metrics)
        metrics["epoch"] = epoch + 1
        metrics["epoch_seconds"] = time.perf_counter() - t0
        if eval_clips is not None:
            metrics.update(_eval_metrics(method, eval_clips))
        history.append(metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt_io.save(
                    method,
                    tmp,
                    {"epoch": epoch + 1, "seed": seed, "history": history, "workers": workers},
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def _eval_metrics(method, eval_clips: dict) -> dict[str, float]:
    """Validation AUC/pAUC on labelled clips (the validation split, never the test labels): see
    :func:`validation_auc`."""
    from stethoscope.scoring import score_batches

    return validation_auc(score_batches(method, [eval_clips]))


#: The validation objective of a model over several machine types (an all_machine_types unit).
VALIDATION_OBJECTIVE = ("val_auc / val_pauc: AUC and pAUC (max_fpr 0.1) of each machine type's validation clips, "
                        "averaged over the machine types (one type: its own); val_auc_pauc_mean = (val_auc + val_pauc) / 2")


def validation_auc(frame: pd.DataFrame) -> dict[str, float]:
    """``val_auc``, ``val_pauc`` and ``val_auc_pauc_mean`` of scored validation clips (columns ``machine_type``,
    ``label``, ``score``): AUC and pAUC (sklearn, ``max_fpr=0.1``, McClish-standardized) per machine type, then the
    arithmetic mean over the machine types that have both labels (:data:`VALIDATION_OBJECTIVE`). With one machine
    type this is that type's AUC / pAUC over all its validation clips, as before scopes existed.

    Returns:
        ``{}`` when no machine type has both normal and anomalous clips.
    """
    from sklearn.metrics import roc_auc_score

    aucs, paucs = [], []
    types = frame["machine_type"] if "machine_type" in frame.columns else pd.Series([""] * len(frame))
    for mt in sorted(set(types)):
        rows = (types == mt).to_numpy()
        y = (frame.loc[rows, "label"] == "anomaly").to_numpy().astype(int)
        if len(y) == 0 or y.min() == y.max():
            continue
        s = frame.loc[rows, "score"].to_numpy()
        aucs.append(float(roc_auc_score(y, s)))
        paucs.append(float(roc_auc_score(y, s, max_fpr=0.1)))
    if not aucs:
        return {}
    auc, pauc = float(np.mean(aucs)), float(np.mean(paucs))
    return {"val_auc": auc, "val_pauc": pauc, "val_auc_pauc_mean": (auc + pauc) / 2}


def latest_checkpoint(train_storage: str | os.PathLike) -> str | None:
    """The checkpoint with the highest epoch under a Ray Train storage folder or URI (``<run>/train``,
    ``s3://bucket/runs/<run>/train``): its folder or URI, or None when there is none (or the storage does not exist).

    Raises:
        StorageError: the storage cannot be listed or a checkpoint's meta.json cannot be read.
    """
    from stethoscope import storage as st

    fs, root = st.resolve(train_storage)
    root = root.rstrip("/")
    try:
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            return None
        metas = [info.path for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                 if info.type == pafs.FileType.File and info.base_name == ckpt_io.META_FILE]
    except OSError as exc:
        raise st.StorageError(f"cannot list the checkpoints under {train_storage}: {exc}") from None
    best, best_epoch = None, -1
    for meta_path in metas:
        folder = meta_path.rsplit("/", 1)[0]
        uri = st.join(str(train_storage), folder[len(root):].lstrip("/")) if st.is_uri(train_storage) else folder
        try:
            with fs.open_input_stream(meta_path) as fh:
                epoch = int(json.loads(fh.read().decode()).get("epoch", 0))
        except (OSError, ValueError) as exc:
            raise st.StorageError(f"cannot read the checkpoint meta {st.join(uri, ckpt_io.META_FILE)}: {exc}") from None
        if epoch > best_epoch:
            best, best_epoch = uri, epoch
    return best


def fit(
    method_name: str,
    config: dict | Any | None,
    dataset,
    scaling: Scaling | None = None,
    *,
    inputs: dict[str, InputSpec] | FeatureSpec | None = None,
    feature_spec: FeatureSpec | None = None,
    run_dir: str | os.PathLike,
    storage_path: str | None = None,
    seed: int = 0,
    resume: bool = False,
    held_out: Collection[str] | None = None,
    eval_dataset=None,
    callbacks: list | None = None,
    shuffle_buffer: int | None = None,
    materialize: bool = True,
    vocab: Vocab | None = None,
    max_failures: int = 0,
) -> FitResult:
    """Train ``method_name`` on the training clips in ``dataset`` with Ray Train.

    Args:
        method_name: a registered method (``methods.names()``).
        config: the method's Config, or a mapping of overrides (unknown keys → ConfigError).
        dataset: Ray Dataset of ingested clips (the input columns of :func:`stethoscope.data.ingest.ingest` +
            metadata), normal training clips only.
        scaling: workers / GPU / CPUs per worker / mixed precision.
        inputs: ``{name: spec}`` the features were computed with (default: the method's ``input_specs``); a single
            FeatureSpec means ``{"log_mel": spec}``. ``feature_spec`` is the older name of the same argument.
        vocab: label vocabularies (default: built from the training clips' metadata; saved in every checkpoint).
        run_dir: folder for Ray Train's storage and checkpoints (``<run_dir>/train``).
        storage_path: Ray Train's storage instead, a folder or a URI (``s3://bucket/runs/<run>/train``; a run
            staged for object storage, :func:`stethoscope.runs.new_run_dir`): the workers write their checkpoints
            there, so they survive the node.
        seed: the run seed (recorded in every checkpoint).
        resume: continue from the latest checkpoint (highest epoch, :func:`latest_checkpoint`) in the storage
            (``run_dir/train`` or ``storage_path``, local or a URI) at the next epoch; the epochs in ``config`` are
            the total to reach.
        held_out: paths of training clips in ``dataset`` held out for the validation loss (``val_*`` metrics):
            the run split's ``train_validation`` part (:class:`stethoscope.splits.RunSplit`). None or empty: every
            clip trains and there is no validation loss. fit draws no split of its own.
        eval_dataset: optional labelled clips (a validation split) scored each epoch on rank 0 →
            ``val_auc``, ``val_pauc``, ``val_auc_pauc_mean`` in the reported metrics (used by Tune/ASHA).
        callbacks: Ray Train callbacks (Tune passes ``TuneReportCallback``).
        max_failures: how many times Ray Train restarts the worker group after a worker dies (a killed process, a
            lost node) before the fit fails (``ray.train.FailureConfig``); a restarted group resumes from the latest
            checkpoint at the next epoch, and because every epoch is reseeded from (seed, epoch) it replays the
            same run. 0 (default): the first failure fails the fit; -1: restart without limit.
        materialize: compute the examples once into Ray's object store (spilled to disk if large) instead of
            re-reading Parquet and re-running ``Method.examples`` every epoch. With several workers, each worker
            then reads the materialized examples and keeps its share (:class:`RankCache` / :func:`rank_rows`);
            unmaterialized ones are split with ``streaming_split``.
    Returns:
        FitResult with the latest checkpoint loaded on the driver.
    Raises:
        ConfigError: unknown method or bad config. DataError: no training clips, held-out paths that are not
            training clips of ``dataset``, or every training clip held out.
        StethoscopeError: training failed on a worker (the worker's error message is included).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from stethoscope.errors import DataError
    from stethoscope.runtime import gpu_available, ray_log_level

    cls = methods.get(method_name)
    cfg = config if isinstance(config, cls.Config) else cls.make_config(config or {})
    declared = cls.input_specs(cfg)
    inputs = inputs if inputs is not None else feature_spec
    if inputs is None:
        inputs = declared
    elif isinstance(inputs, (FeatureSpec, WaveformSpec)):
        inputs = {next(iter(declared)): inputs}
    if set(inputs) != set(declared):
        raise ConfigError(f"{method_name}: inputs {sorted(inputs)} differ from the declared {sorted(declared)}")
    scaling = scaling or Scaling()
    use_gpu = gpu_available() if scaling.use_gpu is None else scaling.use_gpu
    run_dir = Path(run_dir).resolve()
    storage = run_dir / "train" if storage_path is None else storage_path

    names = set(dataset.schema().names)
    missing = [f"{k} ({input_column(v)})" for k, v in inputs.items() if input_column(v) not in names]
    if missing:
        raise DataError(f"{method_name}: the ingested clips lack the input(s) {missing}; ingest them with the "
                        "method's input specs")
    cols = [c for c in META_COLUMNS if c in names] + sorted({input_column(v) for v in inputs.values()})
    clips = dataset.select_columns(cols)
    if materialize:
        # One read of the Parquet shards: every later step (metadata, class names, the train / validation
        # examples) runs on these in-memory blocks. Each Ray Data read costs ~2 s of fixed overhead on a small
        # machine, and fit used to read four times.
        clips = clips.materialize()
    meta_cols = clips.select_columns([c for c in META_COLUMNS if c in names]).to_pandas()
    if len(meta_cols) == 0:
        raise DataError("no training clips: the training selection is empty (a machine with no train/ clips?)")
    vocab = vocab or Vocab.from_clips(meta_cols)
    held_paths = set(held_out or ())
    unknown = sorted(held_paths - set(meta_cols["path"]))
    if unknown:
        raise DataError(f"{len(unknown)} held-out clip(s) are not training clips of this dataset (was the split made "
                        f"for other data?): {[os.path.basename(p) for p in unknown[:10]]}")
    if held_paths and len(held_paths) == len(meta_cols):
        raise DataError(f"all {len(meta_cols)} training clips are held out for validation; nothing is left to train on")

    def _is_held(batch: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        return batch.filter(pc.is_in(batch["path"], pa.array(sorted(held_paths), pa.string())))

    def _is_train(batch: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        return batch.filter(pc.invert(pc.is_in(batch["path"], pa.array(sorted(held_paths), pa.string()))))

    inputs_json = {k: input_spec_to_dict(v) for k, v in inputs.items()}
    fn_kwargs = {
        "method_name": method_name,
        "config": dataclasses.asdict(cfg),
        "inputs": inputs_json,
        "vocab": vocab.to_dict(),
    }
    train_clips = clips.map_batches(_is_train, batch_format="pyarrow")
    datasets = {"train": train_clips.map_batches(_examples_fn, fn_kwargs=fn_kwargs, batch_format="numpy")}
    val_clips = None
    if held_paths:
        val_clips = clips.map_batches(_is_held, batch_format="pyarrow")
        datasets["val"] = val_clips.map_batches(_examples_fn, fn_kwargs=fn_kwargs, batch_format="numpy")

    if materialize:
        datasets = {k: v.materialize() for k, v in datasets.items()}
        clips = train_clips = val_clips = None  # the examples hold their own blocks; free the clip-level copy
    for ds in datasets.values():
        # The workers iterate these every epoch through Ray Train's split coordinator, which runs with the
        # dataset's own DataContext: without this each epoch prints progress bars and "execution finished" lines
        # from every worker, which bury the job's result table (issue 12 §5).
        ds.context.enable_progress_bars = False
        ds.context.print_on_execution_start = False
    eval_clips = None
    if eval_dataset is not None:
        eval_clips = clips_dict(eval_dataset)

    epochs = int(getattr(cfg, "epochs"))
    batch_size = int(getattr(cfg, "batch_size", 1))
    # Several workers hold their share of materialized examples in memory when it is small enough (RankCache).
    cache_share = bool(materialize and scaling.num_workers > 1
                       and (datasets["train"].size_bytes() or 0) / scaling.num_workers <= CACHE_SHARE_BYTES)
    train_cfg = {
        "method": method_name,
        "config": dataclasses.asdict(cfg),
        "inputs": inputs_json,
        "vocab": vocab.to_dict(),
        "mixed_precision": bool(use_gpu and scaling.mixed_precision),
        "seed": seed,
        "epochs": epochs,
        "has_val": bool(held_paths),
        "shuffle_buffer": shuffle_buffer if shuffle_buffer is not None else (
            max(4 * batch_size, 4096) if getattr(cfg, "shuffle", True) else 0
        ),
        "eval_clips": eval_clips,
        "threads": max(1, int(scaling.cpus_per_worker)),
        "replicated": materialize,
        "cache_share": cache_share,
        # every worker holds the (materialized, small) validation examples in memory instead of iterating them
        "cache_val": bool(materialize and "val" in datasets
                          and (datasets["val"].size_bytes() or 0) <= CACHE_SHARE_BYTES),
        "ray_log_level": ray_log_level(),
    }
    resume_ckpt = None
    if resume:
        resume_ckpt = latest_checkpoint(storage)
        if resume_ckpt is None:
            raise StethoscopeError(f"--resume: no checkpoint under {storage}")
        log.info("resuming from %s", resume_ckpt)
        train_cfg["resume_from"] = resume_ckpt
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(REPORT_POLL_S))
    run_name = f"fit-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{zlib.crc32(str(time.time_ns()).encode()):08x}"
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=train_cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=int(max_failures)),
            callbacks=callbacks,
            # WARNING after runtime.quiet_ray_output() (the jobs without --verbose): no per-epoch "Reporting
            # training result" / "Checkpoint successfully created" lines from every worker
            logging_config=ray.train.LoggingConfig(log_level=ray_log_level()),
        ),
        datasets=datasets,
        # Materialized examples are not split: every worker reads them from the object store and keeps its share
        # (RankCache, or rank_rows of every global batch for a share too large to hold), with no per-epoch
        # coordinator round trips. Unmaterialized examples are split with streaming_split (each Parquet read runs
        # once); that costs one coordinator actor and a start-up per epoch. Every worker validates on the whole
        # (small) validation set, so the all-reduced val_loss is the same number on every rank.
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"] if scaling.num_workers > 1 and not materialize else []),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - re-raised as one readable message
        raise StethoscopeError(f"training {method_name!r} failed: {_root_message(exc)}") from exc
    if result.checkpoint is None:
        if epochs == 0 and resume_ckpt is None:
            raise ConfigError(f"{method_name}: epochs = 0, nothing was trained")
        raise StethoscopeError(f"training {method_name!r} produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        method, meta = ckpt_io.load(d)
    path = result.checkpoint.path
    if "://" in str(storage):  # Ray gives the path inside the filesystem; keep the scheme
        path = f"{str(storage).split('://', 1)[0]}://{path}"
    log.info("trained %s for %d epoch(s); checkpoint %s", method_name, meta["epoch"], path)
    return FitResult(path, str(run_dir), meta.get("history", []), method, meta)


def _root_message(exc: BaseException) -> str:
    """The innermost cause of a Ray Train failure, as one line."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    return text[-1] if text else type(seen).__name__
