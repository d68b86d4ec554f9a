"""STgram-MFN, TASTgram and FGASpecNet on the Method contract: one machine-ID classifier over all machine types
(issue 13), registered as ``stgram_mfn``, ``tastgram`` and ``fgaspecnet``.

The network is :class:`stethoscope.nn.classifiers.MachineIDClassifier` (the FGASpecNet paper's Table 3 rows as
presets; its blocks and their sources are documented in :mod:`stethoscope.nn`). This module is the platform glue:

- **Inputs** (:meth:`MachineIDClassifierMethod.input_specs`): ``waveform`` (:class:`WaveformSpec`, 16 kHz) and
  ``log_mel`` (:class:`FeatureSpec`: n_fft = window = 2048 samples, hop 512, 128 mels, power 2, log:
  :data:`stethoscope.nn.frontend.CLASSIFIER_LOGMEL`, i.e. ``10·log10(mel + eps)`` as in the public STgram-MFN /
  Noisy-ArcMix code; the issue's ``log(H_M·|STFT|²)`` differs from it by the constant factor 10 / ln 10)
  → [128, 313] for a 10 s clip. Without TgramNet (``tgram = False``) the method declares ``log_mel`` only.
- **Clip length**: the network is built for ``n_samples`` samples (160,000 = 10 s at 16 kHz, issue 13) and
  ``n_frames = 1 + n_samples // hop_length`` frames (313). A longer clip (ToyCar: 11 s) is *cropped* to its first
  ``n_samples`` samples and first ``n_frames`` log-mel frames (the last frame then saw up to half a window of audio
  past the crop: at most 1 of 313 frames differs from the log-mel of the cropped waveform); a shorter clip is
  *tiled* (repeated from its start) to those lengths. Training examples, scoring, embeddings and maps all use
  this one rule (:func:`fit_length`), so the run and the endpoint give the same score.
- **Labels**: ``group`` (the machine ID; in the all_machine_types scope the classes are the (machine_type, ID)
  pairs of every type, e.g. ``fan/id_00``: 41 classes on DCASE 2020 dev + additional training data).
- **Scope**: ``all_machine_types`` by default (what the papers do), or ``per_machine_type``; never per_id.
- **Training** (``training_step``): the family's loss (ArcFace; Noisy-ArcMix; + λ_ST·SoftTriple) with AdamW through
  :meth:`Method.optimize` (mixed precision on CUDA, gradient clipping at ``clip_grad_norm``, the all-reduce over
  Ray Train workers), one LR scheduler (:meth:`Method.make_scheduler`) stepped per epoch. Noisy-ArcMix's λ and
  permutation come from a numpy Generator drawn once per epoch from the global numpy state (which the train loop
  seeds per epoch from the run seed: ``seed * 100003 + epoch``) and the worker's rank, so a run (and a resumed run)
  replays the same mixes and the workers draw different ones.
- **Scores**: ``score`` = A(x) = −log p(y|x), the softmax posterior of the clip's own machine ID (issue 13), from
  the ArcFace logits s·cos θ (no margin); ``embed`` = the 128-d MobileFaceNet embedding; ``localize`` = FGA's gate G
  [B, M, T] when ``fga`` is on, else |∂A/∂F_LM| (:func:`stethoscope.nn.classifiers.score_gradient_map`).
- **Score variant** (chosen per machine type on the validation split only, never on test labels): ``detectors``
  lists the candidates of the detector stage (:mod:`stethoscope.stages.detect`): ``"method"`` is −log p itself,
  the others are detectors fitted per machine ID on the training embeddings (KNN, LOF, GMM, SOS ...). The best
  (AUC + pAUC) / 2 on the validation clips wins and is what publishing and serving use.
- **One class**: with a single machine ID in the training data (e.g. the real slider clips: id_00 only) −log p is
  undefined as an anomaly score (softmax over one class is 1 for every clip). The head then gets one padding class
  that no clip has (:class:`MachineIDClassifier` needs two), the loss still pulls the embeddings to the one class's
  centre, :attr:`MachineIDClassifierMethod.score_undefined_reason` says why −log p is no candidate, and the detector
  stage uses a detector on the embeddings.
- **Unseen machine ID** at scoring time: a DataError that names the clip, the ID and the known ones (the contract's
  ``unknown_group = "error"``), or, with ``unknown_id = "max_known"``, A(x) = −log max_{y'} p(y'|x) over the known
  IDs y' of the clip's machine type (the clip is read as its most probable known ID of that type). That fallback is
  for the ``method`` score only: a detector on embeddings is fitted per ID and has no detector for an unseen one.

Config defaults are the paper's (issue 13 quoting FGASpecNet 2025 and Noisy-ArcMix, Choi et al. ICASSP 2024):
AdamW, lr 1e-4, 300 epochs, batch 64, ArcFace m 0.7 s 30, Noisy-ArcMix α 0.5, SoftTriple γ 0.1 λ 20 δ 0.02 K 3 τ 0,
λ_ST 0.15. Values the papers do not give are marked "ours" in :class:`Config`. CPU runs: ``presets/cpu/<name>.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stethoscope.data.features import FeatureSpec, InputSpec, WaveformSpec
from stethoscope.data.labels import UNKNOWN_SUFFIX
from stethoscope.detectors.stage import OWN_SCORE
from stethoscope.errors import ConfigError, DataError
from stethoscope.methods.base import Method, clip_arrays, register
from stethoscope.nn.classifiers import (PRESETS, ClassifierConfig, ClassifierOutput, MachineIDClassifier,
                                        anomaly_score, score_gradient_map)
from stethoscope.nn.fga import FGAConfig
from stethoscope.nn.frontend import CLASSIFIER_LOGMEL
from stethoscope.nn.margins import ArcFaceConfig, NoisyArcMixConfig, SoftTripleConfig



@dataclass
class Config:
    """STgram-MFN / TASTgram / FGASpecNet. Defaults: issue 13 (FGASpecNet 2025; Noisy-ArcMix, Choi et al. 2024).

    Fields:
        preset: the FGASpecNet paper's Table 3 row ("stgram_mfn", "tastgram", "fgaspecnet"); set by the registered
            name (``--method``) and must match it.
        tgram / tagram / specnet / fga / softtriple: None = the preset's switch; True/False overrides it (the
            Table 3 ablations, e.g. ``--method tastgram --set specnet=true``). loss: None = the preset's
            ("arcface" for stgram_mfn, "noisy_arcmix" otherwise).
        n_samples: waveform length the network is built for, in samples at 16 kHz (160,000 = 10 s; issue 13);
            n_frames = 1 + n_samples // hop_length (313). Clips are cropped / tiled to it (module docstring).
        n_mels / n_fft / hop_length: the log-mel F_LM (128, 2048, 512; issue 13). TgramNet's kernel and stride
            stay 1024 / 512 (STgram-MFN Table 1), so F_T has the log-mel's frame grid only with hop 512.
        mobilefacenet_setting: "aithu" (the FGASpecNet Table 5 parameter counts) or "stgram_mfn", or explicit
            [t, c, n, s] bottleneck rows (small networks for tests); embedding_dim 128.
        fga_blend: FGA's λ in F_S_enh = (1 − λG)·F_LM + λG·F_S (the FGASpecNet paper gives no value; 0.5 is
            ours, :class:`stethoscope.nn.fga.FGAConfig`).
        arcface_margin / arcface_scale: m 0.7, s 30. mixup_alpha: Noisy-ArcMix α 0.5.
        st_gamma / st_lambda / st_delta / st_centers / st_tau / st_weight: SoftTriple γ 0.1, λ 20, δ 0.02, K 3,
            τ 0, λ_ST 0.15 (the paper's Table 4 grid: search_spaces/fgaspecnet.yaml).
        lr 1e-4, epochs 300, batch_size 64: AdamW (issue 13). weight_decay: 0.01 (ours: torch's AdamW default;
            the issue names AdamW without a decay). scheduler: "cosine" over ``epochs`` (ours; the issue names
            none), or "step" / "none". clip_grad_norm: max gradient norm, 0 = off (ours: off).
        val_fraction: training clips held out for ``val_loss`` (ours, as mel_classifier).
        detectors: the detector stage's candidates, chosen per machine type on the validation clips:
            "method" = −log p; the others: :func:`stethoscope.detectors.detector_names`.
        unknown_id: "error" (an unseen machine ID is a DataError) or "max_known" (module docstring).
        infer_chunk: clips per forward pass when scoring, embedding and mapping (ours: 1; 0 = the whole batch). With
            1 a clip's score does not depend on the batch it arrives in: float32 kernels pick other algorithms for
            other batch sizes, which moved KNN scores on the embeddings by up to 1e-4 between a run (batches of 16)
            and the endpoint (1-3 clips). On a CPU one clip per pass costs about as much per clip as a batch
            (benchmarks/classifier_throughput.py, ms per clip at batch 1 / 16: 20-31 / 25-44 on 2026-12-04,
            38-51 / 31-50 on 12-03); on a GPU set 0 for speed.
    Raises:
        ConfigError: a bad value (names the field).
    """

    preset: str = "fgaspecnet"
    tgram: bool | None = None
    tagram: bool | None = None
    specnet: bool | None = None
    fga: bool | None = None
    softtriple: bool | None = None
    loss: str | None = None
    n_samples: int = 160000
    n_mels: int = 128
    n_fft: int = 2048
    hop_length: int = 512
    mobilefacenet_setting: str | tuple[tuple[int, int, int, int], ...] = "aithu"
    embedding_dim: int = 128
    fga_blend: float = 0.5
    arcface_margin: float = 0.7
    arcface_scale: float = 30.0
    mixup_alpha: float = 0.5
    st_gamma: float = 0.1
    st_lambda: float = 20.0
    st_delta: float = 0.02
    st_centers: int = 3
    st_tau: float = 0.0
    st_weight: float = 0.15
    lr: float = 1e-4
    weight_decay: float = 0.01
    epochs: int = 300
    batch_size: int = 64
    scheduler: str = "cosine"
    clip_grad_norm: float = 0.0
    val_fraction: float = 0.1
    shuffle: bool = True
    detectors: tuple[str, ...] = (OWN_SCORE, "knn", "lof", "gmm", "sos")
    unknown_id: str = "error"
    infer_chunk: int = 1

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> None:
            raise ConfigError(f"{self.preset} config: {field} = {getattr(self, field)!r}; expected {expected}")

        if self.preset not in PRESETS:
            bad("preset", f"one of {list(PRESETS)}")
        for field in ("n_samples", "n_mels", "n_fft", "hop_length", "embedding_dim", "batch_size", "st_centers"):
            if getattr(self, field) < 1:
                bad(field, "an integer >= 1")
        if self.n_samples < self.n_fft:
            bad("n_samples", f">= n_fft = {self.n_fft} samples")
        if self.epochs < 0:
            bad("epochs", ">= 0")
        if self.infer_chunk < 0:
            bad("infer_chunk", "an integer >= 0 (0 = the whole batch)")
        for field in ("lr",):
            if not getattr(self, field) > 0:
                bad(field, "> 0")
        if self.weight_decay < 0 or self.clip_grad_norm < 0:
            bad("weight_decay" if self.weight_decay < 0 else "clip_grad_norm", ">= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "in [0, 1)")
        if self.scheduler not in ("cosine", "step", "none"):
            bad("scheduler", "'cosine', 'step' or 'none'")
        if self.unknown_id not in ("error", "max_known"):
            bad("unknown_id", "'error' or 'max_known'")
        if self.loss is not None and self.loss not in ("arcface", "noisy_arcmix"):
            bad("loss", "None (the preset's), 'arcface' or 'noisy_arcmix'")
        self.network()  # every sub-config's own checks (margins, SoftTriple, FGA, MobileFaceNet rows) now

    @property
    def n_frames(self) -> int:
        """Log-mel frames of an ``n_samples`` clip: 1 + n_samples // hop_length (313 for 10 s)."""
        return 1 + self.n_samples // self.hop_length

    def network(self) -> ClassifierConfig:
        """The :class:`ClassifierConfig` of this config: the preset's Table 3 row, then the switches set here."""
        switches = {k: getattr(self, k) for k in ("tgram", "tagram", "specnet", "fga", "softtriple", "loss")
                    if getattr(self, k) is not None}
        setting = self.mobilefacenet_setting
        return ClassifierConfig.preset(
            self.preset, n_mels=self.n_mels, n_frames=self.n_frames,
            mobilefacenet_setting=setting if isinstance(setting, str) else [list(r) for r in setting],
            embedding_dim=self.embedding_dim,
            arcface_config=ArcFaceConfig(margin=self.arcface_margin, scale=self.arcface_scale),
            noisy_arcmix_config=NoisyArcMixConfig(alpha=self.mixup_alpha),
            softtriple_config=SoftTripleConfig(gamma=self.st_gamma, lam=self.st_lambda, delta=self.st_delta,
                                               centers=self.st_centers, tau=self.st_tau, weight=self.st_weight),
            fga_config=FGAConfig(n_mels=self.n_mels, blend=self.fga_blend),
            **switches,
        )


def fit_length(x: np.ndarray | torch.Tensor, n: int) -> np.ndarray | torch.Tensor:
    """Crop or tile the last axis of ``x`` (numpy or torch, [..., L]) to exactly ``n``: the first ``n`` values when
    L >= n, else ``x`` repeated from its start. The clip-length rule of this module (see its docstring).

    Raises:
        DataError: L = 0 (an empty clip).
    """
    length = x.shape[-1]
    if length == 0:
        raise DataError("a clip has 0 samples / frames")
    if length < n:
        reps = -(-n // length)
        x = np.tile(x, (1,) * (x.ndim - 1) + (reps,)) if isinstance(x, np.ndarray) else x.repeat(
            *(1,) * (x.ndim - 1), reps)
    return x[..., :n]


class MachineIDClassifierMethod(Method):
    """A :class:`MachineIDClassifier` as a Method (see the module docstring). Subclasses set ``name`` and ``Config``.

    Examples (training batches) and scoring batches are the same dict: ``waveform`` float32 [B, n_samples] (when
    TgramNet is on), ``log_mel`` float32 [B, n_mels, n_frames] (dB), ``group`` int64 [B]; scoring batches of clips of
    another length are cropped / tiled by the method.
    """

    Config = Config
    default_scope = "all_machine_types"
    scopes = ("per_machine_type", "all_machine_types")
    scope_note = "a classifier over machine IDs needs several IDs to tell apart; a per_id model would have one class"
    labels = ("group",)

    def __init__(self, config: Config, inputs=None, vocab=None):
        super().__init__(config, inputs, vocab)
        self._check_preset(config)
        if config.unknown_id == "max_known":
            # the vocabulary's explicit unknown index plus the clip's machine type (Vocab.encode, unknown="flag")
            self.unknown_group = "flag"
            self.labels = ("group", "machine_type")
        self.n_groups = self.vocab.size("group")
        self.net = MachineIDClassifier(config.network(), max(2, self.n_groups))
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.lr_schedule = self.make_scheduler(self.optimizer, config.scheduler)

    @classmethod
    def make_config(cls, values=None) -> Config:
        """``Config`` with ``preset`` = this method's name.

        Raises:
            ConfigError: a bad value, or a ``preset`` other than this method's name (before anything trains).
        """
        cfg = super().make_config({"preset": cls.name, **dict(values or {})})
        cls._check_preset(cfg)
        return cfg

    @classmethod
    def _check_preset(cls, config: Config) -> None:
        if config.preset != cls.name:
            raise ConfigError(f"{cls.name} config: preset = {config.preset!r}; expected {cls.name!r} (the method "
                              f"name sets the preset; switch blocks with tgram / tagram / specnet / fga / softtriple)")

    @classmethod
    def input_specs(cls, config: Config) -> dict[str, InputSpec]:
        """``{"waveform": WaveformSpec(16000), "log_mel": FeatureSpec(n_fft, hop, n_mels, dB)}`` (no waveform without
        TgramNet)."""
        spec = dataclasses.replace(CLASSIFIER_LOGMEL, n_fft=config.n_fft, hop_length=config.hop_length,
                                   n_mels=config.n_mels)
        if not config.network().tgram:
            return {"log_mel": spec}
        return {"waveform": WaveformSpec(sample_rate=spec.sample_rate), "log_mel": spec}

    @property
    def score_undefined_reason(self) -> str | None:
        """Why −log p(y|x) cannot rank clips of this model (None when it can): one machine ID in training."""
        if self.n_groups < 2:
            return (f"the model was trained on {self.n_groups} machine ID: −log p(y|x) over one class is constant "
                    "(undefined as an anomaly score); a detector on the embeddings is used instead")
        return None

    # -- data -------------------------------------------------------------------------------------------------
    def _uses_waveform(self) -> bool:
        return self.net.tgramnet is not None

    def examples(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Clip batch → the same keys, each clip cropped / tiled to ``n_samples`` / ``n_frames`` (float32)."""
        c = self.config
        mels = [fit_length(a, c.n_frames) for a in clip_arrays(clips["log_mel"])]
        n = len(mels)
        out = {"log_mel": np.stack(mels).astype(np.float32) if n else np.zeros((0, c.n_mels, c.n_frames), np.float32)}
        if self._uses_waveform():
            waves = [fit_length(a, c.n_samples) for a in clip_arrays(clips["waveform"])]
            out["waveform"] = np.stack(waves).astype(np.float32) if n else np.zeros((0, c.n_samples), np.float32)
        for key in self.label_keys():
            if key in clips:
                out[key] = np.asarray(clips[key]).reshape(-1)
        return out

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(waveform [B, n_samples] or None, log-mel [B, n_mels, n_frames]) on the device, float32."""
        c = self.config
        mel = fit_length(torch.as_tensor(batch["log_mel"]).to(self.device, torch.float32), c.n_frames)
        if not self._uses_waveform():
            return None, mel
        if "waveform" not in batch:
            raise DataError(f"{self.name} reads the waveform (TgramNet): the batch needs 'waveform'")
        return fit_length(torch.as_tensor(batch["waveform"]).to(self.device, torch.float32), c.n_samples), mel

    def _labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "group" not in batch:
            raise DataError(f"{self.name} scores a clip against its own machine ID: the batch needs 'group'")
        return torch.as_tensor(batch["group"], device=self.device).long().reshape(-1)

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if batch["log_mel"].shape[0] < 2:  # BatchNorm needs two clips
            return {}
        self.net.train()
        wav, mel = self._inputs(batch)
        rng = self.epoch_rng() if self.net.config.loss == "noisy_arcmix" else None
        with self.autocast():
            losses = self.net.loss(wav, mel, self._labels(batch), rng=rng)
        self.optimize(self.optimizer, losses["loss"].float(), clip_grad_norm=self.config.clip_grad_norm or None)
        return {k: float(v.detach()) for k, v in losses.items()}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """ArcFace loss (with margin) and accuracy on held-out training clips (no mixup)."""
        self.net.eval()
        wav, mel = self._inputs(batch)
        y = self._labels(batch)
        with torch.no_grad():
            out = self.net(wav, mel)
            loss = self.net.arcface.loss(out.embedding, y)
        return {"val_loss": float(loss), "val_accuracy": float((out.logits.argmax(1) == y).float().mean())}

    # -- inference --------------------------------------------------------------------------------------------
    def _known_of_type(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, C] bool: the known machine IDs of each clip's machine type (for ``unknown_id = "max_known"``).

        Raises:
            DataError: the batch lacks ``machine_type``, or a clip's machine type has no known ID.
        """
        if "machine_type" not in batch:
            raise DataError(f"{self.name}: unknown_id = 'max_known' needs each clip's machine_type in the batch")
        mts = torch.as_tensor(batch["machine_type"]).long().reshape(-1).tolist()
        mask = torch.zeros(len(mts), self.net.num_classes, dtype=torch.bool)
        for i, m in enumerate(mts):
            if m >= len(self.vocab.machine_type):
                raise DataError(f"{self.name}: a clip's machine type is not in training ({self.vocab.machine_type}); "
                                "no known machine ID to fall back to")
            for g in self.vocab.groups_of(self.vocab.machine_type[m]):
                mask[i, self.vocab.group.index(g)] = True
        return mask.to(self.device)

    def _score_labels(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """The class each clip is scored against [B]: its own machine ID, or, for a clip flagged unknown
        (``unknown_id = "max_known"``), the most probable known ID of its machine type."""
        y = self._labels(batch)
        unknown = batch.get("group" + UNKNOWN_SUFFIX)
        if unknown is None or not bool(torch.as_tensor(unknown).any()):
            return y
        unknown = torch.as_tensor(unknown, device=self.device).bool().reshape(-1)
        best = logits.detach().masked_fill(~self._known_of_type(batch), float("-inf")).argmax(dim=1)
        return torch.where(unknown, best, y)

    def _eval_forward(self, wav: torch.Tensor | None, mel: torch.Tensor) -> ClassifierOutput:
        """The network in eval mode without gradients, ``infer_chunk`` clips per pass (Config), outputs
        concatenated over the batch: the same numbers for a clip whatever batch it came in."""
        self.net.eval()
        k, n = self.config.infer_chunk, mel.shape[0]
        with torch.no_grad():
            if k == 0 or n <= k:
                return self.net(wav, mel)
            parts = [self.net(None if wav is None else wav[i:i + k], mel[i:i + k]) for i in range(0, n, k)]
        return ClassifierOutput(*(None if getattr(parts[0], f.name) is None
                                  else torch.cat([getattr(p, f.name) for p in parts])
                                  for f in dataclasses.fields(ClassifierOutput)))

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A(x) = −log p(y|x) of each clip's own machine ID: Tensor [B] float32 (issue 13). Needs ``group`` [B].

        With ``unknown_id = "max_known"`` a clip flagged unknown (``group:unknown``) gets −log max p(y'|x) over the
        known IDs y' of its machine type. With one machine ID in training the score is constant
        (:attr:`score_undefined_reason`).
        Raises:
            DataError: no ``group`` (or no ``waveform`` when TgramNet is on) in the batch.
        """
        wav, mel = self._inputs(batch)
        logits = self._eval_forward(wav, mel).logits.float()
        return anomaly_score(logits, self._score_labels(batch, logits)).cpu()

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The 128-d MobileFaceNet embedding [B, embedding_dim] of each clip."""
        wav, mel = self._inputs(batch)
        return self._eval_forward(wav, mel).embedding.float().cpu()

    def localize(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Anomaly map [B, n_mels, n_frames]: FGA's gate G in (0, 1) when ``fga`` is on, else |∂A/∂F_LM| of the
        score's class (the clip's own machine ID, or the fallback of :meth:`score`;
        :func:`~stethoscope.nn.classifiers.score_gradient_map`; needs ``group``)."""
        wav, mel = self._inputs(batch)
        out = self._eval_forward(wav, mel)
        if self.net.fga is not None:
            return out.gate.float().cpu()
        labels = self._score_labels(batch, out.logits.float())
        return score_gradient_map(self.net, wav, mel, labels).float().cpu()

    def extra_state(self) -> dict[str, Any]:
        return {"n_groups": self.n_groups}


def _registered(name: str, doc: str) -> type[MachineIDClassifierMethod]:
    cls = type(name, (MachineIDClassifierMethod,), {"name": name, "__doc__": doc,
                                                    "__module__": __name__, "__qualname__": name})
    return register(cls)


StgramMFN = _registered(
    "stgram_mfn", "STgram-MFN (Liu et al., ICASSP 2022): [F_LM, F_T] → MobileFaceNet, ArcFace (FGASpecNet Table 3).")
TASTgram = _registered(
    "tastgram", "TASTgram (Choi et al., ICASSP 2024): [F_LM, F_T, F_TA] → MobileFaceNet, Noisy-ArcMix (Table 3).")
FGASpecNet = _registered(
    "fgaspecnet", "FGASpecNet (2025): [F_LM, F_T, F_TA, F_S_enh] + FGA → MobileFaceNet, Noisy-ArcMix + SoftTriple.")
