"""Embedding cache: clip embeddings of a frozen encoder, stored and reused like features.

A frozen encoder gives the same embedding for the same clip every time, so the extract stage computes it once.
The cache key is :class:`EmbeddingSpec` (encoder name, SHA-256 of its weights, the clips' sample rate and the
pooling; plus :data:`~stethoscope.encoders.base.ENCODER_CODE_VERSION`), as :class:`~stethoscope.data.FeatureSpec`
keys the feature store. Layout under ``<store>/embeddings/<spec hash>/<clip-set fingerprint>/``:

- ``embeddings.parquet``: one row per clip: ``path`` (string) and ``embedding`` (fixed-size list of D float32);
- ``embedding_report.json``: the spec, the encoder reference, N, D, what was done to the clips (resampling, cuts)
  and the clips that were skipped with the reason;
- ``_SUCCESS``: written last; an entry without it is recomputed.

The clip-set fingerprint is the caller's (ingest uses :func:`stethoscope.data.ingest.fingerprint` of its index).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from stethoscope import storage
from stethoscope.encoders.base import ENCODER_CODE_VERSION, Encoder, EncoderError, EncoderInputError, get
from stethoscope.errors import AudioError

log = logging.getLogger(__name__)

DATA_FILE, REPORT_FILE, SUCCESS_FILE = "embeddings.parquet", "embedding_report.json", "_SUCCESS"


@dataclass(frozen=True)
class EmbeddingSpec:
    """Everything that determines a clip's embedding; :meth:`hash` is the cache key.

    Fields: encoder (registry name), sha256 (of its weights, :attr:`Encoder.sha256`), sample_rate (Hz of the clips
    handed to the encoder, before its own resampling), pooling (one of the encoder's poolings).

    Raises:
        EncoderError: on construction, for an unknown encoder or pooling, a sample rate that is not a positive
            integer, or a sha256 that is not 64 hex digits.
    """

    encoder: str
    sha256: str
    sample_rate: int
    pooling: str

    def __post_init__(self) -> None:
        cls = get(self.encoder)
        if self.pooling not in cls.poolings:
            raise EncoderError(f"EmbeddingSpec.pooling = {self.pooling!r}; encoder '{self.encoder}' offers "
                               f"{list(cls.poolings)}")
        if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise EncoderError(f"EmbeddingSpec.sample_rate = {self.sample_rate!r}; expected a positive integer (Hz)")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise EncoderError(f"EmbeddingSpec.sha256 = {self.sha256!r}; expected 64 lowercase hex digits")

    @classmethod
    def of(cls, encoder: Encoder, sample_rate: int, pooling: str | None = None) -> "EmbeddingSpec":
        """The spec of ``encoder`` embedding clips at ``sample_rate`` Hz with ``pooling`` (None = its default)."""
        return cls(encoder.name, encoder.sha256, int(sample_rate), pooling or encoder.default_pooling)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EmbeddingSpec":
        expected = {"encoder", "sha256", "sample_rate", "pooling"}
        if set(values) != expected:
            raise EncoderError(f"EmbeddingSpec {values!r}: expected exactly the keys {sorted(expected)}")
        return cls(**values)

    def hash(self) -> str:
        """12-hex-digit SHA-256 of every field plus ENCODER_CODE_VERSION: the cache key."""
        payload = json.dumps({"v": ENCODER_CODE_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def embed_clips(encoder: Encoder, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int,
                pooling: str | None = None, batch_size: int = 16) -> np.ndarray:
    """Embed clips of any lengths, batching clips of equal length (DCASE clips mostly share one length).

    Args:
        waves: N mono waveforms [samples_i] float32 at ``sample_rate`` Hz.
        batch_size: clips per forward pass.
    Returns:
        [N, D] float32 numpy, in the order of ``waves``.
    Raises:
        EncoderInputError: a clip is too short or not finite (check lengths first with
            :meth:`Encoder.check_length` to skip such clips instead).
    """
    if batch_size < 1:
        raise EncoderError(f"embed_clips batch_size = {batch_size}; expected a positive number of clips")
    out = np.empty((len(waves), encoder.embed_dim), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        by_length.setdefault(int(np.shape(w)[-1]), []).append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = torch.stack([torch.as_tensor(np.asarray(waves[i], dtype=np.float32)) for i in chunk])
            out[chunk] = encoder.embed(batch, sample_rate, pooling).cpu().numpy()
    return out


class EmbeddingCache:
    """Embeddings under ``<store>/embeddings/`` (a local folder or a pyarrow filesystem URI)."""

    def __init__(self, store: str | os.PathLike):
        self.root = storage.join(store, "embeddings")

    def entry(self, spec: EmbeddingSpec, fingerprint: str) -> str:
        """The folder of one cache entry."""
        return storage.join(self.root, spec.hash(), fingerprint)

    def read(self, spec: EmbeddingSpec, fingerprint: str) -> tuple[pa.Table, dict] | None:
        """``(table with path and embedding, report)`` if a complete entry exists, else None."""
        entry = self.entry(spec, fingerprint)
        if not storage.exists(storage.join(entry, SUCCESS_FILE)):
            return None
        fs, path = storage.resolve(storage.join(entry, DATA_FILE))
        return pq.read_table(path, filesystem=fs), storage.read_json(storage.join(entry, REPORT_FILE))

    def write(self, spec: EmbeddingSpec, fingerprint: str, paths: Sequence[str], embeddings: np.ndarray,
              report: dict[str, Any]) -> str:
        """Write one entry (Parquet, report, then ``_SUCCESS``); returns its folder."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(paths):
            raise EncoderError(f"embeddings {embeddings.shape} do not match {len(paths)} clip paths")
        entry = self.entry(spec, fingerprint)
        storage.makedirs(entry)
        column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), embeddings.shape[1])
        table = pa.table({"path": pa.array(list(paths), pa.string()), "embedding": column})
        fs, path = storage.resolve(storage.join(entry, DATA_FILE))
        pq.write_table(table, path, filesystem=fs)
        storage.write_json(storage.join(entry, REPORT_FILE), {
            "embedding_spec": spec.to_dict(), "embedding_spec_hash": spec.hash(), "n": len(paths),
            "embed_dim": int(embeddings.shape[1]), **report})
        storage.write_text(storage.join(entry, SUCCESS_FILE), time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        return entry


def cached_embeddings(encoder: Encoder, store: str | os.PathLike, fingerprint: str, paths: Sequence[str],
                      load_wave: Callable[[str], np.ndarray], sample_rate: int, pooling: str | None = None,
                      batch_size: int = 16) -> tuple[pa.Table, dict, bool]:
    """Embeddings of the clips at ``paths``: read from the cache, or computed, written and returned.

    Args:
        fingerprint: identifies the clip set (e.g. ``stethoscope.data.ingest.fingerprint(index_table)``).
        load_wave: path → mono float32 waveform at ``sample_rate`` Hz (e.g. ``load_audio(p, sr)[0]``).
    Returns:
        ``(table, report, cached)``: ``table`` has ``path`` and ``embedding`` (fixed-size list of D float32) for
        every clip that could be embedded; the report lists the others under ``skipped`` with their reason
        (one bad clip never fails the set); ``cached`` tells whether the entry was reused.
    Raises:
        EncoderError: no clip could be embedded.
    """
    spec = EmbeddingSpec.of(encoder, sample_rate, pooling)
    cache = EmbeddingCache(store)
    hit = cache.read(spec, fingerprint)
    if hit is not None:
        log.info("embedding cache hit: %s", cache.entry(spec, fingerprint))
        return hit[0], hit[1], True
    t0 = time.perf_counter()
    good, waves, skipped, notes = [], [], [], set()
    for p in paths:
        try:
            wave = np.asarray(load_wave(p), dtype=np.float32)
            encoder.check_length(wave.shape[-1], sample_rate)
            if not np.isfinite(wave).all():
                raise EncoderInputError("non-finite", "the waveform has NaN or inf samples")
        except (EncoderInputError, AudioError) as exc:
            skipped.append({"path": p, "reason": getattr(exc, "reason", type(exc).__name__), "detail": str(exc)})
            continue
        good.append(p)
        waves.append(wave)
        notes.update(encoder.conversion(sample_rate, wave.shape[-1]))
    if not good:
        raise EncoderError(f"no clip could be embedded by '{encoder.name}' ({len(skipped)} skipped): "
                           + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:20]))
    embeddings = embed_clips(encoder, waves, sample_rate, pooling, batch_size)
    report = {"encoder": encoder.reference().to_dict(), "conversions": sorted(notes), "skipped": skipped,
              "seconds": round(time.perf_counter() - t0, 3)}
    entry = cache.write(spec, fingerprint, good, embeddings, report)
    table, report = cache.read(spec, fingerprint)
    log.info("embedded %d clip(s) with %s, skipped %d → %s", len(good), encoder.name, len(skipped), entry)
    return table, report, False
