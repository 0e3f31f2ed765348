"""Baselines over the same inputs as DNG: negative prompting and Safe Latent Diffusion.

Negative prompting, paper form (docs/algorithm.md section 6): eps = eps_u - lambda (eps_c - eps_u) with lambda
constant, plus the CFG term in text-to-image; the same rule as DNG with a fixed scale.

Safe Latent Diffusion (Schramowski et al. 2023), as diffusers' StableDiffusionPipelineSafe implements it, per
element, with eps_u the unconditional (empty) prediction, eps_p the prompt, eps_S the safety concept:

    mu      = where(eps_p - eps_S >= threshold, 0, clamp(|eps_p - eps_S| * s_S, max=1))
    gamma   = mu * (eps_S - eps_u) + s_m * nu
    nu     <- beta_m * nu + (1 - beta_m) * gamma           (momentum accrues during warm-up too)
    eps     = eps_u + s_g * ((eps_p - eps_u) - gamma)       after ``warmup`` steps, else without gamma

SLD thresholds noise predictions element-wise, which does not commute with the sigma scaling between noise and
denoised images; ``sld_denoised`` converts to noise predictions and back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from .guidance import combine_guidance
from .parametrisation import Parametrisation

__all__ = ["negative_prompting", "SLDConfig", "SLD_PRESETS", "SLDState", "sld_step", "sld_denoised"]


def negative_prompting(
    denoised_uncond: torch.Tensor,
    denoised_pos: torch.Tensor | None,
    denoised_negs: Sequence[torch.Tensor],
    scale: float,
    cfg_scale: float,
) -> torch.Tensor:
    """D_u + s (D_pos - D_u) - scale * sum_k (D_neg_k - D_u): the paper's negative prompting, constant scale."""
    return combine_guidance(denoised_uncond, denoised_pos, denoised_negs, [scale] * len(denoised_negs), cfg_scale)


@dataclass(frozen=True)
class SLDConfig:
    """Safe Latent Diffusion hyperparameters (diffusers names in brackets).

    warmup:         steps before the safety term is applied [sld_warmup_steps]
    guidance_scale: s_S, element-wise safety scale [sld_guidance_scale]
    threshold:      elements with eps_p - eps_S >= threshold get no safety guidance [sld_threshold]
    momentum_scale: s_m [sld_momentum_scale];  momentum_beta: beta_m in [0, 1) [sld_mom_beta]
    """

    warmup: int = 10
    guidance_scale: float = 1000.0
    threshold: float = 0.01
    momentum_scale: float = 0.3
    momentum_beta: float = 0.4

    def __post_init__(self) -> None:
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        for name in ("guidance_scale", "momentum_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold!r}")
        if not (math.isfinite(self.momentum_beta) and 0.0 <= self.momentum_beta < 1.0):
            raise ValueError(f"momentum_beta must be in [0, 1), got {self.momentum_beta!r}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# Presets of the SLD paper / diffusers (warmup, s_S, threshold, s_m, beta_m); "paper_class_removal" is the
# setting the DNG paper tuned for class removal (Appendix C.2, warm-up not stated there: 0 used).
SLD_PRESETS: dict[str, SLDConfig] = {
    "weak": SLDConfig(15, 20.0, 0.0, 0.0, 0.0),
    "medium": SLDConfig(10, 1000.0, 0.01, 0.3, 0.4),
    "strong": SLDConfig(7, 2000.0, 0.025, 0.5, 0.7),
    "max": SLDConfig(0, 5000.0, 1.0, 0.5, 0.7),
    "paper_class_removal": SLDConfig(0, 100.0, 0.04, 0.1, 0.2),
}


@dataclass
class SLDState:
    """The per-run state of SLD: the momentum nu ([B, ...] or None before the first step) and the step count."""

    momentum: torch.Tensor | None = None
    step: int = 0


def sld_step(
    eps_uncond: torch.Tensor,
    eps_pos: torch.Tensor | None,
    eps_safety: torch.Tensor,
    cfg_scale: float,
    config: SLDConfig,
    state: SLDState,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SLD step on noise predictions [B, ...]; advances ``state``.

    Returns (guided eps, effective safety scale [B]): s_g * mean(mu) when the safety term is applied, else 0,
    the number the trace records. With ``eps_pos`` None (unconditional models) the prompt term is zero.
    """
    work = torch.float64 if eps_uncond.dtype == torch.float64 else torch.float32
    e_u = eps_uncond.to(work)
    e_s = eps_safety.to(work)
    e_p = e_u if eps_pos is None else eps_pos.to(work)
    guidance = e_p - e_u
    gap = e_p - e_s
    mu = torch.where(gap >= config.threshold, torch.zeros_like(gap), (gap.abs() * config.guidance_scale).clamp(max=1.0))
    if state.momentum is None:
        state.momentum = torch.zeros_like(guidance)
    gamma = mu * (e_s - e_u) + config.momentum_scale * state.momentum.to(work)
    state.momentum = config.momentum_beta * state.momentum.to(work) + (1.0 - config.momentum_beta) * gamma
    active = state.step >= config.warmup
    state.step += 1
    dims = tuple(range(1, mu.dim()))
    if active:
        guidance = guidance - gamma
        effective = float(cfg_scale) * mu.mean(dim=dims)
    else:
        effective = torch.zeros(mu.shape[0], dtype=work, device=mu.device)
    eps = e_u + float(cfg_scale) * guidance
    return eps.to(eps_uncond.dtype), effective


def sld_denoised(
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    denoised_uncond: torch.Tensor,
    denoised_pos: torch.Tensor | None,
    denoised_safety: torch.Tensor,
    cfg_scale: float,
    config: SLDConfig,
    state: SLDState,
    parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SLD on denoised predictions [B, ...] at state x and noise level sigma; returns (denoised, scale [B]).

    eps = (x - alpha D) / s with (alpha, s) of the parametrisation; sigma = 0 has no noise to guide and returns
    the CFG combination unchanged.
    """
    batch = x.shape[0]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    sig = torch.as_tensor(sigma, device=x.device, dtype=work).reshape(-1)
    sig = sig.expand(batch) if sig.numel() == 1 else sig
    alpha, s, _ = parametrisation.coefficients(sig)
    view = (batch,) + (1,) * (x.dim() - 1)
    alpha, s = alpha.view(view), s.view(view)
    if bool((s <= 0).any()):
        plain = combine_guidance(denoised_uncond, denoised_pos, [], [], cfg_scale)
        return plain, torch.zeros(batch, dtype=work, device=x.device)
    xw = x.to(work)

    def to_eps(d: torch.Tensor) -> torch.Tensor:
        return (xw - alpha * d.to(work)) / s

    eps, effective = sld_step(to_eps(denoised_uncond), None if denoised_pos is None else to_eps(denoised_pos),
                              to_eps(denoised_safety), cfg_scale, config, state)
    out = (xw - s * eps.to(work)) / alpha.clamp_min(torch.finfo(work).tiny)
    return out.to(denoised_uncond.dtype), effective
