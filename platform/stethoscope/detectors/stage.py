"""The detector stage's building block: one detector kind fitted per group (machine_id / section) and, on data with
domains, per (group, domain) — the standard domain-generalization back end of DCASE 2022+ systems (e.g. ASDKit's
``backends/knn.py``; AITHU DCASE 2022 §3.1.3): a clip's score is the **minimum** over its group's domain detectors of
their scores, each **standardized** with the mean and standard deviation of that detector's own training scores
(training clips only; :meth:`~stethoscope.detectors.base.EmbeddingDetector.training_scores`).

Choosing among kinds (KNN / LOF / GMM / SOS / cosine / Mahalanobis) per machine type on the validation split is the
evaluation layer's job (:func:`stethoscope.evaluation.selection.select_score_variant`; TLDiffGAN Eq. 6: the best
mean(AUC, pAUC)); the detect stage (:mod:`stethoscope.stages.detect`) composes the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from stethoscope.detectors import detector_from_state, detector_names, get_detector
from stethoscope.detectors.base import EmbeddingDetector, as_matrix
from stethoscope.errors import ConfigError, DataError

#: The candidates the detector stage tries by default (TLDiffGAN §2.4: KNN, LOF, GMM, SOS; AITHU Table 5 adds
#: cosine and Mahalanobis).
DEFAULT_CANDIDATES = ("knn", "lof", "gmm", "sos", "cosine", "mahalanobis")
#: Key of the single detector when groups are pooled (``per_group=False``).
POOLED = "*"
#: The name in a method's ``detectors`` list that stands for the method's own ``score()`` (e.g. −log p(y|x) of the
#: machine-ID classifiers): one more candidate beside the detectors, chosen on the validation clips like them.
OWN_SCORE = "method"


def _present(d: Any) -> bool:
    return d is not None and d == d and d != ""


@dataclass
class _Fitted:
    detector: EmbeddingDetector
    mean: float
    std: float
    n: int


@dataclass
class GroupedDetector:
    """One detector kind (``name`` + ``params``) per group and, with ``per_domain``, per (group, domain).

    Attributes:
        name / params: a :func:`stethoscope.detectors.get_detector` name and its keyword parameters.
        per_group: fit one set of detectors per group (True) or one for all the clips given (False, pooled).
        per_domain: on clips with domains, fit source and target apart and score with the minimum.
    Raises:
        ConfigError: an unknown detector name (lists the known ones).
    """

    name: str
    params: dict = field(default_factory=dict)
    per_group: bool = True
    per_domain: bool = True
    fitted: dict[str, dict[str, _Fitted]] = field(default_factory=dict, repr=False)
    #: After ``fit``: each training clip's standardized score from its own (group, domain) detector, scored without
    #: itself where the detector allows (:meth:`EmbeddingDetector.training_scores`), float64 [N] in ``fit``'s row
    #: order. What publishing fits thresholds on; not kept by ``state_dict``.
    train_scores_: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.name not in detector_names():
            raise ConfigError(f"unknown detector {self.name!r}; known detectors: {', '.join(detector_names())}")
        get_detector(self.name, **self.params)  # validates the parameters now, not after training

    @property
    def label(self) -> str:
        """``knn``, or ``knn(n_neighbors=4)`` when parameters are set: how tables name the candidate."""
        if not self.params:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in sorted(self.params.items())) + ")"

    def _key(self, group: str) -> str:
        return group if self.per_group else POOLED

    def fit(self, X: Any, groups: Sequence[str], domains: Sequence[Any] | None = None) -> "GroupedDetector":
        """Fit on training embeddings X [N, D] of clips with ``groups`` [N] (e.g. ``fan/id_00``) and ``domains``
        [N] ("source" / "target" / None).

        Raises:
            DataError: X is not a finite 2-D array, its rows do not match the labels, or a (group, domain) has too few
                clips for the detector (the message names it).
        """
        X = as_matrix(X, f"{self.name} training embeddings")
        groups = list(groups)
        doms = list(domains) if domains is not None else [None] * len(groups)
        if len(groups) != X.shape[0] or len(doms) != X.shape[0]:
            raise DataError(f"{X.shape[0]} embeddings but {len(groups)} groups / {len(doms)} domains")
        keys = np.array([self._key(g) for g in groups], dtype=object)
        dkeys = np.array([d if (self.per_domain and _present(d)) else "all" for d in doms], dtype=object)
        self.fitted = {}
        self.train_scores_ = np.zeros(X.shape[0], dtype=np.float64)
        for key in sorted(set(keys)):
            for dom in sorted(set(dkeys[keys == key])):
                rows = (keys == key) & (dkeys == dom)
                det = get_detector(self.name, **self.params)
                try:
                    det.fit(X[rows])
                except DataError as exc:
                    raise DataError(f"{self.name} detector for {key} ({dom}): {exc}") from None
                train = det.training_scores()
                std = float(train.std())
                fitted = _Fitted(det, float(train.mean()), std if std > 0 else 1.0, int(rows.sum()))
                self.fitted.setdefault(key, {})[dom] = fitted
                self.train_scores_[rows] = (train - fitted.mean) / fitted.std
        return self

    def decision_function(self, X: Any, groups: Sequence[str], domains: Sequence[Any] | None = None) -> np.ndarray:
        """Scores [M] of embeddings X [M, D] of clips in ``groups``. Higher = more anomalous.

        Without ``domains``: the minimum over the group's domain detectors of (score − μ) / σ. With ``domains``
        (each clip's *predicted* domain, e.g. from AITHU's domain classifier, §3.1.4 as issue 15 gives it): the
        standardized score of that domain's detector, i.e. the test score standardized with the statistics of that
        domain's training clips; a clip whose predicted domain has no detector in its group (a section without
        training clips of that domain, or a missing prediction) falls back to the minimum
        (:meth:`missing_domains` lists them).

        Raises:
            RuntimeError: not fitted. DataError: a group with no fitted detector (names the known ones), or
                ``domains`` of another length than X.
        """
        if not self.fitted:
            raise RuntimeError(f"{self.label}: not fitted; call fit first")
        X = as_matrix(X, f"{self.name} query embeddings")
        keys = np.array([self._key(g) for g in groups], dtype=object)
        if len(keys) != X.shape[0]:
            raise DataError(f"{X.shape[0]} embeddings but {len(keys)} groups")
        doms = None if domains is None else np.array(list(domains), dtype=object)
        if doms is not None and len(doms) != X.shape[0]:
            raise DataError(f"{X.shape[0]} embeddings but {len(doms)} predicted domains")
        out = np.full(X.shape[0], np.inf)
        for key in sorted(set(keys)):
            if key not in self.fitted:
                raise DataError(f"{self.label}: no detector was fitted for group {key!r} (training groups: "
                                f"{sorted(self.fitted)})")
            rows = keys == key
            per_domain = {d: (fit.detector.decision_function(X[rows]) - fit.mean) / fit.std
                          for d, fit in self.fitted[key].items()}
            z = np.min(np.stack(list(per_domain.values())), axis=0)
            if doms is not None:
                mine = doms[rows]
                for d, zd in per_domain.items():
                    pick = mine == d
                    z[pick] = zd[pick]
            out[rows] = z
        return out

    def missing_domains(self, groups: Sequence[str], domains: Sequence[Any]) -> np.ndarray:
        """bool [M]: the clips whose (group, predicted domain) has no fitted detector, which
        :meth:`decision_function` scores with the minimum over the group's detectors instead."""
        keys = [self._key(g) for g in groups]
        return np.array([d not in self.fitted.get(k, {}) for k, d in zip(keys, domains)], dtype=bool)

    def domains_of(self) -> dict[str, list[str]]:
        """``{group: [domains with a fitted detector]}`` ("all" for a group fitted without domains)."""
        return {k: sorted(v) for k, v in self.fitted.items()}

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers and strings only (``torch.load(weights_only=True)``); refits from the stored embeddings."""
        return {
            "name": self.name, "params": dict(self.params), "per_group": self.per_group, "per_domain": self.per_domain,
            "fitted": {k: {d: {"detector": f.detector.state_dict(), "mean": f.mean, "std": f.std, "n": f.n}
                           for d, f in doms.items()} for k, doms in self.fitted.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "GroupedDetector":
        """Rebuild a fitted GroupedDetector (each detector refits deterministically on its stored embeddings).

        Raises:
            ConfigError: an unknown detector or parameter in the state.
        """
        out = cls(str(state["name"]), dict(state.get("params", {})), bool(state.get("per_group", True)),
                  bool(state.get("per_domain", True)))
        out.fitted = {k: {d: _Fitted(detector_from_state(f["detector"]), float(f["mean"]), float(f["std"]),
                                     int(f["n"])) for d, f in doms.items()}
                      for k, doms in dict(state.get("fitted", {})).items()}
        return out


def split_own_score(spec: Sequence[str | Mapping[str, Any]] | None) -> tuple[bool, list]:
    """``(whether spec names OWN_SCORE, the other entries in order)``: the method's own score is not a detector."""
    items = list(spec or ())
    rest = [s for s in items if not (isinstance(s, str) and s == OWN_SCORE)]
    return len(rest) < len(items), rest


def parse_candidates(spec: Sequence[str | Mapping[str, Any]] | None) -> list[GroupedDetector]:
    """Detector candidates from names or ``{"name": ..., **params}`` mappings (default: :data:`DEFAULT_CANDIDATES`).

    Raises:
        ConfigError: an unknown name or parameter, or two candidates with the same label.
    """
    out = []
    for item in spec or DEFAULT_CANDIDATES:
        if isinstance(item, str):
            out.append(GroupedDetector(item))
        else:
            item = dict(item)
            out.append(GroupedDetector(str(item.pop("name")), item))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"detector candidates repeat: {labels}")
    return out


def fit_candidates(candidates: Sequence[GroupedDetector], X: Any, groups: Sequence[str],
                   domains: Sequence[Any] | None = None) -> tuple[list[GroupedDetector], dict[str, str]]:
    """Fit every candidate on the training embeddings. A candidate that cannot be fitted (e.g. LOF with fewer clips
    than neighbours) is dropped and its reason returned, so one unsuitable detector never stops the stage.

    Returns:
        ``(fitted candidates, {label: reason} of the dropped ones)``.
    Raises:
        DataError: no candidate could be fitted (lists every reason).
    """
    fitted, dropped = [], {}
    for cand in candidates:
        try:
            fitted.append(cand.fit(X, groups, domains))
        except DataError as exc:
            dropped[cand.label] = str(exc)
    if not fitted:
        raise DataError("no detector could be fitted: " + "; ".join(f"{k}: {v}" for k, v in dropped.items()))
    return fitted, dropped
