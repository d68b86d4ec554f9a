"""Evaluate a table of per-clip anomaly scores (DESIGN.md data-flow step 5).

:func:`evaluate` groups the clips by machine type and by machine_id (DCASE 2020) or section (DCASE 2021+), computes
AUC, pAUC and the unstandardized partial AUC per group, averages them per machine type, and writes into ``out_dir``:

- ``anomaly_score_<machine_type>_id_<XX>.csv`` (2020) or ``anomaly_score_<machine_type>_section_<XX>_test.csv``
  (2021+): one row ``file_name,score`` per clip, no header, rows sorted by file name. These are the names and the
  format the official tools write and read (github.com/y-kawagu/dcase2020_task2_baseline 01_test.py writes
  ``anomaly_score_{machine_type}_{id_str}.csv`` with rows ``[os.path.basename(file_path), score]``;
  github.com/nttcslab/dcase2023_task2_evaluator reads ``anomaly_score_{machine}_{section}_test.csv`` with
  ``csv.reader``, column 0 = file name, column 1 = score). Unlabelled clips are written too.
- ``metrics.json``: the dict :func:`evaluate` returns (layout below).
- ``results.md``: one markdown table per machine type (one row per ID/section, then the average row).
- ``plots/<machine_type>_<group>_roc.png`` and ``plots/<machine_type>_<group>_hist.png``.

metrics.json layout (stable; other stages read it)::

    {
      "dataset": "dcase2020" | "dcase2021+",
      "max_fpr": 0.1,
      "machine_types": {
        "<machine_type>": {
          "averaging": "arithmetic" (2020) | "harmonic" (2021+),
          "groups": {
            "id_00" | "section_00": {
              "auc": float|null,                   # all labelled clips of the group
              "pauc": float|null,                  # McClish-standardized, sklearn roc_auc_score(max_fpr=p)
              "pauc_unstandardized": float|null,   # (1/p) * integral_0^p TPR dFPR (Koizumi et al. 2020, Eq. 3)
              "n_normal": int, "n_anomaly": int, "n_unlabeled": int,
              # 2021+ only:
              "auc_source": float|null, "auc_target": float|null,   # domain normals + all anomalies
              "n_normal_source": int, "n_normal_target": int, "n_anomaly_source": int, "n_anomaly_target": int,
              "reason": str|null                   # why a metric above is null; null when none is
            }, ...
          },
          "mean": {
            "auc", "pauc", "pauc_unstandardized" (+ 2021+: "auc_source", "auc_target", "official_score"): float|null,
            "n_groups": int,                       # groups of the machine type (including any left out)
            "n_normal", "n_anomaly", "n_unlabeled": int (sums over groups),
            "reason": str|null                     # which groups were left out of which mean, null if none
          }
        }, ...
      },
      ...extra                                     # whatever the caller passed as ``extra`` (seed, method, ...)
    }

Each mean is taken over the groups where that metric is defined (a group whose metric is null is left out and named
in ``mean.reason``); a mean with no defined value is null. For 2021+ ``official_score`` is the harmonic mean of all
per-section source AUCs, target AUCs and pAUCs of the machine type, i.e. the DCASE 2022/2023 official score
(``scipy.stats.hmean`` over ``AUC (source)``, ``AUC (target)`` and ``pAUC`` of every section, values floored at
``sys.float_info.epsilon``; nttcslab/dcase2023_task2_evaluator, ``official_score``) restricted to one machine type.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import posixpath
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from stethoscope.data.labels import ID_FIELDS, id_field
from stethoscope.errors import ConfigError, DataError
from stethoscope.evaluation import metrics as M
from stethoscope.evaluation import plots as P

log = logging.getLogger(__name__)

DCASE2020 = "dcase2020"
DCASE2021_PLUS = "dcase2021+"
_DATASETS = (DCASE2020, DCASE2021_PLUS)
_REQUIRED = ("path", "dataset", "machine_type", "machine_id", "section", "domain", "label", "score")
_RESERVED = ("dataset", "max_fpr", "machine_types")
_METRICS_2020 = ("auc", "pauc", "pauc_unstandardized")
_METRICS_2021 = ("auc_source", "auc_target", "auc", "pauc", "pauc_unstandardized")


class ScoreError(DataError):
    """Scores that cannot be evaluated (NaN/inf). ``paths`` lists every offending clip."""

    def __init__(self, message: str, paths: list[str]):
        self.paths = list(paths)
        super().__init__(message + ":\n  " + "\n  ".join(self.paths))


# --------------------------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------------------------
def _null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


def _to_frame(scores: Any) -> pd.DataFrame:
    if hasattr(scores, "to_pandas") and not isinstance(scores, pd.DataFrame):  # pyarrow Table / RecordBatch
        scores = scores.to_pandas()
    if not isinstance(scores, pd.DataFrame):
        raise DataError(f"scores must be a pandas DataFrame or a pyarrow Table, got {type(scores).__name__}")
    missing = [c for c in _REQUIRED if c not in scores.columns]
    if missing:
        raise DataError(f"the scores table lacks column(s) {missing}; it needs {list(_REQUIRED)}")
    if len(scores) == 0:
        raise DataError("the scores table is empty: nothing to evaluate")
    # object columns throughout: pandas >= 3 would otherwise infer its str dtype and turn None back into NaN
    df = pd.DataFrame(
        {c: pd.Series([None if _null(v) else v for v in scores[c].tolist()], dtype=object)
         for c in _REQUIRED if c != "score"}
    )
    df["path"] = pd.Series([str(p) for p in df["path"]], dtype=object)
    df["machine_type"] = pd.Series([str(m) for m in df["machine_type"]], dtype=object)
    try:
        df["score"] = pd.to_numeric(scores["score"], errors="raise").astype(np.float64).to_numpy()
    except (TypeError, ValueError) as e:
        raise DataError(f"the score column must be numeric: {e}") from None
    return df


def _bad(df: pd.DataFrame, mask, what: str) -> None:
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        raise DataError(f"{int(mask.sum())} clip(s) have {what}:\n  " + "\n  ".join(df.loc[mask, "path"].tolist()))


def _group_number(v: Any) -> Any:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{int(v):02d}"
    return v


def _validate(df: pd.DataFrame) -> str:
    datasets = sorted({str(d) for d in df["dataset"]})
    if len(datasets) != 1 or datasets[0] not in _DATASETS:
        raise DataError(
            f"evaluate() takes clips of one dataset grammar, {' or '.join(_DATASETS)}; got {datasets}. "
            "Evaluate DCASE 2020 and 2021+ clips in separate calls (their machine types share names)."
        )
    dataset = datasets[0]
    nonfinite = ~np.isfinite(df["score"].to_numpy())
    if nonfinite.any():
        raise ScoreError(f"{int(nonfinite.sum())} clip(s) have a NaN or infinite score",
                         df.loc[nonfinite, "path"].tolist())
    _bad(df, [lab not in (None, "normal", "anomaly") for lab in df["label"]], "a label other than normal/anomaly/null")
    col = id_field(dataset)
    df["group"] = pd.Series([_group_number(v) for v in df[col]], dtype=object)
    _bad(df, [not (isinstance(v, str) and re.fullmatch(r"\d+", v)) for v in df["group"]],
         f"no {col} (or one that is not a digit string such as '00')")
    if dataset == DCASE2021_PLUS:
        _bad(df, [d not in (None, "source", "target") for d in df["domain"]], "a domain other than source/target/null")
    df["file_name"] = pd.Series(
        [posixpath.basename(p.replace("\\", "/").rstrip("/")) for p in df["path"]], dtype=object
    )
    dup = df.duplicated(["machine_type", "group", "file_name"], keep=False).to_numpy()
    _bad(df, dup, "a file name that repeats within one machine type and ID/section (the score CSV would be ambiguous)")
    return dataset


# --------------------------------------------------------------------------------------------------------------
# metrics per group and per machine type
# --------------------------------------------------------------------------------------------------------------
def _group_metrics(g: pd.DataFrame, dataset: str, max_fpr: float) -> dict[str, Any]:
    labelled = g[g["label"].notna()]
    y = (labelled["label"] == "anomaly").to_numpy().astype(np.int64)
    s = labelled["score"].to_numpy()
    n_normal, n_anomaly = int((y == 0).sum()), int((y == 1).sum())
    out: dict[str, Any] = {}
    reasons: list[str] = []
    if n_normal and n_anomaly:
        out["auc"] = M.auc(y, s)
        out["pauc"] = M.pauc(y, s, max_fpr)
        out["pauc_unstandardized"] = M.pauc_unstandardized(y, s, max_fpr)
    else:
        out.update(auc=None, pauc=None, pauc_unstandardized=None)
        if len(labelled) == 0:
            reasons.append(f"no labelled clips ({len(g)} unlabelled): AUC and pAUC need normal and anomalous clips")
        else:
            reasons.append(
                f"only one class among the {len(labelled)} labelled clips (n_normal={n_normal}, n_anomaly={n_anomaly}):"
                " AUC and pAUC need both"
            )
    out.update(n_normal=n_normal, n_anomaly=n_anomaly, n_unlabeled=int(len(g) - len(labelled)))
    if dataset == DCASE2021_PLUS:
        d = labelled["domain"].to_numpy(dtype=object)
        for dom in ("source", "target"):
            n_dom_normal = int(((y == 0) & (d == dom)).sum())
            out[f"n_normal_{dom}"] = n_dom_normal
            out[f"n_anomaly_{dom}"] = int(((y == 1) & (d == dom)).sum())
            if n_dom_normal and n_anomaly:
                m = M.domain_mask(y, d, dom)
                out[f"auc_{dom}"] = M.auc(y[m], s[m])
            else:
                out[f"auc_{dom}"] = None
                if n_normal and n_anomaly:  # the all-clips reason above already covers the one-class case
                    reasons.append(f"auc_{dom}: no {dom}-domain normal clips")
        order = ("auc", "auc_source", "auc_target", "pauc", "pauc_unstandardized", "n_normal", "n_anomaly",
                 "n_unlabeled", "n_normal_source", "n_normal_target", "n_anomaly_source", "n_anomaly_target")
        out = {k: out[k] for k in order}
    out["reason"] = "; ".join(reasons) if reasons else None
    return out


def _machine_mean(groups: dict[str, dict[str, Any]], dataset: str) -> dict[str, Any]:
    names = _METRICS_2020 if dataset == DCASE2020 else _METRICS_2021
    fn = M.amean if dataset == DCASE2020 else M.hmean
    mean: dict[str, Any] = {}
    left_out: dict[str, list[str]] = {}
    for name in names:
        values = [g[name] for g in groups.values() if g[name] is not None]
        for key, g in groups.items():
            if g[name] is None:
                left_out.setdefault(key, []).append(name)
        mean[name] = fn(values) if values else None
    if dataset == DCASE2021_PLUS:
        pooled = [g[k] for g in groups.values() for k in ("auc_source", "auc_target", "pauc") if g[k] is not None]
        mean["official_score"] = M.hmean(pooled) if pooled else None
    mean["n_groups"] = len(groups)
    for k in ("n_normal", "n_anomaly", "n_unlabeled"):
        mean[k] = int(sum(g[k] for g in groups.values()))
    mean["reason"] = (
        "left out of the mean where undefined: " + "; ".join(f"{k} ({', '.join(v)})" for k, v in left_out.items())
        if left_out else None
    )
    return mean


# --------------------------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------------------------
def score_csv_name(dataset: str, machine_type: str, group_number: str) -> str:
    """Official score-file name: ``anomaly_score_<machine_type>_id_<XX>.csv`` (DCASE 2020) or
    ``anomaly_score_<machine_type>_section_<XX>_test.csv`` (DCASE 2021+)."""
    if dataset == DCASE2020:
        return f"anomaly_score_{machine_type}_id_{group_number}.csv"
    return f"anomaly_score_{machine_type}_section_{group_number}_test.csv"


def write_score_csv(path: str | os.PathLike, g: pd.DataFrame) -> None:
    """Write one official score CSV at ``path`` (a local file): rows ``file_name,score`` sorted by file name, no
    header, scores as Python's shortest round-trip repr (the format of the module docstring).

    Args:
        g: one group's clips, with ``file_name`` (str) and ``score`` (float) columns.
    """
    rows = sorted(zip(g["file_name"], g["score"]), key=lambda r: r[0])
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for name, score in rows:
            w.writerow([name, repr(float(score))])


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table_spec(dataset: str) -> tuple[list[str], list[str]]:
    """(column titles, metrics keys) of the per-group table rows after the group column."""
    if dataset == DCASE2020:
        keys = ["auc", "pauc", "pauc_unstandardized", "n_normal", "n_anomaly", "n_unlabeled"]
        titles = ["AUC", "pAUC", "pAUC (unstandardized)", "normal", "anomaly", "unlabelled"]
    else:
        keys = ["auc_source", "auc_target", "auc", "pauc", "pauc_unstandardized",
                "n_normal", "n_anomaly", "n_unlabeled"]
        titles = ["AUC (source)", "AUC (target)", "AUC (all)", "pAUC", "pAUC (unstandardized)",
                  "normal", "anomaly", "unlabelled"]
    return titles, keys


def _mean_label(mt: dict[str, Any]) -> str:
    return "arithmetic mean" if mt["averaging"] == "arithmetic" else "harmonic mean"


def _results_markdown(result: dict[str, Any]) -> str:
    dataset, p = result["dataset"], result["max_fpr"]
    titles, keys = _table_spec(dataset)
    first = "ID" if dataset == DCASE2020 else "section"
    lines = [
        "# Evaluation results",
        "",
        f"- dataset grammar: `{dataset}`",
        f"- pAUC: McClish-standardized partial AUC over FPR ≤ {p:g} (`sklearn.metrics.roc_auc_score(max_fpr={p:g})`,"
        " as the official DCASE evaluators report it)",
        f"- pAUC (unstandardized): (1/p)·∫₀ᵖ TPR dFPR with p = {p:g} (Koizumi et al. 2020, arXiv:2006.05822, Eq. 3)",
    ]
    if dataset == DCASE2021_PLUS:
        lines.append("- AUC (source/target): that domain's normal clips and all anomalous clips of the section;"
                     " pAUC and AUC (all): all clips of the section (nttcslab/dcase2023_task2_evaluator)")
        lines.append("- average row: harmonic mean over sections; official score = harmonic mean of every section's"
                     " AUC (source), AUC (target) and pAUC")
    else:
        lines.append("- average row: arithmetic mean over machine IDs (DCASE 2020)")
    clips = result.get("clips")
    if isinstance(clips, dict) and clips.get("description"):
        lines.insert(2, f"**Clips:** {clips['description']}.")
        lines.insert(3, "")
    for k, v in result.items():
        if k not in _RESERVED and k not in ("machine_types", "notes"):
            lines.append(f"- {k}: `{json.dumps(v, sort_keys=True, default=str)}`")
    if result.get("notes"):  # fallbacks the run took on its input (e.g. stages.detect.input_notes)
        lines += ["", "**Notes on the input** (documented fallbacks):", ""] + [f"- {n}" for n in result["notes"]]
    for name, mt in result["machine_types"].items():
        lines += ["", f"## {name}", ""]
        lines.append("| " + " | ".join([first] + titles) + " |")
        lines.append("|" + "---|" * (len(titles) + 1))
        notes = []
        for gkey, g in mt["groups"].items():
            lines.append("| " + " | ".join([gkey.split("_", 1)[1]] + [_fmt(g[k]) for k in keys]) + " |")
            if g["reason"]:
                notes.append(f"- {gkey}: {g['reason']}")
        mean = mt["mean"]
        lines.append("| " + " | ".join([f"**{_mean_label(mt)}**"] + [f"**{_fmt(mean[k])}**" for k in keys]) + " |")
        if dataset == DCASE2021_PLUS:
            score = _fmt(mean["official_score"])
            lines += ["", f"official score (h-mean of AUC (source), AUC (target), pAUC): **{score}**"]
        if mean["reason"]:
            notes.append(f"- average: {mean['reason']}")
        if notes:
            lines += ["", *notes]
    return "\n".join(lines) + "\n"


def format_table(metrics: dict) -> str:
    """A plain-text table of a metrics dict (as returned by :func:`evaluate`) for jobs to print.

    One row per machine type × ID/section, then one average row per machine type ("a-mean" for DCASE 2020,
    "h-mean" for 2021+). Undefined values print as "-". Columns: AUC, pAUC, pAUC (unstandardized) and, for 2021+,
    AUC (source), AUC (target); then the normal and anomalous clip counts. When the metrics say which clips they
    cover (``metrics["clips"]["description"]``, written by the pipeline), that is the first line.
    """
    dataset = metrics.get("dataset", DCASE2020)
    keys = ["auc", "pauc", "pauc_unstandardized"]
    head = ["machine_type", "group", "AUC", "pAUC", "pAUC(unstd)"]
    if dataset == DCASE2021_PLUS:
        keys += ["auc_source", "auc_target"]
        head += ["AUC(src)", "AUC(tgt)"]
    keys += ["n_normal", "n_anomaly"]
    head += ["normal", "anomaly"]
    rows = [head]

    def cell(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    for name, mt in metrics["machine_types"].items():
        for gkey, g in mt["groups"].items():
            rows.append([name, gkey] + [cell(g.get(k)) for k in keys])
        label = "a-mean" if mt.get("averaging") == "arithmetic" else "h-mean"
        rows.append([name, label] + [cell(mt["mean"].get(k)) for k in keys])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = []
    for i, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    clips = metrics.get("clips")
    if isinstance(clips, dict) and clips.get("description"):
        out.insert(0, f"clips: {clips['description']}")
    return "\n".join(out)


@contextlib.contextmanager
def _local_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a local folder for ``out_dir``; a URI (``s3://...``, ``file://...``) is written to a temporary folder
    and copied there with ``pyarrow.fs.copy_files`` when the block ends."""
    target = os.fspath(out_dir)
    if "://" not in target:
        p = Path(target)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory(prefix="stethoscope-eval-") as tmp:
        yield Path(tmp)
        fs, root = pafs.FileSystem.from_uri(target)
        fs.create_dir(root, recursive=True)
        pafs.copy_files(tmp, root, destination_filesystem=fs)


# --------------------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------------------
def evaluate(
    scores: Any,
    out_dir: str | os.PathLike,
    *,
    max_fpr: float = M.DEFAULT_MAX_FPR,
    plots: bool = True,
    extra: dict | None = None,
) -> dict:
    """Compute AUC / pAUC per ID or section, average per machine type, and write the report files.

    Args:
        scores: pandas DataFrame or pyarrow Table, one row per clip, with columns ``path`` (str), ``dataset``
            ("dcase2020" or "dcase2021+", one value for the whole table), ``machine_type`` (str), ``machine_id``
            (str "00", 2020) or ``section`` (str "00", 2021+), ``domain`` ("source"/"target"/null), ``label``
            ("normal"/"anomaly"/null) and ``score`` (float, higher = more anomalous). Extra columns (e.g. the
            index's ``split``, ``attributes``) are ignored. Clips with a null label are written to the score CSVs
            but take no part in any metric or count other than ``n_unlabeled``.
        out_dir: folder (created if missing) or pyarrow filesystem URI to write into (see the module docstring
            for the files).
        max_fpr: p of pAUC (DCASE: 0.1), in (0, 1].
        plots: write the ROC and histogram PNGs under ``plots/``.
        extra: JSON-serializable entries merged into the top level of the result (e.g. ``{"seed": 0,
            "method": "autoencoder"}``); may not use the keys "dataset", "max_fpr", "machine_types".

    Returns:
        The metrics dict, also written to ``metrics.json``; layout in the module docstring. A group with only one
        class (or no labels) gets null AUC/pAUC and a ``reason``; that never raises.

    Raises:
        ScoreError (a DataError): a NaN or infinite score; the message lists every offending path.
        DataError: missing columns, an empty table, mixed datasets, a label/domain outside the vocabulary, a
            missing machine_id/section, or a file name that repeats within one score CSV (each lists the paths).
        ConfigError: max_fpr outside (0, 1], or ``extra`` reuses a reserved key or is not JSON-serializable.
    """
    if not (0.0 < float(max_fpr) <= 1.0):
        raise ConfigError(f"max_fpr must be in (0, 1], got {max_fpr}")
    extra = dict(extra or {})
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise ConfigError(f"extra may not set the reserved key(s) {clash}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"extra must be JSON-serializable (no NaN): {e}") from None

    df = _to_frame(scores)
    dataset = _validate(df)
    prefix = ID_FIELDS[id_field(dataset)]  # a group's key: id_XX / section_XX (data.labels)
    result: dict[str, Any] = {"dataset": dataset, "max_fpr": float(max_fpr), "machine_types": {}}

    with _local_dir(out_dir) as out:
        plot_dir = out / "plots"
        if plots:
            plot_dir.mkdir(exist_ok=True)
        for machine_type in sorted(df["machine_type"].unique()):
            mdf = df[df["machine_type"] == machine_type]
            groups: dict[str, dict[str, Any]] = {}
            for number in sorted(mdf["group"].unique()):
                g = mdf[mdf["group"] == number]
                key = f"{prefix}_{number}"
                write_score_csv(out / score_csv_name(dataset, machine_type, number), g)
                groups[key] = _group_metrics(g, dataset, float(max_fpr))
                if plots:
                    title = f"{machine_type} {key}"
                    labelled = g[g["label"].notna()]
                    y = (labelled["label"] == "anomaly").to_numpy().astype(np.int64)
                    dom = labelled["domain"].to_numpy(dtype=object) if dataset == DCASE2021_PLUS else None
                    P.plot_roc(plot_dir / f"{machine_type}_{key}_roc.png", y, labelled["score"].to_numpy(),
                               domains=dom, max_fpr=float(max_fpr), title=title)
                    P.plot_score_histogram(
                        plot_dir / f"{machine_type}_{key}_hist.png", g["score"].to_numpy(),
                        g["label"].to_numpy(dtype=object),
                        domains=g["domain"].to_numpy(dtype=object) if dataset == DCASE2021_PLUS else None,
                        title=title,
                    )
            result["machine_types"][machine_type] = {
                "averaging": "arithmetic" if dataset == DCASE2020 else "harmonic",
                "groups": groups,
                "mean": _machine_mean(groups, dataset),
            }
        result.update(extra)
        (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        (out / "results.md").write_text(_results_markdown(result))
        log.info("evaluation of %d clips (%d machine types) written to %s", len(df), len(result["machine_types"]),
                 os.fspath(out_dir))
    return result
