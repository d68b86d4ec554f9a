"""Section-conditional normalizing flows: the NFCDEE density of WSP-NFCDEE (AITHU DCASE 2022 technical report, §3.2).

NFCDEE (normalizing-flow conditional density estimation; Lopez et al., DCASE 2021 Task 2) models the density of a
clip's feature vector x [D] conditioned on its section s, p(x | s), with a normalizing flow; the anomaly score is
the negative log-likelihood −log p(x | s). AITHU feeds it the weighted-statistic-pooled log-mel
(:mod:`stethoscope.nn.wsp`), D = n_mels.

The flow layers come from zuko (probabilists/zuko, pinned in requirements.txt): a masked autoregressive flow
(``"maf"``, Papamakarios et al., NeurIPS 2017) or a neural spline flow (``"nsf"``, Durkan et al., NeurIPS 2019),
whose conditioner networks take the section as context: a learned embedding (``context="embedding"``) or the one-hot
vector (``context="one_hot"``).

Before the flow, x is standardized with a fixed per-dimension affine map z = (x − loc) / scale (buffers, fitted once
on training vectors with :meth:`SectionConditionalFlow.fit_standardization`), and the change of variables is
applied, so :meth:`SectionConditionalFlow.log_prob` is the density of x itself:
log p(x | s) = log p_flow(z | s) − Σ_d log scale_d.

- :class:`SectionConditionalFlow`: x [B, D], section [B] → log p(x | s) [B].
- :class:`WSPFlow`: log-mel [B, M, T], section [B] → −log p(WSP(log-mel) | s) [B], WSP and flow trained together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive
from stethoscope.nn.wsp import WeightedStatisticPooling, WSPConfig

FLOWS = ("maf", "nsf")
CONTEXTS = ("embedding", "one_hot")


@dataclass(frozen=True)
class ConditionalFlowConfig:
    """A section-conditional flow. Every default here is *ours*: the AITHU report names NFCDEE but gives none of
    its sizes.

    Fields:
        features: D, the length of x (n_mels for WSP vectors).
        num_sections: classes of the condition (sections of the machine type; 1 = unconditional in effect).
        flow: "maf" (zuko.flows.MAF, affine autoregressive layers) or "nsf" (zuko.flows.NSF, rational-quadratic
            spline layers on [-5, 5] of the standardized input). Default "maf".
        transforms: autoregressive layers, 4. Consecutive layers reverse the feature order (zuko's default).
        hidden_features: hidden widths of each layer's masked MLP, (256, 256).
        context: "embedding" (a learned nn.Embedding of size ``embedding_dim``) or "one_hot" (num_sections wide).
        embedding_dim: size of the learned section embedding, 8.
        bins: spline bins of "nsf", 8 (zuko's default).
        min_scale: floor on the fitted standardization scale, 1e-6 (a constant dimension would divide by 0).

    Raises:
        ConfigError: unknown flow or context, a size < 1, or min_scale <= 0.
    """

    features: int
    num_sections: int
    flow: Literal["maf", "nsf"] = "maf"
    transforms: int = 4
    hidden_features: tuple[int, ...] = (256, 256)
    context: Literal["embedding", "one_hot"] = "embedding"
    embedding_dim: int = 8
    bins: int = 8
    min_scale: float = 1e-6

    def __post_init__(self) -> None:
        if self.flow not in FLOWS:
            raise ConfigError(f"ConditionalFlowConfig.flow = {self.flow!r}; expected one of {list(FLOWS)}")
        if self.context not in CONTEXTS:
            raise ConfigError(f"ConditionalFlowConfig.context = {self.context!r}; expected one of {list(CONTEXTS)}")
        require_positive(
            "ConditionalFlowConfig", features=self.features, num_sections=self.num_sections,
            transforms=self.transforms, embedding_dim=self.embedding_dim, bins=self.bins,
            **{f"hidden_features[{i}]": h for i, h in enumerate(self.hidden_features)},
        )
        if self.min_scale <= 0:
            raise ConfigError(f"ConditionalFlowConfig.min_scale = {self.min_scale}; expected > 0")
        object.__setattr__(self, "hidden_features", tuple(int(h) for h in self.hidden_features))

    @property
    def context_dim(self) -> int:
        return self.embedding_dim if self.context == "embedding" else self.num_sections


class SectionConditionalFlow(nn.Module):
    """p(x | section) with a zuko flow. x [B, D] (float), section [B] (int64 in 0..num_sections−1) → [B] (nats).

    Buffers ``loc`` / ``scale`` [D] standardize x (identity until :meth:`fit_standardization`); they are part of the
    state_dict.

    Raises (log_prob, nll):
        ValueError: x not [B, D], section not [B] integers, or a section outside 0..num_sections−1 (the message
            lists the offending values).
    """

    def __init__(self, config: ConditionalFlowConfig):
        super().__init__()
        import zuko  # late: only the modules that build a flow pay for the import

        self.config = c = config
        self.register_buffer("loc", torch.zeros(c.features))
        self.register_buffer("scale", torch.ones(c.features))
        self.embedding = nn.Embedding(c.num_sections, c.embedding_dim) if c.context == "embedding" else None
        kwargs = dict(transforms=c.transforms, hidden_features=c.hidden_features)
        if c.flow == "maf":
            self.flow = zuko.flows.MAF(c.features, c.context_dim, **kwargs)
        else:
            self.flow = zuko.flows.NSF(c.features, c.context_dim, bins=c.bins, **kwargs)

    @torch.no_grad()
    def fit_standardization(self, x: torch.Tensor) -> None:
        """Set ``loc`` / ``scale`` to the per-dimension mean and std (floored at min_scale) of training vectors
        x [N, D], N >= 2. Raises ValueError on a bad shape."""
        if x.ndim != 2 or x.shape[1] != self.config.features or x.shape[0] < 2:
            raise ValueError(f"fit_standardization expects [N >= 2, {self.config.features}], got {tuple(x.shape)}")
        self.set_standardization(x.mean(dim=0), x.std(dim=0))

    @torch.no_grad()
    def set_standardization(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Set ``loc`` / ``scale`` [D] from moments computed elsewhere (e.g. summed over training workers); the scale
        is floored at min_scale. Raises ValueError on a shape other than [D] or a non-finite value."""
        d = self.config.features
        loc, scale = torch.as_tensor(loc), torch.as_tensor(scale)
        if loc.shape != (d,) or scale.shape != (d,):
            raise ValueError(f"standardization loc / scale must be [{d}], got {tuple(loc.shape)} / {tuple(scale.shape)}")
        if not (bool(torch.isfinite(loc).all()) and bool(torch.isfinite(scale).all())):
            raise ValueError("standardization loc / scale hold non-finite values")
        self.loc.copy_(loc.to(self.loc))
        self.scale.copy_(scale.to(self.scale).clamp_min(self.config.min_scale))

    def context(self, section: torch.Tensor) -> torch.Tensor:
        """section [B] → the flow's context [B, context_dim]."""
        if self.embedding is not None:
            return self.embedding(section)
        return F.one_hot(section, self.config.num_sections).to(self.loc.dtype)

    def _check(self, x: torch.Tensor, section: torch.Tensor) -> None:
        d, k = self.config.features, self.config.num_sections
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"x must be [B, {d}], got shape {tuple(x.shape)}")
        if section.shape != (x.shape[0],) or section.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"section must be integer [B={x.shape[0]}], got {section.dtype} of shape {tuple(section.shape)}"
            )
        bad = (section < 0) | (section >= k)
        if bool(bad.any()):
            raise ValueError(f"section values {sorted(set(section[bad].tolist()))} outside 0..{k - 1} ({k} sections)")

    def log_prob(self, x: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
        """log p(x | section) [B] (nats), the change of variables through the standardization included."""
        self._check(x, section)
        section = section.long()
        z = (x - self.loc) / self.scale
        return self.flow(self.context(section)).log_prob(z) - torch.log(self.scale).sum()

    def nll(self, x: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
        """−log p(x | section) [B]: the NFCDEE anomaly score and, averaged, the training loss."""
        return -self.log_prob(x, section)


class WSPFlow(nn.Module):
    """WSP-NFCDEE's network: log-mel [B, M, T] and section [B] → −log p(WSP(log-mel) | section) [B] (nats).

    :class:`stethoscope.nn.wsp.WeightedStatisticPooling` (α, β trainable) feeds a :class:`SectionConditionalFlow`
    with D = M; both are trained together by minimising the mean NLL. ``fit_standardization(log_mel)`` sets the
    flow's standardization from training clips pooled with the current (α, β); it is not refitted as α moves
    (*ours*: a fixed affine map keeps the density exact, and α starts at 0.5).

    Note: the likelihood of y = α·mean + β·std is not invariant to (α, β) — the NLL also rewards a pooling whose
    vectors are more concentrated. That is the objective the report's Eq. 2 trains; the simplex keeps it bounded.
    """

    def __init__(self, flow_config: ConditionalFlowConfig, wsp_config: WSPConfig | None = None):
        super().__init__()
        self.wsp = WeightedStatisticPooling(wsp_config)
        self.density = SectionConditionalFlow(flow_config)

    @torch.no_grad()
    def fit_standardization(self, log_mel: torch.Tensor) -> None:
        """Fit the flow's standardization on training log-mels [N, M, T] (N >= 2)."""
        self.density.fit_standardization(self.wsp(log_mel))

    def forward(self, log_mel: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
        return self.density.nll(self.wsp(log_mel), section)

    def nll_of_statistics(self, stats: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
        """The same NLL [B] from precomputed WSP statistics [B, 2, M] (:meth:`WeightedStatisticPooling.statistics`)."""
        return self.density.nll(self.wsp.combine(stats), section)
