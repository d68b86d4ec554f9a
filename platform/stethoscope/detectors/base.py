"""The detector contract: pyod's ``fit(X)`` then ``decision_function(X)``, plus checkpointable state.

Every detector keeps the training embeddings it was fitted on and its constructor parameters. ``state_dict()``
returns them as a float64 tensor and plain numbers/strings, so the state goes into a checkpoint that loads with
``torch.load(weights_only=True)`` (no pickled estimator objects). ``load_state_dict`` refits the underlying
pyod / scikit-learn estimator on the stored embeddings; every estimator used here is deterministic, so a
reloaded detector gives the same scores as the original.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, ClassVar

import numpy as np
import torch

from stethoscope.errors import ConfigError, DataError


def as_matrix(x: Any, what: str = "X") -> np.ndarray:
    """Embeddings (numpy array or tensor) → float64 numpy [N, D].

    Raises:
        DataError: not 2-D, empty, or holding NaN / inf.
    """
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{what} must be a non-empty 2-D array [n_samples, n_features]; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what} holds NaN or infinite values")
    return arr


class EmbeddingDetector(abc.ABC):
    """Outlier detector on embeddings [N, D]: ``fit(X)`` on normal data, ``decision_function(X)`` → [N] scores,
    higher = more anomalous (the pyod convention).

    Subclasses set ``name``, take their parameters as keyword arguments in ``__init__`` (stored as attributes
    of the same name, numbers/strings/None only), and implement ``_fit(X)`` and ``_score(X)``.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self.train_embeddings_: np.ndarray | None = None

    # -- pyod shape -------------------------------------------------------------------------------------------
    def fit(self, X: Any) -> "EmbeddingDetector":
        """Fit on normal embeddings X [N, D] (numpy or tensor). Returns self.

        Raises:
            DataError: X is not a finite non-empty 2-D array, or has too few rows for the detector.
        """
        arr = as_matrix(X, f"{self.name} training embeddings")
        self._fit(arr)
        self.train_embeddings_ = arr
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Anomaly scores of X [N, D] → float64 [N]; higher = more anomalous.

        Raises:
            RuntimeError: called before ``fit``.
            DataError: X is not a finite 2-D array with the training embeddings' width.
        """
        if self.train_embeddings_ is None:
            raise RuntimeError(f"detector {self.name!r} is not fitted; call fit(X) first")
        arr = as_matrix(X, f"{self.name} query embeddings")
        if arr.shape[1] != self.train_embeddings_.shape[1]:
            raise DataError(
                f"{self.name}: query embeddings have {arr.shape[1]} features; "
                f"the detector was fitted on {self.train_embeddings_.shape[1]}"
            )
        return np.asarray(self._score(arr), dtype=np.float64).reshape(-1)

    def training_scores(self) -> np.ndarray:
        """Scores of the training embeddings, each scored without itself where the method allows (pyod's
        ``decision_scores_`` for KNN / LOF, SOS with its own row left out); in-sample otherwise. float64 [N].
        The detector stage standardizes with their mean and standard deviation (training clips only).

        Raises:
            RuntimeError: called before ``fit``.
        """
        if self.train_embeddings_ is None:
            raise RuntimeError(f"detector {self.name!r} is not fitted; call fit(X) first")
        return np.asarray(self._training_scores(), dtype=np.float64).reshape(-1)

    def _training_scores(self) -> np.ndarray:
        return self._score(self.train_embeddings_)

    @property
    def is_fitted(self) -> bool:
        return self.train_embeddings_ is not None

    # -- state ------------------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor parameters by name (the values ``__init__`` was given)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def state_dict(self) -> dict[str, Any]:
        """``{"name": str, "params": {...}, "train_embeddings": float64 Tensor [N, D] or None}``:
        loadable with ``torch.load(weights_only=True)``."""
        train = None if self.train_embeddings_ is None else torch.from_numpy(self.train_embeddings_.copy())
        return {"name": self.name, "params": self.params(), "train_embeddings": train}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore parameters and refit on the stored training embeddings.

        Raises:
            ConfigError: the state belongs to another detector or names unknown parameters.
        """
        if state.get("name") != self.name:
            raise ConfigError(f"detector state is for {state.get('name')!r}, not {self.name!r}")
        params = dict(state.get("params", {}))
        known = set(self.params())
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"{self.name} detector state has unknown parameter(s) {unknown}; known: {sorted(known)}")
        fresh = type(self)(**params)
        vars(self).update(vars(fresh))
        train = state.get("train_embeddings")
        if train is not None:
            self.fit(train)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    # -- subclass hooks ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _fit(self, X: np.ndarray) -> None:
        """Fit the underlying estimator on float64 X [N, D]."""

    @abc.abstractmethod
    def _score(self, X: np.ndarray) -> np.ndarray:
        """Scores of float64 X [M, D] → [M], higher = more anomalous."""
