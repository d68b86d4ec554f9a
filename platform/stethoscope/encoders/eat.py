"""EAT (Chen et al., "EAT: Self-Supervised Pre-Training with Efficient Audio Transformer", IJCAI 2024,
arXiv:2401.03497), loaded from the official fairseq checkpoint files (``EAT-base_epoch30_pt.pt`` ...).

An official checkpoint is a fairseq checkpoint: a dict whose ``cfg`` is a plain nested dict (fairseq saves its
OmegaConf config as containers) with the architecture under ``cfg["model"]`` (``embed_dim``, ``depth``,
``num_heads``, ``modalities.image.patch_size`` ...) and whose ``model`` is the data2vec-multi state dict
(``modality_encoders.IMAGE.local_encoder.proj.weight``, ``blocks.N.attn.qkv.weight`` ...). The student encoder is
read; the pre-training parts (the CNN decoder, the EMA teacher ``_ema``) are skipped. A fine-tuned checkpoint
(keys under ``model.``) is read the same way, without its classification head. The network is written here from
the paper and the public reference code (cwx-worst-one/EAT, ``models/``), not copied from it.

Front end (official ``feature_extract.py``): 16 kHz waveform minus its mean → Kaldi fbank (128 bands, 25 ms
Hanning window, 10 ms shift, HTK-compatible, no dither) → zero-padded to ``target_length`` frames (1,024 = the
10.24 s pre-training length) and to a multiple of the patch size → ``(fbank + 4.268) / (2 · 4.569)``. A ViT over
16×16 patches (time-major) with fixed 2-D sin-cos positions, a CLS token and post-LN blocks.

Frames: the patch tokens averaged over the 8 frequency patches → [B, T', D], one frame per 16 fbank frames
(160 ms), keeping the frames that start inside the clip. Poolings: ``"cls"`` (default; EAT's utterance-level
token, as its feature extractor's ``utterance`` granularity), ``"mean"`` / ``"max"`` over frames.
Minimum input: 16 fbank frames = 2,800 samples (0.175 s); maximum: ``max_length`` patches of frames
(768 × 16 frames ≈ 123 s for the released models), longer clips are cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from stethoscope.encoders.base import Encoder, EncoderError, load_checkpoint, register, require_path, single_file

SAMPLE_RATE = 16000  # Hz
FBANK_WINDOW, FBANK_SHIFT = 400, 160  # samples at 16 kHz: 25 ms / 10 ms
N_MELS = 128
PREFIX = "modality_encoders.IMAGE."
#: state-dict prefixes of pre-training modules (decoder, EMA teacher, projections) that feature extraction skips
SKIPPED = (PREFIX + "decoder.", "_ema", "ema.", "shared_decoder.", "recon_proj.", "cls_proj.", "center",
           PREFIX + "encoder_mask")


@dataclass(frozen=True)
class EATConfig:
    """Architecture of an EAT checkpoint.

    Model fields come from ``cfg["model"]`` (names as there) and image fields from ``cfg["model"]["modalities"]
    ["image"]``; defaults are EAT-base's (``config/pretraining_AS2M.yaml`` and the dataclass defaults in the
    reference ``models/``): 12 blocks, 768-d, 12 heads, MLP ratio 4, LayerNorm eps 1e-6, post-LN, 16×16 patches,
    one extra (CLS) token, no prenet blocks (pre-LN checkpoints are refused), ``max_length`` 768 time patches, ``target_length`` 1024 frames.
    ``norm_mean`` / ``norm_std`` are the fbank statistics of the official ``feature_extract.py`` (not in checkpoints).
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    norm_affine: bool = True
    layer_norm_first: bool = False
    patch_size: int = 16
    in_chans: int = 1
    image_embed_dim: int = 768
    num_extra_tokens: int = 1
    prenet_depth: int = 0
    max_length: int = 768
    target_length: int = 1024
    use_alibi_encoder: bool = False
    fixed_positions: bool = True
    norm_mean: float = -4.268
    norm_std: float = 4.569

    MODEL_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "norm_eps", "norm_affine", "layer_norm_first")
    IMAGE_KEYS = ("patch_size", "in_chans", "num_extra_tokens", "prenet_depth", "max_length", "target_length",
                  "use_alibi_encoder", "fixed_positions")

    @classmethod
    def from_checkpoint(cls, cfg: dict[str, Any], file: Path) -> "EATConfig":
        """Read the architecture from a fairseq ``cfg`` dict (pre-trained, or fine-tuned with the pre-training args
        nested under ``model.pretrained_model_args``). Raises EncoderError for what this implementation lacks."""
        model = dict(cfg.get("model") or {})
        nested = model.get("pretrained_model_args")
        if isinstance(nested, dict) and isinstance(nested.get("model"), dict):
            model = dict(nested["model"])
        image = dict((model.get("modalities") or {}).get("image") or {})
        values: dict[str, Any] = {k: model[k] for k in cls.MODEL_KEYS if model.get(k) is not None}
        values.update({k: image[k] for k in cls.IMAGE_KEYS if image.get(k) is not None})
        if image.get("embed_dim") is not None:
            values["image_embed_dim"] = image["embed_dim"]
        task_length = (cfg.get("task") or {}).get("target_length")
        if "target_length" not in values and task_length:
            values["target_length"] = task_length
        config = cls(**values)
        problems = []
        if config.in_chans != 1:
            problems.append(f"in_chans {config.in_chans} (EAT takes a 1-channel fbank)")
        if config.use_alibi_encoder:
            problems.append("use_alibi_encoder (EAT does not use ALiBi)")
        if not config.fixed_positions:
            problems.append("fixed_positions off")
        if config.image_embed_dim != config.embed_dim:
            problems.append(f"a patch dimension {config.image_embed_dim} != model dimension {config.embed_dim}")
        if config.layer_norm_first:
            # No released EAT model is pre-LN, and the reference pre-LN block (data2vec 2.0's AltBlock) is not a
            # standard residual block, so it is refused rather than guessed.
            problems.append("layer_norm_first (pre-LN blocks)")
        if config.embed_dim % config.num_heads:
            problems.append(f"embed_dim {config.embed_dim} not divisible by num_heads {config.num_heads}")
        if problems:
            raise EncoderError(f"encoder 'eat': {file} uses {'; '.join(problems)}, which this implementation lacks")
        return config

    def to_checkpoint(self) -> dict[str, Any]:
        """A fairseq-style ``cfg`` dict describing this architecture (what :func:`save_checkpoint` writes)."""
        model = {k: getattr(self, k) for k in self.MODEL_KEYS}
        image = {k: getattr(self, k) for k in self.IMAGE_KEYS}
        image["embed_dim"] = self.image_embed_dim
        model.update(_name="data2vec_multi", supported_modality="IMAGE", modalities={"image": image})
        return {"model": model, "task": {"_name": "mae_image_pretraining", "target_length": self.target_length}}


def sincos_positions(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table [height · width, dim] (MAE, He et al. 2022), rows in (time, frequency)
    order; the first half of the dimensions encodes the frequency index, the second the time index (as EAT's)."""
    if dim % 4:
        raise EncoderError(f"encoder 'eat': embed_dim {dim} must be divisible by 4 for 2-D sin-cos positions")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        angle = pos.reshape(-1, 1).double() * omega
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    time, freq = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.cat([one_axis(freq), one_axis(time)], dim=1).float()


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """A post-LN transformer block: ``x = LN(x + attn(x)); x = LN(x + mlp(x))`` (EAT's, data2vec 2.0's AltBlock)."""

    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.attn = _Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.mlp = _Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _FixedPositions(nn.Module):
    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("positions", table.unsqueeze(0))


class _ContextEncoder(nn.Module):
    """The LayerNorm and the optional prenet blocks applied to the token sequence before the main blocks."""

    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.prenet_depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        for block in self.blocks:
            x = block(x)
        return x


class _ImageEncoder(nn.Module):
    def __init__(self, cfg: EATConfig):
        super().__init__()
        width = N_MELS // cfg.patch_size
        self.local_encoder = _PatchEmbed(cfg)
        self.extra_tokens = nn.Parameter(torch.randn(1, cfg.num_extra_tokens, cfg.embed_dim) * 0.02)
        self.fixed_positional_encoder = _FixedPositions(sincos_positions(cfg.embed_dim, cfg.max_length, width))
        self.context_encoder = _ContextEncoder(cfg)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.local_encoder(image)
        x = x + self.fixed_positional_encoder.positions[:, : x.shape[1]]
        x = torch.cat([self.extra_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        return self.context_encoder(x)


class EAT(nn.Module):
    """The EAT student encoder. ``forward(image [B, 1, frames, 128]) → tokens [B, extra + (frames/p)·(128/p), D]``."""

    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.cfg = cfg
        self.modality_encoders = nn.ModuleDict({"IMAGE": _ImageEncoder(cfg)})
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)  # BERT initialisation, as data2vec's
                nn.init.zeros_(module.bias)

    def fbank(self, wave: torch.Tensor) -> tuple[torch.Tensor, int]:
        """[B, samples] at 16 kHz → (normalised, padded image [B, 1, frames', 128], frames of real content)."""
        cfg = self.cfg
        wave = wave - wave.mean(dim=1, keepdim=True)
        banks = torch.stack([
            torchaudio.compliance.kaldi.fbank(w.unsqueeze(0), htk_compat=True, sample_frequency=SAMPLE_RATE,
                                              use_energy=False, window_type="hanning", num_mel_bins=N_MELS,
                                              dither=0.0, frame_shift=10)
            for w in wave])
        frames = banks.shape[1]
        padded = max(frames, cfg.target_length)
        padded = math.ceil(padded / cfg.patch_size) * cfg.patch_size
        banks = F.pad(banks, (0, 0, 0, padded - frames))
        return ((banks - cfg.norm_mean) / (2 * cfg.norm_std)).unsqueeze(1), frames

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.modality_encoders["IMAGE"](image)
        for block in self.blocks:
            x = block(x)
        return x


def save_checkpoint(model: EAT, file: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` in the official (fairseq) checkpoint layout: ``{"cfg": {...}, "model": state_dict}``.
    ``extra`` entries are added to the state dict (tests use it to mimic the decoder and EMA entries)."""
    state = dict(model.state_dict())
    state.update(extra or {})
    torch.save({"args": None, "cfg": model.cfg.to_checkpoint(), "model": state}, file)


@register
class EATEncoder(Encoder):
    """EAT from an official checkpoint file (see the module docstring for the front end and pooling)."""

    name = "eat"
    poolings = ("cls", "mean", "max")
    default_pooling = "cls"
    expected_files = ("the official EAT fairseq checkpoint (e.g. EAT-base_epoch30_pt.pt from the links in "
                      "cwx-worst-one/EAT's README), as the path itself or as the only *.pt file in the folder given")

    @classmethod
    def weight_files(cls, path: Path | None) -> list[Path]:
        where = f"Put {cls.expected_files}."
        return [single_file(cls.name, require_path(cls.name, path, where), ("*.pt",), where)]

    @classmethod
    def from_files(cls, path: Path, files: list[Path], sha256: str, device: torch.device) -> "EATEncoder":
        file = files[0]
        ckpt = load_checkpoint(cls.name, file)
        state = _eat_state(ckpt, file)
        config = EATConfig.from_checkpoint(dict(ckpt.get("cfg") or {}), file)
        model = EAT(config)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise EncoderError(f"encoder 'eat': {file} does not match its own cfg: missing "
                               f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        p = config.patch_size
        return cls(model, path=str(path), files=files, sha256=sha256, sample_rate=SAMPLE_RATE,
                   min_samples=FBANK_WINDOW + FBANK_SHIFT * (p - 1), embed_dim=config.embed_dim,
                   frame_hop=FBANK_SHIFT * p, max_samples=FBANK_WINDOW + FBANK_SHIFT * (config.max_length * p - 1))

    def _tokens(self, wave: torch.Tensor) -> tuple[torch.Tensor, int]:
        image, frames = self.model.fbank(wave)
        return self.model(image), frames

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.model.cfg
        tokens, frames = self._tokens(wave)
        patches = tokens[:, cfg.num_extra_tokens:]
        width = N_MELS // cfg.patch_size
        per_frame = patches.reshape(patches.shape[0], -1, width, patches.shape[-1]).mean(dim=2)
        return per_frame[:, : max(1, math.ceil(frames / cfg.patch_size))]

    def _pool(self, wave: torch.Tensor, pooling: str) -> torch.Tensor:
        if pooling == "cls":
            return self._tokens(wave)[0][:, 0]
        return super()._pool(wave, pooling)


def _eat_state(ckpt: Any, file: Path) -> dict[str, torch.Tensor]:
    """The student encoder's tensors from an official EAT checkpoint, or an EncoderError saying what the file is."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise EncoderError(f"encoder 'eat': {file} is not an EAT (fairseq) checkpoint (a dict with 'cfg' and "
                           f"'model'); it has {keys}")
    state = ckpt["model"]
    if any(k.startswith("model." + PREFIX) for k in state):  # fine-tuned: the pre-trained model sits under model.
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if PREFIX + "local_encoder.proj.weight" not in state:
        hint = ""
        if "patch_embedding.weight" in state:
            hint = "; it is a BEATs checkpoint: load it as 'beats'"
        raise EncoderError(f"encoder 'eat': {file} holds another model (no {PREFIX}local_encoder weights){hint}")
    state = {k: v for k, v in state.items() if not k.startswith(SKIPPED)}
    legacy = PREFIX + "positional_encoder.pos_embed"
    if legacy in state:
        state[PREFIX + "fixed_positional_encoder.positions"] = state.pop(legacy)
    return state
