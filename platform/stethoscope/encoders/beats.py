"""BEATs (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", ICML 2023, arXiv:2212.09058),
loaded from the official checkpoint files (``BEATs_iter3.pt``, ``BEATs_iter3_plus_AS2M.pt``, ...).

An official checkpoint is ``{"cfg": dict, "model": state_dict}`` (torch.save). ``cfg`` holds the fields of
:class:`BEATsConfig`; the state dict's key names (``patch_embedding``, ``encoder.pos_conv.0.weight_g``,
``encoder.layers.N.self_attn.grep_a`` ...) are the official ones, so :func:`save_checkpoint` writes files in the
same format and :class:`BEATsEncoder` reads either. The network is written here from the paper and the public
reference implementation (microsoft/unilm, ``beats/``), not copied from it.

Front end (official ``BEATs.preprocess``): 16 kHz waveform × 2^15 → Kaldi fbank (128 bands, 25 ms window, 10 ms
shift) → ``(fbank − 15.41663) / (2 · 6.55582)``. A ViT over 16×16 fbank patches (time-major token order) with a
convolutional positional embedding, bucketed relative position bias with a gated (GRU-style) term, and DeepNorm
post-LN layers (the released iter3 configuration).

Frames: the patch tokens [B, T'·F', D] averaged over the F' = 8 frequency patches → [B, T', D], one frame per 16
fbank frames (160 ms). Poolings: ``"mean"`` (default; the mean over all tokens, as ASDKit's BEATs front end) and
``"max"`` over frames. Minimum input: 16 fbank frames = 2,800 samples (0.175 s).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from stethoscope.encoders.base import Encoder, EncoderError, load_checkpoint, register, require_path, single_file

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz (official preprocess: sample_frequency=16000)
FBANK_WINDOW, FBANK_SHIFT = 400, 160  # samples at 16 kHz: 25 ms / 10 ms


@dataclass(frozen=True)
class BEATsConfig:
    """Architecture of a BEATs checkpoint. Field names are the official ``cfg`` keys; the defaults are the official
    code's (``BEATsConfig`` in microsoft/unilm ``beats/BEATs.py``), except ``input_patch_size`` (the official
    default -1 is a placeholder; every released checkpoint sets 16). A checkpoint's ``cfg`` overrides them.

    ``fbank_mean`` / ``fbank_std`` are not in checkpoints: they are the official ``preprocess`` defaults (AudioSet
    statistics). Training-only cfg keys (dropouts, layerdrop, layer-wise gradient decay) are ignored.
    """

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_class: int = 527
    fbank_mean: float = 15.41663
    fbank_std: float = 6.55582

    #: official cfg keys that only matter for training
    TRAINING_KEYS = frozenset({"dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop",
                               "dropout_input", "layer_wise_gradient_decay_ratio", "predictor_dropout"})

    @classmethod
    def from_checkpoint(cls, cfg: dict[str, Any], file: Path) -> "BEATsConfig":
        """Build from a checkpoint's ``cfg`` dict. Raises EncoderError for values this implementation lacks."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names - cls.TRAINING_KEYS)
        if unknown:
            log.warning("BEATs checkpoint %s: ignoring unknown cfg keys %s", file, unknown)
        config = cls(**{k: v for k, v in cfg.items() if k in names})
        if config.activation_fn not in ("gelu", "relu"):
            raise EncoderError(f"encoder 'beats': {file} uses activation_fn '{config.activation_fn}'; this "
                               "implementation supports 'gelu' (every released BEATs checkpoint) and 'relu'")
        if config.deep_norm and config.layer_norm_first:
            raise EncoderError(f"encoder 'beats': {file} sets both deep_norm and layer_norm_first, which BEATs forbids")
        return config

    def to_checkpoint(self) -> dict[str, Any]:
        """The ``cfg`` dict an official checkpoint holds (without our preprocessing statistics)."""
        out = dataclasses.asdict(self)
        out.pop("fbank_mean")
        out.pop("fbank_std")
        return out


class _WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over dim 2 (``torch.nn.utils.weight_norm(conv, dim=2)``), keeping
    the official parameter names ``weight_g`` [1, 1, K] and ``weight_v`` [C, C/groups, K]."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        v = torch.randn(channels, channels // groups, kernel) * math.sqrt(4.0 / (kernel * channels))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class _TrimLast(nn.Module):
    """Drop the last time step when the positional convolution's kernel is even (it then yields T + 1 steps)."""

    def __init__(self, kernel: int):
        super().__init__()
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : x.shape[-1] - self.trim]


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5-style buckets (Raffel et al. 2020), as BEATs uses: half the buckets per direction, exact
    buckets for |distance| < num_buckets / 4, logarithmic ones up to ``max_distance``."""
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    log_bucket = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                          * (half - exact)).long()
    log_bucket = log_bucket.clamp(max=half - 1)
    return buckets + torch.where(distance < exact, distance, log_bucket)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: BEATsConfig, relative_bias: nn.Embedding | None):
        super().__init__()
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        if dim % heads:
            raise EncoderError(f"encoder 'beats': encoder_embed_dim {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.cfg = cfg
        self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        if relative_bias is not None:
            self.relative_attention_bias = relative_bias  # shared by every layer (one table, as in BEATs)
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """[H, L, L] bias from the bucketed relative positions (key − query)."""
        pos = torch.arange(length, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.num_buckets, self.cfg.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, H, L, d]

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if bias is None and self.cfg.relative_position_embedding:
            bias = self.position_bias(n, x.device)
        mask = None
        if bias is not None:
            mask = bias.unsqueeze(0)
            if self.cfg.gru_rel_pos:
                # Gated relative position bias: two sigmoid gates from the (unscaled) query of each head.
                gates = torch.sigmoid(self.grep_linear(q).view(b, self.heads, n, 2, 4).sum(-1))
                gate_a, gate_b = gates[..., :1], gates[..., 1:]
                mask = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * mask
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d)), bias


class _Layer(nn.Module):
    def __init__(self, cfg: BEATsConfig, relative_bias: nn.Embedding | None):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = _SelfAttention(cfg, relative_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.pre_norm = cfg.layer_norm_first
        self.alpha = math.pow(2 * cfg.encoder_layers, 0.25) if cfg.deep_norm else 1.0  # DeepNorm (Wang et al. 2022)
        self.act = F.gelu if cfg.activation_fn == "gelu" else F.relu

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            attn, bias = self.self_attn(self.self_attn_layer_norm(x), bias)
            x = x + attn
            return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x)))), bias
        attn, bias = self.self_attn(x, bias)
        x = self.self_attn_layer_norm(x * self.alpha + attn)
        return self.final_layer_norm(x * self.alpha + self.fc2(self.act(self.fc1(x)))), bias


class _Encoder(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(_WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups),
                                      _TrimLast(cfg.conv_pos), nn.GELU())
        table = nn.Embedding(cfg.num_buckets, cfg.encoder_attention_heads) if cfg.relative_position_embedding else None
        self.layers = nn.ModuleList(_Layer(cfg, table) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.pre_norm = cfg.layer_norm_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.pre_norm:
            x = self.layer_norm(x)
        bias = None
        for layer in self.layers:
            x, bias = layer(x, bias)
        return self.layer_norm(x) if self.pre_norm else x


class BEATs(nn.Module):
    """The BEATs network. ``forward(fbank [B, frames, 128]) → tokens [B, (frames // p) · (128 // p), D]``."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        if cfg.embed_dim != cfg.encoder_embed_dim:
            self.post_extract_proj = nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
        self.encoder = _Encoder(cfg)
        if cfg.finetuned_model:
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)  # loaded, never used here
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)  # BERT initialisation, as the reference
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)

    def fbank(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, samples] at 16 kHz → normalised Kaldi fbank [B, frames, 128] (official ``preprocess``)."""
        banks = [torchaudio.compliance.kaldi.fbank(w.unsqueeze(0) * 2**15, num_mel_bins=128,
                                                   sample_frequency=SAMPLE_RATE, frame_length=25, frame_shift=10)
                 for w in wave]
        return (torch.stack(banks) - self.cfg.fbank_mean) / (2 * self.cfg.fbank_std)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(fbank.unsqueeze(1))
        x = self.layer_norm(x.flatten(2).transpose(1, 2))
        if hasattr(self, "post_extract_proj"):
            x = self.post_extract_proj(x)
        return self.encoder(x)


def save_checkpoint(model: BEATs, file: str | Path) -> None:
    """Write ``model`` as an official BEATs checkpoint: ``torch.save({"cfg": ..., "model": state_dict})``."""
    torch.save({"cfg": model.cfg.to_checkpoint(), "model": model.state_dict()}, file)


@register
class BEATsEncoder(Encoder):
    """BEATs from an official checkpoint file (see the module docstring for the front end and pooling)."""

    name = "beats"
    expected_files = ("the official BEATs checkpoint (e.g. BEATs_iter3_plus_AS2M.pt from microsoft/unilm beats/), "
                      "as the path itself or as the only *.pt file in the folder given as the path")

    @classmethod
    def weight_files(cls, path: Path | None) -> list[Path]:
        where = f"Put {cls.expected_files}."
        return [single_file(cls.name, require_path(cls.name, path, where), ("*.pt",), where)]

    @classmethod
    def from_files(cls, path: Path, files: list[Path], sha256: str, device: torch.device) -> "BEATsEncoder":
        file = files[0]
        ckpt = load_checkpoint(cls.name, file)
        state = _check_beats_checkpoint(ckpt, file)
        model = BEATs(BEATsConfig.from_checkpoint(dict(ckpt["cfg"]), file))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise EncoderError(f"encoder 'beats': {file} does not match its own cfg: missing "
                               f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        p = model.cfg.input_patch_size
        return cls(model, path=str(path), files=files, sha256=sha256, sample_rate=SAMPLE_RATE,
                   min_samples=FBANK_WINDOW + FBANK_SHIFT * (p - 1), embed_dim=model.cfg.encoder_embed_dim,
                   frame_hop=FBANK_SHIFT * p)

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        fbank = self.model.fbank(wave)
        tokens = self.model(fbank)
        p = self.model.cfg.input_patch_size
        return tokens.reshape(tokens.shape[0], fbank.shape[1] // p, 128 // p, -1).mean(dim=2)


def _check_beats_checkpoint(ckpt: Any, file: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official BEATs checkpoint, or an EncoderError that says what the file is instead."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "cfg" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise EncoderError(f"encoder 'beats': {file} is not an official BEATs checkpoint (a dict with 'cfg' and "
                           f"'model'); it has {keys}")
    state = ckpt["model"]
    if "patch_embedding.weight" not in state or "encoder.pos_conv.0.weight_v" not in state:
        hint = ""
        if any(k.startswith(("modality_encoders.", "model.modality_encoders.")) for k in state):
            hint = "; it is an EAT (data2vec-style) checkpoint: load it as 'eat'"
        elif any(k.startswith("quantize") for k in state):
            hint = "; it is a BEATs *tokenizer* checkpoint, not the BEATs model"
        raise EncoderError(f"encoder 'beats': {file} holds another model (no patch_embedding / encoder.pos_conv "
                           f"weights){hint}")
    return state
