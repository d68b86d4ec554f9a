"""aisfx: the offline default encoder, whose weights ship inside its Python wheel.

Ma & Lerch, "Representation Learning for the Automatic Indexing of Sound Effects Libraries", ISMIR 2022
(model "X-Sequential-CE"). Package ``aisfx==0.1.2`` (requirements-nodeps.txt): ``aisfx/models/checkpoint.pth``
(25 MB) holds ``(state_dict, dataset dict)``; weights and code are licensed CC BY 4.0 (the LICENSE file in the
wheel; its PyPI classifier says MIT), so using them requires attributing the paper above. The network is the
package's own ``EmbeddingNet`` (a 4-block, 8-layer CNN from the DCASE cross-task baseline, max pooling), giving
512-d embeddings of 100-frame mel blocks.

The package's spectrogram code needs Essentia (paper) or librosa 0.9.2 (conflicts with our numpy), so the front
end is computed here with torchaudio, following the package's settings (``aisfx.inference`` constants and
``spectrogram_essentia.py``): 44.1 kHz, each clip peak-normalised (the package's librosa path), 2048-sample Hann
frames, hop 1024, zero-padded centred frames, power spectrum, 96 HTK-mel bands from 0 to 22,050 Hz with each band's
weights summing to 1 (Essentia ``unit_sum`` / librosa ``norm=1``), ``log10(10^4 · mel + 1)``, divided by
9.457798957824707 (the package's ``spec_norm="original"`` maximum). Blocks of 100 frames (≈ 2.3 s) with a hop of
50 (the paper's ``emb_hop_size=0.5``); an incomplete last block is dropped (``drop_partial_block=True``).

Frames: one 512-d embedding per block → [B, blocks, 512]. Poolings: ``"mean"`` (default) and ``"max"`` over blocks
(ours: the package returns the per-block embeddings). Minimum input: one block = 101,376 samples at 44.1 kHz (2.3 s).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio

from stethoscope.encoders.base import Encoder, EncoderError, load_checkpoint, register, require_path, single_file

SAMPLE_RATE = 44100  # Hz (aisfx.inference.SAMPLE_RATE)
N_FFT, HOP = 2048, 1024  # SPEC_BLOCK_LENGTH, SPEC_HOP_LENGTH
N_MELS, F_MAX = 96, 22050.0  # MEL_BINS, F_MAX
BLOCK, BLOCK_HOP = 100, 50  # EMB_BLOCK_LENGTH frames, and the paper's hop of 0.5 block
SPEC_MAX = 9.457798957824707  # spectrogram_normalize(spec_norm="original"): mn = 0, mx = this
#: the path recorded in references when the weights come from the installed package
PACKAGE_PATH = "package:aisfx"
INSTALL_HINT = "install it with: pip install --no-deps -r requirements-nodeps.txt (aisfx==0.1.2)"


def package_checkpoint() -> Path:
    """``aisfx/models/checkpoint.pth`` of the installed package. Raises EncoderError if aisfx is not installed."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"encoder 'aisfx': the aisfx package is not installed; {INSTALL_HINT}")
    file = Path(list(spec.submodule_search_locations)[0]) / "models" / "checkpoint.pth"
    if not file.is_file():
        raise EncoderError(f"encoder 'aisfx': {file} is missing from the installed package; reinstall it: "
                           f"{INSTALL_HINT}")
    return file


@functools.lru_cache(maxsize=4)
def _mel_weights(device: str) -> torch.Tensor:
    """[N_FFT/2 + 1, 96] HTK mel filters from 0 to 22,050 Hz, each band normalised to a weight sum of 1."""
    fb = torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 0.0, F_MAX, N_MELS, SAMPLE_RATE, norm=None,
                                               mel_scale="htk")
    return (fb / fb.sum(dim=0, keepdim=True).clamp(min=1e-12)).to(device)


def spectrogram(wave: torch.Tensor) -> torch.Tensor:
    """The aisfx input: [B, samples] at 44.1 kHz → normalised log-mel [B, frames, 96], frames = 1 + samples // 1024."""
    peak = wave.abs().amax(dim=1, keepdim=True)
    wave = wave / torch.where(peak > 0, peak, torch.ones_like(peak))
    spec = torch.stft(F.pad(wave, (N_FFT // 2, N_FFT // 2)), N_FFT, HOP, window=torch.hann_window(N_FFT, device=wave.device),
                      center=False, return_complex=True).abs().pow(2)
    mel = torch.einsum("bft,fm->btm", spec, _mel_weights(str(wave.device)))
    return torch.log10(1e4 * mel + 1.0) / SPEC_MAX


@register
class AisfxEncoder(Encoder):
    """aisfx from its wheel (path None or ``"package:aisfx"``) or from a copy of ``checkpoint.pth``."""

    name = "aisfx"
    expected_files = (f"nothing: the weights come with the aisfx package ({INSTALL_HINT}); or pass a copy of "
                      "aisfx/models/checkpoint.pth (the file, or a folder holding it)")

    @classmethod
    def weight_files(cls, path: Path | None) -> list[Path]:
        if path is None or str(path) == PACKAGE_PATH:
            return [package_checkpoint()]
        where = f"Put {cls.expected_files}."
        return [single_file(cls.name, require_path(cls.name, path, where), ("checkpoint.pth", "*.pth"), where)]

    @classmethod
    def from_files(cls, path: Path | None, files: list[Path], sha256: str, device: torch.device) -> "AisfxEncoder":
        try:
            from aisfx.models.cnn2d import EmbeddingNet
        except ImportError as exc:
            raise EncoderError(f"encoder 'aisfx': the aisfx package is not importable ({exc}); {INSTALL_HINT}") from exc
        file = files[0]
        state = _embedding_state(load_checkpoint(cls.name, file), file)
        model = EmbeddingNet("max", 3, 1, 64)  # the package's X-Sequential-CE embedding network
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise EncoderError(f"encoder 'aisfx': {file} does not fit the aisfx network: missing "
                               f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        recorded = PACKAGE_PATH if path is None or str(path) == PACKAGE_PATH else str(path)
        return cls(model, path=recorded, files=files, sha256=sha256, sample_rate=SAMPLE_RATE,
                   min_samples=(BLOCK - 1) * HOP, embed_dim=8 * 64, frame_hop=BLOCK_HOP * HOP)

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        spec = spectrogram(wave)  # [B, frames, 96]
        blocks = spec.unfold(1, BLOCK, BLOCK_HOP)  # [B, n_blocks, 96, BLOCK]
        b, n = blocks.shape[:2]
        emb = self.model(blocks.transpose(2, 3).reshape(b * n, BLOCK, N_MELS))
        return emb.reshape(b, n, -1)


def _embedding_state(ckpt: Any, file: Path) -> dict[str, torch.Tensor]:
    """The ``embedding_net`` tensors of an aisfx checkpoint ``(state_dict, datasets)``, prefix removed."""
    state = ckpt[0] if isinstance(ckpt, (tuple, list)) and ckpt else ckpt
    prefix = "embedding_net."
    if not isinstance(state, dict) or prefix + "conv_block1.conv1.weight" not in state:
        raise EncoderError(f"encoder 'aisfx': {file} is not an aisfx checkpoint (no {prefix}conv_block1 weights)")
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
