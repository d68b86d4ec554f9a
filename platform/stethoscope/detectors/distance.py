"""Distance-to-the-training-distribution detectors: cosine distance to the mean embedding and Mahalanobis distance.

Both follow the AEGAN-AD reference code (github.com/jianganbai/AEGAN-AD, ``emb_distance.py``): the cosine score is
``1 - cos(x, mean of the training embeddings)``; the Mahalanobis score is the distance to the training mean under
the training covariance. The computations are scikit-learn's (``cosine_distances``, ``EmpiricalCovariance`` /
``LedoitWolf``).
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.metrics.pairwise import cosine_distances

from stethoscope.detectors.base import EmbeddingDetector
from stethoscope.errors import ConfigError, DataError


class CosineDetector(EmbeddingDetector):
    """Cosine distance to the mean training embedding: ``1 - x·m / (‖x‖‖m‖)``, in [0, 2]. No parameters."""

    name = "cosine"

    def __init__(self) -> None:
        super().__init__()
        self._mean: np.ndarray | None = None

    def _fit(self, X: np.ndarray) -> None:
        mean = X.mean(axis=0, keepdims=True)
        if not np.any(mean):
            raise DataError("cosine detector: the mean training embedding is the zero vector; no direction to compare")
        self._mean = mean

    def _score(self, X: np.ndarray) -> np.ndarray:
        return cosine_distances(X, self._mean)[:, 0]


class MahalanobisDetector(EmbeddingDetector):
    """Mahalanobis distance ``sqrt((x - μ)ᵀ Σ⁻¹ (x - μ))`` to the training mean μ under the training covariance Σ.

    Args:
        covariance: "empirical" (maximum-likelihood covariance, as the reference's ``np.cov`` up to the factor
            N/(N-1), which does not change the ranking; a singular Σ is pseudo-inverted) or "ledoit_wolf"
            (shrunk towards a scaled identity: better conditioned when there are few training clips per
            embedding dimension).
    Raises:
        ConfigError: unknown covariance estimator. DataError (in fit): fewer than 2 training embeddings.
    """

    name = "mahalanobis"

    def __init__(self, covariance: str = "empirical"):
        super().__init__()
        if covariance not in ("empirical", "ledoit_wolf"):
            raise ConfigError(
                f"mahalanobis detector: covariance = {covariance!r}; expected 'empirical' or 'ledoit_wolf'"
            )
        self.covariance = covariance
        self._model: EmpiricalCovariance | None = None

    def _fit(self, X: np.ndarray) -> None:
        if X.shape[0] < 2:
            raise DataError(f"mahalanobis detector needs at least 2 training embeddings; got {X.shape[0]}")
        est = EmpiricalCovariance() if self.covariance == "empirical" else LedoitWolf()
        self._model = est.fit(X)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(self._model.mahalanobis(X), 0.0))
