"""Score ensembles: standardize each member's score, combine them with convex weights chosen on a validation split.

Recipe (issue 5, following the AITHU DCASE technical report, §4, score-level ensembling):

1. Each member's anomaly score is standardized with the mean and standard deviation of its scores on the
   *training normals*: ``z_m = (s_m - mean_m) / std_m`` (:class:`Standardizer`). Members with different units
   (reconstruction MSE in dB², negative log-likelihoods, distances) become comparable.
2. The ensemble score is a convex combination ``z = sum_m w_m z_m`` with ``w_m >= 0`` and ``sum_m w_m = 1``.
3. The weights are chosen by a grid search over the simplex (resolution ``step``, 0.1 by default) on a labelled
   validation split that is disjoint from the reported test clips (:func:`fit_weights`). The objective is the figure
   DCASE ranks systems by: for DCASE 2020 data (``objective="auc_pauc"``) the mean of AUC and pAUC (max_fpr = 0.1,
   McClish-standardized as the official evaluators report it); for DCASE 2022+ data (``objective="official_score"``,
   AITHU §4: "maximizes the h-mean") the official score, the harmonic mean over sections of source AUC, target AUC
   and pAUC (:func:`stethoscope.evaluation.metrics.official_score`). The report tuned its weights on the
   development *test* set; here only the validation clips choose. Ties go to the higher pooled AUC, then to fewer
   members (a member that does not improve the validation figures is left out), then to weights closer to uniform
   over the members kept, then to the grid order.

A one-member ensemble is allowed (its weight is 1). The test labels must never reach :func:`fit_weights` or
:func:`fit_ensemble`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from stethoscope.errors import ConfigError, DataError
from stethoscope.evaluation.metrics import DEFAULT_MAX_FPR, auc, official_score, pauc

log = logging.getLogger(__name__)

#: Default simplex resolution of the weight grid search.
DEFAULT_STEP = 0.1
#: Largest weight grid searched (points); beyond it, pass fewer members or a coarser step.
MAX_GRID_POINTS = 200_000
#: Default cap on the candidates entering the grid search (the best ones individually on validation).
DEFAULT_MAX_MEMBERS = 4
#: What the weight search maximizes on the validation clips (name → description recorded in the manifest).
OBJECTIVES = {
    "auc_pauc": "validation (AUC + pAUC) / 2",
    "official_score": "validation official score (h-mean over sections of source AUC, target AUC and pAUC)",
}


def _vector(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise DataError(f"{what}: {int((~np.isfinite(a)).sum())} score(s) are NaN or infinite")
    return a


@dataclass(frozen=True)
class Standardizer:
    """``z = (score - mean) / std``, with mean and (population) std of a member's scores on the training normals.

    Attributes: mean, std (score units; std > 0), n (how many training scores were seen).
    """

    mean: float
    std: float
    n: int = 0

    @classmethod
    def fit(cls, train_normal_scores: Sequence[float] | np.ndarray) -> "Standardizer":
        """Fit on [N] training-normal scores (N >= 2).

        Raises:
            DataError: fewer than 2 scores, NaN/inf, or zero spread (the member's scores carry no scale).
        """
        x = _vector(train_normal_scores, "training-normal scores")
        if x.size < 2:
            raise DataError(f"standardizing a member needs at least 2 training-normal scores; got {x.size}")
        std = float(np.std(x))
        if not std > 0.0:
            raise DataError(f"all {x.size} training-normal scores equal {x[0]!r}: the member cannot be standardized")
        return cls(float(np.mean(x)), std, int(x.size))

    def apply(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """[N] raw scores → [N] standardized scores (float64)."""
        return (np.asarray(scores, dtype=np.float64) - self.mean) / self.std

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Standardizer":
        from stethoscope.config import from_dict

        st = from_dict(cls, values, "score standardizer")
        if not (math.isfinite(st.mean) and math.isfinite(st.std) and st.std > 0):
            raise ConfigError(f"score standardizer {values}: mean must be finite and std finite and > 0")
        return st


def simplex_grid(n_members: int, step: float = DEFAULT_STEP) -> np.ndarray:
    """Every convex weight vector whose entries are multiples of ``step``: [G, n_members], rows sum to 1.

    G = C(K + M - 1, M - 1) with K = 1/step (M = 2, step 0.1 → 11 points; M = 3 → 66; M = 4 → 286).
    Rows are in lexicographic order of the integer compositions, first member's weight descending.

    Raises:
        ConfigError: n_members < 1, step not of the form 1/K (K a positive integer), or G > MAX_GRID_POINTS.
    """
    if int(n_members) < 1:
        raise ConfigError(f"an ensemble needs at least one member; got {n_members}")
    if not 0.0 < float(step) <= 1.0:
        raise ConfigError(f"weight grid step = {step}; expected 1/K for a positive integer K (e.g. 0.1)")
    k = int(round(1.0 / float(step)))
    if abs(k * float(step) - 1.0) > 1e-9:
        raise ConfigError(f"weight grid step = {step}; expected 1/K for a positive integer K (e.g. 0.1, 0.05, 0.25)")
    m = int(n_members)
    size = math.comb(k + m - 1, m - 1)
    if size > MAX_GRID_POINTS:
        raise ConfigError(
            f"a weight grid over {m} members with step {step} has {size} points (limit {MAX_GRID_POINTS}); "
            "use fewer members (max_members) or a coarser step"
        )
    rows = []

    def compositions(left: int, parts: int, prefix: tuple[int, ...]):
        if parts == 1:
            rows.append(prefix + (left,))
            return
        for first in range(left, -1, -1):
            compositions(left - first, parts - 1, prefix + (first,))

    compositions(k, m, ())
    return np.asarray(rows, dtype=np.float64) / k


def _labels(labels: Any) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise DataError(f"validation labels must be 0 (normal) or 1 (anomaly); got {sorted(values, key=str)}")
    return y.astype(np.int64)


def _check_objective(objective: str, groups: Any, domains: Any, n: int) -> tuple[np.ndarray | None, ...]:
    if objective not in OBJECTIVES:
        raise ConfigError(f"ensemble objective {objective!r}; expected one of {sorted(OBJECTIVES)}")
    if objective != "official_score":
        return None, None
    if groups is None or domains is None:
        raise DataError("the official-score objective needs each validation clip's section (groups) and domain")
    g, d = np.asarray(groups, dtype=object).reshape(-1), np.asarray(domains, dtype=object).reshape(-1)
    if g.shape[0] != n or d.shape[0] != n:
        raise DataError(f"{n} validation clips but {g.shape[0]} sections and {d.shape[0]} domains")
    return g, d


def _objective(objective: str, y: np.ndarray, s: np.ndarray, groups, domains, max_fpr: float
               ) -> tuple[float, float, float]:
    """(objective, pooled AUC, pooled pAUC) of scores [N] on labels [N]."""
    a, p = auc(y, s), pauc(y, s, max_fpr)
    if objective == "official_score":
        o = official_score(y, s, groups, domains, max_fpr)
        return (float("nan") if o is None else o), a, p
    return 0.5 * (a + p), a, p


@dataclass
class WeightSearch:
    """Result of :func:`fit_weights`: the chosen weights [M], their validation AUC / pAUC (pooled over the clips),
    the objective's value (``objective`` names it, see :data:`OBJECTIVES`), and how many grid points were
    evaluated."""

    weights: np.ndarray
    auc: float
    pauc: float
    objective: float
    n_grid: int
    step: float
    objective_name: str = "auc_pauc"


def fit_weights(
    val_scores: np.ndarray,
    val_labels: Sequence[int],
    *,
    step: float = DEFAULT_STEP,
    max_fpr: float = DEFAULT_MAX_FPR,
    objective: str = "auc_pauc",
    groups: Sequence[str] | None = None,
    domains: Sequence[str | None] | None = None,
) -> WeightSearch:
    """Grid-search convex weights on a validation split (AITHU report §4 recipe; see the module docstring).

    Args:
        val_scores: [N, M] *standardized* member scores of the N validation clips.
        val_labels: [N] 0 = normal, 1 = anomaly; both classes must be present. Never pass test labels.
        step: simplex resolution (1/K). max_fpr: pAUC's FPR limit (DCASE: 0.1).
        objective: "auc_pauc" (``(AUC + pAUC) / 2``) or "official_score" (DCASE 2022+ h-mean; needs ``groups``,
            each clip's section, and ``domains``, "source" / "target").
    Returns:
        WeightSearch with the weights maximising the objective on the validation clips.
    Raises:
        DataError: shapes disagree, NaN/inf scores, labels not 0/1 or only one class, the official score undefined
            (no section with normal and anomalous validation clips), or groups / domains missing for it.
        ConfigError: a bad step (see :func:`simplex_grid`) or objective.
    """
    s = np.asarray(val_scores, dtype=np.float64)
    if s.ndim != 2:
        raise DataError(f"validation scores must be [N, M]; got shape {s.shape}")
    y = _labels(val_labels)
    if y.shape[0] != s.shape[0]:
        raise DataError(f"{s.shape[0]} validation score rows but {y.shape[0]} labels")
    if not np.all(np.isfinite(s)):
        raise DataError("validation scores hold NaN or infinite values")
    n_normal, n_anomaly = int((y == 0).sum()), int((y == 1).sum())
    if n_normal == 0 or n_anomaly == 0:
        raise DataError(
            f"choosing ensemble weights needs normal and anomalous validation clips; got {n_normal} normal and "
            f"{n_anomaly} anomalous"
        )
    groups, domains = _check_objective(objective, groups, domains, s.shape[0])
    grid = simplex_grid(s.shape[1], step)
    combined = s @ grid.T  # [N, G]
    best_key, best = None, None
    for g in range(grid.shape[0]):
        obj, a, p = _objective(objective, y, combined[:, g], groups, domains, max_fpr)
        if math.isnan(obj):
            raise DataError("the official score is undefined on these validation clips: no section has both normal "
                            "and anomalous clips")
        # maximise objective, then AUC; then prefer fewer members, then weights near uniform; then grid order.
        key = (-round(obj, 12), -round(a, 12), int(np.count_nonzero(grid[g])),
               round(float(np.sum((grid[g][grid[g] > 0] - 1.0 / np.count_nonzero(grid[g])) ** 2)), 12), g)
        if best_key is None or key < best_key:
            best_key, best = key, (grid[g].copy(), a, p, obj)
    assert best is not None
    w, a, p, obj = best
    return WeightSearch(w, float(a), float(p), float(obj), int(grid.shape[0]), float(step), objective)


@dataclass
class Ensemble:
    """A fitted ensemble: member names, their standardizers and convex weights.

    ``score(raw)`` maps raw member scores [N, M] (columns in ``members`` order) to the ensemble score [N];
    ``standardize(raw)`` gives the [N, M] standardized scores.
    """

    members: list[str]
    standardizers: list[Standardizer]
    weights: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        m = len(self.members)
        if m == 0 or len(self.standardizers) != m or self.weights.shape[0] != m:
            raise ConfigError(
                f"ensemble: {m} members, {len(self.standardizers)} standardizers and {self.weights.shape[0]} weights;"
                " expected the same non-zero count"
            )
        if np.any(self.weights < 0) or not math.isclose(float(self.weights.sum()), 1.0, abs_tol=1e-9):
            raise ConfigError(f"ensemble weights {self.weights.tolist()} must be >= 0 and sum to 1")

    def standardize(self, raw: np.ndarray) -> np.ndarray:
        r = np.asarray(raw, dtype=np.float64)
        if r.ndim == 1:
            r = r[:, None]
        if r.shape[1] != len(self.members):
            raise DataError(f"expected raw scores for {len(self.members)} members, got {r.shape[1]} columns")
        return np.stack([st.apply(r[:, i]) for i, st in enumerate(self.standardizers)], axis=1)

    def score(self, raw: np.ndarray) -> np.ndarray:
        """[N, M] raw member scores → [N] ensemble scores (float64)."""
        return self.standardize(raw) @ self.weights

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": list(self.members),
            "weights": [float(w) for w in self.weights],
            "standardizers": [st.to_dict() for st in self.standardizers],
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Ensemble":
        try:
            return cls(
                list(values["members"]),
                [Standardizer.from_dict(v) for v in values["standardizers"]],
                np.asarray(values["weights"], dtype=np.float64),
                dict(values.get("info") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed ensemble description ({exc!r}): {values}") from None


def fit_ensemble(
    names: Sequence[str],
    train_normal_scores: Sequence[np.ndarray],
    val_scores: np.ndarray,
    val_labels: Sequence[int],
    *,
    step: float = DEFAULT_STEP,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_fpr: float = DEFAULT_MAX_FPR,
    objective: str = "auc_pauc",
    groups: Sequence[str] | None = None,
    domains: Sequence[str | None] | None = None,
    weights: str = "search",
) -> Ensemble:
    """Standardize every candidate, keep the ``max_members`` best on validation, grid-search their weights,
    and drop the members whose weight is 0.

    Args:
        names: M candidate names. train_normal_scores: M arrays of raw scores on the training normals.
        val_scores: [N, M] raw candidate scores on the validation clips. val_labels: [N] 0/1.
        step / max_members / max_fpr: grid resolution, candidate cap, pAUC's FPR limit.
        objective / groups / domains: what the candidates are ranked by and the weights maximize (see
            :func:`fit_weights`). With "official_score" but no section holding both classes among the validation
            clips, the search falls back to "auc_pauc" and ``info["objective_note"]`` says so.
        weights: "search" (the grid search) or "uniform": the ``max_members`` best candidates on validation, each
            with weight 1 / M, no search (a fixed average ensemble; ``info["reason"]`` says so).
    Returns:
        An :class:`Ensemble`; its ``info`` records the objective, each candidate's standardized validation
        AUC / pAUC / objective, the search and, when the validation split lacks a class, why the weights are
        uniform instead (no search is possible; a one-member ensemble needs none).
    Raises:
        DataError: as :meth:`Standardizer.fit` / :func:`fit_weights` (bad shapes or values).
        ConfigError: no candidates, duplicate names, max_members < 1, an unknown objective or weights mode.
    """
    if weights not in ("search", "uniform"):
        raise ConfigError(f"ensemble weights {weights!r}; expected 'search' or 'uniform'")
    names = list(names)
    if not names:
        raise ConfigError("an ensemble needs at least one candidate member")
    if len(set(names)) != len(names):
        raise ConfigError(f"candidate member names repeat: {names}")
    if int(max_members) < 1:
        raise ConfigError(f"max_members = {max_members}; expected >= 1")
    if len(train_normal_scores) != len(names):
        raise DataError(f"{len(names)} candidates but {len(train_normal_scores)} training-score arrays")
    raw = np.asarray(val_scores, dtype=np.float64)
    if raw.ndim == 1:
        raw = raw[:, None]
    if raw.shape[1] != len(names):
        raise DataError(f"{len(names)} candidates but validation scores have {raw.shape[1]} columns")
    y = _labels(val_labels)
    if y.shape[0] != raw.shape[0]:
        raise DataError(f"{raw.shape[0]} validation score rows but {y.shape[0]} labels")
    groups, domains = _check_objective(objective, groups, domains, y.shape[0])
    standardizers = [Standardizer.fit(t) for t in train_normal_scores]
    z = np.stack([st.apply(raw[:, i]) for i, st in enumerate(standardizers)], axis=1)
    both = bool((y == 0).any() and (y == 1).any())
    objective_note = None
    if both and objective == "official_score" and official_score(y, z[:, 0], groups, domains, max_fpr) is None:
        objective_note = ("no section has both normal and anomalous validation clips, so the official score is "
                          "undefined: members and weights maximize (AUC + pAUC) / 2 over the pooled clips instead")
        log.warning("ensemble: %s", objective_note)
        objective = "auc_pauc"
    candidates: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        row: dict[str, Any] = {"standardizer": standardizers[i].to_dict(), "auc": None, "pauc": None,
                               "objective": None}
        if both:
            row["objective"], row["auc"], row["pauc"] = _objective(objective, y, z[:, i], groups, domains, max_fpr)
        candidates[name] = row
    info: dict[str, Any] = {
        "objective": OBJECTIVES[objective],
        "objective_name": objective,
        "objective_note": objective_note,
        "max_fpr": float(max_fpr),
        "step": float(step),
        "n_validation": int(y.shape[0]),
        "n_validation_normal": int((y == 0).sum()),
        "n_validation_anomaly": int((y == 1).sum()),
        "candidates": candidates,
        "reason": None,
    }
    order = sorted(range(len(names)), key=lambda i: (-candidates[names[i]]["objective"],
                                                      -candidates[names[i]]["auc"], names[i])) if both else []
    if not both or weights == "uniform":
        keep = sorted(order[: int(max_members)]) if both else list(range(min(len(names), int(max_members))))
        w = np.full(len(keep), 1.0 / len(keep))
        info["reason"] = (
            f"the validation split has {info['n_validation_normal']} normal and {info['n_validation_anomaly']} "
            "anomalous clips: no weight search is possible, so the weights are uniform"
        ) if not both else "uniform weights were asked for (no weight search)"
        if len(names) > 1 and not both:
            log.warning("ensemble: %s", info["reason"])
        if both:
            obj, a, p = _objective(objective, y, z[:, keep] @ w, groups, domains, max_fpr)
            info.update(validation_auc=a, validation_pauc=p, validation_objective=obj, n_grid=0)
        else:
            info.update(validation_auc=None, validation_pauc=None, validation_objective=None, n_grid=0)
    else:
        keep = sorted(order[: int(max_members)])
        search = fit_weights(z[:, keep], y, step=step, max_fpr=max_fpr, objective=objective, groups=groups,
                             domains=domains)
        w = search.weights
        info.update(validation_auc=search.auc, validation_pauc=search.pauc, validation_objective=search.objective,
                    n_grid=search.n_grid)
    nonzero = [j for j in range(len(keep)) if w[j] > 0]
    members = [names[keep[j]] for j in nonzero]
    weights = np.asarray([w[j] for j in nonzero], dtype=np.float64)
    weights = weights / weights.sum()
    info["dropped"] = [n for n in names if n not in members]
    return Ensemble(members, [standardizers[keep[j]] for j in nonzero], weights, info)


def weights_table(ensemble: Ensemble) -> list[tuple[str, float]]:
    """``[(member, weight), ...]`` in member order (for printing)."""
    return list(zip(ensemble.members, [float(w) for w in ensemble.weights]))


__all__ = [
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_STEP",
    "OBJECTIVES",
    "Ensemble",
    "Standardizer",
    "WeightSearch",
    "fit_ensemble",
    "fit_weights",
    "simplex_grid",
    "weights_table",
]
