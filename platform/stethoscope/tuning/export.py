"""Sweep outputs: the results table (one row per trial), the sweep plot and the best config as a YAML file.

The best config is written as ``{method, machine_type, metric, mode, value, trial_id, seed, search_space, inputs,
feature_spec, validation_split, config}``, the format ``stethoscope.config.load_config_file`` (``jobs/train.py
--config``) accepts; ``config`` is the *complete* Config of the trial, so it does not depend on later changes of the
defaults, and ``validation_split`` (``{file, sha256}``) points at the sweep's split, which a retrain reuses.
``inputs`` holds every input the sweep ingested (``{name: input spec dict}``, ``Method.input_specs``);
``feature_spec`` (the log-mel input's spec, for older readers) is written only when the method has one.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stethoscope import storage
from stethoscope.data.features import InputSpec, input_specs_to_dict, log_mel_spec
from stethoscope.tuning.space import SEED_KEY, SearchSpace

log = logging.getLogger(__name__)

#: ``status`` values of the results table.
STATUSES = ("completed", "stopped_early", "error", "unfinished")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and math.isfinite(float(x))


def _configured_epochs(space: SearchSpace, config: dict) -> int | None:
    if "epochs" in config:
        return int(config["epochs"])
    if "epochs" in space.fixed:
        return int(space.fixed["epochs"])
    from stethoscope import methods

    return getattr(methods.get(space.method).make_config({}), "epochs", None)


def _trial_json(trials_dir: str, trial_id: str) -> dict:
    """A trial's ``trial.json`` (``trials_dir`` a folder or a URI), or {} for a trial that wrote none (stopped)."""
    from stethoscope import storage

    try:
        return storage.read_json(storage.join(trials_dir, trial_id, "trial.json"))
    except (OSError, ValueError):  # StorageError is an OSError
        return {}


def trials_table(grid, space: SearchSpace, trials_dir: str) -> pd.DataFrame:
    """One row per Tune trial, in creation order.

    Columns: ``trial_id``, ``number`` (1-based), ``status`` (:data:`STATUSES`; ``stopped_early`` = ASHA stopped it
    before its configured epochs), one column per searched parameter, ``seed``, the metric (last reported value),
    ``best_<metric>`` (best over its epochs), ``epochs`` (configured), ``epochs_done``, ``fit_seconds`` (wall time
    of the trial's Ray Train run, start-up included; NaN if it was stopped), ``train_seconds`` (sum of its epochs'
    own times), ``time_total_s`` (Tune's time from trial start to last report), ``error`` and ``path``.
    """
    from ray.tune import ExperimentAnalysis

    metric, sign = space.metric, (1 if space.mode == "max" else -1)
    # The experiment as saved on disk: after an interrupted fit() the in-memory trials all read TERMINATED, while the
    # saved state keeps PENDING / RUNNING for those that did not finish. Sorted into creation order (a restored
    # experiment lists its trials in another order; start_time is set once, when a trial first starts).
    listed = ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials
    trials = sorted(listed, key=lambda t: (t.run_metadata.start_time is None, t.run_metadata.start_time or 0,
                                           listed.index(t)))
    results = {}
    for r in grid:
        tid = (r.metrics or {}).get("trial_id") or Path(str(r.path)).name.removeprefix("trial_")
        results[tid] = r
    rows = []
    for number, trial in enumerate(trials, 1):
        r = results.get(trial.trial_id)
        last = dict(trial.last_result or {})
        history = r.metrics_dataframe if r is not None else None
        config = {k: v for k, v in trial.config.items()}
        epochs = _configured_epochs(space, config)
        epochs_done = last.get("epoch")
        values = []
        if history is not None and metric in history:
            values = [float(v) for v in history[metric] if _finite(v)]
        best = (max(values) if sign > 0 else min(values)) if values else float("nan")
        status = trial.status
        if status == "ERROR":
            status = "error"
        elif status == "TERMINATED" and epochs_done is not None:
            status = "stopped_early" if epochs_done < (epochs or 0) else "completed"
        else:
            status = "unfinished"
        tj = _trial_json(trials_dir, trial.trial_id)
        train_s = math.nan
        if history is not None and "epoch_seconds" in history:
            train_s = float(history["epoch_seconds"].sum())
        error = ""
        if r is not None and r.error is not None:
            error = str(r.error).strip().splitlines()[-1][:500] if str(r.error).strip() else type(r.error).__name__
        row = {"trial_id": trial.trial_id, "number": number, "status": status}
        row.update({name: config.get(name) for name in space.params})
        row.update({
            "seed": config.get(SEED_KEY), metric: float(last[metric]) if _finite(last.get(metric)) else math.nan,
            f"best_{metric}": best, "epochs": epochs, "epochs_done": epochs_done,
            "fit_seconds": float(tj.get("fit_seconds", math.nan)), "train_seconds": train_s,
            "time_total_s": float(last.get("time_total_s", math.nan)), "error": error,
            "path": str(r.path) if r is not None else "",
        })
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["epochs_done"] = pd.array(frame["epochs_done"], dtype="Int64")
    return frame


def best_trial(trials: pd.DataFrame, space: SearchSpace) -> dict | None:
    """The row with the best last-reported metric among trials that ran (completed or stopped early); ties go to
    the earlier trial. None if no trial reported the metric."""
    if trials.empty:
        return None
    ok = trials[trials["status"].isin(["completed", "stopped_early"]) & trials[space.metric].notna()]
    if ok.empty:
        return None
    ok = ok.sort_values([space.metric, "number"], ascending=[space.mode == "min", True])
    return ok.iloc[0].to_dict()


def best_config(row: dict, space: SearchSpace) -> dict:
    """The complete Config of the best trial as a plain dict. A trial ASHA stopped early is exported with the
    epochs it actually trained (``epochs_done``), so retraining the exported config reproduces the trial's metric."""
    from stethoscope import methods
    from stethoscope.config import to_dict

    values = {**space.fixed, **{k: _plain(row[k]) for k in space.params}}
    if row["status"] == "stopped_early" and "epochs" in _fields(space):
        values["epochs"] = int(row["epochs_done"])
    return to_dict(methods.get(space.method).make_config(values))


def _fields(space: SearchSpace) -> list[str]:
    import dataclasses

    from stethoscope import methods

    return [f.name for f in dataclasses.fields(methods.get(space.method).Config)]


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return v


def write_best_config(uri: str, row: dict, space: SearchSpace, *, machine_type: str, seed: int,
                      inputs: Mapping[str, InputSpec], split_file: str = "validation_split.json",
                      split_sha256: str | None = None, selection_args: str | None = None) -> str:
    """Write the best config YAML (``jobs/train.py --config`` format) with a comment header; returns ``uri``.

    ``inputs``: the inputs the sweep ingested (``{name: WaveformSpec | FeatureSpec}``; the best trial's own when a
    searched choice changes them: the caller passes those), written as ``inputs``
    (``{name: input spec dict}``) and, when the method has a log-mel input, its spec as ``feature_spec``.
    ``split_file`` (relative to the config's folder, or absolute) and ``split_sha256`` name the sweep's split.
    ``selection_args``: the jobs/train.py arguments that select the sweep's clips and scope (default:
    ``--machine-type <machine_type>``), shown in the header's retrain command."""
    import yaml

    cfg = best_config(row, space)
    log_mel = log_mel_spec(inputs)
    doc = {
        "method": space.method, "machine_type": machine_type, "metric": space.metric, "mode": space.mode,
        "value": float(row[space.metric]), "trial_id": str(row["trial_id"]), "seed": int(seed),
        "search_space": space.path, "inputs": input_specs_to_dict(inputs),
        **({"feature_spec": log_mel.to_dict()} if log_mel is not None else {}),
        "validation_split": {"file": split_file, "sha256": split_sha256}, "config": cfg,
    }
    header = [
        f"# Best {space.method} config for machine type {machine_type!r}, selected by Ray Tune on the validation",
        f"# metric {space.metric} ({space.mode}) = {float(row[space.metric]):.6f} "
        f"(trial {row['trial_id']}, seed {seed}).",
        "# The sweep's split is validation_split.json next to this file: a retrain with --config reuses it, so",
        "# --evaluate reports only its held-out test clips, never the validation clips this config was selected on.",
        f"# Retrain: python jobs/train.py --method {space.method} {selection_args or '--machine-type ' + machine_type} "
        "--config <this file> "
        f"--seed {seed} --evaluate",
    ]
    if row["status"] == "stopped_early":
        header.append(f"# ASHA stopped this trial after {int(row['epochs_done'])} of {row['epochs']} epochs; "
                      "epochs is set to what it trained.")
    text = "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    storage.write_text(uri, text)
    return uri


def write_table(trials: pd.DataFrame, folder: str) -> str:
    """``results.parquet`` and ``results.csv`` in ``folder``; returns the Parquet path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = trials.copy()
    for col in frame.columns:  # mixed-type object columns (e.g. a choice of str and int) → strings
        if frame[col].dtype == object and len({type(v) for v in frame[col] if v is not None}) > 1:
            frame[col] = frame[col].map(lambda v: None if v is None else str(v))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    fs, path = storage.resolve(storage.join(folder, "results.parquet"))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)
    storage.write_text(storage.join(folder, "results.csv"), frame.to_csv(index=False))
    return storage.join(folder, "results.parquet")


def plot_sweep(trials: pd.DataFrame, space: SearchSpace, uri: str) -> str | None:
    """PNG: the metric of every trial in order (filled = completed, hollow = stopped early, line = best so far),
    then one panel per searched parameter (metric against the value; log axis for log-scaled ranges)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ran = trials[trials["status"].isin(["completed", "stopped_early"])] if not trials.empty else trials
    if ran.empty:
        return None
    metric = space.metric
    names = list(space.params)
    ncols = min(4, 1 + len(names))
    nrows = math.ceil((1 + len(names)) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    done = ran["status"] == "completed"
    ax = axes[0]
    ax.scatter(ran["number"][done], ran[metric][done], color="C0", label="completed")
    ax.scatter(ran["number"][~done], ran[metric][~done], facecolors="none", edgecolors="C0", label="stopped early")
    order = ran.sort_values("number")
    running = order[metric].cummax() if space.mode == "max" else order[metric].cummin()
    ax.step(order["number"], running, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{space.method}: {metric} per trial")
    ax.legend(fontsize="small")
    for ax, name in zip(axes[1:], names):
        p = space.params[name]
        x = ran[name]
        if p.kind == "choice":
            labels = [str(v) for v in p.values]
            pos = x.map(lambda v: labels.index(str(v)) if str(v) in labels else -1)
            ax.scatter(pos[done], ran[metric][done], color="C0")
            ax.scatter(pos[~done], ran[metric][~done], facecolors="none", edgecolors="C0")
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
        else:
            ax.scatter(x[done].astype(float), ran[metric][done], color="C0")
            ax.scatter(x[~done].astype(float), ran[metric][~done], facecolors="none", edgecolors="C0")
            if p.kind == "loguniform" or p.log:
                ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
    for ax in axes[1 + len(names):]:
        ax.set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fs, path = storage.resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(buf.getvalue())
    return uri


def export_sweep(trials: pd.DataFrame, space: SearchSpace, folder: str, *, machine_type: str, seed: int,
                 inputs: Mapping[str, InputSpec], split_path: str, complete: bool, split_sha256: str | None = None,
                 selection_args: str | None = None) -> dict:
    """Write the table, the plot and (if any trial reported the metric) the best config into ``folder``
    (``inputs``: the inputs the sweep ingested, see :func:`write_best_config`).

    Returns ``{"best", "best_config_path", "results_path", "plot_path"}``.
    """
    results_path = write_table(trials, folder) if not trials.empty else None
    plot_path = plot_sweep(trials, space, storage.join(folder, "plots", "sweep.png"))
    best = best_trial(trials, space)
    best_path = None
    if best is not None:
        best = {k: _plain(v) for k, v in best.items()}
        best = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in best.items()}
        same = storage.join(folder, "validation_split.json") == split_path
        from stethoscope import methods
        from stethoscope.tuning.space import input_variants

        cls = methods.get(space.method)
        if len(input_variants(cls, space.fixed, space.params, space.path)) > 1:
            # a searched choice changes the inputs (e.g. SC's feature): the best trial's own inputs
            inputs = dict(cls.input_specs(cls.make_config(best_config(best, space))))
        best_path = write_best_config(storage.join(folder, "best_config.yaml"), best, space,
                                      machine_type=machine_type, seed=seed, inputs=inputs,
                                      split_file="validation_split.json" if same else split_path,
                                      split_sha256=split_sha256, selection_args=selection_args)
        log.info("best trial %s: %s = %.6f%s; config written to %s", best["trial_id"], space.metric,
                 best[space.metric], "" if complete else " (so far; the sweep is incomplete)", best_path)
    else:
        log.warning("no trial reported %s; no best config written", space.metric)
    return {"best": best, "best_config_path": best_path, "results_path": results_path, "plot_path": plot_path}


__all__ = ["STATUSES", "best_config", "best_trial", "export_sweep", "plot_sweep", "trials_table",
           "write_best_config", "write_table"]
