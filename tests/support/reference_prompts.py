"""API prompts for the pack's reference digits model (offline: no checkpoint files involved)."""

from __future__ import annotations

from devtools.dng_defaults import chain_concepts
from tests.support.prompts import DNG_DEFAULTS


def reference_prompt(*, model_name="digits8", batch_size=64, seed=0, steps=30, sampler="euler_ancestral",
                     scheduler="normal", negative_digit="0", method="dng", cfg=1.0, **params) -> dict:
    """Unconditional generation (positive = empty label) with ``method`` removing ``negative_digit``.

    Ids: "1" loader, "2" empty label, "3" negative digit, "4" empty latent, "10" the patch (absent for
    method="plain"), "5" KSampler, "6" image grid, "11" trace plot.
    """
    p = {
        "1": {"class_type": "DNGReferenceModelLoader", "inputs": {"model_name": model_name}},
        "2": {"class_type": "DNGDigitConditioning", "inputs": {"digit": "empty (unconditional)"}},
        "3": {"class_type": "DNGDigitConditioning", "inputs": {"digit": negative_digit}},
        "4": {"class_type": "DNGEmptyDigitLatent", "inputs": {"model": ["1", 0], "batch_size": batch_size}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "DNGDigitsToImage", "inputs": {"samples": ["5", 0], "columns": 8, "scale": 4}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    if method == "plain":  # no guidance away from the digit: the negative is the empty label as well
        p["5"]["inputs"]["negative"] = ["2", 0]
        return p
    node, inputs = {
        "dng": ("DynamicNegativeGuidance", {**DNG_DEFAULTS, **params}),
        "np": ("DNGNegativePrompting", {"scale": 0.5, **params}),
        "sld": ("DNGSafeLatentDiffusion", {"preset": "paper_class_removal", "warmup": 0, "safety_scale": 100.0,
                                           "threshold": 0.04, "momentum_scale": 0.1, "momentum_beta": 0.2,
                                           **params}),
    }[method]
    p["10"] = {"class_type": node, "inputs": {"model": ["1", 0], "empty_conditioning": ["2", 0], **inputs}}
    p["5"]["inputs"]["model"] = ["10", 0]
    p["11"] = {"class_type": "DNGTracePlot", "inputs": {"trace": ["10", 1], "latent": ["5", 0], "log_scale": False,
                                                       "save_json": False, "filename_prefix": "dng_trace",
                                                       "width": 256, "height": 256}}
    return p


def add_concepts(p: dict, digits: list[str], lambda0s: list[float] | None = None, node: str = "10") -> dict:
    """Chain a DNG Concept node per digit into ``node``'s more_concepts (devtools.dng_defaults.chain_concepts)."""
    return chain_concepts(p, [{"class_type": "DNGDigitConditioning", "inputs": {"digit": d}} for d in digits],
                          [f"digit {d}" for d in digits], lambda0s, node)
