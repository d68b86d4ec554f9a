"""Outlier detectors on embeddings (pyod / scikit-learn underneath), with the pyod shape:
``fit(X [N, D])`` on normal embeddings, then ``decision_function(X [M, D]) -> [M]`` (higher = more anomalous).

``get_detector("knn", n_neighbors=2)`` builds one by name; ``detector_from_state(state)`` rebuilds a fitted one
from its ``state_dict()`` (plain tensors, numbers and strings: safe for ``torch.load(weights_only=True)``).

Known names: "knn", "lof", "gmm" (pyod), "sos" (stochastic outlier selection, scored out of sample),
"cosine", "mahalanobis" (scikit-learn).
"""

from __future__ import annotations

from typing import Any

from stethoscope.detectors.base import EmbeddingDetector
from stethoscope.detectors.density import GMMDetector, SOSDetector
from stethoscope.detectors.distance import CosineDetector, MahalanobisDetector
from stethoscope.detectors.neighbors import KNNDetector, LOFDetector
from stethoscope.errors import ConfigError

_DETECTORS: dict[str, type[EmbeddingDetector]] = {
    cls.name: cls for cls in (KNNDetector, LOFDetector, GMMDetector, SOSDetector, CosineDetector, MahalanobisDetector)
}


def detector_names() -> list[str]:
    """Every registered detector name, sorted."""
    return sorted(_DETECTORS)


def get_detector(name: str, **kwargs: Any) -> EmbeddingDetector:
    """A new, unfitted detector ``name`` built with ``kwargs``.

    Raises:
        ConfigError: unknown name (the message lists the known names), or a parameter the detector does not take
            or rejects.
    """
    if name not in _DETECTORS:
        raise ConfigError(f"unknown detector {name!r}; known detectors: {', '.join(detector_names())}")
    cls = _DETECTORS[name]
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"detector {name!r}: {exc}") from exc


def detector_from_state(state: dict[str, Any]) -> EmbeddingDetector:
    """Rebuild (and refit) a detector from ``EmbeddingDetector.state_dict()``.

    Raises:
        ConfigError: the state names an unknown detector or parameter.
    """
    det = get_detector(str(state.get("name")), **dict(state.get("params", {})))
    det.load_state_dict(state)
    return det


__all__ = [
    "CosineDetector",
    "EmbeddingDetector",
    "GMMDetector",
    "SOSDetector",
    "KNNDetector",
    "LOFDetector",
    "MahalanobisDetector",
    "detector_from_state",
    "detector_names",
    "get_detector",
]
