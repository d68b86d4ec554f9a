"""Per-ID / per-section diagnostic plots (DESIGN.md step 5): the ROC curve and the score histogram.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), so
nothing touches pyplot's global state and it is safe inside Ray workers and threads. Output is PNG.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics as skm

from stethoscope.evaluation.metrics import DEFAULT_MAX_FPR, domain_mask

_DPI = 100


def _new_figure() -> Figure:
    fig = Figure(figsize=(5.0, 4.0), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_roc(
    path: str | os.PathLike,
    y_true: Sequence[int],
    scores: Sequence[float],
    *,
    domains: Sequence[str | None] | None = None,
    max_fpr: float = DEFAULT_MAX_FPR,
    title: str = "",
) -> bool:
    """Write the ROC curve (TPR against FPR) of one ID/section as a PNG.

    Args:
        path: output .png path.
        y_true: [N] labels, 1 = anomaly, 0 = normal (labelled clips only).
        scores: [N] anomaly scores (higher = more anomalous).
        domains: [N] "source"/"target"/None for DCASE 2021+; when given, the source and target curves are added,
            each drawn from that domain's normals and all anomalies (the official AUC-per-domain definition, see
            :func:`stethoscope.evaluation.metrics.domain_mask`).
        max_fpr: the pAUC range [0, max_fpr] is shaded.
        title: figure title.

    Returns:
        True if the file was written; False (nothing written) when ``y_true`` lacks a class, so no ROC exists.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if not (np.any(y == 0) and np.any(y == 1)):
        return False
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.axvspan(0.0, max_fpr, color="0.9", label=f"pAUC range (FPR ≤ {max_fpr:g})")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    curves = [("all clips", np.ones_like(y, dtype=bool))]
    if domains is not None:
        curves += [(d, domain_mask(y, domains, d)) for d in ("source", "target")]
    for name, mask in curves:
        yy, ss = y[mask], s[mask]
        if not (np.any(yy == 0) and np.any(yy == 1)):
            continue
        fpr, tpr, _ = skm.roc_curve(yy, ss)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {skm.roc_auc_score(yy, ss):.3f})")
    ax.set_xlim(-0.01, 1.01)  # a small margin keeps curves on the axes' edges visible
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.savefig(os.fspath(path), format="png")
    return True


def plot_score_histogram(
    path: str | os.PathLike,
    scores: Sequence[float],
    labels: Sequence[str | None],
    *,
    domains: Sequence[str | None] | None = None,
    title: str = "",
    bins: int = 30,
) -> bool:
    """Write the anomaly-score histogram of one ID/section (normal vs anomaly) as a PNG.

    Args:
        path: output .png path.
        scores: [N] anomaly scores.
        labels: [N] "normal" / "anomaly" / None (None = unlabelled, drawn as its own series).
        domains: [N] "source"/"target"/None (DCASE 2021+); when given, the normals are split by domain.
        title: figure title.
        bins: number of bins shared by all series (edges span all scores).

    Returns:
        True if the file was written; False when ``scores`` is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels, dtype=object)
    if s.size == 0:
        return False
    dom = np.asarray(domains, dtype=object) if domains is not None else None
    series: list[tuple[str, np.ndarray]] = []
    if dom is not None:
        for d in ("source", "target"):
            series.append((f"normal ({d})", s[(lab == "normal") & (dom == d)]))
        series.append(("normal (no domain)", s[(lab == "normal") & (dom != "source") & (dom != "target")]))
    else:
        series.append(("normal", s[lab == "normal"]))
    series.append(("anomaly", s[lab == "anomaly"]))
    series.append(("unlabelled", s[(lab != "normal") & (lab != "anomaly")]))
    lo, hi = float(s.min()), float(s.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, values in series:
        if values.size:
            ax.hist(values, bins=edges, histtype="step", linewidth=1.5, label=f"{name} (n={values.size})")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("clips")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(os.fspath(path), format="png")
    return True


def plot_umap(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    *,
    labels: Sequence[str | None],
    domains: Sequence[str | None] | None = None,
    splits: Sequence[str] | None = None,
    title: str = "",
    n_neighbors: int = 15,
    seed: int = 0,
) -> bool:
    """A 2-D UMAP (McInnes, Healy & Melville 2018; umap-learn) of one machine type's clip embeddings, as ASDKit's
    visualize stage draws it: two panels, coloured by normal / anomaly (training clips apart) and by source / target.

    Args:
        path: output .png path.
        embeddings: [N, D] clip embeddings (training and test clips).
        labels: [N] "normal" / "anomaly" / None (unlabelled).
        domains: [N] "source" / "target" / None; the second panel is drawn only when some clip has a domain.
        splits: [N] "train" / "test"; training clips are drawn as small grey-edged points.
        n_neighbors / seed: UMAP's neighbourhood size (capped at N − 1) and random state (the plot is reproducible).
    Returns:
        True if written; False (nothing written) for fewer than 4 clips, where UMAP has no neighbourhood to learn.
    """
    import umap

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 4:
        return False
    xy = umap.UMAP(n_neighbors=max(2, min(n_neighbors, x.shape[0] - 1)), random_state=seed,
                   n_components=2).fit_transform(x)
    labels = np.array([lab if lab is not None else "unlabelled" for lab in labels], dtype=object)
    splits = np.array(list(splits) if splits is not None else ["test"] * len(x), dtype=object)
    doms = np.array([d if d else "none" for d in (domains if domains is not None else [None] * len(x))], dtype=object)
    panels = [("normal / anomaly", np.where(splits == "train", "train (normal)", labels),
               {"train (normal)": "0.75", "normal": "tab:blue", "anomaly": "tab:red", "unlabelled": "tab:gray"})]
    if np.any(doms != "none"):
        panels.append(("source / target", doms, {"source": "tab:green", "target": "tab:orange", "none": "tab:gray"}))
    fig = Figure(figsize=(5.0 * len(panels), 4.5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    for k, (name, values, colours) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for value, colour in colours.items():
            m = values == value
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=10 if value == "train (normal)" else 18, c=colour, label=value,
                           alpha=0.8, linewidths=0)
        ax.set_title(f"{title} — {name}" if title else name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize="small")
    fig.savefig(path)
    return True


def plot_anomaly_map(
    path: str | os.PathLike,
    panels: dict[str, np.ndarray],
    *,
    title: str = "",
    frame_seconds: float | None = None,
) -> None:
    """One clip's anomaly map as a row of panels sharing the frequency and time axes: e.g. TLDiffGAN's Fig. 3
    (the reconstruction, the training-mean log-mel and the difference map) or a single map of another method.

    Args:
        path: output .png path.
        panels: panel title → [F, T] array (mel bins × frames), drawn in order, low frequencies at the bottom; the
            last panel (the map) gets its own colour scale, the others share one.
        title: the figure's title (e.g. the clip's file name, label and score).
        frame_seconds: seconds per frame for the time axis (None = frames).
    Raises:
        ValueError: no panel, or a panel that is not 2-D, or panels of different shapes.
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in panels.items()}
    if not arrays or any(a.ndim != 2 for a in arrays.values()) or len({a.shape for a in arrays.values()}) != 1:
        raise ValueError(f"plot_anomaly_map expects one or more [F, T] arrays of one shape, got "
                         f"{ {k: a.shape for k, a in arrays.items()} }")
    f, t = next(iter(arrays.values())).shape
    extent = (0.0, t * frame_seconds if frame_seconds else float(t), 0.0, float(f))
    shared = [a for a in list(arrays.values())[:-1]]
    lo = min((float(a.min()) for a in shared), default=None)
    hi = max((float(a.max()) for a in shared), default=None)
    fig = Figure(figsize=(4.2 * len(arrays), 3.6), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    for k, (name, a) in enumerate(arrays.items()):
        ax = fig.add_subplot(1, len(arrays), k + 1)
        last = k == len(arrays) - 1
        im = ax.imshow(a, origin="lower", aspect="auto", extent=extent, cmap="magma" if last else "viridis",
                       vmin=None if last else lo, vmax=None if last else hi)
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_title(name)
        ax.set_xlabel("time (s)" if frame_seconds else "frame")
        if k == 0:
            ax.set_ylabel("mel bin")
    if title:
        fig.suptitle(title)
    fig.savefig(path)
