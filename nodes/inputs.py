"""Input definitions shared by the DNG patch, the one-node sampler and the guider (one place for tooltips)."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..dng_core import LAMBDA0_MAX, DNGConfig, PosteriorConfig, PosteriorVariance
from .schema import advanced

TraceHandle = io.Custom("DNG_TRACE")

# Defaults: the authors' CIFAR-10 setting (DNG_ALGORITHM.md section 5). Not tuned for Stable Diffusion.
_DEFAULTS = DNGConfig()


def dng_inputs() -> list[io.Input]:
    p = _DEFAULTS.posterior
    return [
        io.Float.Input("lambda0", default=_DEFAULTS.lambda0, min=0.0, max=LAMBDA0_MAX, step=0.1, round=0.001,
                       tooltip="Strength of the negative guidance (paper's lambda0). The scale applied at each "
                               "step is lambda0 * p / (1 - p), where p is the tracked probability that the "
                               "image contains the negative concept. 0 turns the negative guidance off."),
        io.Float.Input("prior", default=p.prior, min=1e-6, max=0.999, step=0.001, round=1e-6,
                       tooltip="Initial probability p0 that the negative concept is present; sets the scale "
                               "of the first step (lambda0 * p0 / (1 - p0)). Lower = guidance starts off."),
        io.Float.Input("temperature", default=p.temperature, min=1e-4, max=10.0, step=0.01, round=1e-4,
                       tooltip="Weight tau of each step's evidence. Lower = smoother, slower posterior; "
                               "higher = reacts faster but noisier. Paper: about 0.2."),
        io.Float.Input("offset", default=p.offset, min=-1.0, max=1.0, step=0.00001, round=1e-7, **advanced(),
                       tooltip="Per-step bias delta towards the concept (a time-dependent prior). Small "
                               "positive values (2e-4) let the posterior rise when both predictions agree; "
                               "0 disables it."),
        io.Float.Input("p_min", default=p.p_min, min=1e-9, max=0.5, step=1e-6, round=1e-9, **advanced(),
                       tooltip="Lower clamp of the posterior; keeps it able to recover. Must be below p_max."),
        io.Float.Input("p_max", default=p.p_max, min=0.5, max=0.999999, step=0.001, round=1e-6, **advanced(),
                       tooltip="Upper clamp of the posterior; bounds the scale at lambda0 * p_max / (1 - p_max) "
                               "(20 at the defaults)."),
        io.Combo.Input("posterior_variance", options=[v.value for v in PosteriorVariance],
                       default=PosteriorVariance.AUTO.value, **advanced(),
                       tooltip="How each step's evidence is normalised. 'kernel': the sampler's Gaussian "
                               "transition variance, exact for ancestral / SDE samplers (the paper). 'step': "
                               "(sigma - sigma_next)^2, a surrogate for deterministic samplers. 'auto' "
                               "(default): kernel for samplers that add noise, step for deterministic ones "
                               "(best on the pack's benchmark, docs/posterior_estimator.md)."),
    ]


def dng_config(lambda0: float, prior: float, temperature: float, offset: float, p_min: float, p_max: float,
               posterior_variance: str = PosteriorVariance.AUTO.value, **_: Any) -> DNGConfig:
    """The core config from node inputs; raises ValueError naming the input and the valid range."""
    return DNGConfig(lambda0, PosteriorConfig(prior, temperature, offset, p_min, p_max,
                                              PosteriorVariance(posterior_variance)))


def validate_dng_inputs(**kwargs: Any) -> bool | str:
    """validate_inputs for nodes taking dng_inputs(): cross-field rules the schema's min/max can't express."""
    keys = ("lambda0", "prior", "temperature", "offset", "p_min", "p_max")
    if any(k not in kwargs or kwargs[k] is None for k in keys):
        return True  # linked inputs are validated when they arrive (ValueError at execution)
    try:
        dng_config(**{k: kwargs[k] for k in keys},
                   posterior_variance=kwargs.get("posterior_variance") or PosteriorVariance.AUTO.value)
    except ValueError as err:
        return str(err)
    return True
