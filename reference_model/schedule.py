"""DDPM noise schedule, bit-for-bit the one ComfyUI builds for the reference models.

ComfyUI's ``ModelSamplingDiscrete`` with ``sampling_settings = SAMPLING_SETTINGS`` calls
``make_beta_schedule("sqrt_linear", 1000, linear_start=1e-4, linear_end=0.02)``, which is

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)

(ComfyUI's ``"linear"`` would be the Stable-Diffusion *scaled* linear schedule, ``linspace(sqrt(a), sqrt(b)) ** 2``;
the classic DDPM linear schedule is ComfyUI's ``"sqrt_linear"``.) Then ``alphas_cumprod = cumprod(1 - betas)`` in
float64, ``sigmas = sqrt((1 - alphas_cumprod) / alphas_cumprod)`` stored as float32, and ``log_sigmas =
sigmas.log().float()`` taken from the float64 sigmas. A float timestep t in [0, 999] maps to sigma by linear interpolation of
log-sigma between floor(t) and ceil(t); that is what :func:`sigma_at` reproduces.

The network sees the variance-preserving state ``x_vp = x_ve / sqrt(1 + sigma^2) = sqrt(abar) x0 + sqrt(1 - abar)
eps`` with ``abar = 1 / (1 + sigma^2)``.
"""

from __future__ import annotations

import torch

NUM_TIMESTEPS = 1000
LINEAR_START = 1e-4
LINEAR_END = 0.02
BETA_SCHEDULE = "sqrt_linear"  # ComfyUI's name for the DDPM linear-in-beta schedule
#: ComfyUI ``model_config.sampling_settings`` for the reference denoisers.
SAMPLING_SETTINGS = {"beta_schedule": BETA_SCHEDULE, "linear_start": LINEAR_START, "linear_end": LINEAR_END}


def betas(n: int = NUM_TIMESTEPS, linear_start: float = LINEAR_START, linear_end: float = LINEAR_END) -> torch.Tensor:
    """float64 ``[n]``: ``torch.linspace(linear_start, linear_end, n, dtype=float64)`` (ComfyUI ``sqrt_linear``)."""
    return torch.linspace(linear_start, linear_end, n, dtype=torch.float64)


def alphas_cumprod(n: int = NUM_TIMESTEPS, linear_start: float = LINEAR_START, linear_end: float = LINEAR_END) -> torch.Tensor:
    """float64 ``[n]``: ``cumprod(1 - betas)``; index 0 is ``1 - linear_start``."""
    return torch.cumprod(1.0 - betas(n, linear_start, linear_end), dim=0)


def sigmas_f64() -> torch.Tensor:
    """float64 VE sigmas ``sqrt((1 - abar) / abar)`` (before ComfyUI's cast to float32)."""
    ac = alphas_cumprod()
    return ((1.0 - ac) / ac) ** 0.5


def comfy_sigmas() -> torch.Tensor:
    """float32 ``[1000]``: exactly ComfyUI's ``ModelSamplingDiscrete.sigmas`` buffer (sigma_min ~0.0100, sigma_max ~157.4)."""
    return sigmas_f64().float()


def comfy_log_sigmas() -> torch.Tensor:
    """float32 ``[1000]``: exactly ComfyUI's ``ModelSamplingDiscrete.log_sigmas`` buffer (log of the float64 sigmas,
    then cast; not the log of the float32 ``sigmas``, which differs in the last bit)."""
    return sigmas_f64().log().float()


def _interp_log_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    t = torch.clamp(t.to(log_sigmas.dtype), min=0, max=len(log_sigmas) - 1)
    lo = t.floor().long()
    hi = t.ceil().long()
    w = t - t.floor()
    return (1 - w) * log_sigmas[lo] + w * log_sigmas[hi]


def sigma_at(t: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """VE sigma for a (float) timestep, as ComfyUI's ``ModelSamplingDiscrete.sigma(t)``.

    ``exact=False`` (default) uses ComfyUI's float32 log-sigma table, so the result equals ComfyUI's to the bit;
    ``exact=True`` interpolates the float64 table instead (used for training targets).
    """
    t = torch.as_tensor(t)
    ls = sigmas_f64().log() if exact else comfy_log_sigmas()
    return _interp_log_sigma(t, ls.to(t.device)).exp()


def timestep_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``ModelSamplingDiscrete.timestep(sigma)``: index of the nearest log-sigma (an integer, as float)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    ls = comfy_log_sigmas().to(sigma.device)
    dists = sigma.log() - ls[:, None]
    return dists.abs().argmin(dim=0).view(sigma.shape).float()


def alpha_bar_at(t: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """``abar(t) = 1 / (1 + sigma(t)^2)`` for float t (equals ``alphas_cumprod[t]`` at integer t when exact)."""
    s = sigma_at(t, exact=exact)
    return 1.0 / (1.0 + s * s)


def vp_to_ve(x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ComfyUI latent (VE) from the network's VP input: ``x_ve = x_vp * sqrt(1 + sigma^2)``."""
    return x_vp * (1.0 + sigma.reshape(-1, *([1] * (x_vp.ndim - 1))) ** 2) ** 0.5


def ve_to_vp(x_ve: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """What ComfyUI's EPS ``calculate_input`` feeds the network: ``x_vp = x_ve / sqrt(1 + sigma^2)``."""
    return x_ve / (1.0 + sigma.reshape(-1, *([1] * (x_ve.ndim - 1))) ** 2) ** 0.5
