"""How a sampler's state x relates to the clean image and the noise, and the Gaussian reverse kernel it implies.

ComfyUI hands guidance hooks the sampler state ``x``, the noise level ``sigma`` and denoised predictions ``D``
(estimates of x0). Two state conventions cover its model families:

* ``VARIANCE_EXPLODING``: ``x = x0 + sigma * eps``. ComfyUI uses it for eps-, v- and EDM-prediction models (SD1.x,
  SD2.x, SDXL); the network sees ``x / sqrt(1 + sigma^2)``, the DDPM (variance-preserving) state of the paper.
* ``RECTIFIED_FLOW``: ``x = (1 - t) x0 + t eps`` with ``sigma = t`` in [0, 1] (ComfyUI's CONST sampling: SD3, Flux).

Both are ``x = alpha(sigma) x0 + s(sigma) eps``. For a step sigma -> sigma' the DDPM reverse kernel
q(x' | x, x0 = D) (Kingma et al. 2021, "Variational Diffusion Models", eq. 32-33) is Gaussian with

    alpha_ts = alpha / alpha',          s2_ts = s^2 - alpha_ts^2 s'^2
    mean     = (alpha_ts s'^2 / s^2) x + (alpha' s2_ts / s^2) D
    variance = s2_ts s'^2 / s^2

For the variance-exploding state this is the paper's sigma-space form (docs/algorithm.md section 3):
mean = r x + (1 - r) D, variance = (sigma^2 - sigma'^2) sigma'^2 / sigma^2 with r = sigma'^2 / sigma^2.

For rectified flow the same formula holds with alpha = 1 - t, s = t: rescaling x_rf / (1 - t) gives the
variance-exploding state with sigma_ve = t / (1 - t), and the kernel above is that kernel mapped back by the
factor (1 - t'). It stays finite at t = 1 (alpha = 0: mean = (1 - t') D, variance = t'^2), where the rescaled
form would divide by zero. The likelihood ratio of two such kernels is invariant under the rescaling (the
Jacobian cancels), so the posterior evidence does not depend on which form is used.

The offset delta of the paper sits inside 1 / (2 sigma_t^2) with sigma_t^2 the variance in the model's *native*
space (the DDPM state for eps models). ``native_scale`` maps the state to that space, so that
delta / (2 variance_native) = delta / (2 native_scale'^2 variance). For the variance-exploding state
native_scale = 1 / sqrt(1 + sigma^2), which gives the (1 + sigma'^2) factor of docs/algorithm.md; rectified-flow
states are already native.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

__all__ = ["Parametrisation", "ReverseKernel", "reverse_kernel"]


class Parametrisation(str, enum.Enum):
    """The relation between the sampler state, the clean image and the noise (see the module docstring)."""

    VARIANCE_EXPLODING = "variance_exploding"
    RECTIFIED_FLOW = "rectified_flow"

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(alpha, s, native_scale)`` at noise level ``sigma`` (any shape, float64 recommended)."""
        if self is Parametrisation.VARIANCE_EXPLODING:
            one = torch.ones_like(sigma)
            return one, sigma, torch.rsqrt(1.0 + sigma * sigma)
        return 1.0 - sigma, sigma, torch.ones_like(sigma)

    def sigma_from_ve(self, sigma_ve: float) -> float:
        """The inverse of ``sigma_ve``: the model's own noise level (sigma, or t = s / (1 + s) for rectified flow)
        of the variance-exploding level ``sigma_ve``."""
        if self is Parametrisation.VARIANCE_EXPLODING:
            return float(sigma_ve)
        return float(sigma_ve) / (1.0 + float(sigma_ve)) if math.isfinite(sigma_ve) else 1.0

    def sigma_ve(self, sigma: float) -> float:
        """The variance-exploding noise level of the state at ``sigma``: sigma itself, or t / (1 - t) for
        rectified flow (infinite at t = 1)."""
        if self is Parametrisation.VARIANCE_EXPLODING:
            return float(sigma)
        alpha = 1.0 - float(sigma)
        return float(sigma) / alpha if alpha > 0 else float("inf")


@dataclass(frozen=True)
class ReverseKernel:
    """Coefficients of the Gaussian step x' ~ N(coef_x x + coef_d D, variance I); tensors of shape [B].

    ``native_variance_factor`` is native_scale'^2: variance_native = native_variance_factor * variance.
    """

    coef_x: torch.Tensor
    coef_d: torch.Tensor
    variance: torch.Tensor
    native_variance_factor: torch.Tensor


def reverse_kernel(
    sigma: torch.Tensor, sigma_next: torch.Tensor, parametrisation: Parametrisation
) -> ReverseKernel:
    """The reverse kernel for a step ``sigma -> sigma_next`` (tensors of shape [B]; see module docstring).

    ``variance`` is 0 where the step ends at sigma' = 0 or does not move; callers skip the update there.
    """
    alpha, s, _ = parametrisation.coefficients(sigma)
    alpha_n, s_n, native_n = parametrisation.coefficients(sigma_next)
    alpha_ts = alpha / alpha_n
    s2, s2_n = s * s, s_n * s_n
    s2_ts = (s2 - alpha_ts * alpha_ts * s2_n).clamp_min(0.0)
    safe_s2 = torch.where(s2 > 0, s2, torch.ones_like(s2))
    coef_x = alpha_ts * s2_n / safe_s2
    coef_d = alpha_n * s2_ts / safe_s2
    variance = torch.where(s2 > 0, s2_ts * s2_n / safe_s2, torch.zeros_like(s2))
    return ReverseKernel(coef_x, coef_d, variance, native_n * native_n)
