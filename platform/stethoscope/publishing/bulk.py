"""Offline bulk scoring (issue 18 §3; docs/score.md): every WAV under a folder or a bucket, scored with the published
bundles by a Ray Data actor pool, written as one Parquet of scores and decisions plus the DCASE-format CSVs.

The steps, in order:

1. :func:`list_wavs` — every file under the input (a local folder or any pyarrow-filesystem URI,
   ``s3://bucket/prefix``) whose path relative to the input matches a glob (``**/*.wav``; fsspec's glob grammar).
2. :func:`route_files` — which bundle scores each file. The machine type and the group (machine_id for DCASE 2020,
   section for 2021+) come from the path, read with the dataset index's grammar
   (:func:`stethoscope.data.index.parse_path`: ``<machine_type>/<split>/<name>.wav``), or from the caller
   (``machine_type`` plus ``machine_id`` / ``section``) for a folder of arbitrarily named files. The group is the one
   serving would map a request to (:func:`stethoscope.data.labels.request_group`, by the bundle's ``id_field``) and
   the scope is :func:`stethoscope.publishing.scope_for`'s (the group's own bundle, else the machine-wide one). The
   version is the one ``CURRENT`` names when the job starts, so every clip of a run is scored by the same bundle.
3. :func:`score_table` — Ray Data: ``from_items`` (one row per routed file, sorted by bundle and group so a batch
   holds clips of one bundle) → ``map_batches(BundleScorer, compute=ActorPoolStrategy(size=actors))``, a fixed
   pool of actors. Each actor loads each bundle once (:func:`load_bundle`, cached by machine type, scope and
   version), reads each file's bytes itself, decodes them with :func:`stethoscope.data.audio.decode_audio`
   (serving's checks, resampled to the bundle's rate) and scores the clips of one bundle and group together with
   :meth:`Bundle.score_waveforms`.
4. :func:`write_outputs` — ``scores.parquet``, the DCASE CSVs and ``report.json`` under the output.

A file that cannot be routed, read, decoded or scored never fails the run: it becomes a row with an ``error`` reason
(:data:`ERROR_REASONS`, or an :data:`stethoscope.data.audio.REASONS` reason) and an ``error_message``, and is listed in
the report. :func:`bulk_score` runs the four steps.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stethoscope import storage
from stethoscope.data.index import DCASE2020, DCASE2021_PLUS, parse_path
from stethoscope.data.labels import parse_group, request_group
from stethoscope.errors import AudioError, ConfigError, DataError, StethoscopeError
from stethoscope.evaluation.report import score_csv_name, write_score_csv
from stethoscope.evaluation.threshold import write_decision_csvs
from stethoscope.publishing.bundle import load_bundle, scope_for
from stethoscope.publishing.store import RegistryError, list_bundles

log = logging.getLogger(__name__)

DEFAULT_GLOB = "**/*.wav"
SCORES_FILE = "scores.parquet"
#: The report's machine-type key of files whose machine type could not be told (``unroutable_name``).
UNKNOWN_MACHINE_TYPE = "(unknown)"
REPORT_FILE = "report.json"

#: ``error`` reasons of this module → (stage, meaning). Decoding failures carry the reasons of
#: :data:`stethoscope.data.audio.REASONS` (stage ``read``).
ERROR_REASONS = {
    "unroutable_name": ("route", "no machine type / group in the path (not <machine_type>/<split>/<DCASE name>.wav) "
                                 "and none given (--machine-type)"),
    "missing_group": ("route", "the machine type's bundles are identified by the other field (machine_id vs section)"),
    "no_bundle": ("route", "no published bundle serves this machine type and group"),
    "bundle_unusable": ("route", "the bundle that serves it cannot be read or loaded (the message says why)"),
    "unreadable": ("read", "the file cannot be read from its filesystem (permissions, I/O, vanished)"),
    "score_failed": ("score", "the bundle raised while scoring the clip (the message names the error)"),
}

#: The routing columns (the driver's table, one row per file).
ROUTE_SCHEMA = pa.schema([
    ("path", pa.string()),          # local absolute path or URI (s3://bucket/key)
    ("file_name", pa.string()),
    ("machine_type", pa.string()),
    ("machine_id", pa.string()),    # DCASE 2020, else null
    ("section", pa.string()),       # DCASE 2021+, else null
    ("dataset", pa.string()),       # dcase2020 | dcase2021+ (the bundle's), names the CSVs
    ("split", pa.string()),         # from a DCASE tree's folder (train / test), else null
    ("group", pa.string()),         # id_XX / section_XX, or null (machine-wide bundle, no group given)
    ("scope", pa.string()),         # the bundle scope that scores it: id_XX / section_XX / all
    ("version", pa.string()),       # the bundle version
    ("error", pa.string()),
    ("error_message", pa.string()),
])
#: What each actor returns: the routing columns and the scores.
SCORED_SCHEMA = pa.schema(list(ROUTE_SCHEMA) + [
    ("score", pa.float64()),        # ensemble score (higher = more anomalous); null when ``error``
    ("threshold", pa.float64()),    # the bundle's decision threshold
    ("is_anomaly", pa.bool_()),     # score > threshold; null when ``error``
    ("members", pa.list_(pa.string())),
    ("raw", pa.list_(pa.float64())),           # each member's raw score
    ("standardized", pa.list_(pa.float64())),  # each member's standardized score (the ensemble's input)
    ("notes", pa.string()),         # what decoding changed (resampled, kept channel 0)
])


@dataclass(frozen=True)
class Routing:
    """Routing given by the user for files whose paths do not name it (``--machine-type`` + ``--machine-id`` /
    ``--section``). An empty Routing routes by path."""

    machine_type: str | None = None
    machine_id: str | None = None
    section: str | None = None

    def __post_init__(self):
        if (self.machine_id or self.section) and not self.machine_type:
            raise ConfigError("--machine-id / --section need --machine-type")
        if self.machine_id and self.section:
            raise ConfigError("give --machine-id (DCASE 2020) or --section (2021+), not both")


@dataclass
class BulkResult:
    """What :func:`bulk_score` did: the per-file table (:data:`SCORED_SCHEMA` columns, plus ``raw__<member>`` /
    ``z__<member>``), the report (the dict written to ``report.json``) and the output location."""

    table: pd.DataFrame
    report: dict[str, Any]
    output: str
    csv_files: list[str] = field(default_factory=list)

    @property
    def n_scored(self) -> int:
        return int(self.report["n_scored"])


# ---------------------------------------------------------------------------------------------------------------
# 1. listing
# ---------------------------------------------------------------------------------------------------------------
def list_wavs(input_uri: str | os.PathLike, glob: str = DEFAULT_GLOB) -> list[str]:
    """Every file under ``input_uri`` whose path relative to it matches ``glob``, sorted.

    Args:
        input_uri: a local folder, a pyarrow-filesystem URI (``s3://bucket/prefix``), or one file.
        glob: fsspec's glob grammar (``**`` spans folders, ``*`` stays within one): ``**/*.wav`` is every .wav at any
            depth, ``*/test/*.wav`` the test clips of a DCASE tree.
    Returns:
        local absolute paths, or URIs with the input's scheme (``s3://bucket/key``).
    Raises:
        DataError: the input does not exist. StorageError: its filesystem cannot be opened or listed.
    """
    from fsspec.utils import glob_translate

    text = str(input_uri)
    fs, root = storage.resolve(text)
    try:
        kind = fs.get_file_info(root).type
        if kind == pafs.FileType.NotFound:
            raise DataError(f"input {text} does not exist")
        if kind == pafs.FileType.File:
            return [text if storage.is_uri(text) else root]
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as exc:
        raise storage.StorageError(f"input {text}: cannot be listed: {exc}") from None
    pattern = re.compile(glob_translate(glob))
    prefix = text.split("://", 1)[0] + "://" if storage.is_uri(text) else ""
    base = root.rstrip("/")
    return sorted(prefix + i.path for i in infos
                  if i.type == pafs.FileType.File and pattern.fullmatch(i.path[len(base):].lstrip("/")))


# ---------------------------------------------------------------------------------------------------------------
# 2. routing
# ---------------------------------------------------------------------------------------------------------------
def published(registry: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    """``{machine_type: {scope: summary}}`` of every current bundle (:func:`list_bundles`; a broken bundle's summary
    holds ``error``).

    Raises:
        RegistryError: the registry does not exist, or holds no bundle at all.
    """
    bundles = list_bundles(registry)
    if not bundles:
        raise RegistryError(f"the registry {registry} holds no published bundle; run jobs/publish.py first")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for b in bundles:
        out.setdefault(b["machine_type"], {})[b["scope"]] = b
    return out


def _route_one(path: str, bundles: dict[str, dict[str, dict[str, Any]]], routing: Routing) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in ROUTE_SCHEMA.names}
    row.update(path=path, file_name=posixpath.basename(path))

    def fail(reason: str, message: str) -> dict[str, Any]:
        row.update(error=reason, error_message=message)
        return row

    if routing.machine_type:
        row.update(machine_type=routing.machine_type, machine_id=routing.machine_id, section=routing.section)
    else:
        parsed = parse_path(path.split("://", 1)[-1])
        if parsed is None:
            return fail("unroutable_name", "the path is not <machine_type>/{train,test}/<DCASE 2020 or 2021+ name>.wav;"
                                           " give --machine-type (and --machine-id / --section) for such files")
        row.update({k: parsed[k] for k in ("machine_type", "machine_id", "section", "split")})
    mt = row["machine_type"]
    scopes = bundles.get(mt)
    if not scopes:
        return fail("no_bundle", f"no bundle is published for machine type {mt!r}; published: {sorted(bundles)}")
    id_name = next((s["id_field"] for s in scopes.values() if s.get("id_field")), "machine_id")
    group = None
    if row["machine_id"] is not None or row["section"] is not None:
        try:
            group = request_group(mt, id_name, row["machine_id"], row["section"])
        except DataError as exc:
            return fail("missing_group", str(exc))
    scope = scope_for(scopes, group)
    if scope is None:
        return fail("no_bundle", f"machine type {mt!r} has no bundle for {group!r} and no machine-wide bundle; "
                                 f"published: {sorted(scopes)}")
    summary = scopes[scope]
    row.update(group=group, scope=scope, version=summary.get("version"),
               dataset=summary.get("dataset") or (DCASE2020 if id_name == "machine_id" else DCASE2021_PLUS))
    if summary.get("error"):
        return fail("bundle_unusable", f"bundle {mt}/{scope}: {summary['error']}")
    return row


def route_files(paths: Iterable[str], bundles: dict[str, dict[str, dict[str, Any]]],
                routing: Routing = Routing()) -> pa.Table:
    """Which bundle scores each file (the rules in the module docstring).

    Args:
        paths: from :func:`list_wavs`. bundles: from :func:`published`. routing: the user's, or by path.
    Returns:
        one row per path in :data:`ROUTE_SCHEMA`; a file that cannot be routed has ``error`` (``unroutable_name``,
        ``missing_group``, ``no_bundle``, ``bundle_unusable``) and ``error_message``. Never raises for a file.
    """
    return pa.Table.from_pylist([_route_one(p, bundles, routing) for p in paths], schema=ROUTE_SCHEMA)


# ---------------------------------------------------------------------------------------------------------------
# 3. scoring
# ---------------------------------------------------------------------------------------------------------------
def _failed(row: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    return {**row, "error": reason, "error_message": message}


def read_file(fs: pafs.FileSystem, path: str) -> bytes:
    """The bytes of ``path`` (a local path, or a URI :func:`list_wavs` gave) on ``fs``, the filesystem of the input
    it was listed under. The URI is not parsed again: pyarrow cannot parse a URI with a space in it, while object
    keys and file names may hold one. Raises OSError."""
    with fs.open_input_stream(path.split("://", 1)[1] if storage.is_uri(path) else path) as fh:
        return fh.read()


def score_rows(rows: list[dict[str, Any]], get_bundle: Callable[[str, str, str], Any], read: Callable[[str], bytes],
               max_seconds: float | None = None) -> list[dict[str, Any]]:
    """Read, decode and score routed rows (no Ray: the body of one actor batch).

    Args:
        rows: :data:`ROUTE_SCHEMA` dicts without ``error``.
        get_bundle: ``(machine_type, scope, version) -> Bundle`` (raises StethoscopeError when it cannot load).
        read: ``path -> bytes`` (raises OSError), e.g. :func:`read_file` on the input's filesystem.
        max_seconds: longest clip decoded (s, from the header); None: :func:`decode_audio`'s sample limit only.
    Returns:
        one :data:`SCORED_SCHEMA` dict per row, in the rows' order. A file that cannot be read (``unreadable``),
        decoded (an :class:`AudioError` reason: ``empty_file``, ``not_audio``, ``too_short`` ...) or scored
        (``score_failed``), or whose bundle cannot be loaded (``bundle_unusable``), gets ``error``; it never raises.
    """
    from stethoscope.data.audio import decode_audio

    out: list[dict[str, Any] | None] = [None] * len(rows)
    waves: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    for i, row in enumerate(rows):
        key = (row["machine_type"], row["scope"], row["version"])
        try:
            bundle = get_bundle(*key)
        except StethoscopeError as exc:
            out[i] = _failed(row, "bundle_unusable", str(exc))
            continue
        try:
            data = read(row["path"])
            wave, notes = decode_audio(data, bundle.sample_rate, min_samples=bundle.min_samples,
                                       max_seconds=max_seconds, name=row["path"])
        except AudioError as exc:
            out[i] = _failed(row, exc.reason, exc.detail or str(exc))
            continue
        except OSError as exc:
            out[i] = _failed(row, "unreadable", f"{type(exc).__name__}: {exc}")
            continue
        row = {**row, "notes": "; ".join(notes.notes) or None}
        out[i] = row
        waves.setdefault(key + (row["group"],), []).append((i, wave))
    for (mt, scope, version, group), items in waves.items():
        bundle = get_bundle(mt, scope, version)
        names = [m.name for m in bundle.members]
        try:
            scored = bundle.score_waveforms([w for _, w in items], group)
        except Exception as exc:  # noqa: BLE001 - one group's failure is reported on its rows, never fatal
            for i, _ in items:
                out[i] = _failed(out[i], "score_failed", f"{type(exc).__name__}: {exc}")
            continue
        for (i, _), s in zip(items, scored):
            out[i].update(score=s["score"], threshold=bundle.threshold.value, is_anomaly=s["is_anomaly"],
                          members=names, raw=s["raw"], standardized=s["standardized"])
    return [{**{name: None for name in SCORED_SCHEMA.names}, **r} for r in out]


class BundleScorer:
    """Ray Data ``map_batches`` callable class: one per actor, each bundle loaded once per actor (cached by machine
    type, scope and version, a load failure too).

    Args:
        registry: the store root (folder or URI). input_uri: the folder or URI the files were listed under (its
            filesystem reads them). num_threads: torch intra-op threads of the actor (its CPUs).
        max_seconds: see :func:`score_rows`.
    """

    def __init__(self, registry: str, input_uri: str, num_threads: int = 1, max_seconds: float | None = None):
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
        self.registry = registry
        self.fs = storage.resolve(input_uri)[0]
        self.max_seconds = max_seconds
        self._bundles: dict[tuple[str, str, str], Any] = {}

    def bundle(self, machine_type: str, scope: str, version: str):
        """The loaded bundle (raises the cached StethoscopeError of a bundle that failed to load)."""
        key = (machine_type, scope, version)
        if key not in self._bundles:
            try:
                self._bundles[key] = load_bundle(self.registry, machine_type, scope, version)
                log.debug("loaded bundle %s/%s/%s", *key)
            except StethoscopeError as exc:
                self._bundles[key] = exc
        got = self._bundles[key]
        if isinstance(got, Exception):
            raise got
        return got

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = score_rows(batch.to_pylist(), self.bundle, lambda path: read_file(self.fs, path), self.max_seconds)
        return pa.Table.from_pylist(rows, schema=SCORED_SCHEMA)


def pool_size(n_clips: int, batch_size: int, actors: int | None = None, num_cpus: float = 1) -> int:
    """Actors of the pool: ``actors``, or the cluster's CPUs / ``num_cpus``; never more than the batches
    (Ray must be initialised when ``actors`` is None)."""
    if actors is None:
        import ray

        actors = int(ray.cluster_resources().get("CPU", 1) // max(num_cpus, 1e-9))
    return max(1, min(int(actors), -(-max(n_clips, 1) // batch_size)))


def score_table(routed: pa.Table, registry: str, input_uri: str, *, actors: int | None = None, batch_size: int = 16,
                num_cpus: float = 1, max_seconds: float | None = None) -> pa.Table:
    """Score the routed files without ``error`` on Ray Data with an actor pool (Ray must be initialised).

    Args:
        routed: :func:`route_files`' table. registry: the store root. input_uri: what the files were listed under.
        actors: actor pool size (default: the cluster's CPUs / ``num_cpus``, at most one per batch).
        batch_size: clips per ``map_batches`` batch (one actor call). num_cpus: CPUs per actor (its torch threads).
    Returns:
        :data:`SCORED_SCHEMA` rows of the routable files, sorted by path (files that fail carry ``error``).
    """
    import ray

    rows = routed.filter(pc.is_null(routed["error"])).to_pylist()
    if not rows:
        return SCORED_SCHEMA.empty_table()
    # clips of one bundle and group side by side, so most batches hold one bundle and score in one call
    rows.sort(key=lambda r: (r["machine_type"], r["scope"], r["group"] or "", r["path"]))
    n_batches = -(-len(rows) // batch_size)
    actors = pool_size(len(rows), batch_size, actors, num_cpus)
    ds = ray.data.from_items(rows, override_num_blocks=n_batches)
    ds = ds.map_batches(BundleScorer, fn_constructor_kwargs={"registry": registry, "input_uri": input_uri,
                                                             "num_threads": max(1, int(num_cpus)),
                                                             "max_seconds": max_seconds},
                        batch_size=batch_size, batch_format="pyarrow", num_cpus=num_cpus,
                        compute=ray.data.ActorPoolStrategy(size=actors))  # a fixed pool (``concurrency`` is deprecated)
    parts = [ray.get(ref) for ref in ds.to_arrow_refs()]
    table = pa.concat_tables([p.cast(SCORED_SCHEMA) for p in parts if p.num_rows]) if parts else \
        SCORED_SCHEMA.empty_table()
    return table.sort_by("path")


# ---------------------------------------------------------------------------------------------------------------
# 4. outputs
# ---------------------------------------------------------------------------------------------------------------
def scores_frame(routed: pa.Table, scored: pa.Table) -> pd.DataFrame:
    """One row per file (routing failures and scored files), sorted by path, with each member's scores as
    ``raw__<member>`` / ``z__<member>`` columns (as ``ensemble_scores.parquet`` names them; null where the
    bundle has no such member) instead of the list columns."""
    failed = routed.filter(pc.is_valid(routed["error"]))
    table = pa.concat_tables([scored, failed], promote_options="default").sort_by("path")
    df = table.drop_columns(["members", "raw", "standardized"]).to_pandas()
    names = sorted({n for ms in table["members"].to_pylist() if ms for n in ms})
    members, raw, z = (table[c].to_pylist() for c in ("members", "raw", "standardized"))
    for name in names:
        for prefix, values in (("raw__", raw), ("z__", z)):
            df[prefix + name] = [v[ms.index(name)] if ms and name in ms else np.nan for ms, v in zip(members, values)]
    return df


def _csv_frames(df: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame, float]]:
    """``(CSV group number, rows, threshold)`` per (dataset, machine_type, group) of the scored rows that belong in
    the DCASE CSVs: those with a group and not from a ``train`` folder."""
    ok = df[df["error"].isna() & df["group"].notna() & (df["split"].fillna("") != "train")]
    for (dataset, mt, group), g in ok.groupby(["dataset", "machine_type", "group"], sort=True):
        yield parse_group(group)[1], g, float(g["threshold"].iloc[0])


def write_outputs(df: pd.DataFrame, report: dict[str, Any], output: str) -> list[str]:
    """Write ``scores.parquet``, the DCASE CSVs (``anomaly_score_*`` and ``decision_result_*``, named by
    :func:`score_csv_name` / :func:`decision_csv_name`, written by the evaluation stage's writers) and
    ``report.json`` under ``output`` (a folder, made if missing, or a URI: staged locally, then copied).

    The CSVs hold the scored clips with a group that are not in a ``train`` folder (DCASE's score files are test
    scores); a clip without a group (user routing without an ID / section) is in the Parquet only.
    Returns the CSV names written, sorted.
    """
    local = output if not storage.is_uri(output) else storage.staging_folder("stethoscope-score-")
    os.makedirs(local, exist_ok=True)
    names: list[str] = []
    for number, g, threshold in _csv_frames(df):
        dataset, mt = g["dataset"].iloc[0], g["machine_type"].iloc[0]
        name = score_csv_name(dataset, mt, number)
        write_score_csv(os.path.join(local, name), g)
        names.append(name)
        group_field = "machine_id" if dataset == DCASE2020 else "section"
        frame = g.assign(**{group_field: number})
        names += [os.path.basename(p) for p in write_decision_csvs(frame, threshold, local)]
        dupes = sorted(g["file_name"][g["file_name"].duplicated()].unique())
        if dupes:
            report.setdefault("notes", []).append(
                f"{name}: {len(dupes)} file name(s) appear more than once (files in several folders): {dupes[:5]}")
    report["csv_files"] = sorted(names)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), os.path.join(local, SCORES_FILE))
    storage.write_json(os.path.join(local, REPORT_FILE), report)
    if local != output:
        storage.copy_tree(local, output)
    return sorted(names)


def _error_entries(df: pd.DataFrame, stage: str) -> list[dict[str, str]]:
    bad = df[df["error"].notna()]
    keep = [(p, r, m) for p, r, m in zip(bad["path"], bad["error"], bad["error_message"])
            if ERROR_REASONS.get(r, ("read",))[0] == stage]
    return [{"path": p, "reason": r, "message": m} for p, r, m in keep]


def make_report(df: pd.DataFrame, *, registry: str, input_uri: str, output: str, elapsed_s: float,
                scoring_s: float, actors: int | None, batch_size: int) -> dict[str, Any]:
    """The ``report.json`` dict: counts, per machine type, the bundles used, every failed file with its reason and
    message (``unroutable``, ``unreadable``, ``score_failed``), clips/s (scored clips / scoring seconds, the Ray
    Data run including its actors' start and bundle loads) and the elapsed seconds (listing to written outputs)."""
    ok = df["error"].isna()
    per_mt = {}
    for mt, g in df.groupby(df["machine_type"].fillna(UNKNOWN_MACHINE_TYPE), sort=True):
        good = g["error"].isna()
        per_mt[mt] = {"files": int(len(g)), "scored": int(good.sum()),
                      "anomalies": int(g.loc[good, "is_anomaly"].astype(bool).sum()), "errors": int((~good).sum())}
    used = df[ok].groupby(["machine_type", "scope", "version"], sort=True).size()
    return {
        "registry": registry, "input": input_uri, "output": output,
        "n_files": int(len(df)), "n_scored": int(ok.sum()), "n_errors": int((~ok).sum()),
        "n_anomalies": int(df.loc[ok, "is_anomaly"].astype(bool).sum()),
        "machine_types": per_mt,
        "bundles": [{"machine_type": mt, "scope": sc, "version": v, "clips": int(n)}
                    for (mt, sc, v), n in used.items()],
        "unroutable": _error_entries(df, "route"),
        "unreadable": _error_entries(df, "read"),
        "score_failed": _error_entries(df, "score"),
        "clips_per_s": round(float(ok.sum()) / scoring_s, 3) if scoring_s > 0 else None,
        "scoring_s": round(scoring_s, 3), "elapsed_s": round(elapsed_s, 3),
        "actors": actors, "batch_size": batch_size,
    }


def bulk_score(registry: str | os.PathLike, input_uri: str | os.PathLike, output: str | os.PathLike, *,
               routing: Routing = Routing(), glob: str = DEFAULT_GLOB, actors: int | None = None,
               batch_size: int = 16, num_cpus: float = 1, max_seconds: float | None = None) -> BulkResult:
    """List, route, score (Ray Data actor pool; Ray must be initialised) and write the outputs.

    Args:
        registry: bundle store root (folder or URI). input_uri: folder, URI or one file. output: folder or URI.
        routing: the user's machine type and group, or by path. glob: :func:`list_wavs`.
        actors, batch_size, num_cpus, max_seconds: :func:`score_table`.
    Returns:
        BulkResult. A run that scores nothing still writes its outputs (the caller decides the exit status).
    Raises:
        RegistryError: the registry is missing or empty. DataError: the input does not exist or holds no file
            matching ``glob``. StorageError: an unreachable input, registry or output.
    """
    registry, input_uri, output = str(registry), str(input_uri), str(output)
    t0 = time.perf_counter()
    for uri, what in ((registry, "--registry"), (input_uri, "--input"), (output, "--output")):
        storage.check_access(uri, what)
    bundles = published(registry)
    paths = list_wavs(input_uri, glob)
    if not paths:
        raise DataError(f"no file under {input_uri} matches {glob!r}")
    routed = route_files(paths, bundles, routing)
    n_routed = int(pc.sum(pc.is_null(routed["error"])).as_py() or 0)
    log.info("%d file(s) under %s, %d routed to a bundle", len(paths), input_uri, n_routed)
    actors = pool_size(n_routed, batch_size, actors, num_cpus)
    t1 = time.perf_counter()
    scored = score_table(routed, registry, input_uri, actors=actors, batch_size=batch_size, num_cpus=num_cpus,
                         max_seconds=max_seconds)
    scoring_s = time.perf_counter() - t1
    df = scores_frame(routed, scored)
    report = make_report(df, registry=registry, input_uri=input_uri, output=output,
                         elapsed_s=time.perf_counter() - t0, scoring_s=scoring_s, actors=actors, batch_size=batch_size)
    csvs = write_outputs(df, report, output)
    return BulkResult(df, report, output, csvs)


def format_summary(result: BulkResult) -> str:
    """The job's final table: per machine type, files, scored clips, anomalies and errors, then one result line."""
    r = result.report
    lines = [f"{'machine_type':<16}{'files':>8}{'scored':>8}{'anomalies':>11}{'errors':>8}"]
    for mt, c in r["machine_types"].items():
        lines.append(f"{mt:<16}{c['files']:>8}{c['scored']:>8}{c['anomalies']:>11}{c['errors']:>8}")
    for key in ("unroutable", "unreadable", "score_failed"):
        for e in r[key]:
            lines.append(f"{key}: {e['path']}: {e['reason']} ({e['message']})")
    rate = f"{r['clips_per_s']:.1f} clips/s" if r["clips_per_s"] else "no clips scored"
    lines.append(f"scored {r['n_scored']} of {r['n_files']} file(s), {r['n_anomalies']} anomalous, {r['n_errors']} "
                 f"error(s); {rate} over {r['scoring_s']:.1f} s; outputs in {result.output}")
    return "\n".join(lines)


__all__ = ["BulkResult", "BundleScorer", "DEFAULT_GLOB", "ERROR_REASONS", "REPORT_FILE", "ROUTE_SCHEMA", "Routing",
           "SCORED_SCHEMA", "SCORES_FILE", "UNKNOWN_MACHINE_TYPE", "bulk_score", "format_summary", "list_wavs",
           "make_report", "pool_size", "published", "read_file", "route_files", "score_rows", "score_table",
           "scores_frame", "write_outputs"]
