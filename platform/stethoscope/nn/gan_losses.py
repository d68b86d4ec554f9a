"""Generic GAN losses shared by the adversarial methods: the WGAN critic loss, the WGAN-GP gradient penalty and
feature matching.

- :func:`wgan_critic_loss`: ``E[D(x̂)] − E[D(x)]`` (Arjovsky et al., ICML 2017; the L_adv of TLDiffGAN's Eq. 2 and
  of AEGAN-AD's Eq. 5).
- :func:`gradient_penalty`: ``λ · E[(‖∇_x̃ D(x̃)‖₂ − 1)²]`` on random interpolations x̃ of real and generated samples
  (Gulrajani et al., NeurIPS 2017, Eq. 3; TLDiffGAN's λ_GP·L_GP, Eq. 2).
- :func:`feature_matching_loss`: ``‖f(x) − f(x̂)‖²`` on a discriminator's deep features, either on the batch means of
  the features (Salimans et al., NeurIPS 2016, §3.1: "matching the statistics") or clip by clip (TLDiffGAN's L_stat,
  Eq. 1; AEGAN-AD's feature-matching term, Eq. 6, is the batch-mean form).

Nothing here knows a network: a critic is any callable ``[N, ...] → [N]`` (or ``[N, 1]``).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

FEATURE_MATCHING_MODES = ("mean", "paired")


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss ``mean(D(x̂)) − mean(D(x))`` (the critic minimises it).

    Args:
        real_scores: critic values of real samples, [N] or [N, 1].
        fake_scores: critic values of generated samples, [M] or [M, 1] (M may differ from N).
    Returns:
        scalar tensor.
    Raises:
        ValueError: an empty score tensor.
    """
    if real_scores.numel() == 0 or fake_scores.numel() == 0:
        raise ValueError("wgan_critic_loss: empty score tensor")
    return fake_scores.mean() - real_scores.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    gp_lambda: float = 10.0,
    alpha: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP gradient penalty ``λ · mean_i (‖∇_x̃ D(x̃_i)‖₂ − 1)²``, ``x̃_i = α_i·real_i + (1 − α_i)·fake_i``.

    Source: Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017, Eq. 3 and Algorithm 1
    (λ = 10 there, in AEGAN-AD's Eq. 5 and in TLDiffGAN's Eq. 2). Both inputs are detached: the penalty trains the
    critic only. The gradient is taken with ``create_graph=True`` so the penalty is differentiable with respect to
    the critic's parameters.

    Args:
        critic: ``[N, ...] → [N]`` or ``[N, 1]`` critic values; each output must depend on its own input only (no
            batch statistics: no BatchNorm in a critic trained with this penalty).
        real, fake: [N, ...] of one shape (e.g. log-mels [N, F, T]).
        gp_lambda: λ (≥ 0).
        alpha: [N] (or any tensor of N elements) interpolation weights in [0, 1]; default U(0, 1) per sample, drawn
            with ``generator`` (torch's global generator when None).
        generator: torch.Generator on ``real``'s device for the α draw.
    Returns:
        scalar tensor.
    Raises:
        ValueError: real and fake differ in shape, an empty batch, alpha of the wrong size or gp_lambda < 0.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    n = real.shape[0]
    if n == 0:
        raise ValueError("gradient_penalty: empty batch")
    if gp_lambda < 0:
        raise ValueError(f"gradient_penalty: gp_lambda = {gp_lambda}; expected >= 0")
    shape = (n,) + (1,) * (real.ndim - 1)
    if alpha is None:
        alpha = torch.rand(shape, device=real.device, dtype=real.dtype, generator=generator)
    elif alpha.numel() != n:
        raise ValueError(f"gradient_penalty: alpha has {alpha.numel()} elements; expected one per sample ({n})")
    alpha = alpha.reshape(shape).to(device=real.device, dtype=real.dtype)
    between = torch.lerp(fake.detach(), real.detach(), alpha).requires_grad_(True)
    values = critic(between).reshape(n)
    (grad,) = torch.autograd.grad(values.sum(), between, create_graph=True)
    slope = grad.flatten(1).norm(p=2, dim=1)
    return gp_lambda * (slope - 1.0).square().mean()


def feature_matching_loss(
    real_features: torch.Tensor, fake_features: torch.Tensor, mode: Literal["mean", "paired"] = "mean"
) -> torch.Tensor:
    """Squared distance between a discriminator's deep features of real and generated samples.

    - ``"mean"``: ``mean_d (E_i f(x_i)_d − E_i f(x̂_i)_d)²`` — the batch statistics are matched (Salimans et al.
      2016, §3.1; AEGAN-AD Eq. 6). N and M may differ.
    - ``"paired"``: ``mean_i mean_d (f(x_i)_d − f(x̂_i)_d)²`` — each reconstruction x̂_i against its own input x_i.

    Both are means over the feature dimensions (not sums), so the scale does not grow with the feature size.

    Args:
        real_features: [N, ...] features of real samples (flattened after the batch dimension).
        fake_features: [M, ...] features of generated samples, the same size per sample.
        mode: "mean" or "paired".
    Returns:
        scalar tensor.
    Raises:
        ValueError: unknown mode, features of different sizes, or N != M for "paired".
    """
    if mode not in FEATURE_MATCHING_MODES:
        raise ValueError(f"feature_matching_loss: mode {mode!r}; expected one of {list(FEATURE_MATCHING_MODES)}")
    real = real_features.flatten(1)
    fake = fake_features.flatten(1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"feature_matching_loss: real features have {real.shape[1]} values per sample, fake {fake.shape[1]}"
        )
    if mode == "mean":
        return (real.mean(dim=0) - fake.mean(dim=0)).square().mean()
    if real.shape[0] != fake.shape[0]:
        raise ValueError(
            f"feature_matching_loss: 'paired' needs as many fakes as reals, got {real.shape[0]} and {fake.shape[0]}"
        )
    return (real - fake).square().mean()
