"""dng_core: Dynamic Negative Guidance (Koulischer et al., ICLR 2025) in pure torch, free of any host.

Modules, in the order data flows through one step:
    parametrisation  how the sampler state relates to x0 and noise; the Gaussian reverse kernel
    path             the path estimator: the change of log p along the sampler's path (a divergence probe)
    posterior        PosteriorTracker: p(c- | x_t) per step: kernel ratio (Algorithm 2) or path, rate form
    pruning          ConceptPruner: stop predicting concepts whose posterior settled at the floor
    guidance         combine_guidance: D_u + s (D_pos - D_u) - sum_k lambda_k (D_neg_k - D_u)
    baselines        negative prompting and Safe Latent Diffusion over the same inputs
    run              DNGRun / NegativePromptRun / SLDRun: one sampling run, once-per-step state
    transmission     T(sigma): the push's scaling that matches deterministic to ancestral samplers
    trace            GuidanceTrace: per step and sample, JSON, bounded
    history          TraceHistory: recent runs, found again by their output latent
    plotting         plot_trace: the trace as an RGB image (matplotlib, Agg)
"""

from __future__ import annotations

from .baselines import SLD_PRESETS, SLDConfig, SLDState, negative_prompting, sld_denoised, sld_step
from .guidance import combine_guidance
from .history import TraceHistory, TraceLookup
from .plotting import PlottingUnavailable, plot_message, plot_trace
from .parametrisation import Parametrisation, ReverseKernel, reverse_kernel
from .path import PathPoint, path_log_odds_change
from .pruning import ConceptPruner, PruningPolicy
from .posterior import (MAX_RATE, PAPER_MODE, EvidencePath, PosteriorConfig, PosteriorForm, PosteriorTracker,
                        PosteriorVariance, compose_increment, guidance_scale, posterior_increment)
from .run import (LAMBDA0_MAX, DNGConfig, DNGRun, GuidedRun, NegativePromptRun, RunContinuation, SLDRun, StepAligner,
                  tensor_fingerprint)
from .trace import GuidanceTrace, StepRecord
from .transmission import DeterministicPush, StochasticPush, ode_to_sde_gain_ratio

__all__ = [
    "ConceptPruner", "DeterministicPush", "PruningPolicy", "EvidencePath", "MAX_RATE", "PAPER_MODE", "PathPoint", "PosteriorForm",
    "compose_increment", "path_log_odds_change",
    "DNGConfig", "DNGRun", "GuidanceTrace", "GuidedRun", "LAMBDA0_MAX", "NegativePromptRun", "Parametrisation",
    "PlottingUnavailable", "PosteriorConfig", "PosteriorTracker", "PosteriorVariance", "ReverseKernel",
    "RunContinuation", "SLDConfig", "SLDRun", "SLDState", "SLD_PRESETS", "StepAligner", "StepRecord", "StochasticPush", "TraceHistory",
    "TraceLookup", "combine_guidance", "guidance_scale", "negative_prompting", "plot_message", "plot_trace",
    "ode_to_sde_gain_ratio", "posterior_increment", "reverse_kernel", "sld_denoised", "sld_step", "tensor_fingerprint",
]
