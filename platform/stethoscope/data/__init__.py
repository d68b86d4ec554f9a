"""Data: dataset index (DCASE 2020 and 2021-2024 grammars), audio decoding, log-mel features, Ray Data ingest,
and synthetic machine sounds.

``stethoscope.data.index(root)`` is the entry point of the data flow (DESIGN.md step 1). Ingest and synthetic
sets live in ``stethoscope.data.ingest`` and ``stethoscope.data.synthetic`` (imported on demand: they pull in Ray
or write files).
"""

from stethoscope.data.features import FeatureSpec, frame_stack, log_mel
from stethoscope.data.index import DCASE2020, DCASE2021_PLUS, IndexResult, index, select

__all__ = ["DCASE2020", "DCASE2021_PLUS", "FeatureSpec", "IndexResult", "frame_stack", "index", "log_mel", "select"]
