"""Ray Data ingest: index → read → validate → featurize (``map_batches``) → Parquet shards (DESIGN.md step 2).

Output layout under ``<store>/features/<FeatureSpec hash>/<clip-set fingerprint>/``:
- ``data/*.parquet``: one row per good clip: the index's metadata columns, ``num_samples``, ``orig_sample_rate``,
  ``notes`` and ``log_mel`` (an Arrow tensor column, [n_mels, frames] float32 dB).
- ``ingest_report.json``: the spec, counts, every skipped entry with its ``stage`` (``index``: an entry under the
  data root that the index could not take, see :data:`stethoscope.data.index.SKIP_REASONS`; ``ingest``: a clip that
  could not be decoded, see :data:`stethoscope.data.audio.REASONS`), ``reason`` and ``detail``, and every clip that
  was changed (resampled, channel 0 of stereo). Nothing under the data root is left out silently.
- ``_SUCCESS``: written last. A second run with the same spec and the same clips (paths, sizes, mtimes) finds it
  and reuses the shards.

The driver never holds audio or features: Ray Data streams blocks from the index through the featurizer to the
Parquet writer, and each bad file is reported by the task that met it (a small JSON line file per batch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from stethoscope import storage
from stethoscope.data.audio import load_audio
from stethoscope.data.features import FeatureSpec, log_mel
from stethoscope.errors import AudioError, DataError

log = logging.getLogger(__name__)

MAX_BATCH_CLIPS = 64  # default upper bound of clips per featurize task
METADATA_COLUMNS = ["path", "file_name", "dataset", "machine_type", "machine_id", "section", "domain", "split", "label"]


@dataclass
class IngestResult:
    """Where the features are and what happened.

    Attributes:
        features_path: folder (or URI) of the Parquet shards (``.../data``).
        root: the cache entry folder (``<store>/features/<spec hash>/<fingerprint>``).
        cached: True if an existing cache entry was reused.
        report: the ingest report (also at ``<root>/ingest_report.json``).
    """

    features_path: str
    root: str
    cached: bool
    report: dict = field(default_factory=dict)

    @property
    def skipped(self) -> list[dict]:
        return self.report.get("skipped", [])


def fingerprint(table: pa.Table) -> str:
    """12-hex-digit hash of the clip set: every path with its size and mtime, and its metadata. Missing files
    still hash (they will be reported as missing by ingest)."""
    h = hashlib.sha256()
    rows = table.select([c for c in METADATA_COLUMNS if c in table.column_names]).to_pylist()
    for row in sorted(rows, key=lambda r: r["path"]):
        try:
            st = os.stat(row["path"])
            stat = (st.st_size, st.st_mtime_ns)
        except OSError:
            stat = (-1, -1)
        h.update(json.dumps([row, stat], sort_keys=True).encode())
    return h.hexdigest()[:12]


def _featurize_batch(batch: pa.Table, spec: FeatureSpec, report_dir: str) -> pa.Table:
    """Ray Data ``map_batches`` body: decode + validate + log-mel each clip of an index batch."""
    import torch
    from ray.data.extensions import ArrowVariableShapedTensorArray

    torch.set_num_threads(1)
    rows = batch.select(METADATA_COLUMNS).to_pylist()
    good, mels, num_samples, orig_sr, notes, bad = [], [], [], [], [], []
    for row in rows:
        try:
            wav, info = load_audio(row["path"], spec.sample_rate, min_samples=spec.n_fft)
            mel = log_mel(wav, spec).numpy()
            if not np.isfinite(mel).all():
                raise AudioError(row["path"], "non_finite_features", "log-mel has NaN or inf")
        except AudioError as exc:
            bad.append({"path": row["path"], "stage": "ingest", "reason": exc.reason, "detail": exc.detail})
            continue
        except Exception as exc:  # noqa: BLE001 - one corrupt clip must never take down a run
            bad.append({"path": row["path"], "stage": "ingest", "reason": "featurize_failed",
                        "detail": f"{type(exc).__name__}: {exc}"})
            continue
        good.append(row)
        mels.append(mel.astype(np.float32))
        num_samples.append(int(wav.shape[0]))
        orig_sr.append(info.orig_sample_rate)
        notes.append("; ".join(info.notes))
    if bad:
        storage.write_text(
            storage.join(report_dir, f"part-{uuid.uuid4().hex}.jsonl"), "".join(json.dumps(b) + "\n" for b in bad)
        )
    if not good:
        # An empty block (0 rows) with the same columns; Ray drops it from the output.
        return pa.Table.from_pylist([], schema=pa.schema([(c, pa.string()) for c in METADATA_COLUMNS]))
    out = pa.Table.from_pylist(good, schema=pa.schema([(c, pa.string()) for c in METADATA_COLUMNS]))
    out = out.append_column("num_samples", pa.array(num_samples, pa.int64()))
    out = out.append_column("orig_sample_rate", pa.array(orig_sr, pa.int64()))
    out = out.append_column("notes", pa.array(notes, pa.string()))
    # Always the variable-shaped tensor type: clips differ in length (ToyCar is 11 s), and one type for every
    # block keeps the Parquet schema uniform across shards.
    column = np.empty(len(mels), dtype=object)
    for i, m in enumerate(mels):
        column[i] = m
    return out.append_column("log_mel", ArrowVariableShapedTensorArray.from_numpy(column))


def ingest(
    index_table: pa.Table,
    store: str | os.PathLike,
    spec: FeatureSpec,
    *,
    batch_size: int | None = None,
    force: bool = False,
    not_indexed: list[dict] | None = None,
) -> IngestResult:
    """Featurize the clips of ``index_table`` with Ray Data and write Parquet shards (or reuse the cache).

    Args:
        index_table: rows from :func:`stethoscope.data.index.index` (any subset).
        store: local folder or pyarrow-filesystem URI; features go under ``<store>/features/<spec.hash()>/``.
        spec: the FeatureSpec (its hash keys the cache).
        batch_size: clips per ``map_batches`` task. Default: enough tasks for two per CPU of the cluster, at most
            64 clips each. Each task pays a fixed cost (deserializing the fused read → featurize → write function,
            tens of ms on a small machine), so batches of 8 spent as long on overhead as on the log-mel; see the
            README's ingest benchmark.
        force: recompute even if a complete cache entry exists.
        not_indexed: the entries the index skipped (:attr:`stethoscope.data.index.IndexResult.skipped`); they are
            listed in the report with ``stage: index``, so it accounts for every entry under the data root. On a
            cache hit the report's list is refreshed from this argument.
    Returns:
        IngestResult (``cached`` tells whether the cache was reused).
    Raises:
        DataError: the index is empty, batch_size < 1, or every clip failed (the message lists the reasons).
    Requires Ray to be initialised (``stethoscope.runtime.init_ray``).
    """
    import ray

    if index_table.num_rows == 0:
        raise DataError("nothing to ingest: the index selection is empty")
    if batch_size is not None and batch_size < 1:
        raise DataError(f"ingest batch_size = {batch_size}; expected a positive number of clips")
    root = storage.join(store, "features", spec.hash(), fingerprint(index_table))
    data_path, report_path = storage.join(root, "data"), storage.join(root, "ingest_report.json")
    index_skipped = sorted(({**s, "stage": "index"} for s in not_indexed or []), key=lambda s: s["path"])
    if not force and storage.exists(storage.join(root, "_SUCCESS")):
        log.info("feature cache hit: %s", root)
        report = storage.read_json(report_path)
        fresh = _with_index_skipped(report, index_skipped)
        if fresh != report:
            storage.write_json(report_path, fresh)
        return IngestResult(data_path, root, True, fresh)
    report_parts = storage.join(root, "_report_parts")
    for stale in (data_path, report_parts):
        if storage.exists(stale):
            fs, p = storage.resolve(stale)
            fs.delete_dir(p)
    storage.makedirs(report_parts)
    t0 = time.perf_counter()
    meta = index_table.select(METADATA_COLUMNS)
    if batch_size is None:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        batch_size = max(1, min(MAX_BATCH_CLIPS, -(-meta.num_rows // (2 * cpus))))
    # The index is small (paths and labels only): cut it into one block per ``batch_size`` clips in the driver,
    # so the featurize tasks start at once (a ``repartition`` would add an all-to-all stage).
    blocks = [meta.slice(i, batch_size) for i in range(0, meta.num_rows, batch_size)]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        _featurize_batch,
        batch_size=batch_size,
        batch_format="pyarrow",
        fn_kwargs={"spec": spec, "report_dir": report_parts},
        num_cpus=1,
    )
    ds.write_parquet(data_path)
    elapsed = time.perf_counter() - t0

    skipped: list[dict] = []
    for name in storage.listdir(report_parts):
        for line in storage.read_text(storage.join(report_parts, name)).splitlines():
            if line.strip():
                skipped.append(json.loads(line))
    skipped = sorted({s["path"]: s for s in skipped}.values(), key=lambda s: s["path"])  # retries may repeat
    written = _read_columns(data_path, ["path", "notes"]) if storage.listdir(data_path) else None
    n_ok = 0 if written is None else len(written)
    changed = [] if written is None else [
        {"path": p, "notes": n} for p, n in zip(written["path"], written["notes"]) if n
    ]
    report = _with_index_skipped({
        "feature_spec": spec.to_dict(),
        "feature_spec_hash": spec.hash(),
        "n_input": index_table.num_rows,
        "n_ingested": n_ok,
        "skipped": [{**s, "stage": "ingest"} for s in skipped],
        "changed": sorted(changed, key=lambda c: c["path"]),
        "seconds": round(elapsed, 3),
    }, index_skipped)
    storage.write_json(report_path, report)
    if n_ok == 0:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:20])
        raise DataError(f"every clip failed to ingest ({len(skipped)} skipped): {reasons}")
    storage.write_text(storage.join(root, "_SUCCESS"), time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    for s in report["skipped"]:
        log.warning("skipped (%s) %s: %s %s", s["stage"], s["path"], s["reason"], s.get("detail", ""))
    log.info("ingested %d clip(s), skipped %d, in %.1f s → %s", n_ok, len(report["skipped"]), elapsed, data_path)
    return IngestResult(data_path, root, False, report)


def _with_index_skipped(report: dict, index_skipped: list[dict]) -> dict:
    """``report`` with its ``stage: index`` entries replaced by ``index_skipped``, and the counts updated:
    ``n_skipped`` (both stages), ``n_not_indexed`` (index stage)."""
    ingest_skipped = [s for s in report.get("skipped", []) if s.get("stage", "ingest") == "ingest"]
    skipped = sorted(ingest_skipped + index_skipped, key=lambda s: s["path"])
    return {**report, "skipped": skipped, "n_skipped": len(skipped), "n_not_indexed": len(index_skipped)}


def _read_columns(data_path: str, columns: list[str]):
    """Small metadata columns of the written shards, read in the driver with pyarrow (no Ray job)."""
    import pyarrow.dataset as pads

    fs, path = storage.resolve(data_path)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns).to_pandas()


def read_features(result_or_path: IngestResult | str, *, columns: list[str] | None = None, **where):
    """The ingested features as a lazy Ray Dataset, optionally filtered on metadata columns.

    ``where``: column=value (equality) or column=[values] (membership), e.g. ``split="train", machine_id=["00"]``.
    """
    import ray
    from ray.data.expressions import col

    path = result_or_path.features_path if isinstance(result_or_path, IngestResult) else result_or_path
    ds = ray.data.read_parquet(path)
    if columns:
        ds = ds.select_columns(columns)
    expr = None
    for name, value in where.items():
        if value is None:
            continue
        term = col(name).is_in(list(value)) if isinstance(value, (list, tuple, set)) else (col(name) == value)
        expr = term if expr is None else (expr & term)
    return ds.filter(expr=expr) if expr is not None else ds
