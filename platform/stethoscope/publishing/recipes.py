"""The AITHU DCASE 2022 submissions as ensemble recipes over trained runs (AITHU technical report §4, Table 10).

The report combined six subsystems — SC, MHCR, SC-wav2vec (part 1, :mod:`stethoscope.methods.section_classifier`),
WSP-NFCDEE, IMDN (part 2) and AEGAN-AD — by standardizing each one's scores with its training-clip mean and std and
weighting them convexly (§4). Its four submissions (Table 10, official score = h-mean over machine types and sections
of source AUC, target AUC and pAUC, on the development set):

=====  ==============================================  ========
 no.   members                                          report
=====  ==============================================  ========
 1     all six subsystems + the domain classifier        86.81
 2     all six subsystems, without it                    86.51
 3     the best two or three per machine type            86.40
 4     SC + WSP-NFCDEE                                   84.18
=====  ==============================================  ========

Here a recipe picks, per machine type, the runs that play each subsystem (:func:`select_runs`) and hands them to
:func:`stethoscope.publishing.publish_runs`, which standardizes, grid-searches the weights on the **validation**
clips of the runs' shared split (the report used the development test set; nothing here is chosen on test clips)
and publishes one bundle. "With the domain classifier" means the SC member is a run trained with
``domain_classifier: true`` (its detector stage scores clips per predicted domain, see docs/aithu.md); "without"
means an SC run without it. When several runs play one subsystem for a machine type (e.g. the trials of a sweep), the
one with the best validation figure is taken. A subsystem without a run is left out and listed as missing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from stethoscope.errors import ConfigError, DataError, StethoscopeError
from stethoscope.evaluation.ensemble import DEFAULT_STEP
from stethoscope.evaluation.metrics import DEFAULT_MAX_FPR, auc, official_score, pauc
from stethoscope.publishing.publish import PublishResult, RunInfo, publish_runs

log = logging.getLogger(__name__)

#: The report's six subsystems, as our method names (AITHU report §3, Table 10).
SUBSYSTEMS = ("sc", "mhcr", "sc_wav2vec", "wsp_nfcdee", "imdn", "aegan_ad")


@dataclass(frozen=True)
class Recipe:
    """One submission of AITHU's Table 10.

    Attributes:
        number: the submission (1-4). description: what it combines.
        reported: the report's official score (%, Table 10).
        subsystems: the method names that may play a member.
        domain_classifier: True: the SC member must be a run with ``domain_classifier: true``; False: without it;
            None: either (the better one on validation).
        max_members: how many of the candidates (the best ones individually on validation) enter the weight search.
    """

    number: int
    description: str
    reported: float
    subsystems: tuple[str, ...]
    domain_classifier: bool | None
    max_members: int


RECIPES: dict[int, Recipe] = {
    1: Recipe(1, "all six subsystems + the domain classifier", 86.81, SUBSYSTEMS, True, len(SUBSYSTEMS)),
    2: Recipe(2, "all six subsystems, without the domain classifier", 86.51, SUBSYSTEMS, False, len(SUBSYSTEMS)),
    3: Recipe(3, "the best two or three subsystems per machine type", 86.40, SUBSYSTEMS, None, 3),
    4: Recipe(4, "SC + WSP-NFCDEE", 84.18, ("sc", "wsp_nfcdee"), False, 2),
}


def get_recipe(number: int | str) -> Recipe:
    """Raises ConfigError for a number that is not a recipe."""
    try:
        return RECIPES[int(number)]
    except (KeyError, ValueError):
        raise ConfigError(f"recipe {number!r}: expected one of {sorted(RECIPES)}") from None


def run_method(info: RunInfo) -> str:
    """The method a run trained (``run.json``'s ``method``)."""
    return str(info.manifest.get("method", ""))


def uses_domain_classifier(info: RunInfo) -> bool:
    """Whether a run's model was trained with the domain classifier (``config.domain_classifier``)."""
    return bool((info.manifest.get("config") or {}).get("domain_classifier", False))


def validation_figure(info: RunInfo, machine_type: str, max_fpr: float = DEFAULT_MAX_FPR) -> float:
    """A run's own figure on the validation clips of ``machine_type``: the official score for sectioned data
    (DCASE 2021+), (AUC + pAUC) / 2 for DCASE 2020; −inf when undefined (no validation clip of both classes)."""
    from stethoscope import runs as run_files

    frame = pd.read_parquet(info.path / run_files.SCORES)
    if "machine_type" in frame.columns:
        frame = frame[frame["machine_type"] == machine_type]
    roles = info.split.roles()
    frame = frame[[roles.get(p) == "validation" for p in frame["path"]]]
    y = (frame["label"] == "anomaly").to_numpy(dtype=np.int64)
    s = frame["score"].to_numpy(dtype=np.float64)
    if not ((y == 0).any() and (y == 1).any()):
        return float("-inf")
    if "section" in frame.columns and "domain" in frame.columns and frame["section"].notna().all():
        value = official_score(y, s, frame["section"].astype(str), frame["domain"], max_fpr)
        return float("-inf") if value is None else value
    return 0.5 * (auc(y, s) + pauc(y, s, max_fpr))


@dataclass
class Selection:
    """The runs a recipe takes for one machine type: ``runs`` (subsystem → run), ``missing`` subsystems."""

    machine_type: str
    runs: dict[str, RunInfo]
    missing: list[str]


def select_runs(recipe: Recipe, runs: Sequence[RunInfo], machine_type: str) -> Selection:
    """The run that plays each of ``recipe``'s subsystems for ``machine_type`` (see the module docstring)."""
    chosen: dict[str, RunInfo] = {}
    missing = []
    for sub in recipe.subsystems:
        cands = [r for r in runs if run_method(r) == sub and machine_type in r.machine_types]
        if sub == "sc" and recipe.domain_classifier is not None:
            cands = [r for r in cands if uses_domain_classifier(r) == recipe.domain_classifier]
        if not cands:
            missing.append(sub + (" (with the domain classifier)" if sub == "sc" and recipe.domain_classifier
                                  else ""))
            continue
        chosen[sub] = max(cands, key=lambda r: (validation_figure(r, machine_type), str(r.path)))
    return Selection(machine_type, chosen, missing)


@dataclass
class RecipeResult:
    """A recipe's outcome over machine types: its selections, the publish results (one per machine type that had
    members), the pooled official score on validation and held-out test clips (None where undefined), and why a
    machine type was left out."""

    recipe: Recipe
    selections: dict[str, Selection]
    results: list[PublishResult] = field(default_factory=list)
    validation: float | None = None
    test: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.number,
            "description": self.recipe.description,
            "members": {r.machine_type: list(r.ensemble.members) for r in self.results},
            "weights": {r.machine_type: [float(w) for w in r.ensemble.weights] for r in self.results},
            "missing": {mt: s.missing for mt, s in self.selections.items() if s.missing},
            "validation_official_score": self.validation,
            "test_official_score": self.test,
            "reported_official_score_percent": self.recipe.reported,
            "skipped": self.skipped,
        }


def pooled_official_score(results: Sequence[PublishResult], role: str,
                          max_fpr: float = DEFAULT_MAX_FPR) -> float | None:
    """The official score over every machine type at once (h-mean of every machine type's sections' source AUC,
    target AUC and pAUC) of the published ensembles' scores on the clips of ``role`` ("validation" or "test")."""
    parts = []
    for r in results:
        t = r.scores
        if "section" not in t.columns or "domain" not in t.columns:
            return None
        t = t[(t["role"] == role) & t["label"].notna()]
        parts.append(pd.DataFrame({"group": r.machine_type + "/" + t["section"].astype(str),
                                   "domain": t["domain"], "y": (t["label"] == "anomaly").astype(int),
                                   "score": t["score"]}))
    if not parts:
        return None
    t = pd.concat(parts)
    return official_score(t["y"].to_numpy(), t["score"].to_numpy(), t["group"].to_numpy(), t["domain"].to_numpy(),
                          max_fpr)


def run_recipe(recipe: Recipe, runs: Sequence[RunInfo], registry: str | os.PathLike, out_dir: str | os.PathLike,
               *, machine_types: Sequence[str] | None = None, step: float = DEFAULT_STEP,
               quantile: float = 0.9) -> RecipeResult:
    """Select each machine type's members (:func:`select_runs`) and publish the recipe's ensemble for it to
    ``registry`` with :func:`publish_runs` (evaluation files under ``out_dir/<machine_type>/``).

    Raises:
        DataError: no machine type has a run for any of the recipe's subsystems. A machine type whose publish
            fails (e.g. its runs were made with different splits) is recorded in ``skipped`` with the reason.
    """
    types = sorted({mt for r in runs for mt in r.machine_types
                    if machine_types is None or mt in machine_types})
    result = RecipeResult(recipe, {mt: select_runs(recipe, runs, mt) for mt in types})
    for mt, sel in result.selections.items():
        if not sel.runs:
            result.skipped[mt] = f"no run of {list(recipe.subsystems)}"
            continue
        try:
            result.results += publish_runs(list(sel.runs.values()), registry, machine_types=[mt], step=step,
                                           max_members=recipe.max_members, out_dir=out_dir, quantile=quantile)
        except StethoscopeError as exc:
            result.skipped[mt] = str(exc)
            log.warning("recipe %d, %s: %s", recipe.number, mt, exc)
    if not result.results:
        raise DataError(f"recipe {recipe.number} ({recipe.description}): nothing to ensemble: "
                        + "; ".join(f"{mt}: {why}" for mt, why in result.skipped.items()))
    result.validation = pooled_official_score(result.results, "validation")
    result.test = pooled_official_score(result.results, "test")
    return result


def format_recipe_table(results: Sequence[RecipeResult]) -> str:
    """Table 10 beside ours: recipe, members per machine type, validation and held-out test official score (%),
    the report's (%), and what was missing."""

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}"

    head = ["recipe", "members", "val score %", "test score %", "report % (Table 10)", "missing"]
    rows = []
    for res in results:
        members = "; ".join(f"{r.machine_type}: " + ", ".join(
            f"{run_method(next(i for i in res.selections[r.machine_type].runs.values() if i.name == m))} {w:.1f}"
            for m, w in zip(r.ensemble.members, r.ensemble.weights)) for r in res.results)
        missing = "; ".join(f"{mt}: {', '.join(s.missing)}" for mt, s in res.selections.items() if s.missing)
        rows.append([f"{res.recipe.number} {res.recipe.description}", members, pct(res.validation), pct(res.test),
                     f"{res.recipe.reported:.2f}", missing or "–"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def best_on_validation(results: Sequence[RecipeResult]) -> RecipeResult:
    """The recipe with the highest pooled validation official score (ties: the lower number). Raises DataError
    when no recipe has a validation score."""
    scored = [r for r in results if r.validation is not None]
    if not scored:
        raise DataError("no recipe has a validation official score (the validation clips lack a class), so none can "
                        "be chosen: name one with --publish N")
    return max(scored, key=lambda r: (r.validation, -r.recipe.number))


__all__ = [
    "RECIPES",
    "Recipe",
    "RecipeResult",
    "SUBSYSTEMS",
    "Selection",
    "best_on_validation",
    "format_recipe_table",
    "get_recipe",
    "pooled_official_score",
    "run_recipe",
    "run_method",
    "select_runs",
    "uses_domain_classifier",
    "validation_figure",
]
