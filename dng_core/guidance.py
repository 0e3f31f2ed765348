"""The DNG guidance rule for text-to-image (paper eq. 7 with a CFG term; docs/algorithm.md section 4).

    D = D_u + s (D_pos - D_u) - sum_k lambda_k (D_neg_k - D_u)

D_u: the unconditional (empty-prompt) prediction, D_pos: the positive prompt, D_neg_k: negative concept k,
s: the CFG scale, lambda_k: one scale per concept and batch element (lambda0 p / (1 - p) for DNG, a constant
for negative prompting). The weights sum to 1, so the rule reads the same on denoised images, noise
predictions or scores. With no positive prediction (unconditional generation) it is the paper's eq. 7 exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["combine_guidance", "check_scale_args"]


def _compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    # float32 inputs are combined in float64 so that finite inputs near the float32 range cannot overflow in an
    # intermediate sum; half types have ample headroom in float32. MPS has no float64.
    if dtype in (torch.float16, torch.bfloat16) or device.type == "mps":
        return torch.float32
    return torch.float64


def combine_guidance(
    denoised_uncond: torch.Tensor,
    denoised_pos: torch.Tensor | None,
    denoised_negs: Sequence[torch.Tensor],
    scales: torch.Tensor | Sequence[torch.Tensor | float],
    cfg_scale: float,
) -> torch.Tensor:
    """D_u + s (D_pos - D_u) - sum_k lambda_k (D_neg_k - D_u), per batch element.

    denoised_uncond, denoised_pos, denoised_negs[k]: [B, ...] of one shape.
    scales: [K, B] (or K scalars / [B] tensors), one row per negative concept.
    Computed in float64 (float32 for half-precision inputs) and returned in the input dtype, saturated to its
    finite range, so that finite predictions with a large lambda give a finite, if clipped, result.
    """
    ref = denoised_uncond
    if denoised_pos is not None and denoised_pos.shape != ref.shape:
        raise ValueError(f"denoised_pos has shape {tuple(denoised_pos.shape)}, expected {tuple(ref.shape)}")
    for k, d in enumerate(denoised_negs):
        if d.shape != ref.shape:
            raise ValueError(f"denoised_negs[{k}] has shape {tuple(d.shape)}, expected {tuple(ref.shape)}")
    if len(scales) != len(denoised_negs):
        raise ValueError(f"got {len(scales)} scales for {len(denoised_negs)} negative predictions")

    work = _compute_dtype(ref.dtype, ref.device)
    batch = ref.shape[0]
    view = (batch,) + (1,) * (ref.dim() - 1)
    d_u = ref.to(work)
    out = d_u.clone()
    if denoised_pos is not None:
        out += float(cfg_scale) * (denoised_pos.to(work) - d_u)
    for d_neg, scale in zip(denoised_negs, scales):
        lam = torch.as_tensor(scale, device=ref.device).to(work).reshape(-1)
        lam = lam.expand(batch) if lam.numel() == 1 else lam
        if lam.numel() != batch:
            raise ValueError(f"a scale row has {lam.numel()} values for a batch of {batch}")
        out -= lam.view(view) * (d_neg.to(work) - d_u)
    if ref.dtype.is_floating_point:
        limit = torch.finfo(ref.dtype).max
        out = out.clamp(-limit, limit)
    return out.to(ref.dtype)


def check_scale_args(name: str, value: float, maximum: float | None = None) -> None:
    """ValueError naming ``name`` unless 0 <= value (<= maximum) and finite."""
    ok = isinstance(value, (int, float)) and value == value and value >= 0 and value != float("inf")
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        bound = f"[0, {maximum}]" if maximum is not None else "[0, inf)"
        raise ValueError(f"{name} must be a finite number in {bound}, got {value!r}")
