"""Gaussian-mixture toy for the paper's Fig. 1: exact denoisers, exact posteriors, an ancestral sampler.

Shared by tests/core/test_fig1.py and benchmarks/fig1.py (pure torch + numpy, no ComfyUI).

The data distribution is sum_k pi_k N(m_k, s_k^2 I) in d dimensions. Noising is variance exploding, as ComfyUI's
samplers see it: x = x0 + sigma * eps. The marginal at sigma is sum_k pi_k N(m_k, (s_k^2 + sigma^2) I), so

    w_k(x, sigma) = pi_k N(x; m_k, (s_k^2 + sigma^2) I) / sum_j (...)            exact responsibilities
    D(x, sigma)   = sum_k w_k (m_k + s_k^2 / (s_k^2 + sigma^2) (x - m_k))          exact denoiser E[x0 | x]

and the posterior of a component c- at (x, sigma) is w_{c-}(x, sigma). The sampler is ComfyUI's euler_ancestral
with eta = 1 written in VE form, x' = r x + (1 - r) D + sqrt(var) z, r = sigma'^2 / sigma^2,
var = (sigma^2 - sigma'^2) sigma'^2 / sigma^2, i.e. exactly the DDPM reverse kernel q(x' | x, x0 = D).

Rectified-flow state (ComfyUI's CONST model_sampling: SD3, Flux): x = (1 - t) x0 + t eps with sigma = t in [0, 1].
Every exact quantity is written for the general state x = alpha x0 + s eps (``Toy.predict(..., parametrisation)``,
with (alpha, s) from dng_core.Parametrisation): component k's marginal is N(alpha m_k, (alpha^2 s_k^2 + s^2) I) and
E[x0 | x, k] = m_k + g_k (x - alpha m_k), g_k = alpha s_k^2 / (alpha^2 s_k^2 + s^2) (alpha = 1, s = sigma: the VE
formulas above, to the last bit; t = 1: responsibilities = weights, D_k = m_k). Flow samplers (``Sampler``):
ComfyUI's sample_euler_ancestral_RF with eta = 1 (``flow_ancestral_step``) and its deterministic euler
(``flow_euler_step``), on ComfyUI's ``simple`` schedule of a flow model with shift 3 (SD3's; ``flow_sigmas``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # the benchmark script imports this file directly
    sys.path.insert(0, str(_ROOT))

from dng_core import PAPER_MODE as PAPER  # noqa: E402
from dng_core.trace import GuidanceTrace  # noqa: E402
from dng_core import (DNGConfig, DNGRun, Parametrisation, PosteriorConfig, PosteriorTracker,  # noqa: E402
                      combine_guidance, negative_prompting)

DTYPE = torch.float64

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
VE = Parametrisation.VARIANCE_EXPLODING
FLOW = Parametrisation.RECTIFIED_FLOW


def state_coefficients(sigma: float, parametrisation: Parametrisation = VE) -> tuple[float, float]:
    """(alpha, s) of the state x = alpha x0 + s eps at noise level ``sigma`` (VE: (1, sigma); flow: (1 - t, t))."""
    alpha, s, _ = Parametrisation(parametrisation).coefficients(torch.tensor(float(sigma), dtype=DTYPE))
    return float(alpha), float(s)


@dataclass(frozen=True)
class GaussianMixture:
    """sum_k weights[k] N(means[k], stds[k]^2 I); means [K, d], stds [K], weights [K] (normalised here)."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    @staticmethod
    def make(means: Sequence[Sequence[float]], stds: Sequence[float], weights: Sequence[float]) -> "GaussianMixture":
        m = torch.as_tensor(means, dtype=DTYPE)
        m = m.reshape(-1, 1) if m.dim() == 1 else m
        s = torch.as_tensor(stds, dtype=DTYPE)
        w = torch.as_tensor(weights, dtype=DTYPE)
        if not (m.shape[0] == s.shape[0] == w.shape[0]) or bool((s <= 0).any()) or bool((w <= 0).any()):
            raise ValueError("means, stds, weights must describe the same K components with s, w > 0")
        return GaussianMixture(m, s, w / w.sum())

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def k(self) -> int:
        return int(self.means.shape[0])

    def subset(self, keep: Sequence[int]) -> "GaussianMixture":
        """The mixture of the components ``keep``, weights renormalised (the target after removing the others)."""
        idx = torch.as_tensor(list(keep), dtype=torch.long)
        w = self.weights[idx]
        return GaussianMixture(self.means[idx], self.stds[idx], w / w.sum())

    def log_resp(self, x: torch.Tensor, sigma: float, alpha: float = 1.0) -> torch.Tensor:
        """log w_k(x, sigma), shape [N, K] (exact; sigma = 0 gives the data responsibilities).

        x = alpha x0 + sigma eps (alpha = 1: the VE state): component k's marginal is N(alpha m_k, var_k I)."""
        var = alpha ** 2 * self.stds ** 2 + float(sigma) ** 2  # [K]
        # log pi_k N(x; m_k, var_k I) = x.(m_k / var_k) - |x|^2 / (2 var_k) + const_k: one matrix product instead
        # of broadcasting [N, K, d] (an order of magnitude faster for d = 1, 2).
        means = alpha * self.means
        const = torch.log(self.weights) - 0.5 * (means ** 2).sum(1) / var \
            - 0.5 * self.dim * torch.log(2 * math.pi * var)
        logp = torch.addmm(const[None], x, (means / var[:, None]).T)
        logp -= (x * x).sum(1, keepdim=True) * (0.5 / var)[None]
        return logp - torch.logsumexp(logp, dim=1, keepdim=True)

    def shrink(self, sigma: float, alpha: float = 1.0) -> torch.Tensor:
        """c_k = s_k^2 / (s_k^2 + sigma^2): E[x0 | x, k] = m_k + c_k (x - m_k). Shape [K].

        State x = alpha x0 + sigma eps: c_k = alpha s_k^2 / (alpha^2 s_k^2 + sigma^2), E = m_k + c_k (x - alpha m_k).
        """
        var = self.stds ** 2
        return alpha * var / (alpha ** 2 * var + float(sigma) ** 2)

    def component_denoiser(self, x: torch.Tensor, sigma: float, k: int, alpha: float = 1.0) -> torch.Tensor:
        """E[x0 | x, component k]: [N, d]."""
        c = self.shrink(sigma, alpha)[k]
        return self.means[k][None] + c * (x - alpha * self.means[k][None])

    def denoiser(self, x: torch.Tensor, sigma: float, alpha: float = 1.0) -> torch.Tensor:
        """The exact denoiser D(x, sigma) = E[x0 | x] of the whole mixture: [N, d].

        sum_k w_k (m_k + c_k (x - alpha m_k)) = (w (1 - alpha c)) @ m + (w @ c) x.
        """
        w = self.log_resp(x, sigma, alpha).exp()
        c = self.shrink(sigma, alpha)
        return w @ ((1.0 - alpha * c)[:, None] * self.means) + (w @ c)[:, None] * x

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n exact samples of the data distribution and their component labels."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=DTYPE)
        return self.means[labels] + self.stds[labels, None] * z, labels

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Most responsible component at sigma = 0: [N] labels."""
        return self.log_resp(x, 0.0).argmax(dim=1)

    def density_1d(self, grid: np.ndarray) -> np.ndarray:
        """The data density on a 1-D grid (1-D mixtures only; for plots)."""
        g = torch.as_tensor(grid, dtype=DTYPE)[:, None]
        var = self.stds ** 2
        comp = torch.exp(-0.5 * (g - self.means[:, 0][None]) ** 2 / var[None]) / torch.sqrt(2 * math.pi * var)[None]
        return (comp * self.weights[None]).sum(1).numpy()


@dataclass(frozen=True)
class Toy:
    """A mixture, the component removed (the concept c-) and the target: the mixture without it."""

    name: str
    mixture: GaussianMixture
    removed: int

    @property
    def kept(self) -> list[int]:
        return [k for k in range(self.mixture.k) if k != self.removed]

    @property
    def target(self) -> GaussianMixture:
        return self.mixture.subset(self.kept)

    @property
    def prior(self) -> float:
        """pi_removed: the posterior of c- before any evidence (x at sigma_max says nothing)."""
        return float(self.mixture.weights[self.removed])

    def predict(self, x: torch.Tensor, sigma: float, complement: bool = False,
                parametrisation: Parametrisation = VE) -> "Predictions":
        """Every exact quantity at (x, sigma) from one evaluation of the responsibilities.

        D_comp and log p / (1 - p) only with ``complement`` (they cost a little). ``parametrisation``: the state
        x and sigma are in (VE: x = x0 + sigma eps; flow: x = (1 - t) x0 + t eps, sigma = t).
        """
        mix = self.mixture
        alpha, s = state_coefficients(sigma, parametrisation)
        lr = mix.log_resp(x, s, alpha)
        c = mix.shrink(s, alpha)
        offsets = (1.0 - alpha * c)[:, None] * mix.means  # D_k = offsets_k + c_k x
        w = lr.exp()
        d_u = w @ offsets + (w @ c)[:, None] * x
        d_neg = offsets[self.removed][None] + c[self.removed] * x
        log_p = lr[:, self.removed]
        if not complement:
            return Predictions(d_u, d_neg, None, log_p, None)
        kept = torch.ones(mix.k, dtype=DTYPE)
        kept[self.removed] = 0.0
        rest = (w @ kept).clamp_min(1e-300)  # 1 - p as a sum of the kept responsibilities: exact near p = 1
        d_comp = (w @ (kept[:, None] * offsets) + (w @ (kept * c))[:, None] * x) / rest[:, None]
        return Predictions(d_u, d_neg, d_comp, log_p, log_p - torch.log(rest))

    def exact_log_posterior(self, x: torch.Tensor, sigma: float, parametrisation: Parametrisation = VE) -> torch.Tensor:
        """log p_sigma(c- | x) = log w_removed(x, sigma): [N]."""
        alpha, s = state_coefficients(sigma, parametrisation)
        return self.mixture.log_resp(x, s, alpha)[:, self.removed]


@dataclass
class Predictions:
    """Exact predictions at one (x, sigma): D_u (whole mixture), D_neg (the removed component), D_comp (the
    target, i.e. the mixture without it), and log p, log p / (1 - p) of the removed component. [N, d] / [N]."""

    d_uncond: torch.Tensor
    d_neg: torch.Tensor
    d_comp: torch.Tensor | None
    log_p: torch.Tensor
    log_odds: torch.Tensor | None


# The two mixtures of the Fig. 1 test: unequal weights and widths so that a method that rescales the kept modes
# (NP does) shows, and well separated modes so that "which mode" is unambiguous at sigma = 0.
TOY_1D = Toy("1d", GaussianMixture.make([-3.0, 0.0, 3.0], [0.6, 0.4, 0.5], [0.25, 0.35, 0.40]), removed=1)
TOY_2D = Toy(
    "2d",
    GaussianMixture.make(
        [[0.0, 3.0], [2.85, 0.93], [1.76, -2.43], [-1.76, -2.43], [-2.85, 0.93], [0.0, 0.0]],
        [0.45, 0.5, 0.4, 0.55, 0.45, 0.5],
        [0.15, 0.20, 0.10, 0.20, 0.15, 0.20],
    ),
    removed=5,
)


# ---- schedule and sampler -------------------------------------------------------------------------------------

FLOW_SHIFT = 3.0  # SD3's (comfy/supported_models.py); Flux's resolution-dependent shift is ~3 at 1024^2


def flow_sigmas(steps: int, shift: float = FLOW_SHIFT, timesteps: int = 1000) -> torch.Tensor:
    """ComfyUI's ``simple`` scheduler on a flow model (ModelSamplingDiscreteFlow, multiplier 1000): the table
    t_j = shift u / (1 + (shift - 1) u), u = j / 1000 (j = 1..1000), read from t = 1 down every 1000 / steps
    entries, then 0 (float64 here; ComfyUI's table is float32). Starts at t = 1 exactly (pure noise)."""
    if not 1 <= steps <= timesteps:  # more steps than table entries would repeat a t (a zero step)
        raise ValueError(f"the simple schedule has 1 to {timesteps} steps, got {steps}")
    u = torch.arange(1, timesteps + 1, dtype=DTYPE) / timesteps
    table = u if shift == 1.0 else shift * u / (1 + (shift - 1) * u)
    stride = timesteps / steps
    sig = [float(table[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.tensor(sig + [0.0], dtype=DTYPE)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """ComfyUI's / k-diffusion's Karras schedule: n sigmas from sigma_max to sigma_min, then 0 (n steps)."""
    ramp = torch.linspace(0, 1, n, dtype=DTYPE)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sig, sig.new_zeros([1])])


def ancestral_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float,
                   generator: torch.Generator) -> torch.Tensor:
    """euler_ancestral (eta = 1) in VE form = the DDPM reverse kernel q(x' | x, x0 = denoised)."""
    if sigma_next == 0.0:
        return denoised.clone()
    r = sigma_next ** 2 / sigma ** 2
    var = (sigma ** 2 - sigma_next ** 2) * sigma_next ** 2 / sigma ** 2
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return r * x + (1.0 - r) * denoised + math.sqrt(var) * z


def flow_ancestral_step(x: torch.Tensor, denoised: torch.Tensor, t: float, t_next: float,
                        generator: torch.Generator) -> torch.Tensor:
    """ComfyUI's sample_euler_ancestral_RF (what euler_ancestral runs for CONST models), eta = 1, s_noise = 1.

    An euler step to t_down = t'^2 / t, then the state rescaled by (1 - t') / (1 - t_down) and renoised to t'.
    In the VE view (x / (1 - t)) it is a DDIM step with its own eta, *not* the DDPM reverse kernel that
    dng_core's kernel estimator assumes: that kernel would step to sigma_ve'^2 / sigma_ve instead.
    """
    if t_next == 0.0:
        return denoised.clone()
    t_down = t_next * (t_next / t)  # downstep_ratio = 1 + (t' / t - 1) eta
    alpha_next, alpha_down = 1.0 - t_next, 1.0 - t_down
    renoise = math.sqrt(t_next ** 2 - t_down ** 2 * alpha_next ** 2 / alpha_down ** 2)
    ratio = t_down / t
    x = ratio * x + (1.0 - ratio) * denoised
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return (alpha_next / alpha_down) * x + renoise * z


def flow_euler_step(x: torch.Tensor, denoised: torch.Tensor, t: float, t_next: float,
                    generator: torch.Generator) -> torch.Tensor:
    """ComfyUI's euler on a flow model: x' = x + (t' - t) (x - D) / t (deterministic; ``generator`` unused)."""
    if t_next == 0.0:
        return denoised.clone()
    return x + (t_next - t) * (x - denoised) / t


StepFn = Callable[[torch.Tensor, torch.Tensor, float, float, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Sampler:
    """One step rule, the state it runs in and whether it injects noise (DNGRun's ``stochastic_sampler``)."""

    name: str
    step: StepFn
    parametrisation: Parametrisation
    stochastic: bool


EULER_ANCESTRAL = Sampler("euler_ancestral", ancestral_step, VE, True)
FLOW_EULER_ANCESTRAL = Sampler("euler_ancestral_RF", flow_ancestral_step, FLOW, True)
FLOW_EULER = Sampler("euler_flow", flow_euler_step, FLOW, False)


def sample_ancestral(denoise: Denoiser, n: int, dim: int, sigmas: torch.Tensor, generator: torch.Generator,
                     on_step: Callable[[int, torch.Tensor], None] | None = None,
                     step: StepFn = ancestral_step) -> torch.Tensor:
    """Run euler_ancestral from x = sigma_max * z (ComfyUI's start) with the given denoiser; returns x at sigma 0.

    ``step``: another update rule (``Sampler.step``). The start is the same for flow models: ComfyUI's CONST
    noise scaling is t z + (1 - t) latent, t z for an empty latent."""
    sig = [float(s) for s in sigmas]
    x = sig[0] * torch.randn(n, dim, generator=generator, dtype=DTYPE)
    for i in range(len(sig) - 1):
        d = denoise(x, sig[i])
        x = step(x, d, sig[i], sig[i + 1], generator)
        if on_step is not None:
            on_step(i, x)
    return x


# ---- the four methods of Fig. 1 --------------------------------------------------------------------------------

@dataclass
class MethodResult:
    samples: torch.Tensor
    extra: dict


def _sample(toy: Toy, denoise: Denoiser, n: int, sigmas: torch.Tensor, generator: torch.Generator,
            sampler: Sampler) -> torch.Tensor:
    return sample_ancestral(denoise, n, toy.mixture.dim, sigmas, generator, step=sampler.step)


def run_cfg_complement(toy: Toy, n: int, sigmas: torch.Tensor, generator: torch.Generator, *,
                       sampler: Sampler = EULER_ANCESTRAL) -> MethodResult:
    """(a) CFG towards the complement with scale 1: D = D_u + 1 (D_comp - D_u) = D_comp, the target's denoiser.

    ``sampler`` (every run_* function): the step rule and the state the sigmas are in (default: VE
    euler_ancestral)."""

    def denoise(x, s):
        pred = toy.predict(x, s, complement=True, parametrisation=sampler.parametrisation)
        return pred.d_uncond + 1.0 * (pred.d_comp - pred.d_uncond)

    return MethodResult(_sample(toy, denoise, n, sigmas, generator, sampler), {})


def run_dng_exact(toy: Toy, n: int, sigmas: torch.Tensor, generator: torch.Generator,
                  lambda0: float = 1.0, max_log_odds: float = 30.0, *,
                  sampler: Sampler = EULER_ANCESTRAL) -> MethodResult:
    """(b) DNG (dng_core.combine_guidance) with the exact posterior p = w_removed(x, sigma).

    lambda = lambda0 p / (1 - p) is computed from the exact log odds, capped at exp(max_log_odds): past ~1e13 the
    float64 rounding of D_neg - D_u (~1e-16 |D|) times lambda would dominate the guidance. The cap is what a
    p_max = 1 - 1e-13 clamp does; how often it bit is reported in ``extra``.
    """
    capped = [0]

    def denoise(x, s):
        pred = toy.predict(x, s, complement=True, parametrisation=sampler.parametrisation)
        capped[0] += int((pred.log_odds > max_log_odds).sum())
        lam = lambda0 * pred.log_odds.clamp(max=max_log_odds).exp()
        return combine_guidance(pred.d_uncond, None, [pred.d_neg], lam[None], 0.0)

    out = _sample(toy, denoise, n, sigmas, generator, sampler)
    return MethodResult(out, {"capped_evaluations": capped[0]})


def run_np(toy: Toy, n: int, sigmas: torch.Tensor, generator: torch.Generator, scale: float = 1.0, *,
           sampler: Sampler = EULER_ANCESTRAL) -> MethodResult:
    """(d) Negative prompting with a constant scale (dng_core.negative_prompting): D = D_u - scale (D_neg - D_u)."""

    def denoise(x, s):
        pred = toy.predict(x, s, parametrisation=sampler.parametrisation)
        return negative_prompting(pred.d_uncond, None, [pred.d_neg], scale, 0.0)

    return MethodResult(_sample(toy, denoise, n, sigmas, generator, sampler), {"scale": scale})


# Settings of the tracked run (c); see test_fig1.py for why the prior is 0.5 rather than pi_removed.
TRACKED_PRIOR = 0.5
TRACKED_P_MAX = 0.99
TRACKED_P_MIN = 1e-12


def dng_tracked_config(prior: float = TRACKED_PRIOR, lambda0: float = 1.0, temperature: float = 1.0,
                       offset: float = 0.0, p_min: float = TRACKED_P_MIN, p_max: float = TRACKED_P_MAX,
                       variance: str = PAPER["variance"]) -> DNGConfig:
    """Algorithm 2 (the paper form) with these settings; ``variance``: the estimator ("kernel": the paper's)."""
    return DNGConfig(lambda0=lambda0, posterior=PosteriorConfig(prior=prior, temperature=temperature,
                                                                offset=offset, p_min=p_min, p_max=p_max,
                                                                **{**PAPER, "variance": variance}))


def run_dng_tracked(toy: Toy, n: int, sigmas: torch.Tensor, generator: torch.Generator,
                    config: DNGConfig | None = None, *, sampler: Sampler = EULER_ANCESTRAL) -> MethodResult:
    """(c) DNG with the tracked posterior: dng_core.DNGRun drives the sampler, as the ComfyUI hook does.

    Every step: D = run.guide(x, sigma, D_u, None, [D_neg], 0), then the sampler's step; run.finish(x) at the end.
    DNGRun gets the sampler's parametrisation and ``stochastic_sampler``; where its estimator needs a divergence
    probe (path), guide() gets one: the exact predictions at the probe point.
    ``extra["posterior_error"]``: mean |p_tracked - p_exact| at the last sigma > 0 (the exact posterior at the
    run's own, guided samples), and the fraction on the same side of 0.5 (``posterior_side_agreement``);
    ``extra["posterior_error_along_path"]``: the same averaged over every step of the run, on the samples the
    trace keeps (its first ``max_batch``, 64). One model call per step here, so trace step i is call i.
    """
    config = config or dng_tracked_config()
    param = sampler.parametrisation
    run = DNGRun(config, sigmas, parametrisation=param, stochastic_sampler=sampler.stochastic)
    last: list = [None, 0.0]  # x and sigma of the last call with sigma > 0
    heads: list[tuple[torch.Tensor, float]] = []  # the traced samples' x and sigma at every call

    def denoise(x, s):
        pred = toy.predict(x, s, parametrisation=param)
        last[:] = [x, s]
        heads.append((x[:GuidanceTrace.max_batch], s))

        def probe(x_probe: torch.Tensor):
            at = toy.predict(x_probe, s, parametrisation=param)
            return at.d_uncond, [at.d_neg]
        return run.guide(x, s, pred.d_uncond, None, [pred.d_neg], 0.0, probe=probe if run.needs_probe else None)

    out = _sample(toy, denoise, n, sigmas, generator, sampler)
    run.finish(out)
    final_p = run.final_posterior()[0]  # the last step, to sigma = 0, carries no evidence: p at ``last``
    exact = toy.exact_log_posterior(last[0], last[1], param).exp()
    traced = run.trace.series("p")[:, 0]  # [steps, min(n, max_batch)]
    exact_traced = torch.stack([toy.exact_log_posterior(xh, sh, param).exp()[:traced.shape[1]] for xh, sh in heads])
    return MethodResult(out, {"posterior_updates": run.posterior_updates, "final_p": final_p,
                              "trace_steps": run.trace.step_indices(), "config": config.as_dict(),
                              "estimator": run.config.posterior.variance.value,
                              "posterior_error": float((final_p - exact).abs().mean()),
                              "posterior_side_agreement": float(((final_p > 0.5) == (exact > 0.5)).double().mean()),
                              "posterior_error_along_path": float((traced - exact_traced).abs().mean()),
                              "probe_calls": run.probe_calls})


def unguided_tracking_config(toy: Toy, variance: str) -> DNGConfig:
    """The tracked posterior's own accuracy: lambda0 = 0 (D = D_u, unguided paths), prior pi_removed (the exact
    posterior at sigma_max), tau 1, delta 0, no effective clamp. run_dng_tracked with it: ``posterior_error``."""
    return dng_tracked_config(prior=toy.prior, lambda0=0.0, p_min=1e-300, p_max=1 - 1e-15, variance=variance)


def exact_transition_log_pdf(mixture: GaussianMixture, x: torch.Tensor, x_next: torch.Tensor, sigma: float,
                             sigma_next: float, components: Sequence[int]) -> torch.Tensor:
    """log p(x' | x) of the *exact* reverse transition of the mixture restricted to ``components``: [N].

    Given x and component k, x0 is Gaussian, so x' ~ N(r x + (1 - r) D_k, var + (1 - r)^2 Var_k[x0 | x]) exactly;
    the transition is the mixture of these with the responsibilities w_k(x) (renormalised over ``components``).
    The DDPM kernel that dng_core uses keeps only the mean r x + (1 - r) D and the variance var.
    """
    idx = list(components)
    r = sigma_next ** 2 / sigma ** 2
    var = (sigma ** 2 - sigma_next ** 2) * sigma_next ** 2 / sigma ** 2
    lr = mixture.log_resp(x, sigma)[:, idx]
    lr = lr - torch.logsumexp(lr, dim=1, keepdim=True)
    c = mixture.shrink(sigma)[idx]
    total_var = var + (1 - r) ** 2 * mixture.stds[idx] ** 2 * (1 - c)  # Var_k[x0 | x] = s_k^2 (1 - c_k)
    out = []
    for j, k in enumerate(idx):
        mean = r * x + (1 - r) * mixture.component_denoiser(x, sigma, k)
        sq = ((x_next - mean) ** 2).sum(1)
        out.append(lr[:, j] - 0.5 * sq / total_var[j] - 0.5 * mixture.dim * torch.log(2 * math.pi * total_var[j]))
    return torch.logsumexp(torch.stack(out, 1), dim=1)


def run_dng_exact_filter(toy: Toy, n: int, sigmas: torch.Tensor, generator: torch.Generator,
                         lambda0: float = 1.0, p_max: float = TRACKED_P_MAX) -> MethodResult:
    """Diagnostic: the tracked loop of (c) with the posterior filtered through the *exact* transitions.

    Same staggering as DNGRun (the scale at x_j comes from the posterior after x_{j-1} -> x_j), prior pi_removed,
    log p += log p(x' | x, c-) - log p(x' | x). If this reproduces (b) while (c) does not, the loop and its
    staggering are right and the gap of (c) is the Gaussian (DDPM-kernel) approximation of the transitions.
    """
    sig = [float(s) for s in sigmas]
    x = sig[0] * torch.randn(n, toy.mixture.dim, generator=generator, dtype=DTYPE)
    log_p = torch.full((n,), math.log(toy.prior), dtype=DTYPE)
    everything = list(range(toy.mixture.k))
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        lam = lambda0 / torch.expm1(-log_p)
        pred = toy.predict(x, s)
        d = combine_guidance(pred.d_uncond, None, [pred.d_neg], lam[None], 0.0)
        x_next = ancestral_step(x, d, s, s_next, generator)
        if s_next > 0:
            log_p = log_p + exact_transition_log_pdf(toy.mixture, x, x_next, s, s_next, [toy.removed]) \
                - exact_transition_log_pdf(toy.mixture, x, x_next, s, s_next, everything)
            log_p = log_p.clamp(math.log(TRACKED_P_MIN), math.log(p_max))
        x = x_next
    return MethodResult(x, {})


def tracked_posterior_error(toy: Toy, n: int, sigmas: torch.Tensor, generator: torch.Generator) -> float:
    """Mean |p_tracked - p_exact| at the end of *unguided* ancestral sampling (before the final sigma' = 0 step).

    dng_core.PosteriorTracker (tau 1, delta 0, prior pi_removed, no effective clamp) against the exact posterior
    w_removed(x, sigma): the discretisation error of the tracked posterior alone, without guidance feedback.
    """
    config = PosteriorConfig(prior=toy.prior, temperature=1.0, offset=0.0, p_min=1e-300, p_max=1 - 1e-15, **PAPER)
    tracker = PosteriorTracker(config, n)
    sig = [float(s) for s in sigmas]
    x = sig[0] * torch.randn(n, toy.mixture.dim, generator=generator, dtype=DTYPE)
    for i in range(len(sig) - 2):
        s, s_next = sig[i], sig[i + 1]
        pred = toy.predict(x, s)
        x_next = ancestral_step(x, pred.d_uncond, s, s_next, generator)
        tracker.update(x, x_next, pred.d_neg, pred.d_uncond, s, s_next)
        x = x_next
    exact = toy.exact_log_posterior(x, sig[-2]).exp()
    return float((tracker.p - exact).abs().mean())


# ---- distances ------------------------------------------------------------------------------------------------

def projection_directions(dim: int, count: int = 64, seed: int = 0) -> np.ndarray:
    """Fixed unit directions for the sliced Wasserstein distance ([count, dim]); 1-D: the single direction."""
    if dim == 1:
        return np.ones((1, 1))
    if dim == 2:  # evenly spread angles in [0, pi): deterministic and covers all directions
        ang = (np.arange(count) + 0.5) * np.pi / count
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    v = np.random.default_rng(seed).standard_normal((count, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: np.ndarray | None = None) -> float:
    """Sliced W1: the average over unit directions of W1 between the projected samples (= W1 in 1-D)."""
    a_np = np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1)
    b_np = np.asarray(b, dtype=np.float64).reshape(b.shape[0], -1)
    dirs = projection_directions(a_np.shape[1]) if directions is None else directions
    pa = np.sort(dirs @ a_np.T, axis=1)  # [directions, N]: sort along contiguous rows
    pb = np.sort(dirs @ b_np.T, axis=1)
    return float(np.abs(pa - pb).mean())


def noise_floor(target: GaussianMixture, n: int, generator: torch.Generator, pairs: int = 10) -> list[float]:
    """Distances between pairs of independent exact target samples of size n: the sampling-noise floor."""
    return [sliced_wasserstein(target.sample(n, generator)[0], target.sample(n, generator)[0]) for _ in range(pairs)]


def mode_fractions(mixture: GaussianMixture, samples: torch.Tensor) -> np.ndarray:
    """Fraction of samples whose most responsible component (sigma = 0) is k, for every k: [K]."""
    labels = mixture.classify(samples)
    return np.bincount(labels.numpy(), minlength=mixture.k) / samples.shape[0]


def kept_relative_weights(toy: Toy, samples: torch.Tensor) -> np.ndarray:
    """Fractions of the kept modes among the samples in kept modes (compare with toy.target.weights)."""
    frac = mode_fractions(toy.mixture, samples)[toy.kept]
    return frac / frac.sum()


# ---- the whole Fig. 1 experiment ------------------------------------------------------------------------------

N_SAMPLES = 20_000
STEPS = 256
SIGMA_MAX = 80.0  # ~33x the 1-D data's standard deviation (2.4); SD uses 14.6 for unit-scale latents
SIGMA_MIN = 1e-3
FLOOR_PAIRS = 10


def fig1_sigmas(steps: int = STEPS) -> torch.Tensor:
    return karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)


def sampler_sigmas(sampler: Sampler, steps: int = STEPS) -> torch.Tensor:
    """The schedule of the Fig. 1 runs in the sampler's state: VE Karras 80 -> 1e-3 (``fig1_sigmas``), or the
    flow ``simple`` schedule from t = 1 (``flow_sigmas``)."""
    return fig1_sigmas(steps) if sampler.parametrisation is VE else flow_sigmas(steps)


def tracked_method(variance: str) -> str:
    """The name of the tracked run with this estimator in Fig1Result: "dng_tracked" (kernel) or
    "dng_tracked_<variance>"."""
    return "dng_tracked" if variance == PAPER["variance"] else f"dng_tracked_{variance}"


@dataclass
class Fig1Result:
    toy: Toy
    n: int
    steps: int
    reference: torch.Tensor  # an exact target sample of size n
    floor: list[float]  # distances between independent exact target samples of size n
    samples: dict[str, torch.Tensor]
    extra: dict[str, dict]
    sampler: Sampler = EULER_ANCESTRAL

    @property
    def floor_mean(self) -> float:
        return float(np.mean(self.floor))

    def distance(self, method: str) -> float:
        return sliced_wasserstein(self.samples[method], self.reference)

    def forbidden_mass(self, method: str) -> float:
        return float(mode_fractions(self.toy.mixture, self.samples[method])[self.toy.removed])

    def kept_weights(self, method: str) -> np.ndarray:
        return kept_relative_weights(self.toy, self.samples[method])


def fig1_summary(res: Fig1Result) -> dict:
    """The figures of one Fig1Result as plain numbers (for the flow test's report and benchmarks/flow_fig1.py):
    distances and their size in noise floors, removed-mode mass and kept weights per method, and for every
    tracked run its estimator and posterior errors (run_dng_tracked's extras)."""
    toy = res.toy
    return {
        "toy": toy.name, "sampler": res.sampler.name, "parametrisation": res.sampler.parametrisation.value,
        "n": res.n, "steps": res.steps, "noise_floor": res.floor_mean, "noise_floor_pairs": res.floor,
        "distance": {m: res.distance(m) for m in res.samples},
        "distance_in_floors": {m: res.distance(m) / res.floor_mean for m in res.samples},
        "removed_mode_mass": {m: res.forbidden_mass(m) for m in res.samples},
        "removed_mode_mass_exact_target_sample": float(mode_fractions(toy.mixture, res.reference)[toy.removed]),
        "kept_relative_weights": {m: res.kept_weights(m).tolist() for m in res.samples},
        "target_kept_weights": toy.target.weights.tolist(),
        "tracked": {m: {k: e[k] for k in ("estimator", "posterior_error", "posterior_side_agreement",
                                         "posterior_error_along_path", "posterior_updates", "probe_calls")}
                    for m, e in res.extra.items() if m.startswith("dng_tracked")},
    }


def run_fig1(toy: Toy, n: int = N_SAMPLES, steps: int = STEPS, seed: int = 0,
             tracked_config: DNGConfig | None = None, progress: Callable[[str], None] | None = None, *,
             sampler: Sampler = EULER_ANCESTRAL, tracked_variances: Sequence[str] = (PAPER["variance"],),
             methods: Sequence[str] = ("cfg_complement", "dng_exact", "np")) -> Fig1Result:
    """The four methods of Fig. 1 on one toy, the exact reference sample and the noise floor.

    (a) cfg_complement and (b) dng_exact share one seed: they are the same sampler with algebraically equal
    denoisers, so their samples must coincide up to rounding. (c) and (d) get their own seeds.
    ``sampler``: the step rule and state (schedule: ``sampler_sigmas``). ``tracked_variances``: one tracked run
    (c) per estimator, all on one seed (``tracked_method`` names them; ``tracked_config`` with the variance
    replaced). ``methods``: which of (a), (b), (d) to run.
    """
    sigmas = sampler_sigmas(sampler, steps)
    say = progress or (lambda _msg: None)
    gen = lambda k: torch.Generator().manual_seed(1000 * seed + k)  # noqa: E731
    reference = toy.target.sample(n, gen(1))[0]
    floor = noise_floor(toy.target, n, gen(2), pairs=FLOOR_PAIRS)
    samples: dict[str, torch.Tensor] = {}
    extra: dict[str, dict] = {}
    for name, fn, k in (("cfg_complement", run_cfg_complement, 3), ("dng_exact", run_dng_exact, 3),
                        ("np", run_np, 4)):
        if name not in methods:
            continue
        say(f"{toy.name}: {name}")
        res = fn(toy, n, sigmas, gen(k), sampler=sampler)
        samples[name], extra[name] = res.samples, res.extra
    base = tracked_config or dng_tracked_config()
    for variance in tracked_variances:
        name = tracked_method(variance)
        say(f"{toy.name}: {name}")
        config = replace(base, posterior=replace(base.posterior, variance=variance))
        res = run_dng_tracked(toy, n, sigmas, gen(5), config, sampler=sampler)
        samples[name], extra[name] = res.samples, res.extra
    return Fig1Result(toy, n, steps, reference, floor, samples, extra, sampler)
