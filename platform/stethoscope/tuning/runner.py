"""The sweep runner: one Ray Tune experiment per (search space, machine type) (DESIGN.md data flow, step 6).

``run_sweep(...)``:

1. loads and validates the search space for the machine type (:func:`~stethoscope.tuning.space.load_space`);
2. ingests the machine type's clips **once, on the driver**, computing every input the method declares
   (``Method.input_specs``: the waveform and/or FeatureSpecs; ``stages.ingest.ingest_stage``, cached by their hashes);
3. writes the sweep's one split (:mod:`stethoscope.splits`: file list, ``all``, or seeded stratified for the
   labelled clips, plus the training clips held out for the validation loss) as ``validation_split.json`` into the
   sweep folder; every trial and any retrain of the best config read it, nothing draws another;
4. runs a ``ray.tune.Tuner``: OptunaSearch (GridSampler or TPESampler, seeded) proposes configs, the paper preset's
   point first when asked (``preset=True``: ``points_to_evaluate``, i.e. Optuna's ``enqueue_trial``); each trial is
   one Ray Train run (``training.fit``) that holds out the split's ``train_validation`` clips, scores its
   ``validation`` clips after every epoch and reports
   ``val_auc`` / ``val_pauc`` / ``val_auc_pauc_mean`` to Tune through ``TuneReportCallback``, so ASHA can stop bad
   trials early; every trial gets the sweep seed, recorded in its config and in the results table;
5. exports ``results.parquet`` + ``results.csv`` (one row per trial), ``plots/sweep.png`` and ``best_config.yaml``
   (``{method, config, validation_split: {file, sha256}, ...}``, accepted by ``jobs/train.py --config``, which then
   reuses the sweep's split).

An interrupted sweep (Ctrl-C, or a killed driver: Tune's experiment state is saved at least every
:data:`EXPERIMENT_STATE_PERIOD_S`) continues with
``resume=True`` (``Tuner.restore``): finished trials are kept, unfinished ones resume from their last epoch
checkpoint, the searcher's state (the Optuna study) is restored, so no finished trial is repeated, and so are
ASHA's rungs (:class:`ResumableASHA`).

Sweep folder ``<storage>/<name>/`` (``name`` defaults to ``<method>-<machine_type>``): Tune's own experiment state and
trial folders, plus ``sweep.json`` (settings, and the ingested ``inputs``: :func:`inputs_record`),
``validation_split.json``, ``trial_log.jsonl`` (one line per finished trial, appended as they finish),
``trials/<trial_id>/`` (each trial's Ray Train checkpoints and
``trial.json``), ``trials/asha_state.pkl``, ``results.parquet``, ``results.csv``, ``plots/sweep.png``,
``best_config.yaml`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler

from stethoscope import storage
from stethoscope.data.features import InputSpec, input_specs_from_dict, input_specs_to_dict, log_mel_spec
from stethoscope.errors import ConfigError, DataError
from stethoscope.runtime import live_placement_groups, state_api_error, wait_for_placement_groups
from stethoscope.splits import ValidationSpec
from stethoscope.tuning.space import SEED_KEY, SearchSpace, input_variants, load_space

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "runs/tune"


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced. ``complete`` is False when the sweep was interrupted (resume it)."""

    sweep_dir: str
    machine_type: str
    method: str
    metric: str
    mode: str
    complete: bool
    trials: pd.DataFrame
    best: dict | None
    best_config_path: str | None
    results_path: str | None
    plot_path: str | None
    split_path: str
    timings: dict = field(default_factory=dict)


class TrialLog(Callback):
    """Tune callback (driver side): appends one JSON line per finished or failed trial to ``trial_log.jsonl``."""

    def __init__(self, uri: str, metric: str):
        self.uri, self.metric = uri, metric

    def _append(self, event: str, trial) -> None:
        last = trial.last_result or {}
        line = json.dumps({
            "event": event, "trial_id": trial.trial_id, "config": trial.config, "epoch": last.get("epoch"),
            self.metric: last.get(self.metric), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, default=str, sort_keys=True)
        old = storage.read_text(self.uri) if storage.exists(self.uri) else ""
        storage.write_text(self.uri, old + line + "\n")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._append("complete", trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._append("error", trial)


class ResumableASHA(AsyncHyperBandScheduler):
    """ASHA whose rungs survive ``Tuner.restore``.

    Tune checkpoints the searcher and the callbacks of an experiment but not its scheduler: a restored sweep starts
    from the scheduler as it was created, so it forgets the rung values of the trials that finished before the
    interrupt and stops fewer trials. This subclass pickles its state (``AsyncHyperBandScheduler.save``) to the
    sweep's ``trials/asha_state.pkl`` (a local file, or an object beside the sweep's URI) after every decision and
    reloads it before its first decision after a restore.
    """

    def __init__(self, *, state_path: str, **kwargs):
        super().__init__(**kwargs)
        self._state_path = state_path
        self._state_loaded = False

    def _load(self) -> None:
        if not self._state_loaded:
            self._state_loaded = True
            if storage.exists(self._state_path):
                with tempfile.TemporaryDirectory() as tmp:  # restore() reads a local file
                    local = os.path.join(tmp, "asha_state.pkl")
                    Path(local).write_bytes(storage.read_bytes(self._state_path))
                    self.restore(local)
                log.info("ASHA: restored the rungs of the interrupted sweep from %s", self._state_path)

    def _save(self) -> None:
        if not storage.is_uri(self._state_path):  # a local file is replaced atomically (a kill never leaves half)
            os.makedirs(os.path.dirname(self._state_path), exist_ok=True)
            tmp = f"{self._state_path}.tmp"
            self.save(tmp)
            os.replace(tmp, self._state_path)
            return
        with tempfile.TemporaryDirectory() as tmp:  # an object store's PUT replaces the object whole
            local = os.path.join(tmp, "asha_state.pkl")
            self.save(local)
            storage.write_bytes(self._state_path, Path(local).read_bytes())

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        super().on_trial_add(tune_controller, trial)
        self._save()

    def on_trial_result(self, tune_controller, trial, result) -> str:
        self._load()
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._load()
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._load()
        super().on_trial_remove(tune_controller, trial)
        self._save()


def trial_folder(trials_uri: str, trial_id: str) -> str:
    """A trial's folder, ``<sweep>/trials/<trial_id>`` (a local folder or a URI): its Ray Train storage ``train/``
    (the checkpoints a resumed trial continues from) and ``trial.json``."""
    return storage.join(trials_uri, trial_id)


def _trial_fn(config: dict, context: dict) -> None:
    """One trial (runs in a Tune actor): a Ray Train run of the method with per-epoch validation metrics.

    ``config``: the searched parameters plus ``seed``. ``context``: everything fixed for the sweep (features path,
    selection, validation clips, fixed overrides, ``inputs`` ({name: input spec dict}), scaling, trials folder).
    """
    import ray
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from stethoscope import methods
    from stethoscope.data.ingest import read_features, scoring_features
    from stethoscope.training import Scaling, fit
    from stethoscope.training.trainer import latest_checkpoint

    class MetricFirst(TuneReportCallback):
        """TuneReportCallback that puts the selection metric first, so Tune's trial table shows it."""

        def after_report(self, run_context, metrics, checkpoint):
            first = [context["metric"], "epoch", "loss", "val_loss"]
            metrics = [{**{k: m[k] for k in first if k in m}, **m} for m in metrics]
            return super().after_report(run_context, metrics, checkpoint)

    data_ctx = ray.data.DataContext.get_current()
    data_ctx.execution_options.preserve_order = True  # as in runtime.init_ray: reproducible row order
    data_ctx.enable_progress_bars = False  # keep the console to Tune's trial table
    trial_id = ray.tune.get_context().get_trial_id()
    folder = trial_folder(context["trials_dir"], trial_id)
    train_storage = storage.join(folder, "train")
    if storage.is_uri(folder):  # checkpoints go straight to the sweep's URI; fit's run folder is local scratch
        run_dir = Path(tempfile.mkdtemp(prefix=f"stethoscope-trial-{trial_id}-"))
    else:
        run_dir = Path(folder)
        run_dir.mkdir(parents=True, exist_ok=True)
    seed = int(config[SEED_KEY])
    overrides = {**context["fixed"], **{k: v for k, v in config.items() if k != SEED_KEY}}
    where = context["where"]
    cls = methods.get(context["method"])
    mine = context["input_stores"][input_key(cls.input_specs(cls.make_config(overrides)))]  # this trial's inputs
    train_ds = read_features(mine["features_path"], split="train", **where)
    val_ds = scoring_features(mine["features_path"], split="test", path=context["validation"], **where)
    resume = latest_checkpoint(train_storage) is not None  # an interrupted trial continues from its checkpoint
    t0 = time.perf_counter()
    try:
        result = fit(
            context["method"], overrides, train_ds, Scaling(**context["scaling"]),
            inputs=input_specs_from_dict(mine["inputs"]), run_dir=run_dir, storage_path=train_storage, seed=seed,
            resume=resume, held_out=context["train_validation"], eval_dataset=val_ds, callbacks=[MetricFirst()],
        )
    finally:
        if storage.is_uri(folder):
            shutil.rmtree(run_dir, ignore_errors=True)
    fit_seconds = time.perf_counter() - t0
    storage.write_json(storage.join(folder, "trial.json"), {
        "trial_id": trial_id, "config": overrides, "seed": seed, "fit_seconds": fit_seconds, "resumed": resume,
        "checkpoint": result.checkpoint_path, "epochs_done": result.meta.get("epoch"),
        "last_metrics": (result.history or [{}])[-1],
    })


def input_key(inputs: Mapping[str, InputSpec]) -> str:
    """One input set's key in a sweep's ``input_stores``: ``name=hash`` of each input, sorted."""
    return ",".join(f"{k}={v.hash()}" for k, v in sorted(inputs.items()))


def inputs_record(inputs: Mapping[str, InputSpec]) -> dict:
    """What ``sweep.json`` records of the inputs the sweep ingested (once, for every trial).

    Args:
        inputs: the method's declared inputs ``{name: WaveformSpec | FeatureSpec}`` (``Method.input_specs``).
    Returns:
        ``{"inputs": {name: spec dict}, "input_spec_hashes": {name: 12-hex hash}}``, plus ``feature_spec`` (spec dict)
        and ``feature_spec_hash`` of the log-mel input when the method has one
        (:func:`~stethoscope.data.features.log_mel_spec`), for readers of the older one-FeatureSpec ``sweep.json``.
    """
    record = {"inputs": input_specs_to_dict(inputs), "input_spec_hashes": {k: v.hash() for k, v in inputs.items()}}
    log_mel = log_mel_spec(inputs)
    if log_mel is not None:
        record.update(feature_spec=log_mel.to_dict(), feature_spec_hash=log_mel.hash())
    return record


def _sha(text: str) -> str:
    from stethoscope.splits import split_sha256

    return split_sha256(text)


def _sweep_settings(space: SearchSpace, **kw) -> dict:
    return {"space_file": space.path, "space_raw": space.raw, "resolved_space": space.to_dict(), **kw}


def _searcher(space: SearchSpace, points: list[dict] | None = None):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if space.sampler == "grid":
        sampler = optuna.samplers.GridSampler(space.grid(), seed=space.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=space.seed)
    # No space here: OptunaSearch converts the Tune domains of the Tuner's param_space (so Tune's trial table shows
    # the parameters too). points_to_evaluate become Optuna enqueue_trial calls: those configs run first.
    return OptunaSearch(metric=space.metric, mode=space.mode, sampler=sampler, points_to_evaluate=points or None)


def preset_start(space: SearchSpace, machine_type: str) -> tuple[dict, dict, dict]:
    """The paper preset of ``space.method`` for ``machine_type`` as a sweep's first trial.

    Returns:
        ``(point, fixed, record)``: ``point`` = the preset's values of the searched parameters (enqueued as the
        first trial), ``fixed`` = the space's ``fixed`` updated with the preset's values of parameters the space
        does not search (the space's own ``fixed`` values win), ``record`` = :func:`stethoscope.presets.preset_record`.
    Raises:
        ConfigError: no preset row for the machine type, a preset value outside the searched choices or range, or
            (grid sampler) a searched parameter the preset does not give (Optuna's GridSampler needs every one).
    """
    from stethoscope.presets import preset_record

    record = preset_record(space.method, machine_type)
    values = record["values"]
    point: dict = {}
    for name, param in space.params.items():
        if name not in values:
            if space.sampler == "grid":
                raise ConfigError(f"{space.path}: the {space.method} preset for {machine_type} gives no {name}; "
                                  "a grid sweep can start from it only if it gives every searched parameter")
            continue
        value = values[name]
        if param.kind == "choice":
            match = [v for v in param.values if v == value and type(v) is not bool or v is value]
            if not match:
                raise ConfigError(f"{space.path}: the {space.method} preset for {machine_type} has {name} = {value!r}, "
                                  f"which is not among the searched choices {list(param.values)}")
            value = match[0]
        elif not (param.low <= value <= param.high):
            raise ConfigError(f"{space.path}: the {space.method} preset for {machine_type} has {name} = {value!r}, "
                              f"outside the searched range [{param.low}, {param.high}]")
        point[name] = value
    fixed = {**{k: v for k, v in values.items() if k not in space.params}, **space.fixed}
    ignored = sorted(k for k in values if k not in space.params and k in space.fixed and space.fixed[k] != values[k])
    if ignored:
        log.warning("preset values %s are overridden by the space's fixed values", ignored)
    record["enqueued"] = point
    return point, fixed, record


def _scheduler(space: SearchSpace, state_path: str):
    if space.scheduler is None:
        return None
    a = space.scheduler
    max_t = a.max_t or space.max_epochs()
    if max_t < a.grace_period:
        raise ConfigError(f"{space.path}: scheduler: grace_period {a.grace_period} exceeds the largest epochs "
                          f"({max_t}); lower grace_period or set scheduler: none")
    # stop_last_trials=False: a trial that reaches max_t finishes on its own (its Train run ends cleanly)
    return ResumableASHA(state_path=state_path, time_attr="epoch", max_t=max_t, grace_period=a.grace_period,
                         reduction_factor=a.reduction_factor, brackets=a.brackets, stop_last_trials=False)


def _warn_if_oversubscribed(res, mct: int) -> None:
    """A starting trial reads its features with Ray Data (tasks of 1 CPU) before its Train workers take their CPUs.
    Warn when the other running trials would leave less than that, so trials would wait for one another."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    per_trial = res.num_workers * res.cpus_per_worker + res.trial_cpus
    need = (mct - 1) * per_trial + res.trial_cpus + 1.0
    if total and need > total:
        log.warning("%d concurrent trial(s) of %d worker(s) × %.2g CPU on %.0f CPUs: a starting trial needs one free "
                    "CPU for Ray Data and would wait for a running one; lower max_concurrent_trials or "
                    "cpus_per_worker", mct, res.num_workers, res.cpus_per_worker, total)


def _warn_if_no_state_api() -> None:
    """Ray Train frees the placement group of a trial that Tune stops (ASHA) through a cleaner actor that asks Ray's
    state API whether the trial's Train controller is still alive. If the state API does not answer, every stopped
    trial keeps its CPUs until the driver exits, and the sweep stalls once they run out. Say so before it starts."""
    error = state_api_error(timeout_s=20.0)
    if error:
        log.warning("Ray's state API does not answer inside the cluster (%s): Ray Train cannot free the CPUs of "
                    "trials that are stopped early, and the sweep may stall. Start the cluster with its dashboard "
                    "(ray start --head --include-dashboard=true; stethoscope's embedded Ray does), or use "
                    "--no-scheduler", error)


def _placement_groups_left(before: set[str], timeout_s: float = 60.0) -> dict[str, dict]:
    """After the sweep: the placement groups created during it that are still held (each finished trial's Ray Train
    run should have released its own). Waits up to ``timeout_s`` for Ray Train's cleaners; warns about the rest."""
    left = wait_for_placement_groups(keep=before, timeout_s=timeout_s)
    if left:
        log.warning("%d placement group(s) created by the sweep's trials are still held %.0f s after it ended: %s. "
                    "They keep their CPUs until this driver exits.", len(left), timeout_s,
                    {k: v["bundles"] for k, v in left.items()})
    return left


def sweep_uri(storage_root: str, name: str) -> str:
    return storage.join(storage_root, name)


#: Seconds between two saves of Tune's experiment state (``TUNE_GLOBAL_CHECKPOINT_S``, unless the environment sets
#: it): a sweep whose driver is killed (SIGKILL, a lost head) loses at most this much of its record of finished
#: trials. Ours; Tune's "auto" saves at most every 10 s.
EXPERIMENT_STATE_PERIOD_S = 1.0


def run_sweep(
    space_path: str | os.PathLike,
    *,
    machine_type: str | list[str],
    data_root: str | os.PathLike,
    ids: list[str] | None = None,
    scope: str | None = None,
    num_samples: int | None = None,
    storage_root: str = DEFAULT_STORAGE,
    name: str | None = None,
    resume: bool = False,
    seed: int = 0,
    validation: ValidationSpec = ValidationSpec(),
    store: str = "store",
    lenient: bool = False,
    max_concurrent_trials: int | None = None,
    overrides: dict | None = None,
    verbose: int = 1,
    preset: bool = False,
    time_budget_s: float | None = None,
) -> SweepResult:
    """Run (or resume) one per-machine-type sweep and export its results.

    Args:
        space_path: a search-space YAML (``search_spaces/*.yaml``; schema in ``search_spaces/README.md``).
        machine_type / ids: the selection (one machine type, or several in the all_machine_types scope; IDs or
            sections, default all).
        scope: the training scope (:mod:`stethoscope.scopes`; default: the method's ``default_scope``). A trial
            trains one training unit: per_machine_type, the machine type; all_machine_types, one model over every
            selected type, whose objective is the mean over the types of each type's validation AUC / pAUC
            (:data:`stethoscope.training.trainer.VALIDATION_OBJECTIVE`); per_id, the one ID / section selected
            (``ids`` must name exactly one: jobs/tune.py runs one sweep per ID).
        data_root: a DCASE tree (2020 or 2021-2024 layout) holding training clips and labelled test clips.
        num_samples: trials (default: the file's ``num_samples``; grid: the grid size; tpe: 20).
        storage_root: Tune's ``storage_path``: a folder or a pyarrow URI (``s3://...``). Always set.
        name: experiment name (default ``<method>-<machine_type>``); the sweep folder is ``<storage_root>/<name>``.
        resume: continue an interrupted sweep of that name (``Tuner.restore``); its saved settings are used.
        seed: the training seed of every trial (recorded per trial).
        validation: how the labelled clips split into validation and test (:class:`stethoscope.splits.ValidationSpec`).
            The training clips held out for the validation loss are the space's ``fixed.val_fraction`` (or the
            Config default) of each stratum; ``val_fraction`` may not be searched (one split serves every trial).
        store: the feature cache. lenient: skip unparseable file names.
        max_concurrent_trials: overrides ``resources.max_concurrent_trials``.
        overrides: top-level keys of the space to replace (e.g. ``{"sampler": "grid", "scheduler": None}``).
        verbose: Tune's console verbosity (1 prints the live trial table).
        preset: start from the method's paper preset for ``machine_type`` (:func:`preset_start`): its point is the
            first trial, and its values of unsearched parameters are held fixed.
        time_budget_s: stop the sweep after this many seconds (Tune's ``time_budget_s``); the trials still running
            are left unfinished and ``complete`` is False. Default: no limit.
    Returns:
        :class:`SweepResult` (``complete`` False if it was interrupted).
    Raises:
        ConfigError: a bad space file, a sweep folder that exists without ``resume``, or ``resume`` without one,
            a searched ``val_fraction``, a preset that does not fit the space, a scope the method cannot train in,
            several machine types outside all_machine_types, a per_id sweep of several IDs.
        DataError: missing data, no training clips, a validation split without both labels, or (resume) a split file
            that no longer matches the data.
    """
    from ray import tune

    from stethoscope import methods
    from stethoscope.runs import git_commit
    from stethoscope.scopes import resolve_scope
    from stethoscope.splits import SPLIT_FILE, make_run_split, read_run_split, write_run_split
    from stethoscope.stages.ingest import ALL_LABEL, ingest_stage, input_specs_for

    t_start = time.perf_counter()
    types = [machine_type] if isinstance(machine_type, str) else list(dict.fromkeys(machine_type))
    machine_type = types[0] if len(types) == 1 else ALL_LABEL
    space0 = load_space(space_path, machine_type if len(types) == 1 else None, overrides=overrides)
    scope = resolve_scope(space0.method, scope)
    if len(types) > 1 and scope != "all_machine_types":
        raise ConfigError(f"a {scope} sweep trains one machine type, got {types}; sweep each type, or use scope "
                          "all_machine_types")
    if scope == "per_id" and (not ids or len(ids) != 1):
        raise ConfigError(f"a per_id sweep trains one ID / section: name exactly one with ids (got {ids}); "
                          "jobs/tune.py --scope per_id runs one sweep per ID")
    if preset and len(types) > 1:
        raise ConfigError("--preset gives per-machine-type values; a sweep over several machine types cannot use one")
    name = name or f"{space0.method}-{machine_type}"
    storage_root = storage.join(storage_root) if "://" not in str(storage_root) else str(storage_root)
    exp_uri = sweep_uri(storage_root, name)
    settings_uri = storage.join(exp_uri, "sweep.json")
    if resume:
        if not storage.exists(settings_uri):
            raise ConfigError(f"--resume: no sweep at {exp_uri} (sweep.json missing); check --storage and --name")
        saved = storage.read_json(settings_uri)
        if saved.get("machine_type") != machine_type:
            raise ConfigError(f"--resume: the sweep at {exp_uri} is for machine type {saved.get('machine_type')!r}, "
                              f"not {machine_type!r}")
        space = load_space(saved["space_file"], machine_type if len(types) == 1 else None, data=saved["space_raw"],
                           overrides=saved["overrides"])
        data_root, ids, seed = saved["data_root"], saved["ids_requested"], saved["seed"]
        num_samples, store = saved["num_samples_requested"], saved["store"]
        validation = ValidationSpec(**saved["validation"])
        preset = bool(saved.get("preset"))
        log.info("resuming sweep %s with its saved settings (space %s, seed %d)", exp_uri, space.path, seed)
    else:
        if storage.exists(settings_uri):
            raise ConfigError(f"a sweep already exists at {exp_uri}; pass --resume to continue it, or --name to "
                              "start a new one")
        space = space0
    if "val_fraction" in space.params:
        raise ConfigError(f"{space.path}: space.val_fraction: the training clips held out for the validation loss are "
                          "part of the sweep's one validation split, shared by every trial; set val_fraction under "
                          "'fixed:' instead")
    points, preset_rec = None, None
    if preset:
        point, fixed, preset_rec = preset_start(space, machine_type)
        space = dataclasses.replace(space, fixed=fixed)
        points = [point] if point else None  # a preset of unsearched values only changes the fixed ones
    n_trials = space.trials(num_samples)
    if preset and space.sampler == "grid" and num_samples is None:
        n_trials += 1  # the enqueued preset point is not one of the grid's own trials
    cls = methods.get(space.method)
    base_cfg = cls.make_config(space.fixed)
    inputs = input_specs_for(space.method, base_cfg)
    variants = input_variants(cls, space.fixed, space.params, space.path)

    prepared = ingest_stage(data_root, inputs, machine_type=types, machine_ids=ids, store=store, lenient=lenient)
    # a choice that changes the inputs (SC's feature: stft | log_mel): each input set is ingested once, into its own
    # feature store, and every trial reads the store of its own inputs (the same clips, so the same split)
    stores = {input_key(inputs): {"inputs": input_specs_to_dict(inputs),
                                  "features_path": prepared.ingest.features_path}}
    for other in variants:
        if input_key(other) in stores:
            continue
        more = ingest_stage(data_root, other, machine_type=types, machine_ids=ids, store=store, lenient=lenient)
        if set(more.clips()["path"]) != set(prepared.clips()["path"]):
            raise DataError(f"{space.path}: the inputs {sorted(other)} were ingested from other clips than "
                            f"{sorted(inputs)} (clips skipped for one input set only?); the trials would not share "
                            "one validation split")
        stores[input_key(other)] = {"inputs": input_specs_to_dict(other),
                                    "features_path": more.ingest.features_path}
    t_ingest = time.perf_counter()
    split_uri = storage.join(exp_uri, SPLIT_FILE)
    if resume and storage.exists(split_uri):
        split = read_run_split(split_uri)  # the sweep keeps the split it started with
        split.check_clips(prepared.clips(), f"the data under {data_root}")
        split_sha = _sha(storage.read_text(split_uri))
    else:
        split = make_run_split(
            prepared.clips(), validation=validation,
            train_validation_fraction=float(getattr(base_cfg, "val_fraction", 0.0)),
            selection={"machine_type": machine_type, "id_field": prepared.id_col, "ids": prepared.ids,
                       **({"machine_types": types} if len(types) > 1 else {})})
        labels = set(prepared.clips().set_index("path").loc[split.validation, "label"]) if split.validation else set()
        if labels != {"normal", "anomaly"}:
            raise DataError(
                f"the validation split ({split.source}, {len(split.validation)} clips) has labels {sorted(labels)}; "
                "a sweep needs both normal and anomaly clips among them so that AUC and pAUC are defined")
        split_uri, split_sha = write_run_split(split, exp_uri)
    log.info("validation split (%s): %d validation clips; %d test clips held out for reporting; %d training clips "
             "held out for the validation loss", split.source, len(split.validation), len(split.test),
             len(split.train_validation))
    res = space.resources
    mct = max_concurrent_trials or res.max_concurrent_trials
    _warn_if_oversubscribed(res, mct)
    _warn_if_no_state_api()
    if not resume:
        storage.write_json(settings_uri, _sweep_settings(
            space, machine_type=machine_type, machine_types=types, scope=scope,
            data_root=str(Path(data_root).resolve()), ids_requested=ids,
            ids=prepared.ids, seed=seed, overrides=overrides or {}, num_samples_requested=num_samples,
            num_trials=n_trials, store=str(store),
            validation=validation.to_dict(), **inputs_record(inputs),
            input_stores=list(stores.values()),
            features_path=prepared.ingest.features_path, storage=storage_root, name=name,
            git_commit=git_commit(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), preset=preset_rec,
            validation_split={"file": SPLIT_FILE, "sha256": split_sha, "fingerprint": split.fingerprint},
        ))

    trials_dir = storage.join(exp_uri, "trials")  # each trial's checkpoints and trial.json, beside Tune's state
    context = {
        "method": space.method, "metric": space.metric, "fixed": space.fixed, "inputs": input_specs_to_dict(inputs),
        "features_path": prepared.ingest.features_path, "where": prepared.where, "validation": list(split.validation),
        "input_stores": stores, "train_validation": list(split.train_validation),
        "scaling": {"num_workers": res.num_workers, "use_gpu": res.use_gpu, "cpus_per_worker": res.cpus_per_worker},
        "trials_dir": trials_dir,
    }
    trainable = tune.with_resources(tune.with_parameters(_trial_fn, context=context), {"CPU": res.trial_cpus})
    log_uri = storage.join(exp_uri, "trial_log.jsonl")
    # Tune saves its experiment state at most every TUNE_GLOBAL_CHECKPOINT_S ("auto": >= 10 s); a driver killed
    # within that window after a trial finished would rerun that trial on resume. Read by the Tuner's controller.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(EXPERIMENT_STATE_PERIOD_S))
    if resume and tune.Tuner.can_restore(exp_uri):
        tuner = tune.Tuner.restore(exp_uri, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
    else:
        if resume:
            log.warning("--resume: Tune saved no experiment state under %s yet; starting the sweep afresh", exp_uri)
        tuner = tune.Tuner(
            trainable,
            param_space={SEED_KEY: seed, **space.tune_space()},
            tune_config=tune.TuneConfig(
                metric=space.metric, mode=space.mode, search_alg=_searcher(space, points),
                scheduler=_scheduler(space, storage.join(trials_dir, "asha_state.pkl")),
                num_samples=n_trials, max_concurrent_trials=mct, time_budget_s=time_budget_s,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_root, callbacks=[TrialLog(log_uri, space.metric)], verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    log.info("sweep %s: %s %s (scope %s), %d trial(s), sampler %s, scheduler %s, %d concurrent", name, space.method,
             ", ".join(types), scope, n_trials, space.sampler, "ASHA" if space.scheduler else "none", mct)
    pgs_before = set(live_placement_groups())
    t_tune = time.perf_counter()
    grid = tuner.fit()
    t_tune_end = time.perf_counter()
    leaked = _placement_groups_left(pgs_before)

    from stethoscope.tuning.export import export_sweep, trials_table

    trials = trials_table(grid, space, trials_dir)
    complete = len(trials) >= n_trials and bool(trials["status"].isin(["completed", "stopped_early", "error"]).all())
    out = export_sweep(trials, space, exp_uri, machine_type=machine_type, seed=seed, inputs=inputs,
                       split_path=split_uri, split_sha256=split_sha, complete=complete,
                       selection_args=" ".join(["--machine-type", *types, "--scope", scope]
                                               + (["--ids", *ids] if ids else [])))
    timings = {
        "ingest_s": t_ingest - t_start, "tune_wall_s": t_tune_end - t_tune,
        "total_s": time.perf_counter() - t_start,
    }
    storage.write_json(storage.join(exp_uri, "summary.json"), {
        "complete": complete, "n_trials": len(trials), "n_planned": n_trials, "best": out["best"],
        "best_config": out["best_config_path"], "results": out["results_path"], "plot": out["plot_path"],
        "validation_split": split_uri, "timings": timings, "leaked_placement_groups": sorted(leaked),
    })
    if not complete:
        log.warning("sweep %s was interrupted after %d of %d trial(s); continue it with --resume", name,
                    int((trials["status"] != "unfinished").sum()) if len(trials) else 0, n_trials)
    return SweepResult(exp_uri, machine_type, space.method, space.metric, space.mode, complete, trials, out["best"],
                       out["best_config_path"], out["results_path"], out["plot_path"], split_uri, timings)

