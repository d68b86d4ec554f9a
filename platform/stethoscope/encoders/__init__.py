"""Pretrained waveform encoders (EAT, BEATs, AST, wav2vec 2.0, HuBERT, WavLM, data2vec-audio, aisfx), loaded
from local weights only. See docs/encoders.md.

    enc = encoders.load("beats", "models/beats/BEATs_iter3_plus_AS2M.pt", device="cuda")
    z = enc.embed(wave, sample_rate=16000)          # [B, samples] → [B, D]
    frames = enc.frames(wave, sample_rate=16000)    # [B, samples] → [B, T, D]
    ref = enc.reference()                           # EncoderRef(name, path, sha256): stored instead of weights
    enc = encoders.load_ref(ref)                    # refuses files whose SHA-256 differs

Loaders register themselves by name (``encoders.names()``); ``encoders.get(name)`` returns the class.
Embeddings of frozen encoders are cached like features: :mod:`stethoscope.encoders.cache`.
"""

from stethoscope.encoders.base import (
    ENCODER_CODE_VERSION,
    Encoder,
    EncoderError,
    EncoderInputError,
    EncoderRef,
    get,
    load,
    load_ref,
    names,
    reference,
    register,
    verify,
)

__all__ = [
    "ENCODER_CODE_VERSION",
    "Encoder",
    "EncoderError",
    "EncoderInputError",
    "EncoderRef",
    "get",
    "load",
    "load_ref",
    "names",
    "reference",
    "register",
    "verify",
]
