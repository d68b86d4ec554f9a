"""Ray Train: the AE baseline learns, detects severe clicks, is reproducible, resumes from a checkpoint, and trains
on two workers as on one. The training clips held out for the validation loss come from the run's split
(``stethoscope.splits.make_run_split``), never from a split of the trainer's own."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stethoscope.data.features import FeatureSpec
from stethoscope.data.index import index
from stethoscope.data.ingest import ingest, read_features
from stethoscope.scoring import score_dataset
from stethoscope.splits import CLIP_COLUMNS, make_run_split
from stethoscope.training import Scaling, fit, trainer

SPEC = FeatureSpec()
CFG = {"epochs": 20, "batch_size": 64}


@pytest.fixture(scope="module")
def clicks_features(ray_session, synthetic_clicks, tmp_path_factory):
    return ingest(index(synthetic_clicks).table, str(tmp_path_factory.mktemp("store")), SPEC)


@pytest.fixture(scope="module")
def held(clicks_features):
    """The training clips the run split holds out for the validation loss (10 % of the 24: 2 clips)."""
    import pyarrow.dataset as pads

    clips = pads.dataset(clicks_features.features_path, format="parquet").to_table(columns=CLIP_COLUMNS).to_pandas()
    return make_run_split(clips, train_validation_fraction=0.1).train_validation


@pytest.fixture(scope="module")
def trained(clicks_features, held, tmp_path_factory):
    train = read_features(clicks_features, split="train")
    return fit("autoencoder", CFG, train, Scaling(1), feature_spec=SPEC,
               run_dir=tmp_path_factory.mktemp("run_a"), seed=3, held_out=held)


def test_validation_loss_goes_down_and_severe_clicks_are_detected(trained, held, clicks_features):
    assert len(held) == 2
    hist = trained.history
    assert [h["epoch"] for h in hist] == list(range(1, CFG["epochs"] + 1))
    assert hist[-1]["val_loss"] < 0.5 * hist[0]["val_loss"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    scores = score_dataset(trained.method, read_features(clicks_features, split="test"))
    y = (scores["label"] == "anomaly").astype(int)
    assert len(scores) == 20 and y.sum() == 10
    assert roc_auc_score(y, scores["score"]) >= 0.9


def test_a_killed_worker_restarts_from_its_checkpoint_and_a_resumed_run_is_the_same_run(trained, held,
                                                                                         clicks_features, tmp_path):
    """Fault tolerance (issue 17 §4): 10 of the 20 epochs with ``trained``'s seed and ``max_failures=1``; the Train
    worker process is killed (SIGKILL, by the PID its checkpoint records) once epoch 3's checkpoint exists, and Ray
    Train restarts the worker group, which resumes from the latest checkpoint and finishes. The 10 epochs are
    ``trained``'s first 10, bit for bit in the learned metrics (the same seed gives the same run: every epoch is
    reseeded from (seed, epoch), so replayed epochs repeat). Then ``resume=True`` to 20 epochs: the same run as
    ``trained`` (20 epochs straight), epochs 1-10 taken from the checkpoint's history."""
    import json
    import os
    import signal
    import threading
    import time

    train = read_features(clicks_features, split="train")
    half = CFG["epochs"] // 2
    killed: dict = {}

    def kill_after_epoch_3() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            for meta_file in (tmp_path / "train").glob("*/checkpoint_*/meta.json"):
                try:
                    meta = json.loads(meta_file.read_text())
                except (OSError, ValueError):  # being written
                    continue
                if meta["epoch"] >= 3:
                    pid = meta["workers"][0]["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, epoch=meta["epoch"])
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_after_epoch_3, daemon=True)
    killer.start()
    result = fit("autoencoder", {**CFG, "epochs": half}, train, Scaling(1), feature_spec=SPEC, run_dir=tmp_path,
                 seed=3, held_out=held, max_failures=1)
    killer.join(timeout=5)
    assert killed and killed["epoch"] < half, killed  # the worker died mid-run
    assert result.meta["workers"][0]["pid"] != killed["pid"]  # the last epochs ran in the restarted worker
    learned = ("loss", "val_loss", "steps", "examples")
    assert [h["epoch"] for h in result.history] == list(range(1, half + 1))
    assert [{k: h[k] for k in learned} for h in result.history] == \
        [{k: h[k] for k in learned} for h in trained.history[:half]]
    resumed = fit("autoencoder", CFG, train, Scaling(1), feature_spec=SPEC, run_dir=tmp_path, seed=3, resume=True,
                  held_out=held)
    assert [h["epoch"] for h in resumed.history] == list(range(1, CFG["epochs"] + 1))
    assert resumed.history[:half] == result.history  # epochs 1..10 come from the checkpoint's history
    assert resumed.history[-1]["loss"] == pytest.approx(trained.history[-1]["loss"], rel=1e-5)
    test = read_features(clicks_features, split="test")
    np.testing.assert_allclose(score_dataset(resumed.method, test)["score"].to_numpy(),
                               score_dataset(trained.method, test)["score"].to_numpy(), rtol=1e-5)


#: Two workers with batch 32 each against one worker with batch 64: the same examples per optimizer step and the same
#: number of steps per epoch. The per-epoch training losses may differ by BatchNorm's per-worker batch statistics and
#: the shuffles, by at most this share of the one-worker loss (measured: see the test's docstring).
TWO_WORKER_LOSS_RTOL = 0.15


def test_two_workers_hold_identical_weights_and_match_one_worker(clicks_features, held, tmp_path, monkeypatch):
    """Method.optimize all-reduces the gradients, so after every epoch's steps the two ranks hold bit-identical
    parameters (``replica_max_abs_diff`` = max |θ_rank0 − θ_rank1| over every parameter, all-reduced on the workers,
    is exactly 0; BatchNorm's running statistics are buffers, kept per rank, rank 0's are saved). Their per-epoch
    training loss matches a one-worker run of the same effective batch within TWO_WORKER_LOSS_RTOL."""
    train = read_features(clicks_features, split="train")
    cfg = {**CFG, "epochs": 4}
    two = fit("autoencoder", {**cfg, "batch_size": 32}, train, Scaling(num_workers=2, cpus_per_worker=0.5),
              feature_spec=SPEC, run_dir=tmp_path / "two", seed=1, held_out=held)
    one = fit("autoencoder", {**cfg, "batch_size": 64}, train, Scaling(1), feature_spec=SPEC,
              run_dir=tmp_path / "one", seed=1, held_out=held)
    assert two.meta["epoch"] == one.meta["epoch"] == 4
    assert [h["replica_max_abs_diff"] for h in two.history] == [0.0] * 4
    assert "replica_max_abs_diff" not in one.history[-1]
    # The same examples per optimizer step and the same number of steps per epoch: each rank holds half the
    # examples (one repeated when the count is odd) and takes ceil(half / 32) batches, the last one partial and as
    # short on both ranks, as one worker takes ceil(all / 64). Every example is trained on every epoch.
    for a, b in zip(two.history, one.history):
        assert a["steps"] == b["steps"], (a["epoch"], a["steps"], b["steps"])
    for a, b in zip(two.history, one.history):
        assert abs(a["loss"] - b["loss"]) <= TWO_WORKER_LOSS_RTOL * b["loss"], (a["epoch"], a["loss"], b["loss"])
    assert two.history[-1]["loss"] < 0.8 * two.history[0]["loss"]
    for a, b in zip(two.history, one.history):
        assert b["examples"] <= 2 * a["examples"] <= b["examples"] + 1  # "examples" is per worker
    # Where the time went: only two workers all-reduce gradients, once per optimizer step.
    assert all(h["allreduce_seconds"] > 0 and h["allreduce_calls"] == h["steps"] for h in two.history)
    assert all(h["allreduce_seconds"] == 0 and h["allreduce_calls"] == 0 for h in one.history)
    assert all(h["data_seconds"] > 0 and h["cpu_seconds"] > 0 for h in two.history + one.history)
    # A share too large to hold in memory is streamed (every rank reads the global batches and keeps its rows,
    # the short last one dealt evenly): the same steps per epoch as one worker, identical replicas.
    monkeypatch.setattr(trainer, "CACHE_SHARE_BYTES", 0)
    streamed = fit("autoencoder", {**cfg, "batch_size": 32, "epochs": 2}, train,
                   Scaling(num_workers=2, cpus_per_worker=0.5), feature_spec=SPEC, run_dir=tmp_path / "streamed",
                   seed=1, held_out=held)
    assert [h["steps"] for h in streamed.history] == [h["steps"] for h in one.history][:2]
    assert [h["replica_max_abs_diff"] for h in streamed.history] == [0.0] * 2
    for a, b in zip(streamed.history, one.history):
        assert abs(a["loss"] - b["loss"]) <= TWO_WORKER_LOSS_RTOL * b["loss"], (a["epoch"], a["loss"], b["loss"])


def test_ranks_split_the_one_worker_batches(ray_session):
    """Every rank reads the same shuffled global batches (same local_shuffle_seed) and keeps its rows
    (rank_rows), so two ranks with batch 32 take, between them, exactly the batches of one worker with batch 64 in
    the same order, and a short last batch is cut the same way."""
    import ray

    from stethoscope.training.trainer import rank_rows

    ds = ray.data.from_numpy(np.arange(1000, dtype=np.int64).reshape(-1, 1)).repartition(5).materialize()

    def batches(batch_size):
        return list(ds.iter_batches(batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=300,
                                    local_shuffle_seed=11))

    one = batches(64)
    again = batches(64)
    assert all(np.array_equal(a["data"], b["data"]) for a, b in zip(one, again))  # the shuffle is seeded
    assert not np.array_equal(np.concatenate([b["data"] for b in one]).ravel(), np.arange(1000))
    ranks = [list(rank_rows(batches(64), rank, 2, 32)) for rank in (0, 1)]
    assert len(one) == 16 and [len(r) for r in ranks] == [16, 16]  # 1000 = 15 × 64 + 40
    for i, full in enumerate(one[:-1]):
        np.testing.assert_array_equal(np.concatenate([ranks[0][i]["data"], ranks[1][i]["data"]]), full["data"])
    # The short tail of 40 is dealt round-robin, 20 rows each, so the last step's all-reduce pairs up.
    np.testing.assert_array_equal(ranks[0][-1]["data"], one[-1]["data"][0::2])
    np.testing.assert_array_equal(ranks[1][-1]["data"], one[-1]["data"][1::2])
    # An odd tail: the short part repeats its own first row; the statistics pass (balance=False) repeats nothing.
    tail = [{"data": np.arange(7)}]
    assert [b["data"].tolist() for b in rank_rows(tail, 0, 2, 64)] == [[0, 2, 4, 6]]
    assert [b["data"].tolist() for b in rank_rows(tail, 1, 2, 64)] == [[1, 3, 5, 1]]
    assert [b["data"].tolist() for b in rank_rows(tail, 1, 2, 64, balance=False)] == [[1, 3, 5]]
    # A tail of one row per rank is left out on every rank (BatchNorm cannot train on one example) ...
    assert [list(rank_rows([{"data": np.arange(2)}], r, 2, 64)) for r in (0, 1)] == [[], []]
    # With one example per rank by choice, full global batches are still dealt; a short one (fewer rows than
    # ranks) is left out on every rank, so no rank steps alone.
    assert [b["data"].tolist() for b in rank_rows([{"data": np.arange(2)}, {"data": np.arange(1)}], 1, 2, 1)] == [[1]]
    assert [b["data"].tolist() for b in rank_rows([{"data": np.arange(2)}, {"data": np.arange(1)}], 0, 2, 1)] == [[0]]
    # ... but the statistics pass still sees each row once; a rank past the end gets nothing.
    assert [b["data"].tolist() for b in rank_rows([{"data": np.arange(1)}], 0, 2, 64, balance=False)] == [[0]]
    assert list(rank_rows([{"data": np.arange(1)}], 1, 2, 64, balance=False)) == []


def test_streaming_split_gives_every_rank_the_same_batches(ray_session):
    """Unmaterialized examples (fit(materialize=False)) are split by Ray Train with streaming_split(equal=True); the
    trainer keeps each rank's short last batch, which is safe only if every rank gets as many rows, so the same
    batch sizes and the all-reduces pair up."""
    import threading

    import ray

    ds = ray.data.range(1003).map_batches(lambda b: {"x": b["id"] * 2}, batch_format="numpy")
    shards = ds.streaming_split(2, equal=True)
    sizes: list[list[int]] = [[], []]

    def read(rank: int) -> None:
        sizes[rank] = [len(b["x"]) for b in shards[rank].iter_batches(batch_size=64, batch_format="numpy")]

    threads = [threading.Thread(target=read, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sizes[0] == sizes[1] and sum(sizes[0]) == 501, sizes  # 1003 rows: one dropped, 501 each
    assert sizes[0][-1] == 501 % 64  # the short tail is kept, as short on both ranks


def test_a_last_batch_of_one_example_is_left_out():
    from stethoscope.training.trainer import without_single_tail

    def sizes(*ns, batch_size=4):
        return [len(b["x"]) for b in without_single_tail(({"x": np.zeros(n)} for n in ns), batch_size)]

    assert sizes(4, 4, 1) == [4, 4]
    assert sizes(4, 4, 2) == [4, 4, 2]
    assert sizes(1) == [1]  # the only batch is kept: an epoch of one example is the caller's choice
    assert sizes() == []
    assert sizes(1, 1, 1, batch_size=1) == [1, 1, 1]  # batches of one by choice are not a partial tail


def test_rank_cache_holds_disjoint_strided_shares_and_shuffles_them_per_epoch(ray_session):
    """With several workers each rank holds every world-th example (RankCache.read: one pass, in order); together
    the shares hold every example once, a shorter share repeats its first example so both have the same length, and
    each epoch yields ceil(share / batch) batches (the last one partial, as short on every rank) in a seeded random
    order covering the share, or, without a generator, the share's own examples in order. A last batch of one
    example per rank is left out (BatchNorm cannot train on it); fewer examples than workers is a DataError."""
    import ray

    from stethoscope.errors import DataError
    from stethoscope.training.trainer import RankCache

    def shares(n: int, batch: int, world: int = 2) -> list[RankCache]:
        ds = ray.data.from_numpy(np.arange(n, dtype=np.int64).reshape(-1, 1)).repartition(3).materialize()
        # outside Ray Train there is no process group: the ranks' sizes are combined here as read() all-reduces them
        parts = [RankCache.share(ds, rank, world, batch) for rank in range(world)]
        sizes = [len(p["data"]) for p in parts]
        return [RankCache.balanced(p, max(sizes), min(sizes), batch, rank, world) for rank, p in enumerate(parts)]

    even = shares(1000, 32)
    assert [len(c) for c in even] == [500, 500] and [c.steps for c in even] == [16, 16]  # 15 × 32 + 20
    np.testing.assert_array_equal(even[0].arrays["data"].ravel(), np.arange(0, 1000, 2))
    np.testing.assert_array_equal(even[1].arrays["data"].ravel(), np.arange(1, 1000, 2))
    epoch = list(even[1].batches(32, np.random.default_rng([0, 1, 1]), even[1].steps))
    again = list(even[1].batches(32, np.random.default_rng([0, 1, 1]), even[1].steps))
    seen = np.concatenate([b["data"].ravel() for b in epoch])
    assert [len(b["data"]) for b in epoch] == [32] * 15 + [20]
    assert sorted(seen.tolist()) == list(range(1, 1000, 2))  # every example of the share, once
    assert not np.array_equal(seen, np.sort(seen))  # shuffled
    assert all(np.array_equal(a["data"], b["data"]) for a, b in zip(epoch, again))  # seeded
    ordered = list(even[0].batches(32, None))
    assert [len(b["data"]) for b in ordered] == [32] * 15 + [20]
    np.testing.assert_array_equal(np.concatenate([b["data"] for b in ordered]).ravel(), np.arange(0, 1000, 2))
    # an odd count: rank 1 holds one example fewer and repeats its first; in-order iteration leaves the copy out
    odd = shares(1001, 32)
    assert [len(c) for c in odd] == [501, 501] and [c.real for c in odd] == [501, 500]
    assert odd[1].arrays["data"].ravel()[-1] == 1 and [c.steps for c in odd] == [16, 16]
    assert sum(len(b["data"]) for b in odd[1].batches(32, None)) == 500
    # a last batch of one example per rank (2 × (32 + 1) examples) is left out
    assert [c.steps for c in shares(66, 32)] == [1, 1]
    with pytest.raises(DataError, match="fewer training examples than workers"):
        shares(1, 32)


def test_unknown_method_and_bad_config_are_clear_errors(clicks_features, tmp_path):
    from stethoscope.errors import ConfigError

    train = read_features(clicks_features, split="train")
    with pytest.raises(ConfigError, match="unknown method 'ae'; known methods: .*autoencoder"):
        fit("ae", {}, train, feature_spec=SPEC, run_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown key.*'epoch'"):
        fit("autoencoder", {"epoch": 3}, train, feature_spec=SPEC, run_dir=tmp_path)


def test_latest_checkpoint_is_the_highest_epoch_across_fits(tmp_path):
    """Resuming continues from the highest epoch under the storage, whichever Ray Train run (fit-*) wrote it."""
    import json

    from stethoscope.training.trainer import latest_checkpoint

    assert latest_checkpoint(tmp_path / "train") is None  # no storage yet
    for fit_name, epochs in (("fit-a", (1, 2)), ("fit-b", (3, 10)), ("fit-c", (4,))):
        for epoch in epochs:
            folder = tmp_path / "train" / fit_name / f"checkpoint_{epoch:06d}"
            folder.mkdir(parents=True)
            (folder / "meta.json").write_text(json.dumps({"epoch": epoch}))
    assert latest_checkpoint(tmp_path / "train") == str(tmp_path / "train" / "fit-b" / "checkpoint_000010")
