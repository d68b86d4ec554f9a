"""Score clips with a trained Method (DESIGN.md step 4): one score per clip, higher = more anomalous."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from stethoscope.methods.base import Method, clip_arrays

META = ["path", "file_name", "dataset", "machine_type", "machine_id", "section", "domain", "split", "label"]


def clip_batches(batches: Iterable[dict], class_names: list[str] | None = None) -> Iterator[tuple[dict, dict]]:
    """Regroup numpy clip batches (from ``ds.iter_batches(batch_format="numpy")``) into same-length tensor batches.

    Yields ``(tensors, meta)``: tensors ``{"log_mel": [B, n_mels, frames], "class_index": [B]?}``, and the
    metadata columns of those B clips as lists.
    """
    for batch in batches:
        arrays = clip_arrays(batch["log_mel"])
        meta = {k: list(batch[k]) for k in META if k in batch}
        class_index = None
        if class_names:
            keys = class_keys(batch)
            class_index = np.array([class_names.index(k) if k in class_names else -1 for k in keys], dtype=np.int64)
        by_shape: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape, []).append(i)
        for idx in by_shape.values():
            tensors = {"log_mel": torch.from_numpy(np.stack([arrays[i] for i in idx]))}
            if class_index is not None:
                tensors["class_index"] = torch.from_numpy(class_index[idx])
            yield tensors, {k: [v[i] for i in idx] for k, v in meta.items()}


def _missing(value) -> bool:
    """None, NaN or pandas.NA: how a null machine_id / section reaches us (numpy batches give None; pandas gives
    NaN, or pd.NA for its string dtype)."""
    if value is None or isinstance(value, str):
        return value is None
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def class_keys(batch: dict) -> list[str]:
    """Per-clip class key: ``id_XX`` (DCASE 2020) or ``section_XX`` (2021+).

    ``batch``: a mapping with ``machine_id`` and/or ``section`` sequences (numpy, lists or pandas columns); a missing
    value may be None or NaN.

    Raises:
        ValueError: a clip with neither a machine_id nor a section.
    """
    mids = batch.get("machine_id")
    secs = batch.get("section")
    n = len(mids if mids is not None else secs)
    out = []
    for i in range(n):
        if mids is not None and not _missing(mids[i]):
            out.append(f"id_{mids[i]}")
        elif secs is not None and not _missing(secs[i]):
            out.append(f"section_{secs[i]}")
        else:
            raise ValueError(f"clip {i} of the batch has neither a machine_id nor a section")
    return out


def score_batches(method: Method, batches: Iterable[dict], class_names: list[str] | None = None) -> pd.DataFrame:
    """Score every clip in ``batches``; returns one row per clip: the metadata columns plus ``score``."""
    method.eval()
    rows: list[pd.DataFrame] = []
    with torch.no_grad():
        for tensors, meta in clip_batches(batches, class_names):
            tensors = {k: v.to(method.device) for k, v in tensors.items()}
            scores = method.score(tensors).detach().cpu().numpy().astype(np.float64)
            frame = pd.DataFrame(meta)
            frame["score"] = scores
            rows.append(frame)
    if not rows:
        return pd.DataFrame(columns=[*META, "score"])
    return pd.concat(rows, ignore_index=True)


def score_dataset(method: Method, ds, class_names: list[str] | None = None, batch_size: int = 16) -> pd.DataFrame:
    """Score a Ray Dataset of ingested clips (streamed; only scores are kept)."""
    return score_batches(method, ds.iter_batches(batch_size=batch_size, batch_format="numpy"), class_names)
