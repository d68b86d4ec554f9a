"""Mixtures of diagonal Gaussians as a network output: the IMDN loss (AITHU DCASE 2022 technical report, §3.2, Eq. 3-4).

A mixture density network (Bishop 1994) predicts, for each input, C components over D dimensions (D = mel bins):
weights π_c (softmax of logits), means μ_c [D] and standard deviations σ_c [D]. The density of a target x [D] is

    p(x) = Σ_c π_c · Π_d N(x_d; μ_cd, σ_cd²)                                                         (Eq. 3)

and the loss is its negative log-likelihood, computed in log-sum-exp form so that no density is ever exponentiated:

    L(x) = −logsumexp_c [ log π_c + Σ_d ( −½((x_d − μ_cd)/σ_cd)² − log σ_cd − ½ log 2π ) ]          (Eq. 4)

- :func:`diagonal_gmm_log_prob` / :func:`diagonal_gmm_nll`: Eq. 3-4 on given parameters.
- :func:`diagonal_gmm_marginal_nll`: −log of each dimension's marginal density (an anomaly map over the mel bins).
- :class:`MixtureHead`: a flat feature [N, H] → ``MixtureParams`` (logits [N, C], means [N, C, D], log_scales [N, C, D]).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stethoscope.errors import ConfigError
from stethoscope.nn._checks import require_positive

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class MixtureParams(NamedTuple):
    """Parameters of N mixtures of C diagonal Gaussians over D dimensions.

    logits [N, C]: unnormalised log weights (π = softmax(logits)); means [N, C, D]; log_scales [N, C, D]: log σ.
    """

    logits: torch.Tensor
    means: torch.Tensor
    log_scales: torch.Tensor


def _check(x: torch.Tensor, params: MixtureParams) -> None:
    logits, means, log_scales = params
    if x.ndim != 2:
        raise ValueError(f"target must be [N, D], got shape {tuple(x.shape)}")
    n, d = x.shape
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"logits must be [N={n}, C], got shape {tuple(logits.shape)}")
    c = logits.shape[1]
    for name, t in (("means", means), ("log_scales", log_scales)):
        if tuple(t.shape) != (n, c, d):
            raise ValueError(f"{name} must be [N, C, D] = [{n}, {c}, {d}], got shape {tuple(t.shape)}")


def _log_normal_per_dim(x: torch.Tensor, params: MixtureParams) -> torch.Tensor:
    """log N(x_d; μ_cd, σ_cd²) per component and dimension: x [N, D] → [N, C, D] (shapes checked first)."""
    _check(x, params)
    _, means, log_scales = params
    z = (x.unsqueeze(1) - means) * torch.exp(-log_scales)
    return -0.5 * z.square() - log_scales - _HALF_LOG_2PI


def diagonal_gmm_log_prob(x: torch.Tensor, params: MixtureParams) -> torch.Tensor:
    """log p(x) under each row's mixture (Eq. 3, in log-sum-exp form). x [N, D] → [N] (nats).

    Raises:
        ValueError: shapes that do not agree (the message names the tensor and the expected shape).
    """
    component = _log_normal_per_dim(x, params).sum(dim=2)  # log N(x; μ_c, σ_c²) [N, C]
    return torch.logsumexp(F.log_softmax(params.logits, dim=1) + component, dim=1)


def diagonal_gmm_nll(x: torch.Tensor, params: MixtureParams) -> torch.Tensor:
    """The IMDN loss of Eq. 4: −log p(x) [N] (nats). Average it for a batch loss, or over a clip's windows for its
    anomaly score. Raises ValueError as :func:`diagonal_gmm_log_prob`."""
    return -diagonal_gmm_log_prob(x, params)


def diagonal_gmm_marginal_nll(x: torch.Tensor, params: MixtureParams) -> torch.Tensor:
    """−log p(x_d) under each dimension's marginal, x [N, D] → [N, D] (nats).

    The marginal of a diagonal mixture over dimension d is the 1-D mixture Σ_c π_c · N(x_d; μ_cd, σ_cd²) with the
    same weights; computed in log-sum-exp form. With one component the D values sum to :func:`diagonal_gmm_nll`;
    with several they do not (the components' weights couple the dimensions). Raises ValueError as
    :func:`diagonal_gmm_log_prob`.
    """
    per_dim = _log_normal_per_dim(x, params)
    return -torch.logsumexp(F.log_softmax(params.logits, dim=1).unsqueeze(2) + per_dim, dim=1)


class MixtureHead(nn.Module):
    """[N, in_features] → :class:`MixtureParams` of ``n_components`` diagonal Gaussians over ``dim`` dimensions.

    Two linear maps from the same input: ``params`` (in_features → 2·C·D: the means and the scales, the output size
    of the last layer of AITHU's Table 6) and ``weights`` (in_features → C: the mixture logits). Table 6's last layer
    has 2·nC·nMels outputs, which covers means and variances only; the C weights come from this second, separate
    linear map over the same input (*ours*).

    σ = ``min_scale`` + softplus(raw) (*ours*: a floor keeps a component from collapsing onto one point, where the
    NLL would run to −∞); ``log_scales`` = log σ.

    Raises:
        ConfigError: a size < 1, or min_scale <= 0.
    """

    def __init__(self, in_features: int, n_components: int, dim: int, min_scale: float = 1e-3):
        super().__init__()
        require_positive("MixtureHead", in_features=in_features, n_components=n_components, dim=dim)
        if min_scale <= 0:
            raise ConfigError(f"MixtureHead.min_scale = {min_scale}; expected > 0")
        self.n_components, self.dim, self.min_scale = n_components, dim, float(min_scale)
        self.params = nn.Linear(in_features, 2 * n_components * dim)
        self.weights = nn.Linear(in_features, n_components)

    def forward(self, h: torch.Tensor) -> MixtureParams:
        n = h.shape[0]
        raw = self.params(h).view(n, 2, self.n_components, self.dim)
        scales = self.min_scale + F.softplus(raw[:, 1])
        return MixtureParams(self.weights(h), raw[:, 0], torch.log(scales))
