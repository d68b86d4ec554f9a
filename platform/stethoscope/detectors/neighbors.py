"""Neighbour-based detectors: k-nearest-neighbour distance and local outlier factor, both from pyod.

Defaults follow the AEGAN-AD reference code (github.com/jianganbai/AEGAN-AD, ``emb_distance.py``), which scores
discriminator embeddings with a cosine-metric KNN over 2 neighbours (score = summed distance to them) and a
cosine-metric novelty LOF over 4 neighbours.
"""

from __future__ import annotations

import numpy as np
from pyod.models.knn import KNN
from pyod.models.lof import LOF

from stethoscope.detectors.base import EmbeddingDetector
from stethoscope.errors import ConfigError, DataError

_METRICS = ("cosine", "euclidean", "manhattan", "minkowski", "l1", "l2", "cityblock")


def _check_neighbours(name: str, n_neighbors: int, metric: str) -> None:
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
        raise ConfigError(f"{name} detector: n_neighbors = {n_neighbors!r}; expected an integer >= 1")
    if metric not in _METRICS:
        raise ConfigError(f"{name} detector: metric = {metric!r}; expected one of {list(_METRICS)}")


def _check_rows(name: str, X: np.ndarray, n_neighbors: int) -> None:
    if X.shape[0] <= n_neighbors:
        raise DataError(
            f"{name} detector needs more training embeddings than n_neighbors={n_neighbors}; got {X.shape[0]}"
        )


class KNNDetector(EmbeddingDetector):
    """Distance to the k nearest training embeddings (pyod ``KNN``; Ramaswamy et al., SIGMOD 2000).

    Args:
        n_neighbors: k (reference code: 2).
        method: "mean" (mean distance to the k neighbours; the reference's sum / k), "largest" (the k-th
            distance) or "median".
        metric: any scikit-learn neighbour metric named in ``_METRICS`` (reference code: "cosine").
    Raises:
        ConfigError: bad parameter. DataError (in fit): no more than k training embeddings.
    """

    name = "knn"

    def __init__(self, n_neighbors: int = 2, method: str = "mean", metric: str = "cosine"):
        super().__init__()
        _check_neighbours(self.name, n_neighbors, metric)
        if method not in ("mean", "largest", "median"):
            raise ConfigError(f"knn detector: method = {method!r}; expected 'mean', 'largest' or 'median'")
        self.n_neighbors = n_neighbors
        self.method = method
        self.metric = metric
        self._model: KNN | None = None

    def _fit(self, X: np.ndarray) -> None:
        _check_rows(self.name, X, self.n_neighbors)
        self._model = KNN(n_neighbors=self.n_neighbors, method=self.method, metric=self.metric).fit(X)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self._model.decision_function(X)

    def _training_scores(self) -> np.ndarray:
        return self._model.decision_scores_  # each training point's neighbours exclude itself


class LOFDetector(EmbeddingDetector):
    """Local outlier factor in novelty mode (pyod ``LOF`` over scikit-learn; Breunig et al., SIGMOD 2000).

    Args:
        n_neighbors: neighbourhood size (reference code: 4).
        metric: scikit-learn neighbour metric (reference code: "cosine").
    Raises:
        ConfigError: bad parameter. DataError (in fit): no more than n_neighbors training embeddings.
    """

    name = "lof"

    def __init__(self, n_neighbors: int = 4, metric: str = "cosine"):
        super().__init__()
        _check_neighbours(self.name, n_neighbors, metric)
        self.n_neighbors = n_neighbors
        self.metric = metric
        self._model: LOF | None = None

    def _fit(self, X: np.ndarray) -> None:
        _check_rows(self.name, X, self.n_neighbors)
        self._model = LOF(n_neighbors=self.n_neighbors, metric=self.metric, novelty=True).fit(X)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self._model.decision_function(X)

    def _training_scores(self) -> np.ndarray:
        return self._model.decision_scores_  # the training LOF of each point (leave-one-out neighbourhoods)
