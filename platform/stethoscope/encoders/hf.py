"""``transformers`` audio encoders loaded with ``from_pretrained(local_folder, local_files_only=True)``.

Registered names and the ``config.json`` ``model_type`` each one accepts:

=================  ==============================  ========================================================
name               model_type                      model (paper)
=================  ==============================  ========================================================
ast                audio-spectrogram-transformer   AST (Gong et al., Interspeech 2021)
wav2vec2           wav2vec2                        wav2vec 2.0 (Baevski et al., NeurIPS 2020)
hubert             hubert                          HuBERT (Hsu et al., TASLP 2021)
wavlm              wavlm                           WavLM (Chen et al., JSTSP 2022)
data2vec-audio     data2vec-audio                  data2vec (Baevski et al., ICML 2022), audio model
=================  ==============================  ========================================================

The folder is what ``save_pretrained`` writes (or a hub snapshot copied by hand): ``config.json``,
``preprocessor_config.json`` and the weights (``model.safetensors``, ``pytorch_model.bin`` or their shards).
``AutoModel`` builds the base model, so a fine-tuned checkpoint (e.g. ``Wav2Vec2ForCTC``) loads without its head.
Inputs go through the checkpoint's own feature extractor (``AutoFeatureExtractor``): wav2vec-family extractors
normalise each clip to zero mean and unit variance when ``do_normalize`` is set; AST's computes a 128-band Kaldi
fbank, pads or cuts it to ``max_length`` frames (1024 = 10.24 s) and normalises it with the AudioSet statistics.

Nothing is downloaded: ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` default to 1 when this module is imported,
and every call passes ``local_files_only=True``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import ClassVar

import torch

from stethoscope.encoders.base import Encoder, EncoderError, register, require_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: model_type → registry name, to suggest the right name when a folder holds another model.
MODEL_TYPES = {
    "audio-spectrogram-transformer": "ast",
    "wav2vec2": "wav2vec2",
    "hubert": "hubert",
    "wavlm": "wavlm",
    "data2vec-audio": "data2vec-audio",
}


class HFEncoder(Encoder):
    """Base of the ``transformers`` encoders: file checks, the model_type check and loading."""

    model_type: ClassVar[str]
    expected_files = ("a folder written by transformers' save_pretrained (or a copied hub snapshot) holding "
                      "config.json, preprocessor_config.json and model.safetensors (or pytorch_model.bin, or shards "
                      "with their index)")

    def __init__(self, model, feature_extractor, **kwargs):
        super().__init__(model, **kwargs)
        self.feature_extractor = feature_extractor

    @classmethod
    def weight_files(cls, path: Path | None) -> list[Path]:
        where = f"Put {cls.expected_files} in a folder and pass that folder."
        p = require_path(cls.name, path, where)
        if not p.is_dir():
            raise EncoderError(f"encoder '{cls.name}': {p} is a file; {where}")
        missing = [f for f in ("config.json", "preprocessor_config.json") if not (p / f).is_file()]
        weights = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin"))
        if not weights:
            missing.append("model.safetensors (or pytorch_model.bin)")
        if missing:
            raise EncoderError(f"encoder '{cls.name}': {p} lacks {', '.join(missing)}. {where}")
        index = sorted(p.glob("*.index.json"))
        return [p / "config.json", p / "preprocessor_config.json", *weights, *index]

    @classmethod
    def from_files(cls, path: Path, files: list[Path], sha256: str, device: torch.device) -> "HFEncoder":
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except (ValueError, OSError, KeyError) as exc:
            raise EncoderError(f"encoder '{cls.name}': {path}/config.json is not a transformers config ({exc})") from exc
        if config.model_type != cls.model_type:
            other = MODEL_TYPES.get(config.model_type)
            hint = f"; load it as '{other}'" if other else ""
            raise EncoderError(f"encoder '{cls.name}' expects a '{cls.model_type}' model, but {path}/config.json "
                               f"declares model_type '{config.model_type}'{hint}")
        try:
            feature_extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, config=config, local_files_only=True)
        except (ValueError, OSError, RuntimeError) as exc:
            raise EncoderError(f"encoder '{cls.name}': could not load {path} ({exc})") from exc
        return cls(model, feature_extractor, path=str(path), files=files, sha256=sha256,
                   **cls._geometry(config, feature_extractor))

    @classmethod
    def _geometry(cls, config, feature_extractor) -> dict:
        raise NotImplementedError

    def _inputs(self, wave: torch.Tensor) -> torch.Tensor:
        """The feature extractor on CPU/numpy (its own normalisation), back on the model's device."""
        arrays = list(wave.detach().cpu().numpy())
        out = self.feature_extractor(arrays, sampling_rate=self.sample_rate, return_tensors="pt")
        return out["input_values"].to(self.device)


class Wav2Vec2Family(HFEncoder):
    """wav2vec 2.0 / HuBERT / WavLM / data2vec-audio: raw waveform in, ``last_hidden_state`` [B, T, D] out
    (T = one frame per ``prod(conv_stride)`` samples: 320 = 20 ms at 16 kHz for the published configs).
    ``min_samples`` is the convolutional feature encoder's receptive field (400 samples for those configs)."""

    @classmethod
    def _geometry(cls, config, feature_extractor) -> dict:
        receptive, hop = 1, 1
        for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            receptive = (receptive - 1) * stride + kernel
        hop = math.prod(config.conv_stride)
        return {"sample_rate": feature_extractor.sampling_rate, "min_samples": receptive,
                "embed_dim": config.hidden_size, "frame_hop": hop}

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(self._inputs(wave)).last_hidden_state


@register
class Wav2Vec2Encoder(Wav2Vec2Family):
    name = "wav2vec2"
    model_type = "wav2vec2"


@register
class HubertEncoder(Wav2Vec2Family):
    name = "hubert"
    model_type = "hubert"


@register
class WavLMEncoder(Wav2Vec2Family):
    name = "wavlm"
    model_type = "wavlm"


@register
class Data2VecAudioEncoder(Wav2Vec2Family):
    name = "data2vec-audio"
    model_type = "data2vec-audio"


@register
class ASTEncoder(HFEncoder):
    """Audio Spectrogram Transformer (Gong et al., Interspeech 2021).

    Frames: the patch tokens [B, F'·T', D] (F' frequency × T' time patches, frequency-major) averaged over
    frequency → [B, T', D], keeping the time patches that start inside the clip (the extractor zero-pads every
    clip to ``max_length`` fbank frames). Poolings: ``"cls"`` (default) = ``pooler_output``, the mean of the CLS and
    distillation tokens (AST's classifier input); ``"mean"`` / ``"max"`` over the frames. Input: at least one
    25 ms fbank frame; at most ``max_length`` frames (10.24 s for the published models), longer clips are cut.
    """

    name = "ast"
    model_type = "audio-spectrogram-transformer"
    poolings = ("cls", "mean", "max")
    default_pooling = "cls"

    @classmethod
    def _geometry(cls, config, feature_extractor) -> dict:
        sr = feature_extractor.sampling_rate
        window, shift = round(0.025 * sr), round(0.010 * sr)  # Kaldi fbank defaults (25 ms / 10 ms)
        return {"sample_rate": sr, "min_samples": window, "embed_dim": config.hidden_size,
                "frame_hop": shift * config.time_stride,
                "max_samples": window + shift * (feature_extractor.max_length - 1)}

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        tokens = self.model(self._inputs(wave)).last_hidden_state[:, 2:]
        f_out = (cfg.num_mel_bins - cfg.patch_size) // cfg.frequency_stride + 1
        t_out = (cfg.max_length - cfg.patch_size) // cfg.time_stride + 1
        frames = tokens.reshape(tokens.shape[0], f_out, t_out, -1).mean(dim=1)
        shift, window = round(0.010 * self.sample_rate), round(0.025 * self.sample_rate)
        n_fbank = 1 + (wave.shape[1] - window) // shift
        keep = min(t_out, max(1, math.ceil(n_fbank / cfg.time_stride)))
        return frames[:, :keep]

    def _pool(self, wave: torch.Tensor, pooling: str) -> torch.Tensor:
        if pooling == "cls":
            return self.model(self._inputs(wave)).pooler_output
        return super()._pool(wave, pooling)
