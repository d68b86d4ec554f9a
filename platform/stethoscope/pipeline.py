"""All stages in order for one machine type: index → ingest → split → train → score → evaluate (DESIGN.md data
flow), then publish. The stages themselves live in :mod:`stethoscope.stages`; this module only chains them.

``run(...)`` is what ``jobs/pipeline.py`` wraps. Every artifact goes into one run folder (:mod:`stethoscope.runs`):
``run.json`` (arguments, seed, preset, versions, checkpoint, the split's hash), ``validation_split.json`` (the run's
one split, written before training: :mod:`stethoscope.splits`), ``ingest_report.json``, ``train_history.json``,
``model/``, ``scores.parquet`` (every test clip, with its role in the split), ``train_scores.parquet`` (every
training clip), the score CSVs, ``metrics.json``, ``results.md`` and ``plots/`` (the held-out test clips only); for
a method with score variants (AEGAN-AD, EGBAD) also ``score_variant.json`` (the variant chosen on the validation
clips) and ``score_variants.parquet``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from stethoscope import runs, storage
from stethoscope.data.features import input_specs_to_dict
from stethoscope.errors import ConfigError, StethoscopeError
from stethoscope.runs import git_commit, new_run_dir
from stethoscope.splits import ValidationSpec
from stethoscope.stages.evaluate import evaluate_stage
from stethoscope.stages.ingest import ingest_stage, input_specs_for, resolve_config
from stethoscope.stages.split import record_split, split_stage
from stethoscope.stages.train import scope_units, train_stage, train_units

log = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = "../shared/data/dcase2020_task2_dev_sample"


@dataclass
class PipelineResult:
    run_dir: str
    metrics: dict
    scores: pd.DataFrame
    checkpoint_path: str
    table: str = ""
    extra: dict = field(default_factory=dict)


def run(
    data_root: str | os.PathLike = DEFAULT_DATA_ROOT,
    *,
    machine_type: str | list[str] = "slider",
    machine_ids: list[str] | None = None,
    method: str = "autoencoder",
    config: dict | None = None,
    scope: str | None = None,
    preset: bool = False,
    feature_overrides: dict | None = None,
    store: str = "store",
    runs_root: str = "runs",
    seed: int = 0,
    validation: ValidationSpec | None = None,
    split_from: str | os.PathLike | dict | None = None,
    num_workers: int = 1,
    use_gpu: bool | None = None,
    max_failures: int = 0,
    lenient: bool = False,
    registry: str | None = "registry",
) -> PipelineResult:
    """Index, ingest, split, train, score and evaluate one machine type (optionally restricted to some
    IDs/sections) or, in the all_machine_types scope, several at once; then publish the run to ``registry``, one
    one-member bundle per machine type (so the demo leaves a servable registry behind).

    Args:
        data_root: a DCASE tree (2020 or 2021-2024 layout).
        machine_type / machine_ids: what to train and evaluate; IDs as two-digit strings ("00"). For 2021+ data
            the same list selects sections. Several machine types only in the all_machine_types scope.
        method / config: a registered method and Config overrides (e.g. ``{"epochs": 20}``).
        scope: ``per_id`` | ``per_machine_type`` | ``all_machine_types`` (:mod:`stethoscope.scopes`); default: the
            method's ``default_scope``. One model is trained per training unit: per ID / section (``models/<type>/
            <id_XX>/``), for the machine type (``model/``), or over every selected type (``models/all/``).
        preset: start from the method's paper preset for ``machine_type`` (:mod:`stethoscope.presets`; ``config``
            wins over it); run.json records the preset's row under ``preset``.
        feature_overrides: FeatureSpec fields to change from the method's default.
        store: feature-cache root (path or URI). runs_root: parent of the run folder (path or URI: a run under a
            URI is written in a local staging folder, Ray Train's checkpoints go straight to the URI, and the
            finished run is uploaded; :func:`stethoscope.runs.new_run_dir`). ``registry`` may be a URI too.
        seed: the training seed (recorded in run.json and every checkpoint).
        validation: how the labelled clips split into validation and test (default: seeded half / half, seed 0;
            independent of ``seed``, so runs with several training seeds share one split and publish together).
        split_from: reuse an existing ``validation_split.json`` (e.g. a sweep's; see
            :func:`stethoscope.stages.split.split_stage`) instead of drawing one.
        num_workers / use_gpu: Ray Train scaling (use_gpu None = auto-detect).
        max_failures: worker-group restarts Ray Train may make (from the latest checkpoint) before training fails.
        lenient: skip unparseable file names instead of failing.
        registry: registry root (folder or URI) to publish to (:func:`stethoscope.publishing.publish_runs`; the
            publish files go to ``<run folder>/publish/``); None skips publishing. If the run cannot be published
            (e.g. too few training clips for a decision threshold), run.json and the table say why.
    Returns:
        PipelineResult (the run folder or its URI, metrics, per-clip scores, checkpoint path, printable table).
        ``extra["workers"]`` (also run.json's ``workers``): per training unit, where its Ray Train workers ran
        (rank, node_id, hostname, pid). With a registry, ``extra["publish"]`` is the
        :class:`stethoscope.publishing.PublishResult` (or ``extra["publish_error"]`` the reason it was not
        published) and the table ends with the publish table.
    Raises:
        DataError: missing data root, unknown machine/IDs, no training clips, no test clips, a reused split made
            for other clips.
        ConfigError: unknown method, bad config or feature parameter, no preset row for the machine type, an
            unknown scope or one the method cannot train in, several machine types outside all_machine_types.
        StorageError: ``store``, ``runs_root`` or ``registry`` is a URI whose bucket does not exist or that the
            credentials cannot reach (checked before ingest).
    """
    from stethoscope.evaluation import format_table
    from stethoscope.scopes import resolve_scope

    scope = resolve_scope(method, scope)
    types = [machine_type] if isinstance(machine_type, str) else list(dict.fromkeys(machine_type))
    if len(types) > 1 and scope != "all_machine_types":
        raise ConfigError(f"a {scope} run covers one machine type, got {types}: run each type on its own (jobs/"
                          "pipeline.py does), or use scope all_machine_types")
    if preset and len(types) > 1:
        raise ConfigError("--preset gives per-machine-type values; a run over several machine types cannot use one")
    cfg, preset_rec = resolve_config(method, types[0], config, preset)
    spec = input_specs_for(method, cfg, feature_overrides)
    for uri, what in ((store, "store"), (runs_root, "runs root"), (registry, "registry")):
        if uri:  # a missing bucket or no credentials fail here, before anything is ingested or trained
            storage.check_access(uri, what)
    prepared = ingest_stage(
        data_root, spec, machine_type=types, machine_ids=machine_ids, store=store, lenient=lenient
    )
    split = split_stage(prepared, validation=validation,
                        train_validation_fraction=float(getattr(cfg, "val_fraction", 0.0)), split_from=split_from)
    units = scope_units(prepared, scope)
    run_dir = new_run_dir(runs_root, method, prepared.machine_type)
    log.info("run folder: %s (scope %s: %d training unit(s))", run_dir, scope, len(units))
    manifest = {
        "stage": "pipeline",
        "data_root": str(Path(data_root).resolve()),
        "machine_type": prepared.machine_type,
        "machine_types": prepared.machine_types,
        "scope": scope,
        "units": [u.to_dict() for u in units],
        "ids": prepared.ids,
        "method": method,
        "preset": preset_rec,
        "config": dataclasses.asdict(cfg),
        "inputs": input_specs_to_dict(spec),
        "input_spec_hashes": {k: v.hash() for k, v in spec.items()},
        "store": str(store),
        "seed": seed,
        "num_workers": num_workers,
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "skipped_unparseable": prepared.skipped_unparseable,
    }
    record_split(run_dir, split, manifest)
    storage.write_json(str(run_dir / runs.RUN_JSON), manifest)
    storage.write_json(str(run_dir / "ingest_report.json"), {
        **prepared.ingest.report, "features_path": prepared.ingest.features_path, "cached": prepared.ingest.cached})
    train_kw = dict(method=method, config=cfg, spec=spec, split=split, seed=seed, num_workers=num_workers,
                    use_gpu=use_gpu, max_failures=max_failures)
    if scope == "per_machine_type":  # today's layout: model/ (old runs, bundles and tools read it)
        result = train_stage(prepared, run_dir, **train_kw)
        fitted, models, checkpoints = {units[0].name: result}, result.method, result.checkpoint_path
    else:
        fitted = train_units(prepared, run_dir, units, **train_kw)
        models = [(u, fitted[u.name].method) for u in units]
        checkpoints = {name: r.checkpoint_path for name, r in fitted.items()}
        result = next(iter(fitted.values()))
    metrics, scores = evaluate_stage(prepared, run_dir, models, {**result.meta, "seed": seed}, split,
                                     {"checkpoint": checkpoints, "scope": scope})
    where = runs.location(run_dir)  # the run's URI for a run staged for object storage
    # where each training unit's Ray Train workers ran (rank, node_id, hostname, pid; also in each model's meta.json)
    workers = {name: r.meta.get("workers", []) for name, r in fitted.items()}
    manifest.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), checkpoint=checkpoints, workers=workers,
                    model=storage.join(where, runs.MODEL_DIR) if scope == "per_machine_type" else
                    {u.name: storage.join(where, u.folder) for u in units})
    storage.write_json(str(run_dir / runs.RUN_JSON), manifest)
    table, extra = format_table(metrics), {"workers": workers}
    if registry:
        from stethoscope.publishing import format_publish_table, publish_runs

        try:
            published = publish_runs([run_dir], registry, out_dir=run_dir / "publish")
        except StethoscopeError as exc:
            log.warning("%s: not published: %s", prepared.machine_type, exc)
            extra["publish_error"] = str(exc)
            manifest["published"] = {"registry": str(registry), "error": str(exc)}
            table += f"\n\nnot published to {registry}: {exc}"
        else:
            extra["publish"] = published[0] if len(published) == 1 else published
            extra["publish_by_type"] = {p.machine_type: p for p in published}
            records = [{"registry": str(registry), "machine_type": p.machine_type, "scope": p.scope,
                        "version": p.version} for p in published]
            manifest["published"] = records[0] if len(records) == 1 else records
            table += "\n\npublished to " + str(registry) + ":\n" + format_publish_table(published)
        storage.write_json(str(run_dir / runs.RUN_JSON), manifest)
    location = runs.sync_run(run_dir, done=True)  # a run under a URI runs root: uploaded, its staging folder removed
    if location != str(run_dir):
        log.info("run uploaded to %s", location)
    return PipelineResult(location, metrics, scores, result.checkpoint_path, table, extra)


__all__ = ["DEFAULT_DATA_ROOT", "PipelineResult", "run"]
