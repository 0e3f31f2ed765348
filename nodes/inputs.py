"""Input definitions shared by the DNG patch, the one-node sampler and the guider (one place for tooltips)."""

from __future__ import annotations

import math
from typing import Any

from comfy_api.latest import io

from dataclasses import dataclass

from ..dng_core import (LAMBDA0_MAX, DeterministicPush, StochasticPush, DNGConfig, EvidencePath, PosteriorConfig, PosteriorForm,
                        PosteriorVariance, PruningPolicy)
from .schema import advanced

TraceHandle = io.Custom("DNG_TRACE")
ConceptsHandle = io.Custom("DNG_CONCEPTS")


@dataclass(frozen=True)
class NegativeConcept:
    """One more concept to remove (a DNG Concept node): its conditioning, its own lambda0 (None: the DNG node's)
    and a name for the trace."""

    conditioning: Any
    lambda0: float | None = None
    label: str = ""


def concepts_inputs() -> list[io.Input]:
    """The optional inputs for concepts beyond the negative prompt, and pruning."""
    return [
        ConceptsHandle.Input("more_concepts", optional=True,
                             tooltip="More concepts to remove, from a chain of DNG Concept nodes: each gets its own "
                                     "posterior per image and its own lambda0. The negative prompt stays the "
                                     "first concept. All are predicted in the same batched model call."),
        io.Boolean.Input("prune_concepts", default=True, optional=True, **advanced(),
                         tooltip="Stop predicting a concept for an image once its posterior has settled far "
                                 "below the prior (it would barely guide any more); re-checked every 8 steps. "
                                 "Saves up to one model prediction per concept and step when the concept is "
                                 "absent. Off: every concept is predicted at every step."),
    ]


def concept_list(negative_label: str, more_concepts: Any) -> tuple[list[NegativeConcept], list[str]]:
    """The concepts after the negative prompt (from the DNG_CONCEPTS input) and the labels of all of them."""
    more = list(more_concepts or ())
    for c in more:
        if not isinstance(c, NegativeConcept):
            raise ValueError(f"more_concepts must come from DNG Concept nodes, got {type(c).__name__}")
    labels = [negative_label] + [c.label or f"concept {k + 2}" for k, c in enumerate(more)]
    return more, labels


def pruning_policy(prune_concepts: bool | None) -> PruningPolicy | None:
    return PruningPolicy() if prune_concepts is None or prune_concepts else None

EMPTY_CONDITIONING_TOOLTIP = ("The unconditional prompt: CLIPTextEncode with an empty text. DNG measures the "
                              "negative concept against it, so it must not contain the concept.")


def empty_conditioning_input() -> io.Input:
    """The ``empty_conditioning`` input of every node that guides with a negative concept."""
    return io.Conditioning.Input("empty_conditioning", tooltip=EMPTY_CONDITIONING_TOOLTIP)

# Defaults: dng_core's DNGConfig(), chosen on the reference models' defaults grid (benchmarks/results/
# defaults_grid.md): one setting for ancestral, SDE and deterministic samplers at 20 and 50 steps. Not verified on
# Stable Diffusion.
_DEFAULTS = DNGConfig()
VERIFIED_ON = ("Measured on the pack's digit reference models (euler, euler_ancestral, dpmpp_2m, dpmpp_2m_sde; 20 "
               "and 50 steps); not verified on Stable Diffusion.")

# The schema ranges of the posterior's bounds. validate_inputs reads these three for its cross-field rule
# (p_min < prior < p_max), and the host then leaves their range checks to it (it skips its own checks for every
# input validate_inputs takes), so the ranges live here, used by both.
POSTERIOR_RANGES = {"prior": (1e-6, 0.999), "p_min": (1e-9, 0.5), "p_max": (0.5, 0.999999)}


def dng_inputs() -> list[io.Input]:
    p = _DEFAULTS.posterior
    return [
        io.Float.Input("lambda0", default=_DEFAULTS.lambda0, min=0.0, max=LAMBDA0_MAX, step=0.1, round=0.001,
                       tooltip="Strength of the negative guidance (paper's lambda0). The scale applied at each "
                               "step is lambda0 * p / (1 - p), where p is the tracked probability that the "
                               "image contains the negative concept; p starts tiny (prior), so lambda0 is large. "
                               "On the pack's 8x8 digit model the default removed the concept on ancestral, SDE "
                               "and deterministic samplers at 20 and 50 steps (at most 0.1 % of it left; "
                               "the late push on both: below sigma 2 s only, at 6 x lambda0 on samplers that add "
                               "noise and 16 x lambda0 on deterministic ones). "
                               + VERIFIED_ON + " 0 turns the negative guidance off."),
        # step 1e-4: the frontend snaps a value to a multiple of the step (3e-4 would become the minimum at 0.001)
        io.Float.Input("prior", default=p.prior, min=POSTERIOR_RANGES["prior"][0], max=POSTERIOR_RANGES["prior"][1],
                       step=0.0001, round=1e-6,
                       tooltip="Initial probability p0 that the negative concept is present; sets the scale "
                               "of the first step (lambda0 * p0 / (1 - p0)). Lower = guidance starts off, and "
                               "unrelated images change less."),
        io.Float.Input("temperature", default=p.temperature, min=1e-4, max=10.0, step=0.01, round=1e-4,
                       tooltip="Weight tau of each step's evidence (the paper's range is 0 to 1; 1 = the "
                               "estimator's own posterior). Lower = smoother, slower posterior; higher = reacts "
                               "faster."),
        io.Float.Input("offset", default=p.offset, min=-10.0, max=10.0, step=0.01, round=1e-7, **advanced(),
                       tooltip="Bias towards the concept (a time-dependent prior): in the 'rate' form, nats of "
                               "log p added per e-fold of noise removed, the same at any step count; in the "
                               "'paper' form, the paper's per-step delta (e.g. 2e-4). 0 disables it."),
        io.Float.Input("p_min", default=p.p_min, min=POSTERIOR_RANGES["p_min"][0], max=POSTERIOR_RANGES["p_min"][1],
                       step=1e-6, round=1e-9, **advanced(),
                       tooltip="Lower clamp of the posterior; keeps it able to recover. Must be below p_max."),
        io.Float.Input("p_max", default=p.p_max, min=POSTERIOR_RANGES["p_max"][0], max=POSTERIOR_RANGES["p_max"][1],
                       step=0.001, round=1e-6, **advanced(),
                       tooltip="Upper clamp of the posterior; bounds the scale at lambda0 * p_max / (1 - p_max) "
                               "(300 at the defaults), times the late push's gain below sigma 2 s (6 on samplers "
                               "that add noise, 16 x up to 2 on deterministic ones), held within sigma."),
        io.Combo.Input("posterior_variance", options=[v.value for v in PosteriorVariance],
                       default=PosteriorVariance.AUTO.value, **advanced(),
                       tooltip="The estimator of each step's evidence. 'kernel': the likelihood ratio of the "
                               "sampler's Gaussian transition, exact for ancestral / SDE samplers (the paper). "
                               "'path': the change of the posterior along the path the sampler took, exact for "
                               "deterministic samplers too; costs 2 more model predictions per step (5 instead "
                               "of 3). 'step': a surrogate variance, for comparison. 'auto' (default): kernel "
                               "for samplers that add noise, path for deterministic ones (docs/step_invariance.md)."),
        # optional: prompts and workflows saved before it existed keep validating (they get the default)
        io.Combo.Input("posterior_form", options=[f.value for f in PosteriorForm], default=p.form.value,
                       optional=True, **advanced(),
                       tooltip="'rate' (default): offset and the bound on how fast p may rise are rates per "
                               "e-fold of noise, so one setting means the same at any step count. 'paper': the "
                               "paper's Algorithm 2 exactly (per-step offset, no bound)."),
    ]


def evidence_inputs() -> list[io.Input]:
    """The posterior's evidence path, the deterministic push scaling and the stochastic samplers' late push; last
    in the schema (after prune_concepts), so the widget values of workflows saved before they existed keep their
    positions."""
    return [
        io.Combo.Input("evidence", options=[e.value for e in EvidencePath],
                       default=_DEFAULTS.posterior.evidence.value, optional=True, **advanced(),
                       tooltip="What the posterior reads at each step. 'one_sided' (default): the step the "
                               "sampler took with DNG's own push taken back out, and CFG's extrapolation counted "
                               "only where it points away from the concept (where it points towards it, the step "
                               "the positive prompt alone would make at cfg 1); p rises to p_max where the "
                               "positive pulls towards the concept by more than half of the concept's own pull "
                               "and falls to p_min where it does not. 'sampled' (the paper): the step the sampler "
                               "took, DNG's own push included; p then settles where that push balances the "
                               "positive's pull, which can leave the image half-way to the concept. "
                               "'uncorrected': without DNG's push, with CFG's extrapolation; at a high cfg even a "
                               "small shared direction of positive and negative lifts p to p_max. 'unguided': "
                               "without either (the cfg-1 step); slower to switch off for unrelated images. "
                               "Measured on the pack's digit and shapes models only "
                               "(benchmarks/results/defaults_grid.md, composition_timing.md)."),
        io.Combo.Input("deterministic_push", options=[v.value for v in DeterministicPush],
                       default=_DEFAULTS.deterministic_push.value, optional=True, **advanced(),
                       tooltip="How the guidance acts on deterministic samplers (euler, dpmpp_2m, heun, ...). "
                               "'matched': scaled by 2 s / sqrt(s^2 + sigma^2) at noise level sigma (s: the "
                               "model's sigma_data, 1 for SD and flow models), so that a push moves the final "
                               "image as far as the same push on an ancestral sampler (derivation: "
                               "dng_core/transmission.py); weaker than the raw push at high noise, up to 2x at "
                               "the last steps. 'late' (default): the matched push only below sigma 2 s, where "
                               "the posterior has told images with the concept from those without, at 16 x "
                               "lambda0 and held within sigma, like stochastic_push 'late'. On the 16x16 digit "
                               "model's euler cell it left 0.7-0.95 % of the concept where 'matched' left "
                               "1.1-2.3 %, and changed unrelated images less; on the 8x8 one both removed it "
                               "(docs/step_invariance.md, Session 22). 'raw': unscaled, at every noise level. "
                               "Ancestral / SDE samplers and posterior_form 'paper' are never scaled. Measured on "
                               "the pack's digit models only (benchmarks/results/defaults_grid.md)."),
        io.Combo.Input("stochastic_push", options=[v.value for v in StochasticPush],
                       default=_DEFAULTS.stochastic_push.value, optional=True, **advanced(),
                       tooltip="Where the guidance acts on samplers that add noise (euler_ancestral, "
                               "dpmpp_2m_sde, ...). 'late' (default): only below sigma = 2 s (s: the model's "
                               "sigma_data, 1 for SD and flow models), where the sample's class is decided, at 6 x "
                               "lambda0 and held within the noise level; a push above it is mostly forgotten by "
                               "the sampler's noise and, when a false alarm, moves images without the concept. "
                               "'full' (the paper): at every noise level, at lambda0. On the pack's 8x8 digit "
                               "model (euler_ancestral and dpmpp_2m_sde, 20 and 50 steps) 'late' at lambda0 75 "
                               "was as safe as 'full' and changed unrelated images 1.1-1.5x less; on the 16x16 "
                               "one as safe, with 8-9x less change (benchmarks/results/defaults_grid.md). "
                               "Deterministic samplers and posterior_form 'paper' are never cut. Not verified on "
                               "Stable Diffusion."),
    ]


def dng_config(lambda0: float, prior: float, temperature: float, offset: float, p_min: float, p_max: float,
               posterior_variance: str = PosteriorVariance.AUTO.value,
               posterior_form: str | None = None, more_concepts: Any = None, prune_concepts: Any = None,
               evidence: str | None = None, deterministic_push: str | None = None,
               stochastic_push: str | None = None, **_: Any) -> DNGConfig:
    """The core config from node inputs; raises ValueError naming the input and the valid range."""
    variance = _choice("posterior_variance", posterior_variance, PosteriorVariance)
    form = _choice("posterior_form", posterior_form or _DEFAULTS.posterior.form.value, PosteriorForm)
    path = _choice("evidence", evidence or _DEFAULTS.posterior.evidence.value, EvidencePath)
    push = _choice("deterministic_push", deterministic_push or _DEFAULTS.deterministic_push.value,
                   DeterministicPush)
    late = _choice("stochastic_push", stochastic_push or _DEFAULTS.stochastic_push.value, StochasticPush)
    return DNGConfig(lambda0, PosteriorConfig(prior, temperature, offset, p_min, p_max, variance, form,
                                              evidence=path), deterministic_push=push, stochastic_push=late)


def _choice(name: str, value: Any, options: Any) -> Any:
    """The enum member for a combo input's value; ComfyUI 0.3.75 does not check V3 combo values at validation,
    so an unknown one is refused here, naming the input and its options."""
    try:
        return options(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not one of: {', '.join(o.value for o in options)}") from None


def validate_posterior_bounds(prior: Any, p_min: Any, p_max: Any) -> bool | str:
    """validate_inputs of the DNG nodes: p_min < p_max and prior in [p_min, p_max], which the schema's min/max
    can't express, plus the schema ranges of these three inputs (the host skips its own checks for them).

    Takes only these three, so the host keeps its checks of every other input (sampler_name, steps, cfg, ...)
    and attaches a failure here to the three inputs the rule concerns, not to the whole node."""
    values = {"prior": prior, "p_min": p_min, "p_max": p_max}
    for name, value in values.items():
        if value is None:
            return True  # a linked input: checked when it arrives (ValueError at execution)
        lo, hi = POSTERIOR_RANGES[name]
        if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
            return f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}"
    try:
        PosteriorConfig(prior=prior, p_min=p_min, p_max=p_max)
    except ValueError as err:
        return str(err)
    return True


def require_finite(name: str, value: float, lo: float, hi: float) -> float:
    """ValueError naming ``name`` unless lo <= value <= hi. For inputs whose range the host checks at validation
    but that can still arrive as NaN (JSON allows it, and NaN passes every comparison)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)
