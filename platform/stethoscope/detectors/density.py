"""Density-style detectors: a Gaussian mixture (pyod ``GMM`` over scikit-learn) and stochastic outlier selection.

TLDiffGAN (§2.4, Eq. 6) picks among KNN, LOF, GMM and SOS per machine type on validation; the detector stage
(:mod:`stethoscope.detectors.stage`) does that for any embedding method.

- :class:`GMMDetector`: score = −log p(x) under a Gaussian mixture fitted on the training embeddings (pyod ``GMM``).
- :class:`SOSDetector`: stochastic outlier selection (Janssens, Huszár, Postma & van den Herik, "Stochastic outlier
  selection", Tilburg Univ. TR 2012-001). pyod's ``SOS`` is transductive: its ``decision_function(X)`` recomputes
  SOS among the query points alone and ignores the training set, so it cannot score one clip at a time against the
  normal data. Here the training affinities are calibrated as the paper (and pyod) do — a Gaussian kernel per
  training point whose precision β_j gives its row the chosen perplexity (bisection) — and a new point x is scored
  out of sample: its outlier probability is ``p(x) = Π_j (1 − b_jx)``, where
  ``b_jx = a_jx / (Σ_{k≠j} a_jk + a_jx)`` is the probability that training point j binds to x and
  ``a_jx = exp(−d²_jx · β_j)``. The score is ``log p(x)`` (monotone in p; higher = more anomalous).
"""

from __future__ import annotations

import numpy as np
from pyod.models.gmm import GMM
from scipy.spatial.distance import cdist

from stethoscope.detectors.base import EmbeddingDetector
from stethoscope.errors import ConfigError, DataError


class GMMDetector(EmbeddingDetector):
    """Negative log-likelihood under a Gaussian mixture (pyod ``GMM`` = scikit-learn ``GaussianMixture``).

    Args:
        n_components: mixture components (ours: 1; no paper we follow gives one).
        covariance_type: "diag" (ours: robust when there are fewer training clips than embedding dimensions),
            "full", "tied" or "spherical".
        reg_covar: added to the covariance diagonals (scikit-learn's default 1e-6).
        random_state: seed of the k-means initialisation (fixed, so a refit from the stored embeddings gives the
            same model).
    Raises:
        ConfigError: bad parameter. DataError (in fit): fewer training embeddings than 2 · n_components.
    """

    name = "gmm"

    def __init__(self, n_components: int = 1, covariance_type: str = "diag", reg_covar: float = 1e-6,
                 random_state: int = 0):
        super().__init__()
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ConfigError(f"gmm detector: n_components = {n_components!r}; expected an integer >= 1")
        if covariance_type not in ("full", "tied", "diag", "spherical"):
            raise ConfigError(f"gmm detector: covariance_type = {covariance_type!r}; expected 'full', 'tied', "
                              "'diag' or 'spherical'")
        if not reg_covar > 0:
            raise ConfigError(f"gmm detector: reg_covar = {reg_covar!r}; expected > 0")
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.reg_covar = float(reg_covar)
        self.random_state = int(random_state)
        self._model: GMM | None = None

    def _fit(self, X: np.ndarray) -> None:
        if X.shape[0] < 2 * self.n_components:
            raise DataError(f"gmm detector with {self.n_components} component(s) needs at least "
                            f"{2 * self.n_components} training embeddings; got {X.shape[0]}")
        self._model = GMM(n_components=self.n_components, covariance_type=self.covariance_type,
                          reg_covar=self.reg_covar, random_state=self.random_state).fit(X)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self._model.decision_function(X)


def _calibrate_betas(d2: np.ndarray, perplexity: float, tol: float = 1e-5, max_iter: int = 100) -> np.ndarray:
    """Per-row precision β_i of the Gaussian kernel ``exp(−d²·β)`` whose row entropy matches log(perplexity)
    (bisection, as in SOS §4 and t-SNE). ``d2``: [N, N] squared distances with the diagonal excluded (inf)."""
    n = d2.shape[0]
    target = np.log(perplexity)
    betas = np.ones(n)
    for i in range(n):
        lo, hi, beta = 0.0, np.inf, 1.0
        row = d2[i][np.isfinite(d2[i])]
        row = row - row.min()  # shift for numerical stability; entropy does not change
        for _ in range(max_iter):
            a = np.exp(-row * beta)
            total = a.sum()
            if total <= 0:
                h = 0.0
            else:
                h = np.log(total) + beta * float((row * a).sum() / total)
            if abs(h - target) < tol:
                break
            if h > target:
                lo = beta
                beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta
                beta = (beta + lo) / 2
        betas[i] = beta
    return betas


class SOSDetector(EmbeddingDetector):
    """Stochastic outlier selection, scored out of sample (see the module docstring).

    Args:
        perplexity: the effective number of neighbours each training point binds to (Janssens et al. use 4.5;
            pyod's default), in (1, N − 1).
        metric: "euclidean" (SOS's dissimilarity) or "cosine".
    Raises:
        ConfigError: bad parameter. DataError (in fit): a perplexity not below the number of training embeddings − 1.
    """

    name = "sos"

    def __init__(self, perplexity: float = 4.5, metric: str = "euclidean"):
        super().__init__()
        if not perplexity > 1:
            raise ConfigError(f"sos detector: perplexity = {perplexity!r}; expected > 1")
        if metric not in ("euclidean", "cosine"):
            raise ConfigError(f"sos detector: metric = {metric!r}; expected 'euclidean' or 'cosine'")
        self.perplexity = float(perplexity)
        self.metric = metric
        self._train: np.ndarray | None = None
        self._betas: np.ndarray | None = None
        self._row_sums: np.ndarray | None = None

    def _d2(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = cdist(a, b, metric=self.metric)
        return d * d

    def _fit(self, X: np.ndarray) -> None:
        if X.shape[0] - 1 <= self.perplexity:
            raise DataError(f"sos detector: perplexity {self.perplexity} needs more than {self.perplexity + 1:g} "
                            f"training embeddings; got {X.shape[0]}")
        d2 = self._d2(X, X)
        np.fill_diagonal(d2, np.inf)
        self._betas = _calibrate_betas(d2, self.perplexity)
        a = np.exp(-d2 * self._betas[:, None])  # diagonal: exp(-inf) = 0
        self._row_sums = a.sum(axis=1)
        self._train = X

    def _training_scores(self) -> np.ndarray:
        """SOS of every training point among the others (its own row left out): ``Σ_j log(1 − b_ji)``."""
        d2 = self._d2(self._train, self._train)
        np.fill_diagonal(d2, np.inf)
        b = np.exp(-d2 * self._betas[:, None]) / self._row_sums[:, None]
        return np.log1p(-np.clip(b, 0.0, 1.0 - 1e-12)).sum(axis=0)

    def _score(self, X: np.ndarray) -> np.ndarray:
        a = np.exp(-self._d2(self._train, X) * self._betas[:, None])  # [N_train, M]: a_jx
        b = a / (self._row_sums[:, None] + a)  # binding probability of training point j to x
        return np.log1p(-np.clip(b, 0.0, 1.0 - 1e-12)).sum(axis=0)  # log Π_j (1 − b_jx)
