"""Tracking p_t(c- | x_t) across a sampler's steps (paper Appendix B, eq. 8-10 and Algorithm 2).

The posterior of the negative concept is a running sum of per-step evidence, kept in log space and clamped to
[log p_min, log p_max]. The guidance scale is lambda = lambda0 * p / (1 - p) (eq. 7), bounded through p_max.

**Evidence of one step** (``PosteriorVariance``, the estimator):

* ``kernel`` (the paper): the log-likelihood ratio of the step under the concept's and the unconditional
  Gaussian reverse kernels, ``-diff / (2 variance)`` with ``diff = ||x' - mu_neg||^2 - ||x' - mu_uncond||^2``
  (summed over all dimensions), ``mu_k = coef_x x + coef_d D_k`` (parametrisation.py). Exact when x' is a draw
  from that kernel (ancestral steps); as the steps shrink its sum tends to a step-count-free limit.
* ``step``: the same with the variance (sigma - sigma')^2, a surrogate some SD scripts use for deterministic
  samplers (kept for comparison; it is neither exact nor step-count free).
* ``path``: the total derivative of log p along the path the sampler actually took (path.py), exact on any
  path, deterministic or stochastic, up to the trapezoid rule and a one-probe divergence estimate; two extra
  predictions per step.

**How the evidence becomes an update** (``PosteriorForm``):

* ``paper``: Algorithm 2 verbatim, ``log p += (-tau diff + delta') / (2 variance)`` with the offset delta per
  step (``delta' = delta / native_scale'^2``). Its offset means something else at every step count: its total
  ``sum_i delta' / (2 v_i)`` grows faster than the number of steps (2e-4 adds ~29 nats over 1000 DDPM steps,
  ~1 nat over 20 Karras steps, almost all of it on the second-to-last step).
* ``rate`` (default): ``log p += min(tau * evidence + rho * L, R * min(L, 1))`` with
  ``L = ln(sigma / sigma')``, the e-folds of noise the step removes. The offset ``rho`` is a rate per e-fold: a
  schedule from sigma_max to sigma_min collects ``rho * ln(sigma_max / sigma_min)`` of it at *any* step count.
  The evidence sums above converge as the steps shrink, so offset and evidence together have a step-count-free
  limit. The bound ``R`` (``max_rate``) caps how fast p may *rise*: at most R nats of log p per e-fold of noise,
  and a step that spans more than one e-fold (the last step of the ``normal`` / ``simple`` schedules, which
  ends at sigma_min, spans 2-3) counts as one. Why these three choices:

  - a rate, because a rise allowed per step would grow with the step count, and a rate is the only bound whose
    total over a schedule does not depend on how finely it is cut;
  - upward only, because what the bound guards against is a false alarm: a late step whose kernel variance is
    tiny (sigma'^2) turns the models' *errors* into a large likelihood ratio, throws p to p_max and makes the
    last steps apply lambda0 p_max / (1 - p_max) to a sample that never showed the concept (on digits8 with
    euler_ancestral, unrelated negative: one sample in 32 ended at p_max, from p < 1e-5, on the last step). A
    fall of p only switches guidance off, which later evidence can undo at the bounded rate;
  - at most one e-fold per step, because a step that removes several e-folds of noise at once is not a small
    step: its likelihood ratio is dominated by its end point, where the models' error dominates.

  So no single step raises log p by more than R: with R = 4 below logit(p_max) - logit(p_min) (15.2 at the
  defaults) no step throws p from the floor to p_max, whatever the schedule. R = 4 is measured
  (digits8, N = 500, unrelated change at equal safety; R = 2 / 4 / 8 / unbounded: 0.0138 / 0.0116 / 0.0196 /
  0.0195 on euler_ancestral, 20 steps; see ``MAX_RATE``).

The staggering of Appendix B: the scale used at step i comes from the posterior after step i-1.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, replace

import torch

from .parametrisation import Parametrisation, reverse_kernel
from .path import PathPoint, path_log_odds_change, path_noise_variance

__all__ = ["EvidencePath", "PosteriorConfig", "PosteriorForm", "PosteriorVariance", "PosteriorTracker",
           "posterior_increment", "compose_increment", "PAPER_MODE",
           "guidance_scale", "MAX_RATE"]

#: Default bound R on the rise of log p per e-fold of sigma in the ``rate`` form (see the module docstring).
MAX_RATE = 4.0


class PosteriorVariance(str, enum.Enum):
    """The estimator of one step's evidence (named after the node input ``posterior_variance``).

    ``KERNEL``: the Gaussian reverse kernel's likelihood ratio, as in the paper. Exact for ancestral steps.
    ``STEP``: the kernel ratio with the surrogate variance (sigma_ve - sigma_ve')^2 (kept for comparison).
    ``PATH``: the total derivative of log p along the sampler's path (path.py); exact on deterministic and
    stochastic paths alike; needs a divergence probe (two more predictions) per step.
    ``AUTO``: ``PATH`` for deterministic samplers, ``KERNEL`` for stochastic ones (see ``resolve``).
    """

    KERNEL = "kernel"
    STEP = "step"
    PATH = "path"
    #: Resolved per run (``resolve``): the kernel is exact, and cheapest, where the sampler draws its steps
    #: from it; the path estimator where it does not (deterministic samplers, on which the kernel's p over the
    #: samples that become the concept is 5-10x smaller: docs/step_invariance.md). Where the sampler is unknown
    #: it acts as ``KERNEL``, the paper's estimator.
    AUTO = "auto"

    def resolve(self, stochastic: bool | None) -> "PosteriorVariance":
        """The concrete estimator for a sampler that injects noise (True), does not (False) or is unknown."""
        if self is not PosteriorVariance.AUTO:
            return self
        return PosteriorVariance.PATH if stochastic is False else PosteriorVariance.KERNEL

    @property
    def needs_probe(self) -> bool:
        """Whether the estimator needs the divergence probe (predictions at x + h eps) at every step."""
        return self is PosteriorVariance.PATH


class EvidencePath(str, enum.Enum):
    """Which step the evidence is read from.

    ``SAMPLED`` (the paper): the step the sampler took, DNG's own push away from the concept included.
    ``UNCORRECTED``: the same step with DNG's push taken back out, i.e. the step the positive prompt alone would
    have made from the same state. Why it exists: with the sampled step the posterior reads its own correction
    as evidence *against* the concept, which closes a loop. For one concept, with D_g - D_u = s (D_pos - D_u) -
    lambda Delta (Delta = D_neg - D_u) and the kernel estimator, a step's expected evidence is

        E[e] = coef_d^2 / (2 v) * (2 s <D_pos - D_u, Delta> - (2 lambda + 1) |Delta|^2),

    zero at lambda* = s <D_pos - D_u, Delta> / |Delta|^2 - 1/2 whatever lambda0 is: above lambda* p falls, below
    it p rises. The loop holds the sample's drift along Delta at |Delta| / 2, half-way to the concept, the point
    where the step is equally likely under the concept and without it. Where the positive prompt itself pulls
    towards the concept (it names it, or shares a word), half-way is often enough to draw it
    (benchmarks/results/composition_timing.md). Reading the uncorrected step drops the lambda term: p rises
    where the positive pulls towards the concept by more than half of the concept's own pull and falls where it
    does not, so the scale settles at lambda0 p_max / (1 - p_max) or near 0, and lambda0 takes the size of a
    negative prompt's scale. The push taken back out is c * sum_k lambda_k (D_neg_k - D_u), with c the step's
    coefficient of the prediction: the reverse kernel's coef_d (ancestral steps) for the kernel estimators; the
    path estimator, which reads the state itself, follows the state without the pushes (x plus an offset that
    an euler step carries as sigma'/sigma offset + (1 - sigma'/sigma) push). Exact for first-order steps with
    predictions that do not depend on x (tests/core/test_evidence_path.py); otherwise the predictions are those
    at the sampled state, a first-order approximation, good to trust^2 / 2 nats while |offset| <= trust * sigma:
    the offset is scaled back onto that ball every step (``offset_trust``; path.offset_trust_radius). Without
    the bound, pushes at p_max carried far past it are read linearly as evidence *for* the concept, which holds p
    at p_max (measured on mnist16, euler: images destroyed; tests/core/test_offset_trust.py on the exact toy).

    The flaw of ``uncorrected``: its expected evidence, coef_d^2 / (2 v) (2 s <D_pos - D_u, Delta> - |Delta|^2),
    is positive wherever s <D_pos - D_u, Delta> > |Delta|^2 / 2. CFG's scale s multiplies the positive's pull,
    so at cfg 7 a positive whose pull along Delta is 1/14 of the concept's own drives p to p_max (lambda = 4
    lambda0), where the paper's loop would settle at lambda* = 7 * 1/14 - 1/2 = 0. On the digit models (cfg 2.5,
    class embeddings) it beat the sampled evidence (benchmarks/results/defaults_grid.md); on models whose
    prompts share a direction it raises p to p_max for every negative (the test suite's random-weight SD1.5
    checkpoint: every image by the second of 6 euler steps; Stable Diffusion's generic "any prompt" direction
    may do the same). ``one_sided`` (the default) keeps its reading where that cannot happen.

    ``UNGUIDED``: the step with CFG's extrapolation taken out as well, i.e. the step sampling from the positive
    prompt's own model (s = 1) would have made: the push taken back out is sum_k lambda_k Delta_k - (s - 1)
    (D_pos - D_u). Its expected evidence, coef_d^2 / (2 v) (2 <D_pos - D_u, Delta> - |Delta|^2), is positive
    where the positive's own pull along Delta exceeds half of the concept's, whatever the cfg: the posterior of
    the concept for an image of the positive prompt, the quantity the paper's p_t stands for. Without a positive
    prediction (D_pos None) it is ``uncorrected``. Measured on the digit model, an unrelated image's p falls
    more slowly than with ``uncorrected``: CFG's extrapolated pull towards the positive is what points away
    from the concept there.

    ``ONE_SIDED``: ``uncorrected`` where CFG's extrapolation points away from the concept, ``unguided`` where it
    points towards it; per concept k and image, the push taken back out is sum_j lambda_j Delta_j - (s - 1)
    (D_pos - D_u) 1[(s - 1) <D_pos - D_u, Delta_k> > 0]. With c = <D_pos - D_u, Delta_k> and s > 1 the expected
    evidence is coef_d^2 / (2 v) (2 min(s c, c) - |Delta_k|^2): never more than either other reading's, and
    equal to the smaller. Why: the extrapolation is a push the sampler adds, not a property of the positive
    prompt's images, so reading it as evidence either way is the uncorrected evidence's flaw; but the two
    errors do not cost the same. Read as evidence *for* the concept it is a false alarm that the guidance then
    acts on (p_max for every negative at cfg 7 on the random-weight SD1.5 checkpoint); read as evidence
    *against*, it only switches the guidance off sooner for an image the positive is taking elsewhere, which
    is what the unrelated-negative target asks. Where the positive has no prediction (D_pos None) or s = 1,
    it is ``uncorrected``. On the digit models (positive 7, negative 0) CFG's extrapolation points away from
    the concept: the one-sided posterior is the uncorrected one there (same figures on the defaults grid), and
    on the random-weight SD1.5 checkpoint at cfg 7 it falls to p_min where the uncorrected one rises to p_max.
    """

    SAMPLED = "sampled"
    UNCORRECTED = "uncorrected"
    UNGUIDED = "unguided"
    ONE_SIDED = "one_sided"


class PosteriorForm(str, enum.Enum):
    """How evidence becomes an update (module docstring): ``PAPER`` is Algorithm 2 with a per-step offset and no
    bound (the exact mode); ``RATE`` has the offset and a bound as rates per e-fold of sigma."""

    PAPER = "paper"
    RATE = "rate"


#: The settings that make a PosteriorConfig the paper's Algorithm 2 exactly (the exact mode): the kernel
#: likelihood ratio of the sampled step, the per-step offset, no bound. ``PosteriorConfig(prior=..., **PAPER_MODE)``.
PAPER_MODE: dict[str, str] = {"form": PosteriorForm.PAPER.value, "variance": PosteriorVariance.KERNEL.value,
                              "evidence": EvidencePath.SAMPLED.value}


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be a probability strictly between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class PosteriorConfig:
    """Hyperparameters of the posterior (paper Appendix C.1, and the module docstring).

    prior:       p0, the posterior before any evidence; lambda starts at lambda0 * p0 / (1 - p0).
    temperature: tau > 0, scales the evidence of each step; lower = smoother, slower to react; 1 = the
                 estimator's own posterior.
    offset:      a bias towards the concept ("a time-dependent prior"): nats per e-fold of sigma in the ``rate``
                 form, the paper's delta per step in the ``paper`` form; 0 to disable.
    p_min/p_max: clamp of the posterior, 0 < p_min < p_max < 1; p_max bounds lambda.
    variance:    the estimator of a step's evidence (see PosteriorVariance).
    form:        ``rate`` (default) or ``paper`` (Algorithm 2, the exact mode).
    max_rate:    R, the bound on the rise of log p per e-fold of sigma (one step: at most one e-fold's worth) in
                 the ``rate`` form; 0 = unbounded.
    evidence:    ``one_sided`` (default), ``sampled`` (the paper), ``uncorrected`` or ``unguided`` (see
                 EvidencePath): whether the step's evidence includes DNG's own push away from the concept (and
                 CFG's extrapolation).
    debias_probe: the ``path`` estimator only: take tau * V / 2 off each step's evidence, V the step's share of
                 the bound on the probes' variance (path.path_noise_variance). A log-likelihood ratio read with a
                 zero-mean Gaussian noise of variance V, tempered by tau and exponentiated, overstates the odds
                 by e^{tau^2 V / 2} on average; without it the probe's noise alone raises an absent concept's
                 mean lambda. With it the tempered likelihood ratio is unbiased (up to the bound), the
                 pseudo-marginal argument. Off by default, and not a node input: measured on mnist16, euler 20,
                 lambda0 75, seed 1 (ComfyUI 0.33.0), it took the unrelated change from 0.0199 to 0.0168 but
                 let 2.7 % of the forbidden digit through instead of 1.8 % (N 1000): the noise it corrects is
                 also on the images that do show the concept, so it acts as a smaller lambda0 more than as a
                 cure for the false alarms (docs/step_invariance.md, Session 14).
    offset_trust: the ``path`` estimator with ``uncorrected``, ``unguided`` or ``one_sided`` evidence: the
                 state without DNG's pushes is read at most trust * sigma from the pushed state (the offset is
                 scaled back onto that ball each step), where reading it with the predictions made at the pushed
                 state is good to trust^2 / 2 nats (path.offset_trust_radius has the derivation); 0 = no bound
                 (before session 15). Not a node input.
    """

    prior: float = 3e-4
    temperature: float = 0.9
    offset: float = 0.7
    p_min: float = 1e-6
    p_max: float = 0.8
    variance: PosteriorVariance = PosteriorVariance.AUTO
    form: PosteriorForm = PosteriorForm.RATE
    max_rate: float = MAX_RATE
    evidence: EvidencePath = EvidencePath.ONE_SIDED
    debias_probe: bool = False
    offset_trust: float = 1.0

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
        if not (isinstance(self.max_rate, (int, float)) and math.isfinite(self.max_rate) and self.max_rate >= 0):
            raise ValueError(f"max_rate must be a finite number >= 0 (0: unbounded), got {self.max_rate!r}")
        if not (isinstance(self.offset_trust, (int, float)) and math.isfinite(self.offset_trust)
                and self.offset_trust >= 0):
            raise ValueError(f"offset_trust must be a finite number >= 0 (0: no bound), got {self.offset_trust!r}")
        if not isinstance(self.debias_probe, bool):
            raise ValueError(f"debias_probe must be true or false, got {self.debias_probe!r}")
        object.__setattr__(self, "variance", PosteriorVariance(self.variance))
        object.__setattr__(self, "form", PosteriorForm(self.form))
        object.__setattr__(self, "evidence", EvidencePath(self.evidence))

    def resolved(self, stochastic: bool | None) -> "PosteriorConfig":
        """This config with ``variance`` AUTO replaced by the estimator for the run's sampler."""
        variance = self.variance.resolve(stochastic)
        return self if variance is self.variance else replace(self, variance=variance)

    def as_dict(self) -> dict[str, float | str]:
        out = asdict(self)
        out["variance"] = self.variance.value
        out["form"] = self.form.value
        out["evidence"] = self.evidence.value
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


def _log_sigma_drop(sigma: torch.Tensor, sigma_next: torch.Tensor, parametrisation: Parametrisation) -> torch.Tensor:
    """ln(sigma_ve / sigma_ve') of each step (e-folds of noise it removes); 0 where it is not a finite drop."""
    alpha, s_, _ = parametrisation.coefficients(sigma)
    alpha_n, s_n, _ = parametrisation.coefficients(sigma_next)
    ve, ve_n = s_ / alpha, s_n / alpha_n
    drop = torch.log(ve) - torch.log(ve_n)
    ok = (ve > 0) & (ve_n > 0) & (ve_n < ve) & torch.isfinite(drop)
    return torch.where(ok, drop, torch.zeros_like(drop))


def compose_increment(evidence: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float,
                      config: PosteriorConfig, parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING,
                      paper_variance: torch.Tensor | None = None) -> torch.Tensor:
    """The update of log p for one step from its evidence (a log-likelihood ratio, [B]); see the module docstring.

    ``rate``: min(tau * evidence + offset * L, R min(L, 1)) with L = ln(sigma_ve / sigma_ve'), 0 where L is 0
    (a step to sigma = 0 or a step that does not lower the noise). ``paper``: tau * evidence + offset / (2 v)
    with v ``paper_variance`` (the estimator's variance, in the state; the offset is mapped to the native
    space as in Algorithm 2), 0 where v is 0."""
    batch = evidence.shape[0]
    dtype, device = evidence.dtype, evidence.device
    s = _as_batch(sigma, batch, device, dtype)
    s_next = _as_batch(sigma_next, batch, device, dtype)
    if config.form is PosteriorForm.PAPER:
        kernel = reverse_kernel(s, s_next, parametrisation)
        if paper_variance is None:
            paper_variance = kernel.variance
        native = kernel.native_variance_factor
        has = paper_variance > 0
        safe = torch.where(has, paper_variance, torch.ones_like(paper_variance))
        inc = config.temperature * evidence + config.offset / (native * 2.0 * safe)
        inc = torch.where(has, inc, torch.zeros_like(inc))
        return torch.nan_to_num(inc, nan=0.0)
    drop = _log_sigma_drop(s, s_next, parametrisation)
    inc = config.temperature * evidence + config.offset * drop
    if config.max_rate > 0:
        # upward only, and a step spanning more than one e-fold counts as one (module docstring)
        inc = torch.minimum(inc, config.max_rate * drop.clamp(max=1.0))
    inc = torch.where(drop > 0, inc, torch.zeros_like(inc))
    return torch.nan_to_num(inc, nan=0.0)


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
    """The change of log p(c- | x) over one step ``x -> x_next`` from the kernel (or step) likelihood ratio;
    shape [B], float64 (float32 on MPS).

    x, x_next, denoised_neg, denoised_uncond: [B, ...] (the *unguided* predictions at x).
    Returns 0 where the step carries no evidence (kernel variance 0: sigma' = 0 or sigma' = sigma).
    The ``path`` estimator needs predictions at both ends of the step: see ``PosteriorTracker.propose_path``.
    """
    _check_same_shape(x=x, x_next=x_next, denoised_neg=denoised_neg, denoised_uncond=denoised_uncond)
    if config.variance is PosteriorVariance.PATH:
        raise ValueError("the path estimator needs predictions at both ends of the step: use propose_path")
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
    has_evidence = variance > 0
    safe_variance = torch.where(has_evidence, variance, torch.ones_like(variance))
    # A tiny variance can make the ratio +-inf; the clamps absorb that, NaN they could not.
    evidence = torch.nan_to_num(-diff / (2.0 * safe_variance), nan=0.0)
    evidence = torch.where(has_evidence, evidence, torch.zeros_like(evidence))
    return compose_increment(evidence, s, s_next, config, parametrisation, paper_variance=variance)


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

    def propose_path(self, start: PathPoint, end: PathPoint) -> torch.Tensor:
        """The log posterior after the step from ``start`` to ``end`` by the path estimator (path.py), without
        committing it. Shape [B]."""
        evidence = path_log_odds_change(start, end, self.parametrisation).to(self.log_p)
        if self.config.debias_probe:
            noise = path_noise_variance(start, end, self.parametrisation).to(self.log_p)
            evidence = evidence - 0.5 * self.config.temperature * noise
        if evidence.shape[0] != self.batch_size:
            raise ValueError(f"predictions have batch size {evidence.shape[0]}, the tracker {self.batch_size}")
        inc = compose_increment(evidence, start.sigma, end.sigma, self.config, self.parametrisation)
        return (self.log_p + inc).clamp(*self._log_bounds)

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
