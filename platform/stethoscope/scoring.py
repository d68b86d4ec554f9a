"""Score clips with a trained Method (DESIGN.md step 5): one score per clip, higher = more anomalous.

A clip batch from the feature store (``ds.iter_batches(batch_format="numpy")``) is turned into what the Method
declared: its inputs under its own names (:func:`stethoscope.data.ingest.named_inputs`) and the label arrays of its
``labels`` (:meth:`stethoscope.data.labels.Vocab.encode`, with the method's ``unknown_group`` policy).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from stethoscope.data.ingest import named_inputs
from stethoscope.methods.base import Method, clip_arrays

META = ["path", "file_name", "dataset", "machine_type", "machine_id", "section", "domain", "split", "label",
        "attributes"]


def encode_labels(method: Method, meta: Mapping[str, Any], *, unknown: str | None = None) -> dict[str, np.ndarray]:
    """The label arrays ``method`` reads, for clips described by ``meta`` (columns of B clips).

    Raises:
        DataError: a class the method's vocabulary lacks, when the method's policy is "error".
    """
    if not method.labels:
        return {}
    return method.vocab.encode(meta, method.labels, unknown=unknown or method.unknown_group)


def clip_batches(batches: Iterable[dict], method: Method, *, unknown: str | None = None
                 ) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, list]]]:
    """Regroup numpy clip batches from the feature store into tensor batches of equal-shape clips.

    Yields ``(tensors, meta)``: tensors = each declared input ([B, ...] float32) plus the method's label arrays,
    meta = the metadata columns of those B clips as lists.
    Raises:
        DataError: the batches lack an input the method declares, or hold a class it cannot label.
    """
    for batch in batches:
        inputs = {name: clip_arrays(col) for name, col in named_inputs(batch, method.inputs).items()}
        meta = {k: list(batch[k]) for k in META if k in batch}
        labels = encode_labels(method, meta, unknown=unknown)
        n = len(next(iter(inputs.values()))) if inputs else 0
        by_shape: dict[tuple, list[int]] = {}
        for i in range(n):
            by_shape.setdefault(tuple(inputs[k][i].shape for k in inputs), []).append(i)
        for idx in by_shape.values():
            tensors = {k: torch.from_numpy(np.stack([v[i] for i in idx])) for k, v in inputs.items()}
            for k, v in labels.items():
                tensors[k] = torch.from_numpy(v[idx])
            yield tensors, {k: [v[i] for i in idx] for k, v in meta.items()}


def _per_clip(method: Method, batches: Iterable[dict], column: str, compute) -> pd.DataFrame:
    """``compute(tensors)`` (a list-like of one value per clip) for every clip batch, under ``torch.no_grad`` with the
    method in eval mode: the metadata columns plus ``column``, one row per clip."""
    method.eval()
    rows: list[pd.DataFrame] = []
    with torch.no_grad():
        for tensors, meta in clip_batches(batches, method):
            frame = pd.DataFrame(meta)
            frame[column] = compute({k: v.to(method.device) for k, v in tensors.items()})
            rows.append(frame)
    if not rows:
        return pd.DataFrame(columns=[*META, column])
    return pd.concat(rows, ignore_index=True)


def score_batches(method: Method, batches: Iterable[dict]) -> pd.DataFrame:
    """Score every clip in ``batches``; returns one row per clip: the metadata columns plus ``score`` (float64)."""
    return _per_clip(method, batches, "score",
                     lambda tensors: method.score(tensors).detach().cpu().numpy().astype(np.float64))


def score_dataset(method: Method, ds, batch_size: int = 16) -> pd.DataFrame:
    """Score a Ray Dataset of ingested clips (streamed; only scores are kept)."""
    return score_batches(method, ds.iter_batches(batch_size=batch_size, batch_format="numpy"))


def embed_batches(method: Method, batches: Iterable[dict]) -> pd.DataFrame:
    """Embed every clip in ``batches`` with ``method.embed`` (the detector stage's input; issue 12 §2).

    Returns:
        one row per clip: the metadata columns plus ``embedding`` (float32 ndarray [D] per clip).
    Raises:
        ConfigError: the method has no ``embed``. DataError: as :func:`clip_batches`.
    """
    from stethoscope.errors import ConfigError

    if not method.can_embed:
        raise ConfigError(f"method {method.name!r} has no embed(); the detector stage needs clip embeddings")
    return _per_clip(method, batches, "embedding",
                     lambda tensors: list(method.embed(tensors).detach().cpu().numpy().astype(np.float32)))


def embed_dataset(method: Method, ds, batch_size: int = 16) -> pd.DataFrame:
    """:func:`embed_batches` over a Ray Dataset of ingested clips (streamed)."""
    return embed_batches(method, ds.iter_batches(batch_size=batch_size, batch_format="numpy"))


def predict_domain_dataset(method: Method, ds, batch_size: int = 16) -> pd.DataFrame:
    """The domain each clip of ``ds`` is predicted to come from (``method.predict_domain``: AITHU's domain
    classifier): the metadata columns plus ``domain_pred`` (a name of ``method.vocab.domain``), one row per clip.

    Raises:
        ConfigError: the method has no domain classifier.
    """
    from stethoscope.errors import ConfigError

    if not getattr(method, "predicts_domain", False):
        raise ConfigError(f"method {method.name!r} has no domain classifier")
    names = list(method.vocab.domain)
    return _per_clip(method, ds.iter_batches(batch_size=batch_size, batch_format="numpy"), "domain_pred",
                     lambda tensors: [names[i] for i in method.predict_domain(tensors).tolist()])
