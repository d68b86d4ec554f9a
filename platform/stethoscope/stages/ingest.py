"""Ingest stage (DESIGN.md step 3): the run's Config and input specs, then index → select → Ray Data ingest.

:func:`ingest_stage` hands on a :class:`Prepared` (the selection, its feature dataset and bookkeeping), which every
later stage (:mod:`stethoscope.stages`) reads clips from.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from stethoscope import methods, storage
from stethoscope.data.features import FeatureSpec, log_mel_spec
from stethoscope.data.index import index, select, select_ids
from stethoscope.data.labels import id_field, parse_group
from stethoscope.errors import ConfigError, DataError
from stethoscope.splits import CLIP_COLUMNS

log = logging.getLogger(__name__)

#: How a selection of several machine types is named (Prepared.machine_type, run folder names, run.json).
ALL_LABEL = "all"


def input_specs_for(method_name: str, config: Any, overrides: dict | None = None) -> dict[str, Any]:
    """The method's declared inputs (``Method.input_specs``); ``overrides`` change the fields of its spectrogram
    input(s) (e.g. ``{"n_mels": 64}``; unknown keys / bad values → ConfigError)."""
    cls = methods.get(method_name)
    specs = dict(cls.input_specs(config))
    if overrides:
        for name, spec in specs.items():
            if isinstance(spec, FeatureSpec):
                specs[name] = FeatureSpec.from_dict({**spec.to_dict(), **overrides})
    return specs


def feature_spec_for(method_name: str, config: Any, overrides: dict | None = None) -> FeatureSpec:
    """The spectrogram spec of a log-mel method (:func:`stethoscope.data.features.log_mel_spec` of its inputs).

    Raises:
        ConfigError: the method declares no spectrogram input, or several and none named ``log_mel``.
    """
    specs = input_specs_for(method_name, config, overrides)
    spec = log_mel_spec(specs)
    if spec is None:
        raise ConfigError(f"method {method_name!r} declares inputs {sorted(specs)}: no single log-mel spectrogram")
    return spec


def resolve_config(method: str, machine_type: str, overrides: dict | None = None,
                   preset: bool = False) -> tuple[Any, dict | None]:
    """The run's Config: the paper preset of ``machine_type`` (if ``preset``), updated with ``overrides`` (which
    win: ``--config``, then ``--set``, then ``--epochs``), then validated.

    Returns:
        ``(config, preset record or None)``; the record (:func:`stethoscope.presets.preset_record`) goes into
        run.json.
    Raises:
        ConfigError: unknown method, no preset row for the machine type (lists the rows), a bad value, or an
            unknown detector candidate.
    """
    cls = methods.get(method)
    record = None
    values: dict = {}
    if preset:
        from stethoscope.presets import preset_record

        record = preset_record(method, machine_type)
        values.update(record["values"])
    values.update(overrides or {})
    if record is not None:
        record["overridden"] = sorted(k for k in (overrides or {}) if k in record["values"]
                                      and overrides[k] != record["values"][k])
    cfg = cls.make_config(values)
    if getattr(cfg, "detectors", None):  # an embedding method's detector candidates: checked before anything trains
        from stethoscope.detectors.stage import parse_candidates, split_own_score

        own, detectors = split_own_score(cfg.detectors)
        if detectors or not own:  # ["method"] alone names no detector (parse_candidates([]) = the defaults)
            parse_candidates(detectors)
    return cfg, record


@dataclass
class Prepared:
    """What the ingest stage hands on: the selection, its feature dataset handles and bookkeeping.

    ``machine_type`` names the selection in messages and folder names: its one machine type, or ``all`` when it
    holds several (an all_machine_types run); ``machine_types`` lists them.
    """

    machine_type: str
    id_col: str
    ids: list[str]
    dataset_kind: str
    ingest: Any
    where: dict
    skipped_unparseable: list[str]
    machine_types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.machine_types:
            self.machine_types = [self.machine_type]

    def features(self, split: str, paths: list[str] | None = None, unit: Any = None):
        """Ray Dataset of the selection's ingested clips of ``split`` ("train"/"test"), optionally only ``paths``,
        and only those of a training ``unit`` (:class:`stethoscope.scopes.Unit`; None = the whole selection)."""
        from stethoscope.data.ingest import read_features

        return read_features(self.ingest, split=split, **self._where(paths, unit))

    def _where(self, paths: list[str] | None, unit: Any) -> dict:
        """The metadata filter of the selection, a unit's clips and optionally ``paths``."""
        where = dict(self.where)
        if unit is not None:
            where["machine_type"] = list(unit.machine_types)
            if unit.group is not None:
                where[self.id_col] = [parse_group(unit.group)[1]]
        if paths is not None:
            where["path"] = list(paths)
        return where

    def scoring_features(self, split: str, paths: list[str] | None = None, unit: Any = None):
        """:meth:`features` for scoring: the same clips, read in this process when the store is small
        (:func:`stethoscope.data.ingest.scoring_features`: no Ray Data job's start-up per scoring pass), else the
        lazy Ray Dataset. Either gives ``iter_batches(batch_size=..., batch_format="numpy")``."""
        from stethoscope.data.ingest import scoring_features

        return scoring_features(self.ingest, split=split, **self._where(paths, unit))

    def clips(self) -> pd.DataFrame:
        """Metadata of every ingested clip of the selection (train and test), one row per clip, columns
        :data:`stethoscope.splits.CLIP_COLUMNS`. Read with pyarrow in the driver (no Ray job)."""
        import pyarrow.dataset as pads

        from stethoscope.data.ingest import where_expression

        fs, path = storage.resolve(self.ingest.features_path)
        ds = pads.dataset(path, filesystem=fs, format="parquet")
        cols = [c for c in CLIP_COLUMNS if c in ds.schema.names]
        return ds.to_table(columns=cols, filter=where_expression(self.where)).to_pandas().sort_values("path").reset_index(drop=True)


def ingest_stage(
    data_root: str | os.PathLike,
    spec: Any,
    *,
    machine_type: str | list[str] | tuple[str, ...],
    machine_ids: list[str] | None = None,
    store: str = "store",
    lenient: bool = False,
    require_train: bool = True,
) -> Prepared:
    """Index ``data_root``, select one machine type or several (an all_machine_types run), and IDs/sections, and
    ingest them with Ray Data.

    ``spec``: the input specs to compute (one spec, several, or a Method's ``{name: spec}``). ``machine_ids``
    selects the same IDs / sections in every machine type.

    Raises:
        DataError: missing root, unknown machine type or IDs, no training clips for a machine type (if
            ``require_train``), no test clips, machine types of different dataset grammars.
        StorageError: ``store`` is a URI whose bucket does not exist or that the credentials cannot reach.
    """
    import pyarrow as pa

    from stethoscope.data.ingest import ingest
    from stethoscope.runtime import init_ray

    types = [machine_type] if isinstance(machine_type, str) else list(dict.fromkeys(machine_type))
    if not types:
        raise DataError("no machine type selected")
    storage.check_access(store, "store")  # a missing bucket or no credentials: fail before indexing
    idx = index(data_root, lenient=lenient)
    if idx.skipped:
        log.warning("skipped %d entr(ies) under the data root (listed in the ingest report): %s", len(idx.skipped),
                    [f"{s['path']}: {s['reason']}" for s in idx.skipped])
    tables = []
    for mt in types:
        table = select_ids(select(idx.table, machine_type=mt), machine_ids)
        id_col = id_field(table.column("dataset")[0].as_py())
        n_train = sum(1 for s in table.column("split").to_pylist() if s == "train")
        n_test = table.num_rows - n_train
        ids = sorted(set(table.column(id_col).to_pylist()))
        if require_train and n_train == 0:
            raise DataError(
                f"machine type {mt!r} ({id_col} {ids}) has no training clips under {data_root}; "
                f"expected {mt}/train/*.wav (normal operation). Only test clips were found."
            )
        if n_test == 0:
            raise DataError(f"machine type {mt!r} ({id_col} {ids}) has no test clips under {data_root}")
        tables.append(table)
    kinds = sorted({t.column("dataset")[0].as_py() for t in tables})
    if len(kinds) != 1:
        raise DataError(f"machine types {types} mix dataset grammars {kinds}; select types of one dataset")
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    dataset_kind = kinds[0]
    id_col = id_field(dataset_kind)
    ids = sorted(set(table.column(id_col).to_pylist()))
    init_ray(num_cpus=os.cpu_count())
    ing = ingest(table, store, spec, not_indexed=idx.skipped)
    label = types[0] if len(types) == 1 else ALL_LABEL
    where = {"machine_type": types[0] if len(types) == 1 else types, id_col: ids}
    return Prepared(label, id_col, ids, dataset_kind, ing, where,
                    [s["path"] for s in idx.skipped if s["reason"] == "unparseable_name"], types)


__all__ = ["ALL_LABEL", "Prepared", "feature_spec_for", "ingest_stage", "input_specs_for", "resolve_config"]
