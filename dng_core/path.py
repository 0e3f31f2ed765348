"""The path estimator: the change of log p(c- | x, sigma) along whatever path the sampler takes.

The posterior of the concept is a function of the state, ``l(x, sigma) = log p_sigma(x | c-) - log p_sigma(x) +
log p(c-)``, so along any path its change is a total derivative. In the variance-exploding state
(x = x0 + sigma eps), Tweedie's formula ``grad_x log p_sigma(x | k) = (D_k - x) / sigma^2`` and the heat
equation ``d/dsigma p_sigma = sigma laplacian p_sigma`` give (docs/step_invariance.md):

    dl = (D_c - D_u) . dx / sigma^2
         + dsigma [ (|D_c - x|^2 - |D_u - x|^2) / sigma^3 + (div D_c - div D_u) / sigma ]

(D_c: the concept's prediction, D_u: the unconditional one, div: the trace of the denoiser's Jacobian in x).
Integrated over one step with the trapezoid rule it needs the two predictions at both ends of the step, which
the sampler makes anyway, and the divergence difference, which needs a probe: one Hutchinson sample
``eps . [(D_c(x + h eps) - D_c(x)) - (D_u(x + h eps) - D_u(x))] / h`` with a Rademacher eps (two more
predictions per step). The trapezoid rule is the Stratonovich form of the chain rule, so the same sum is
consistent on stochastic (ancestral, SDE) paths as on deterministic ones: unlike the paper's kernel likelihood
ratio it does not assume the step was drawn from the Gaussian reverse kernel. On the exact Gaussian-mixture
toys it follows the exact posterior to 3e-4 at 20 euler steps, converging as 1 / steps
(tests/core/test_path_estimator_toy.py).

Rectified-flow states (x = (1 - t) x0 + t eps) are mapped to the variance-exploding ones first:
x_ve = x / alpha, sigma_ve = t / (1 - t); the predictions D are estimates of x0 in both, and since
x = alpha x_ve, a divergence taken in the state x converts as div_ve D = alpha div_x D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .parametrisation import Parametrisation

__all__ = ["PathPoint", "PROBE_STEP", "PROBE_SEED", "probe_direction", "probe_offset", "divergence_difference",
           "divergence_noise_bound", "path_log_odds_change", "path_noise_variance", "euler_coefficients",
           "offset_trust_radius", "clamp_offset"]

#: Finite-difference step of the divergence probe, relative to the noise level (h = PROBE_STEP * sigma_ve in
#: the variance-exploding state): small next to sigma, where the denoiser is smooth, large next to float32's
#: resolution of x.
PROBE_STEP = 0.01


def _ve(sigma: float, parametrisation: Parametrisation) -> tuple[float, float]:
    """(alpha, sigma_ve) of the state at noise level ``sigma``: x_ve = x / alpha."""
    if parametrisation is Parametrisation.RECTIFIED_FLOW:
        alpha = 1.0 - sigma
        return alpha, (sigma / alpha if alpha > 0 else float("inf"))
    return 1.0, sigma


#: Seed of the probe directions (their own stream: the sampler's noise is left alone).
PROBE_SEED = 0x444E47


def probe_direction(shape: torch.Size | tuple[int, ...], step: int, seed: int = PROBE_SEED) -> torch.Tensor:
    """A Rademacher direction (+-1 per element) for the probe of sampling step ``step``, drawn on the CPU.

    Each image of the batch gets its own stream, seeded by (seed, step, its index in the batch): an image's
    direction, and so its guidance, does not depend on how many images share the batch, as ComfyUI's own
    initial noise does not (image i of a batch of 4 is image i of a batch of 64), and a step that is evaluated
    twice draws the same direction."""
    shape = tuple(shape)
    bits = torch.empty(shape, dtype=torch.int8)
    gen = torch.Generator()
    base = (seed * 1_000_003 + step) * 1_000_033
    for i in range(shape[0]):
        # distinct, well-mixed seeds per (step, image); stays below 2**63 for manual_seed. Drawn in place and
        # converted once: the per-image draws cost Python overhead, which dominates on large batches of small
        # images (the toys' 20,000 one-dimensional samples).
        gen.manual_seed(base + i)
        torch.randint(0, 2, shape[1:], generator=gen, dtype=torch.int8, out=bits[i])
    return bits.to(torch.float32) * 2.0 - 1.0


def probe_offset(sigma: float, parametrisation: Parametrisation) -> float:
    """The probe's step h in the sampler's state: PROBE_STEP * sigma_ve in the VE state, times alpha."""
    alpha, sigma_ve = _ve(sigma, parametrisation)
    return PROBE_STEP * sigma_ve * alpha


def divergence_difference(eps: torch.Tensor, h: float, d_c: torch.Tensor, d_u: torch.Tensor,
                          d_c_probe: torch.Tensor, d_u_probe: torch.Tensor, sigma: float,
                          parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING) -> torch.Tensor:
    """One Hutchinson sample of div D_c - div D_u in the VE state, shape [B] (float64).

    eps: the probe direction; h: the step taken in the sampler's state (x_probe = x + h eps); d_*_probe: the
    predictions at x_probe. E[eps eps^T] = I makes eps . J eps an unbiased sample of the trace of J."""
    delta = _probe_change(d_c, d_u, d_c_probe, d_u_probe)
    alpha, _ = _ve(sigma, parametrisation)
    dims = tuple(range(1, delta.dim()))
    return (eps.to(delta) * delta).sum(dim=dims) * (alpha / h)


def divergence_noise_bound(h: float, d_c: torch.Tensor, d_u: torch.Tensor, d_c_probe: torch.Tensor,
                           d_u_probe: torch.Tensor, sigma: float,
                           parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING) -> torch.Tensor:
    """An estimate of an upper bound on the variance of ``divergence_difference``'s sample, shape [B] (float64).

    The probe's change g = (D_c(x + h eps) - D_c(x)) - (D_u(x + h eps) - D_u(x)) is h A eps (A = J_c - J_u, to
    first order in h). For a Rademacher eps the Hutchinson sample eps . A eps has variance
    sum_{i != j} (A_ij^2 + A_ij A_ji) <= 2 ||A||_F^2 (Cauchy-Schwarz on the cross terms), and
    E |A eps|^2 = tr(A^T A) = ||A||_F^2, so 2 |g|^2 / h^2 estimates the bound without bias, from the two
    predictions the probe made anyway. In the VE state A scales by alpha, the bound by alpha^2."""
    delta = _probe_change(d_c, d_u, d_c_probe, d_u_probe)
    alpha, _ = _ve(sigma, parametrisation)
    dims = tuple(range(1, delta.dim()))
    return 2.0 * (delta * delta).sum(dim=dims) * (alpha / h) ** 2


def _probe_change(d_c: torch.Tensor, d_u: torch.Tensor, d_c_probe: torch.Tensor,
                  d_u_probe: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if d_c.device.type != "mps" else torch.float32
    return (d_c_probe.to(dtype) - d_c.to(dtype)) - (d_u_probe.to(dtype) - d_u.to(dtype))


@dataclass(frozen=True)
class PathPoint:
    """What the path estimator needs at one point of the path: the first model call of a step.

    x: the sampler state [B, ...]; sigma: its noise level; d_c, d_u: the concept's and the unconditional
    predictions at x (unguided); div_diff: div D_c - div D_u in the VE state, [B]; div_var: a bound on the
    variance of div_diff's one-probe sample (``divergence_noise_bound``), [B], or None where it is not known."""

    x: torch.Tensor
    sigma: float
    d_c: torch.Tensor
    d_u: torch.Tensor
    div_diff: torch.Tensor
    div_var: torch.Tensor | None = None

    def terms(self, parametrisation: Parametrisation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """(x_ve, gradient (D_c - D_u) / sigma^2, d l / d sigma at fixed x, sigma_ve), flattened to [B, n]."""
        dtype = torch.float64 if self.x.device.type != "mps" else torch.float32
        alpha, s = _ve(self.sigma, parametrisation)
        x = self.x.to(dtype).flatten(1) / alpha
        d_c, d_u = self.d_c.to(dtype).flatten(1), self.d_u.to(dtype).flatten(1)
        grad = (d_c - d_u) / (s * s)
        a, b = d_c - x, d_u - x
        d_sigma = ((a * a).sum(1) - (b * b).sum(1)) / s ** 3 + self.div_diff.to(dtype) / s
        return x, grad, d_sigma, s


def path_log_odds_change(start: PathPoint, end: PathPoint,
                         parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING) -> torch.Tensor:
    """The change of log p(c- | x) from ``start`` to ``end`` (trapezoid rule over the identity above), [B].

    0 where either end has no noise left (sigma_ve = 0 or infinite): the identity divides by sigma, and at
    sigma = 0 the last step carries no evidence in the paper's estimator either."""
    a_ok = 0.0 < _ve(start.sigma, parametrisation)[1] < float("inf")
    b_ok = 0.0 < _ve(end.sigma, parametrisation)[1] < float("inf")
    if not (a_ok and b_ok):
        return torch.zeros(start.x.shape[0], dtype=torch.float64 if start.x.device.type != "mps" else torch.float32,
                           device=start.x.device)
    x0, g0, h0, s0 = start.terms(parametrisation)
    x1, g1, h1, s1 = end.terms(parametrisation)
    change = 0.5 * ((g0 + g1) * (x1 - x0)).sum(1) + 0.5 * (h0 + h1) * (s1 - s0)
    return torch.nan_to_num(change, nan=0.0)


def path_noise_variance(start: PathPoint, end: PathPoint,
                        parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING) -> torch.Tensor:
    """This step's share of a bound on the variance that the probes add to the summed log-odds change, [B].

    The probe at point k enters two steps' changes, with coefficients a_k = 0.5 (s_k - s_k-1) / s_k (as the end
    of one) and b_k = 0.5 (s_k+1 - s_k) / s_k (as the start of the next); the probes are independent, so the
    run's sum has variance sum_k (a_k + b_k)^2 v_k <= sum_k 2 (a_k^2 + b_k^2) v_k. Giving each step the two
    terms of its own ends, 0.5 (s1 - s0)^2 (v0 / s0^2 + v1 / s1^2), makes the steps' shares add up to that bound
    at any step count. 0 where an end has no noise level or no ``div_var``."""
    dtype = torch.float64 if start.x.device.type != "mps" else torch.float32
    zeros = torch.zeros(start.x.shape[0], dtype=dtype, device=start.x.device)
    _, s0 = _ve(start.sigma, parametrisation)
    _, s1 = _ve(end.sigma, parametrisation)
    if start.div_var is None or end.div_var is None or not (0.0 < s0 < math.inf and 0.0 < s1 < math.inf):
        return zeros
    v0, v1 = start.div_var.to(zeros), end.div_var.to(zeros)
    return torch.nan_to_num(0.5 * (s1 - s0) ** 2 * (v0 / s0 ** 2 + v1 / s1 ** 2), nan=0.0)


def euler_coefficients(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(r, c) of an euler step x' = r x + c D from sigma to sigma_next in the sampler's state: r = sigma' / sigma,
    c = 1 - sigma' / sigma, in the variance-exploding state (x' = x + (sigma' - sigma) (x - D) / sigma) and in the
    rectified-flow one alike (there sigma is t). (1, 0) where the step starts without noise."""
    if not (sigma > 0.0 and math.isfinite(sigma)):
        return 1.0, 0.0
    r = sigma_next / sigma
    return r, 1.0 - r


def offset_trust_radius(sigma: float, parametrisation: Parametrisation, trust: float) -> float:
    """How far from x the one-sided evidence may read the state without DNG's pushes: trust * sigma_ve in the
    VE state (alpha trust sigma_ve in the sampler's), inf where ``trust`` is 0 (no bound).

    The path estimator reads log p(c- | x~) at x~ = x + offset, the state without the pushes, with the
    predictions made at the pushed x: the first-order reading l(x~) ~ l(x) + grad l(x) . offset. Tweedie's
    formula gives grad_x D_k = Cov(x0 | x, k) / sigma^2, so the Hessian of l = log p(x | c-) - log p(x) is
    (Cov(x0 | x, c-) - Cov(x0 | x)) / sigma^4, and the reading's error is half of offset . Hessian . offset.
    Where the posterior over x0 is no wider than the noise, 0 <= Cov <= sigma^2 I (any Gaussian component at
    any sigma: s^2 sigma^2 / (s^2 + sigma^2) <= sigma^2; a data manifold at low noise: sigma^2 times a
    projection), the error is at most |offset|^2 / (2 sigma^2) nats: within trust^2 / 2 nats while |offset| <=
    trust * sigma. Beyond it the linear reading grows without bound: on mnist16 (euler, 20 steps) pushes at
    p_max carried an offset of norm 10-80 at sigma < 1 (the image's own norm is <= 16), read as up to 4752 nats
    for the concept on one step, which held the image at p_max until the push destroyed it
    (docs/step_invariance.md, Session 14)."""
    alpha, sigma_ve = _ve(sigma, parametrisation)
    if not trust > 0:
        return math.inf
    return trust * sigma_ve * alpha


def clamp_offset(offset: torch.Tensor, radius: float) -> torch.Tensor:
    """``offset`` ([K, B, ...]: per concept and image) with each row's norm scaled down to at most ``radius``
    (its direction kept: the reading stays first-order along the push it discounts)."""
    if not math.isfinite(radius):
        return offset
    dtype = torch.float64 if offset.device.type != "mps" else torch.float32  # MPS has no float64
    norms = offset.flatten(2).to(dtype).norm(dim=2)  # [K, B]
    factor = (radius / norms.clamp_min(1e-300)).clamp(max=1.0).to(offset.dtype)
    return offset * factor.reshape(factor.shape + (1,) * (offset.dim() - 2))
