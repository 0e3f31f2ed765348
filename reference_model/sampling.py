"""Reference ancestral DDPM sampler (pure torch) with optional classifier-free guidance.

Respaced DDPM ("improved DDPM" respacing): pick ``steps`` timesteps tau_0 < ... < tau_{S-1} from 0..999, with
``abar_i = alphas_cumprod[tau_i]`` and ``abar_{-1} = 1``, and run the exact DDPM posterior step between them,

    x0_hat = (x - sqrt(1 - abar_i) eps) / sqrt(abar_i)
    x'     = sqrt(abar_{i-1}) beta_i / (1 - abar_i) x0_hat + sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i) x
             + sqrt(beta_i (1 - abar_{i-1}) / (1 - abar_i)) z,      alpha_i = abar_i / abar_{i-1}, beta_i = 1 - alpha_i

which is ComfyUI's ``euler_ancestral`` (eta = 1) written in VP coordinates. ``steps=1000`` is plain DDPM.
Guidance follows ComfyUI's CFG convention: ``eps = eps_null + scale (eps_cond - eps_null)``; scale 1 = plain
conditional, label ``null_label`` with scale 1 = unconditional.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .schedule import NUM_TIMESTEPS, alphas_cumprod

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_vp [B,C,H,W], t [B] float) -> eps


def respaced_timesteps(steps: int, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Ascending, unique integer timesteps (long) from 0 to num_timesteps - 1."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}]")
    ts = np.unique(np.round(np.linspace(0, num_timesteps - 1, steps)).astype(np.int64))
    return torch.from_numpy(ts)


def cfg_eps_fn(net: torch.nn.Module, labels: torch.Tensor, cfg_scale: float = 1.0,
               null_label: Optional[int] = None) -> EpsFn:
    """eps function for ``net(x, t, labels)`` with classifier-free guidance at ``cfg_scale`` (1 = none)."""
    null = net.null_label if null_label is None else null_label
    labels = torch.as_tensor(labels).long()

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        lab = labels.to(x.device).expand(x.shape[0]) if labels.numel() == 1 else labels.to(x.device)
        if cfg_scale == 1.0:
            return net(x, t, lab)
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([lab, torch.full_like(lab, null)]))
        e_c, e_u = both.chunk(2)
        e = e_u + cfg_scale * (e_c - e_u)
        return torch.where((lab == null).reshape(-1, *([1] * (x.ndim - 1))), e_u, e)

    return fn


@torch.no_grad()
def ddpm_sample(eps_fn: EpsFn, shape: tuple[int, ...], steps: int = 100, generator: Optional[torch.Generator] = None,
                x_T: Optional[torch.Tensor] = None, clip_denoised: bool = False, device: str | torch.device = "cpu",
                callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None) -> torch.Tensor:
    """Ancestral (respaced) DDPM from pure noise; returns x0 (not clamped) of ``shape``.

    ``callback(i, t, x0_hat)`` is called at every step (i counts down). Noise is drawn from ``generator`` (on CPU)
    so results are deterministic for a seeded generator.
    """
    ac = alphas_cumprod()
    ts = respaced_timesteps(steps)
    x = (torch.randn(shape, generator=generator) if x_T is None else x_T.cpu().float()).to(device)
    for i in range(len(ts) - 1, -1, -1):
        ab = float(ac[ts[i]])
        ab_prev = float(ac[ts[i - 1]]) if i > 0 else 1.0
        t = torch.full((shape[0],), float(ts[i]), device=device)
        eps = eps_fn(x, t)
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        if callback is not None:
            callback(i, t, x0)
        if i == 0:
            x = x0
            break
        alpha = ab / ab_prev
        beta = 1 - alpha
        mean = (ab_prev ** 0.5 * beta / (1 - ab)) * x0 + (alpha ** 0.5 * (1 - ab_prev) / (1 - ab)) * x
        var = beta * (1 - ab_prev) / (1 - ab)
        z = torch.randn(shape, generator=generator).to(device)
        x = mean + var ** 0.5 * z
    return x


@torch.no_grad()
def sample(net: torch.nn.Module, labels: torch.Tensor | int, n: Optional[int] = None, steps: int = 100,
           cfg_scale: float = 1.0, seed: int = 0, batch_size: int = 500, clip_denoised: bool = False,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """Draw samples from a reference denoiser: ``labels`` per sample (or one int with ``n``); returns [N, C, S, S]
    clamped to [-1, 1]. ``labels == net.null_label`` gives unconditional samples. Deterministic in ``seed``."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    if n is not None:
        labels = labels.expand(n) if labels.numel() == 1 else labels
    cfg = net.config
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(labels), batch_size):
        lab = labels[i:i + batch_size]
        fn = cfg_eps_fn(net, lab, cfg_scale)
        out.append(ddpm_sample(fn, (len(lab), cfg.in_channels, cfg.image_size, cfg.image_size), steps, g,
                               clip_denoised=clip_denoised, device=device).cpu())
    return torch.cat(out).clamp(-1, 1)
