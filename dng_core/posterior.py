"""Tracking p_t(c- | x_t) across a sampler's steps (paper Appendix B, eq. 8-10 and Algorithm 2).

The posterior of the negative concept is a running sum of log-likelihood ratios of the sampler's transitions
under the concept-conditioned and the unconditional model:

    log p_{t-1} = log p_t + ( -tau * diff + delta' ) / (2 variance)                       (Algorithm 2)
    diff        = ||x' - mu_neg||^2 - ||x' - mu_uncond||^2   summed over all dimensions, not normalised
    mu_k        = coef_x x + coef_d D_k                        the reverse kernel (see parametrisation.py)
    delta'      = delta / native_scale'^2                     so delta means what it means in the paper

kept in log space and clamped to [log p_min, log p_max]. ``variance`` is the kernel variance; where it is 0
(the last step, sigma' = 0) there is no new evidence and the posterior stays. The guidance scale is
lambda = lambda0 * p / (1 - p) (eq. 7), bounded through p_max.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, replace

import torch

from .parametrisation import Parametrisation, reverse_kernel

__all__ = ["PosteriorConfig", "PosteriorVariance", "PosteriorTracker", "posterior_increment", "guidance_scale"]


class PosteriorVariance(str, enum.Enum):
    """Which variance normalises the evidence of one step.

    ``KERNEL``: the Gaussian reverse-kernel variance, as in the paper. Exact for ancestral (eta = 1) steps.
    ``STEP``: the surrogate (sigma_ve - sigma_ve')^2 (in the native space), used by third-party SD scripts for
    deterministic samplers, where x' is not a draw from the kernel and the kernel variance over-weights the
    (small) drift evidence of late steps.
    ``AUTO``: ``KERNEL`` for stochastic samplers, ``STEP`` for deterministic ones (see ``resolve``).
    """

    KERNEL = "kernel"
    STEP = "step"
    #: ``KERNEL`` for samplers whose steps inject fresh noise, ``STEP`` for deterministic ones; chosen on the
    #: reference-model benchmark (docs/posterior_estimator.md). Resolved per run (``resolve``); where the
    #: sampler is unknown it acts as ``KERNEL``, the paper's estimator.
    AUTO = "auto"

    def resolve(self, stochastic: bool | None) -> "PosteriorVariance":
        """The concrete estimator for a sampler that injects noise (True), does not (False) or is unknown."""
        if self is not PosteriorVariance.AUTO:
            return self
        return PosteriorVariance.STEP if stochastic is False else PosteriorVariance.KERNEL


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be a probability strictly between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class PosteriorConfig:
    """Hyperparameters of the posterior (paper Appendix C.1). Defaults: the authors' CIFAR-10 setting.

    prior:       p0, the posterior before any evidence; lambda starts at lambda0 * p0 / (1 - p0).
    temperature: tau > 0, scales the evidence of each step; lower = smoother, slower to react.
    offset:      delta, a per-step bias towards the concept ("a time-dependent prior"); 0 to disable.
    p_min/p_max: clamp of the posterior, 0 < p_min < p_max < 1; p_max bounds lambda.
    variance:    which variance normalises the evidence (see PosteriorVariance).
    """

    prior: float = 0.01
    temperature: float = 0.2
    offset: float = 2e-4
    p_min: float = 1e-6
    p_max: float = 0.8
    variance: PosteriorVariance = PosteriorVariance.KERNEL

    def __post_init__(self) -> None:
        _check_probability("prior", self.prior)
        _check_probability("p_min", self.p_min)
        _check_probability("p_max", self.p_max)
        if not self.p_min < self.p_max:
            raise ValueError(f"p_min must be smaller than p_max, got p_min={self.p_min!r} >= p_max={self.p_max!r}")
        if not self.p_min <= self.prior <= self.p_max:
            raise ValueError(
                f"prior must lie in [p_min, p_max] = [{self.p_min!r}, {self.p_max!r}], got {self.prior!r}"
            )
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not (isinstance(self.offset, (int, float)) and math.isfinite(self.offset)):
            raise ValueError(f"offset must be a finite number, got {self.offset!r}")
        object.__setattr__(self, "variance", PosteriorVariance(self.variance))

    def resolved(self, stochastic: bool | None) -> "PosteriorConfig":
        """This config with ``variance`` AUTO replaced by the estimator for the run's sampler."""
        variance = self.variance.resolve(stochastic)
        return self if variance is self.variance else replace(self, variance=variance)

    def as_dict(self) -> dict[str, float | str]:
        out = asdict(self)
        out["variance"] = self.variance.value
        return out


def _work_dtype(device: torch.device) -> torch.dtype:
    # Squared distances summed over a whole latent overflow float16 and lose the evidence in float32 when the
    # two predictions nearly agree; float64 is exact enough and cheap next to a UNet call. MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _as_batch(value: torch.Tensor | float, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(value, device=device, dtype=dtype).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"sigma must be a scalar or have one value per batch element ({batch}), got {t.numel()}")
    return t


def posterior_increment(
    x: torch.Tensor,
    x_next: torch.Tensor,
    denoised_neg: torch.Tensor,
    denoised_uncond: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    config: PosteriorConfig,
    parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING,
) -> torch.Tensor:
    """The change of log p(c- | x) over one step ``x -> x_next``; shape [B], float64 (float32 on MPS).

    x, x_next, denoised_neg, denoised_uncond: [B, ...] (the *unguided* predictions at x).
    Returns 0 where the step carries no evidence (kernel variance 0: sigma' = 0 or sigma' = sigma).
    """
    _check_same_shape(x=x, x_next=x_next, denoised_neg=denoised_neg, denoised_uncond=denoised_uncond)
    batch = x.shape[0]
    dtype = _work_dtype(x.device)
    s = _as_batch(sigma, batch, x.device, dtype)
    s_next = _as_batch(sigma_next, batch, x.device, dtype)
    kernel = reverse_kernel(s, s_next, parametrisation)

    view = (batch,) + (1,) * (x.dim() - 1)
    # x' - mu_u and mu_neg - mu_u = coef_d (D_neg - D_u); diff = |a - b|^2 - |a|^2 = |b|^2 - 2 a.b avoids
    # subtracting two large, nearly equal squared norms.
    residual = (x_next.to(dtype) - kernel.coef_x.view(view) * x.to(dtype)
                - kernel.coef_d.view(view) * denoised_uncond.to(dtype))
    shift = kernel.coef_d.view(view) * (denoised_neg.to(dtype) - denoised_uncond.to(dtype))
    dims = tuple(range(1, x.dim()))
    diff = (shift * shift).sum(dim=dims) - 2.0 * (residual * shift).sum(dim=dims)

    if config.variance is not PosteriorVariance.STEP:  # KERNEL, or AUTO for an unknown sampler
        variance = kernel.variance
    else:
        # (sigma_ve - sigma_ve')^2 in the state's units: sigma_ve = s / alpha, mapped by alpha'.
        alpha, s_, _ = parametrisation.coefficients(s)
        alpha_n, s_n, _ = parametrisation.coefficients(s_next)
        ve = s_ / alpha.clamp_min(torch.finfo(dtype).tiny)
        ve_n = s_n / alpha_n
        variance = torch.where(kernel.variance > 0, (alpha_n * (ve - ve_n)) ** 2, torch.zeros_like(ve))
    offset = config.offset / kernel.native_variance_factor
    has_evidence = variance > 0
    safe_variance = torch.where(has_evidence, variance, torch.ones_like(variance))
    increment = (-config.temperature * diff + offset) / (2.0 * safe_variance)
    increment = torch.where(has_evidence, increment, torch.zeros_like(increment))
    # A tiny variance can make the increment +-inf; the clamp of log p absorbs that, NaN it could not.
    return torch.nan_to_num(increment, nan=0.0)


def guidance_scale(log_p: torch.Tensor, lambda0: float) -> torch.Tensor:
    """lambda = lambda0 * p / (1 - p) from log p (eq. 7); p / (1 - p) = 1 / expm1(-log p), exact near p -> 0."""
    return lambda0 / torch.expm1(-log_p)


class PosteriorTracker:
    """One posterior p(c- | x_t) per batch element, in log space, starting at the prior.

    ``update`` folds in one step's evidence and clamps; ``scale`` gives the guidance scale to use at the next
    step (the staggering of Appendix B: the scale at step i comes from the posterior after step i-1).
    """

    def __init__(self, config: PosteriorConfig, batch_size: int, device: torch.device | str = "cpu",
                 parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = config
        self.parametrisation = Parametrisation(parametrisation)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._log_bounds = (math.log(config.p_min), math.log(config.p_max))
        self.log_p = torch.empty(0)
        self.updates = 0
        self.reset()

    def reset(self) -> None:
        """Back to the prior (every sampling run starts here)."""
        self.log_p = torch.full((self.batch_size,), math.log(self.config.prior),
                                dtype=_work_dtype(self.device), device=self.device)
        self.updates = 0

    @property
    def p(self) -> torch.Tensor:
        """The posterior, shape [B]."""
        return self.log_p.exp()

    def scale(self, lambda0: float) -> torch.Tensor:
        """lambda = lambda0 * p / (1 - p), shape [B]."""
        return guidance_scale(self.log_p, lambda0)

    def propose(self, x: torch.Tensor, x_next: torch.Tensor, denoised_neg: torch.Tensor,
                denoised_uncond: torch.Tensor, sigma: torch.Tensor | float,
                sigma_next: torch.Tensor | float) -> torch.Tensor:
        """The log posterior after the step ``x -> x_next``, without committing it. Shape [B]."""
        inc = posterior_increment(x, x_next, denoised_neg, denoised_uncond, sigma, sigma_next,
                                  self.config, self.parametrisation)
        if inc.shape[0] != self.batch_size:
            raise ValueError(f"predictions have batch size {inc.shape[0]}, the tracker {self.batch_size}")
        return (self.log_p + inc.to(self.log_p)).clamp(*self._log_bounds)

    def commit(self, log_p: torch.Tensor) -> None:
        """Accept a log posterior returned by ``propose`` as this step's update."""
        self.log_p = log_p
        self.updates += 1

    def update(self, x: torch.Tensor, x_next: torch.Tensor, denoised_neg: torch.Tensor,
               denoised_uncond: torch.Tensor, sigma: torch.Tensor | float,
               sigma_next: torch.Tensor | float) -> torch.Tensor:
        """Fold in one step's evidence (Algorithm 2); returns the new posterior p, shape [B]."""
        self.commit(self.propose(x, x_next, denoised_neg, denoised_uncond, sigma, sigma_next))
        return self.p


def _check_same_shape(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    ref_name, ref = items[0]
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)} like {ref_name}")
        if t.dim() < 1 or t.shape[0] < 1:
            raise ValueError(f"{name} must have a batch dimension [B, ...], got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf; DNG needs finite predictions")
