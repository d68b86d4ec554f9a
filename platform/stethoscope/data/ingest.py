"""Ray Data ingest: index → read → validate → compute every declared input (``map_batches``) → Parquet shards
(DESIGN.md step 3).

Each clip is decoded once and every requested input spec (:class:`~stethoscope.data.features.FeatureSpec`,
:class:`~stethoscope.data.features.WaveformSpec`) is computed from that one decode.
Output layout under ``<store>/features/<clip-set fingerprint>/<spec-set hash>/``:
- ``data/*.parquet``: one row per good clip: the index's metadata columns (``attributes`` as a JSON string),
  ``num_samples``, ``orig_sample_rate``, ``notes`` and one Arrow tensor column per input spec, named
  :func:`input_column` (``x_<spec hash>``): [F, frames] float32 for a spectrogram, [samples] float32 for a waveform.
- ``specs.json``: the input specs of the entry; ``ingest_report.json``: the specs, counts, every skipped entry with its
  ``stage`` (``index``: an entry under the data root that the index could not take, see
  :data:`stethoscope.data.index.SKIP_REASONS`; ``ingest``: a clip that could not be decoded, see
  :data:`stethoscope.data.audio.REASONS`), ``reason`` and ``detail``, and every clip that was changed (resampled,
  channel 0 of stereo). Nothing under the data root is left out silently.
- ``_SUCCESS``: written last. A later request for the same clips (paths, sizes, mtimes) whose specs are a subset of a
  complete entry's reuses that entry's shards.

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
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa

from stethoscope import storage
from stethoscope.data.audio import load_audio
from stethoscope.data.features import FeatureSpec, InputSpec, WaveformSpec, compute_many, input_spec_from_dict, \
    input_spec_to_dict
from stethoscope.errors import AudioError, DataError

log = logging.getLogger(__name__)

MAX_BATCH_CLIPS = 64  # default upper bound of clips per featurize task
METADATA_COLUMNS = ["path", "file_name", "dataset", "machine_type", "machine_id", "section", "domain", "split", "label"]
#: Stored beside the metadata: the file name's attributes as a JSON object string (``{"speed": "6", ...}``).
ATTRIBUTES_COLUMN = "attributes"


def input_column(spec: InputSpec) -> str:
    """The store column of an input spec: ``x_<spec hash>``."""
    return f"x_{spec.hash()}"


def _as_specs(specs: InputSpec | Iterable[InputSpec] | Mapping[str, InputSpec]) -> list[InputSpec]:
    """One spec, an iterable or a name → spec mapping → the distinct specs, in a stable order (by hash)."""
    if isinstance(specs, (FeatureSpec, WaveformSpec)):
        specs = [specs]
    elif isinstance(specs, Mapping):
        specs = list(specs.values())
    out = {s.hash(): s for s in specs}
    if not out:
        raise DataError("nothing to ingest: no input specs were requested")
    return [out[h] for h in sorted(out)]


def spec_set_hash(specs: Iterable[InputSpec]) -> str:
    """12-hex-digit hash of a set of input specs (the store entry's name)."""
    return hashlib.sha256(",".join(sorted(s.hash() for s in specs)).encode()).hexdigest()[:12]


@dataclass
class IngestResult:
    """Where the features are and what happened.

    Attributes:
        features_path: folder (or URI) of the Parquet shards (``.../data``).
        root: the cache entry folder (``<store>/features/<fingerprint>/<spec-set hash>``).
        cached: True if an existing cache entry was reused.
        report: the ingest report (also at ``<root>/ingest_report.json``).
        specs: the input specs the entry holds (a superset of the request when an entry was reused).
    """

    features_path: str
    root: str
    cached: bool
    report: dict = field(default_factory=dict)
    specs: list = field(default_factory=list)

    def column(self, spec: InputSpec) -> str:
        """The store column holding ``spec``. Raises DataError if this entry does not hold it."""
        if spec.hash() not in {s.hash() for s in self.specs}:
            raise DataError(f"the feature store entry {self.root} holds {[s.to_dict() for s in self.specs]}, "
                            f"not the requested input {spec.to_dict()}")
        return input_column(spec)

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


def _decode_and_compute(path: str, by_rate: list[tuple[int, list[InputSpec], list[str]]]
                        ) -> tuple[dict[str, np.ndarray], int, int, list[str]]:
    """Decode one clip once per sample rate and compute every spec of that rate (:func:`compute_many`: specs that
    share an STFT compute it once).

    Args:
        by_rate: ``(sample rate, specs, their store columns)`` per rate (:func:`_plan`).
    Returns ``({column: array}, num_samples at the first rate, original rate, notes)``.
    Raises AudioError (reason) for a bad clip.
    """
    out: dict[str, np.ndarray] = {}
    num_samples = orig_sr = None
    notes: list[str] = []
    for rate, group, columns in by_rate:
        min_samples = max([s.n_fft for s in group if isinstance(s, FeatureSpec)] or [1])
        wav, info = load_audio(path, rate, min_samples=min_samples)
        if num_samples is None:
            num_samples, orig_sr = int(wav.shape[0]), int(info.orig_sample_rate)
        notes.extend(n for n in info.notes if n not in notes)
        for column, x in zip(columns, compute_many(wav, group)):
            x = x.numpy()
            if not np.isfinite(x).all():
                raise AudioError(path, "non_finite_features", f"{column} has NaN or inf")
            out[column] = x
    return out, num_samples, orig_sr, notes


def _plan(specs: list[InputSpec]) -> list[tuple[int, list[InputSpec], list[str]]]:
    """``specs`` grouped by sample rate, in first-seen order, each with its store columns (hashed once per batch,
    not per clip)."""
    by_rate: dict[int, tuple[list[InputSpec], list[str]]] = {}
    for spec in specs:
        group, columns = by_rate.setdefault(spec.sample_rate, ([], []))
        group.append(spec)
        columns.append(input_column(spec))
    return [(rate, group, columns) for rate, (group, columns) in by_rate.items()]


def _tensor_column(arrays: list[np.ndarray]):
    """float32 arrays with the same number of dimensions (shapes may differ) → an Arrow variable-shaped tensor
    column. One type for every block keeps the Parquet schema uniform across shards (clips differ in length:
    ToyCar is 11 s). The arrays are copied once, in C order, into one buffer that the column then wraps without
    another copy (the spectrograms come out of torch in column-major strides)."""
    from ray.data.extensions import ArrowVariableShapedTensorArray

    buffer = np.empty(sum(a.size for a in arrays), dtype=np.float32)
    views, start = [], 0
    for a in arrays:
        view = buffer[start:start + a.size].reshape(a.shape)
        view[...] = a
        views.append(view)
        start += a.size
    return ArrowVariableShapedTensorArray.from_numpy(views)


def parquet_options(specs: list[InputSpec]) -> dict:
    """The pyarrow Parquet write options of a store entry holding ``specs`` (``write_parquet`` keyword arguments).

    Dictionary encoding and column statistics only where they pay: the string metadata columns, and the waveform
    columns' values (a waveform decoded from 16-bit PCM holds at most 65,536 distinct values: its dictionary makes
    the file 0.5-0.6x as large). Spectrogram values are nearly all distinct: with pyarrow's default of trying a dictionary on
    every column, a batch of 10 s log-mels took 2-3x the CPU to write and its file was 6-7 % larger (measured:
    docs/ingest.md, "Performance").
    Compression stays pyarrow's default (snappy).
    """
    strings = METADATA_COLUMNS + [ATTRIBUTES_COLUMN, "notes"]
    waveforms = [f"{input_column(s)}.data.list.element" for s in specs if isinstance(s, WaveformSpec)]
    return {"use_dictionary": strings + waveforms,
            "write_statistics": strings + ["num_samples", "orig_sample_rate"]}


def featurize_clips(batch: pa.Table, specs: list[InputSpec]) -> tuple[pa.Table, list[dict]]:
    """Decode, validate and compute every input spec of each clip of an index batch: the body of one ingest task,
    without Ray (``benchmarks/ingest.py`` runs it in a plain loop).

    Args:
        batch: index rows (:data:`METADATA_COLUMNS`, optional ``attributes`` map column).
        specs: the input specs; each clip is decoded once per sample rate among them.
    Returns:
        ``(table, skipped)``: one row per good clip, in the batch's order: the metadata columns, ``attributes``
        (JSON object string), ``num_samples`` (at the first spec's rate), ``orig_sample_rate`` (Hz), ``notes`` and
        one variable-shaped tensor column per spec (:func:`input_column`): float32 [F, frames] or [samples].
        ``skipped``: ``{"path", "stage": "ingest", "reason", "detail"}`` per bad clip (a corrupt clip never raises).
        A batch without one good clip gives a 0-row table with the metadata columns only.
    """
    import torch

    torch.set_num_threads(1)
    plan = _plan(specs)
    columns = [input_column(s) for s in specs]
    paths = batch.column("path").to_pylist()
    kept: list[int] = []
    values: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    num_samples, orig_sr, notes, bad = [], [], [], []
    for i, path in enumerate(paths):
        try:
            computed, n, sr, note = _decode_and_compute(path, plan)
        except AudioError as exc:
            bad.append({"path": path, "stage": "ingest", "reason": exc.reason, "detail": exc.detail})
            continue
        except Exception as exc:  # noqa: BLE001 - one corrupt clip must never take down a run
            bad.append({"path": path, "stage": "ingest", "reason": "featurize_failed",
                        "detail": f"{type(exc).__name__}: {exc}"})
            continue
        kept.append(i)
        for c in columns:
            values[c].append(computed[c])
        num_samples.append(n)
        orig_sr.append(sr)
        notes.append("; ".join(note))
    meta = batch.select(METADATA_COLUMNS).cast(pa.schema([(c, pa.string()) for c in METADATA_COLUMNS]))
    if not kept:
        return meta.slice(0, 0), bad
    out = meta if len(kept) == len(paths) else meta.take(pa.array(kept, pa.int64()))
    if ATTRIBUTES_COLUMN in batch.column_names:
        attrs = batch.column(ATTRIBUTES_COLUMN).take(pa.array(kept, pa.int64())).to_pylist()
    else:
        attrs = [None] * len(kept)
    out = out.append_column(ATTRIBUTES_COLUMN, pa.array([json.dumps(dict(a or []), sort_keys=True) for a in attrs],
                                                        pa.string()))
    out = out.append_column("num_samples", pa.array(num_samples, pa.int64()))
    out = out.append_column("orig_sample_rate", pa.array(orig_sr, pa.int64()))
    out = out.append_column("notes", pa.array(notes, pa.string()))
    for c in columns:
        out = out.append_column(c, _tensor_column(values[c]))
    return out, bad


def _featurize_batch(batch: pa.Table, specs: list[dict], report_dir: str) -> pa.Table:
    """Ray Data ``map_batches`` body: :func:`featurize_clips`, with the skipped clips written to ``report_dir``
    (a small JSON line file per batch that had any)."""
    table, bad = featurize_clips(batch, [input_spec_from_dict(d) for d in specs])
    if bad:
        storage.write_text(
            storage.join(report_dir, f"part-{uuid.uuid4().hex}.jsonl"), "".join(json.dumps(b) + "\n" for b in bad)
        )
    return table


def _start_every_task_at_once(ds) -> None:
    """Let this dataset's featurize tasks start as soon as Ray has a CPU for them.

    Ray Data's per-operator resource reservation sizes each operator's budget from the cluster resources that its
    autoscaling coordinator actor reports, and that report arrives only after the actor has started and answered
    (seconds after the first ingest of a session, about a second on later ones): until then the operator gets its
    minimum, one task, and on 2 CPUs one core idles (docs/ingest.md, "Performance"). The reservation exists to bound
    the object store memory that operator outputs take; here every task ends in its own Parquet write and returns
    only the write statistics, so there is nothing to bound, and Ray's scheduler alone runs one task per CPU.
    Only this dataset's context is changed. Ray versions without the switch keep their default.
    """
    context = ds.context
    if hasattr(context, "op_resource_reservation_enabled"):
        context.op_resource_reservation_enabled = False


def _find_entry(store: str, fp: str, specs: list[InputSpec]) -> tuple[str, list[InputSpec]] | None:
    """A complete store entry for clip set ``fp`` holding every spec of ``specs`` (the smallest such), or None."""
    wanted = {s.hash() for s in specs}
    base = storage.join(store, "features", fp)
    best = None
    for name in storage.listdir(base):
        root = storage.join(base, name)
        if not storage.exists(storage.join(root, "_SUCCESS")) or not storage.exists(storage.join(root, "specs.json")):
            continue
        held = [input_spec_from_dict(d) for d in storage.read_json(storage.join(root, "specs.json"))]
        if wanted <= {s.hash() for s in held} and (best is None or len(held) < len(best[1])):
            best = (root, held)
    return best


def ingest(
    index_table: pa.Table,
    store: str | os.PathLike,
    specs: InputSpec | Iterable[InputSpec] | Mapping[str, InputSpec],
    *,
    batch_size: int | None = None,
    force: bool = False,
    not_indexed: list[dict] | None = None,
) -> IngestResult:
    """Decode the clips of ``index_table`` once and compute every input spec with Ray Data; write Parquet shards
    (or reuse a cache entry that holds them all).

    Args:
        index_table: rows from :func:`stethoscope.data.index.index` (any subset).
        store: local folder or pyarrow-filesystem URI; entries go under ``<store>/features/<fingerprint>/``.
        specs: one input spec, several, or a Method's ``{name: spec}`` (the union of what the chosen methods
            declare). Their hashes key the cache.
        batch_size: clips per ``map_batches`` task. Default: enough tasks for two per CPU of the cluster, at most
            64 clips each. Each task pays a fixed cost (deserializing the fused read → featurize → write function,
            tens of ms on a small machine), so batches of 8 spent as long on overhead as on the log-mel; see
            docs/ingest.md, "Performance".
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
    specs = _as_specs(specs)
    fp = fingerprint(index_table)
    index_skipped = sorted(({**s, "stage": "index"} for s in not_indexed or []), key=lambda s: s["path"])
    found = None if force else _find_entry(str(store), fp, specs)
    if found is not None:
        root, held = found
        log.info("feature cache hit: %s", root)
        report_path = storage.join(root, "ingest_report.json")
        report = storage.read_json(report_path)
        fresh = _with_index_skipped(report, index_skipped)
        if fresh != report:
            storage.write_json(report_path, fresh)
        return IngestResult(storage.join(root, "data"), root, True, fresh, held)
    root = storage.join(store, "features", fp, spec_set_hash(specs))
    data_path, report_path = storage.join(root, "data"), storage.join(root, "ingest_report.json")
    if storage.exists(storage.join(root, "_SUCCESS")):
        fs, p = storage.resolve(storage.join(root, "_SUCCESS"))
        fs.delete_file(p)
    report_parts = storage.join(root, "_report_parts")
    for stale in (data_path, report_parts):
        if storage.exists(stale):
            fs, p = storage.resolve(stale)
            fs.delete_dir(p)
    storage.makedirs(report_parts)
    t0 = time.perf_counter()
    meta = index_table.select(METADATA_COLUMNS + ([ATTRIBUTES_COLUMN] if ATTRIBUTES_COLUMN in index_table.column_names
                                                  else []))
    if batch_size is None:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        batch_size = max(1, min(MAX_BATCH_CLIPS, -(-meta.num_rows // (2 * cpus))))
    # The index is small (paths and labels only): cut it into one block per ``batch_size`` clips in the driver,
    # so the featurize tasks start at once (a ``repartition`` would add an all-to-all stage).
    blocks = [meta.slice(i, batch_size) for i in range(0, meta.num_rows, batch_size)]
    ds = ray.data.from_arrow(blocks)
    _start_every_task_at_once(ds)
    ds = ds.map_batches(
        _featurize_batch,
        batch_size=batch_size,
        batch_format="pyarrow",
        fn_kwargs={"specs": [input_spec_to_dict(s) for s in specs], "report_dir": report_parts},
        num_cpus=1,
    )
    ds.write_parquet(data_path, **parquet_options(specs))
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
        "input_specs": [input_spec_to_dict(s) for s in specs],
        "input_columns": {input_column(s): s.hash() for s in specs},
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
    storage.write_json(storage.join(root, "specs.json"), [input_spec_to_dict(s) for s in specs])
    storage.write_text(storage.join(root, "_SUCCESS"), time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    for s in report["skipped"]:
        log.warning("skipped (%s) %s: %s %s", s["stage"], s["path"], s["reason"], s.get("detail", ""))
    log.info("ingested %d clip(s), skipped %d, in %.1f s → %s", n_ok, len(report["skipped"]), elapsed, data_path)
    return IngestResult(data_path, root, False, report, specs)


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


#: Largest feature store (bytes of its Parquet files) whose clips :func:`scoring_features` reads in this process with
#: pyarrow instead of a Ray Data job: a Ray Data execution costs ~1-5 s of start-up, which dominated scoring small
#: sets (every pass of the evaluate and detect stages paid it). Larger stores stream through Ray Data.
LOCAL_READ_BYTES = 256 * 2**20


def where_expression(where: Mapping[str, object]):
    """A pyarrow dataset filter from ``{column: value or [values]}`` (equality or membership; None values are
    skipped), as :func:`read_features` filters with Ray Data. None when nothing filters."""
    import pyarrow.dataset as pads

    expr = None
    for name, value in where.items():
        if value is None:
            continue
        term = pads.field(name).isin(list(value)) if isinstance(value, (list, tuple, set)) else (
            pads.field(name) == value)
        expr = term if expr is None else (expr & term)
    return expr


class LocalFeatures:
    """Clips of a small feature store, read in this process with pyarrow (no Ray job), with a Ray Dataset's
    ``iter_batches(batch_size=..., batch_format="numpy")``: the same numpy column batches (Ray's own block
    conversion, :class:`ray.data.block.BlockAccessor`: fixed-shape tensor columns as [B, ...] arrays, ragged ones as
    object arrays of ndarrays). Built by :func:`scoring_features`.

    Args:
        features_path: the store entry's feature folder (local path or URI). where: as :func:`read_features` (a
            ``path`` filter included).
    """

    def __init__(self, features_path: str, /, **where):
        self.features_path = features_path
        self.where = where

    def _table(self):
        import pyarrow.dataset as pads
        import ray.data  # noqa: F401 - registers Ray's tensor extension types, which the store's columns use

        fs, root = storage.resolve(self.features_path)
        return pads.dataset(root, filesystem=fs, format="parquet").to_table(filter=where_expression(self.where))

    def iter_batches(self, *, batch_size: int = 16, batch_format: str = "numpy", **_ignored):
        """Yield ``{column: numpy array}`` batches of at most ``batch_size`` clips (store order).

        Raises:
            ValueError: a batch_format other than "numpy".
        """
        from ray.data.block import BlockAccessor

        if batch_format != "numpy":
            raise ValueError(f"LocalFeatures.iter_batches: batch_format {batch_format!r}; only 'numpy'")
        table = self._table()
        for start in range(0, table.num_rows, batch_size):
            yield BlockAccessor.for_block(table.slice(start, batch_size)).to_batch_format("numpy")


def scoring_features(result_or_path: IngestResult | str, *, max_bytes: int = LOCAL_READ_BYTES, **where):
    """The ingested clips to score: a :class:`LocalFeatures` (read in this process) when the store's Parquet files
    hold at most ``max_bytes``, else the lazy Ray Dataset of :func:`read_features` (streamed). Both give
    ``iter_batches(batch_size=..., batch_format="numpy")`` with the same batches. ``where`` as
    :func:`read_features`."""
    path = result_or_path.features_path if isinstance(result_or_path, IngestResult) else result_or_path
    fs, root = storage.resolve(path)
    try:
        import pyarrow.dataset as pads

        files = pads.dataset(root, filesystem=fs, format="parquet").files
        size = sum(info.size or 0 for info in fs.get_file_info(files))
    except (OSError, ValueError):  # unreadable as one local dataset: let Ray Data read it (and report)
        size = max_bytes + 1
    if size <= max_bytes:
        return LocalFeatures(path, **where)
    return read_features(path, **where)


def named_inputs(batch: Mapping[str, object], specs: Mapping[str, InputSpec]) -> dict[str, object]:
    """A store batch's input columns under a Method's names: ``{name: batch[input_column(spec)]}``. A batch that
    already uses the method's names (``{"log_mel": ...}``, e.g. built in memory) is taken as it is.

    Raises:
        DataError: the batch lacks a spec's column (the store entry was made for other inputs).
    """
    out = {}
    for name, spec in specs.items():
        col = input_column(spec)
        if col not in batch and name in batch:
            col = name
        if col not in batch:
            raise DataError(f"the ingested features have no column for input {name!r} ({spec.to_dict()}); "
                            "ingest them with this method's input specs")
        out[name] = batch[col]
    return out
