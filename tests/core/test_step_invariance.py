"""One setting at every step count (issue 11): the ``rate`` form and the path estimator on the exact toys.

* The offset is a rate per e-fold of sigma: its total over a schedule does not depend on the step count (an exact
  known answer when the two predictions agree, so there is no evidence).
* The bound: no step raises log p by more than R min(ln(sigma / sigma'), 1); a fall is not bounded.
* With the default setting (prior: the toy's own), the posterior trajectories of euler_ancestral at 20, 40 and
  80 steps along one Brownian path agree; the paper's per-step offset does not.
* The path estimator of dng_core follows the exact posterior on a deterministic (euler) path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from devtools.toy_mixture import DTYPE, TOY_1D, TOY_2D, Toy, karras_sigmas
from dng_core import MAX_RATE, PAPER_MODE, DNGConfig, DNGRun, PathPoint, PosteriorConfig, PosteriorTracker

SIGMA_MIN, SIGMA_MAX = 0.03, 80.0


def _toy_probe(toy: Toy, sigma: float):
    """The path estimator's divergence probe on a toy: its unguided predictions at another state, same sigma."""
    def probe(x_probe: torch.Tensor):
        at = toy.predict(x_probe, sigma)
        return at.d_uncond, [at.d_neg]
    return probe


def _posterior_trajectories(toy: Toy, steps: tuple[int, ...], config: DNGConfig, n: int = 1000, seed: int = 0,
                            stochastic: bool = True) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Unguided sampling of the toy at each step count, every run driven by the same Brownian motion (so the
    paths converge as the steps shrink). Returns {steps: (ln sigma per step, log p [steps, samples])}."""
    g = torch.Generator().manual_seed(seed)
    schedules = {s: [float(v) for v in karras_sigmas(s, SIGMA_MIN, SIGMA_MAX)] for s in steps}
    # W in u = sigma^2 on the union of the schedules' levels: an ancestral step's noise is (sigma'/sigma) dW
    levels = sorted({v * v for sched in schedules.values() for v in sched}, reverse=True)
    brownian = {levels[0]: torch.zeros(n, toy.mixture.dim, dtype=DTYPE)}
    for a, b in zip(levels[:-1], levels[1:]):
        brownian[b] = brownian[a] + math.sqrt(a - b) * torch.randn(n, toy.mixture.dim, generator=g, dtype=DTYPE)
    z0 = torch.randn(n, toy.mixture.dim, generator=g, dtype=DTYPE)
    out = {}
    for count, sig in schedules.items():
        run = DNGRun(config, sig, stochastic_sampler=stochastic)
        x = sig[0] * z0
        for a, b in zip(sig[:-1], sig[1:]):
            pred = toy.predict(x, a)
            d = run.guide(x, a, pred.d_uncond, None, [pred.d_neg], 0.0, probe=_toy_probe(toy, a))
            if b == 0.0:
                x = d
            elif stochastic:
                r = b * b / (a * a)
                x = r * x + (1 - r) * d + (b / a) * (brownian[b * b] - brownian[a * a])
            else:
                x = x + (b - a) * (x - d) / a
        run.finish(x)
        kept = [st for st in run.trace.steps if st.sigma > 0]
        out[count] = (np.array([math.log(st.sigma) for st in kept]),
                      np.array([[math.log(max(v, 1e-300)) for v in st.p[0]] for st in kept]))
    return out


def _gap_to_finest(traj: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[int, float]:
    """Mean |p_n - p_finest| per sample over the coarsest schedule's noise levels (log p interpolated in
    ln sigma)."""
    finest, coarsest = max(traj), min(traj)
    grid = traj[coarsest][0]

    def at_grid(ls: np.ndarray, lp: np.ndarray) -> np.ndarray:
        return np.exp(np.stack([np.interp(-grid, -ls, lp[:, j]) for j in range(lp.shape[1])], 1))
    ref = at_grid(*traj[finest])
    return {n: float(np.abs(at_grid(*traj[n]) - ref).mean()) for n in traj if n != finest}


def _final_mean_p(traj: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[int, float]:
    return {n: float(np.exp(lp[-1]).mean()) for n, (_, lp) in traj.items()}


@pytest.mark.parametrize("steps", [5, 20, 80])
@pytest.mark.parametrize("offset", [0.5, -0.25])
def test_offset_is_a_rate_per_e_fold_of_sigma(steps, offset):
    """No evidence (D_neg = D_u): log p ends at log p0 + offset * ln(sigma_0 / sigma_last) at any step count (the
    last step, to sigma = 0, carries none)."""
    sig = [float(v) for v in karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)]
    for variance in ("kernel", "path"):
        tracker = PosteriorTracker(PosteriorConfig(prior=0.01, offset=offset, max_rate=0.0, variance=variance), 2)
        x = torch.randn(2, 3, dtype=DTYPE)
        for a, b in zip(sig[:-1], sig[1:]):
            x_next = 0.5 * x
            if variance == "kernel":
                tracker.update(x, x_next, x * 0.1, x * 0.1, a, b)
            else:
                zero = torch.zeros(2, dtype=DTYPE)
                tracker.commit(tracker.propose_path(PathPoint(x, a, x * 0.1, x * 0.1, zero),
                                                    PathPoint(x_next, b, x_next * 0.1, x_next * 0.1, zero)))
            x = x_next
        expected = math.log(0.01) + offset * math.log(sig[0] / sig[-2])
        assert tracker.log_p.tolist() == pytest.approx([min(expected, math.log(0.8))] * 2, rel=1e-9)


def test_no_step_raises_log_p_by_more_than_the_bound_and_a_fall_is_free():
    config = PosteriorConfig(prior=1e-5, temperature=1.0)
    x = torch.zeros(1, 64, dtype=DTYPE)
    d_u = torch.zeros(1, 64, dtype=DTYPE)
    d_neg = torch.full((1, 64), 5.0, dtype=DTYPE)
    for sigma, sigma_next in ((2.0, 1.5), (0.18, 0.01)):  # a small step, and one spanning 2.9 e-folds
        tracker = PosteriorTracker(config, 1)
        # x' right at the concept's kernel mean: strong evidence for the concept
        tracker.update(x, d_neg.clone(), d_neg, d_u, sigma, sigma_next)
        rise = float(tracker.log_p[0]) - math.log(1e-5)
        assert rise == pytest.approx(MAX_RATE * min(math.log(sigma / sigma_next), 1.0), rel=1e-9)
    assert MAX_RATE < math.log(0.8 / 0.2) - math.log(1e-6 / (1 - 1e-6))  # no step from p_min to p_max
    tracker = PosteriorTracker(PosteriorConfig(prior=0.5, p_max=0.9, temperature=1.0), 1)
    tracker.update(x, -d_neg.clone(), d_neg, d_u, 2.0, 1.5)  # strong evidence against: unbounded fall
    assert float(tracker.log_p[0]) == pytest.approx(math.log(1e-6))  # to the floor in one step: 13 nats > R


@pytest.mark.parametrize("toy", [TOY_1D, TOY_2D], ids=lambda t: t.name)
def test_default_setting_gives_the_same_posterior_at_20_40_and_80_ancestral_steps(toy):
    """The default setting (prior: the toy's own weight of the removed mode), euler_ancestral along one Brownian
    path: the trajectories converge with the step count. Measured (N = 1000, seed 0): mean |p_n - p_80| over the
    20-step levels 0.048 / 0.033 (1-D, n = 20 / 40), 0.032 / 0.022 (2-D); mean final p 0.214 / 0.217 / 0.207
    (1-D), 0.099 / 0.090 / 0.074 (2-D). Tolerance: 0.08 per sample, 0.05 on the mean final p."""
    config = DNGConfig(lambda0=0.0, posterior=PosteriorConfig(prior=toy.prior))
    traj = _posterior_trajectories(toy, (20, 40, 80), config)
    gap = _gap_to_finest(traj)
    assert gap[20] < 0.08 and gap[40] < 0.08 and gap[40] < gap[20]
    final = _final_mean_p(traj)
    assert max(final.values()) - min(final.values()) < 0.05
    assert min(final.values()) > 0.05  # the posterior did move: not agreement by standing still


def test_the_papers_per_step_offset_changes_meaning_with_the_step_count():
    """Algorithm 2 with the authors' CIFAR-10 offset (2e-4 per step, tau 0.2): the mean final p at 80 steps is
    over twice that at 20 (measured 0.092 vs 0.029 on the 1-D toy); the rate form keeps them together (above)."""
    config = DNGConfig(lambda0=0.0, posterior=PosteriorConfig(prior=0.05, temperature=0.2, offset=2e-4,
                                                              **PAPER_MODE))
    final = _final_mean_p(_posterior_trajectories(TOY_1D, (20, 80), config))
    assert final[80] > 2.0 * final[20]


def test_path_estimator_follows_the_exact_posterior_on_a_deterministic_path():
    """dng_core's path estimator with its own divergence probe (one Rademacher direction: exact in 1-D up to the
    finite difference), euler steps, no clamp, no bound, tau 1, started at the prior: mean |p - p_exact| < 2e-3 at
    the last sigma > 0 (the benchmark's implementation, started at the exact posterior with exact divergences:
    3e-4), where the kernel is off by 0.3 (tests/core/test_path_estimator_toy.py)."""
    sig = [float(v) for v in karras_sigmas(20, SIGMA_MIN, SIGMA_MAX)]
    posterior = PosteriorConfig(prior=TOY_1D.prior, temperature=1.0, offset=0.0, p_min=1e-300, p_max=1 - 1e-15,
                                variance="path", max_rate=0.0)
    g = torch.Generator().manual_seed(0)
    x0 = sig[0] * torch.randn(4000, 1, generator=g, dtype=DTYPE)
    run = DNGRun(DNGConfig(lambda0=0.0, posterior=posterior), sig, stochastic_sampler=False)
    x = x0
    for a, b in zip(sig[:-2], sig[1:-1]):
        pred = TOY_1D.predict(x, a)

        def probe(x_probe: torch.Tensor, s: float = a):
            at = TOY_1D.predict(x_probe, s)
            return at.d_uncond, [at.d_neg]
        d = run.guide(x, a, pred.d_uncond, None, [pred.d_neg], 0.0, probe=probe)
        x = x + (b - a) * (x - d) / a
    pred = TOY_1D.predict(x, sig[-2])
    run.guide(x, sig[-2], pred.d_uncond, None, [pred.d_neg], 0.0,
              probe=lambda xp: (TOY_1D.predict(xp, sig[-2]).d_uncond, [TOY_1D.predict(xp, sig[-2]).d_neg]))
    run.finish()
    tracked = run.final_posterior()[0]  # p at the last sigma > 0, every sample
    exact = TOY_1D.exact_log_posterior(x, sig[-2]).exp()
    err = float((tracked - exact).abs().mean())
    side = float(((tracked > 0.5) == (exact > 0.5)).double().mean())
    print(f"[path estimator, 1-D toy, euler 20] mean |p - p_exact| {err:.2e}, same side of 0.5 {side:.4f}")
    assert err < 2e-3 and side > 0.998


def _path_run_log_p(x0: torch.Tensor, sig: list[float]) -> torch.Tensor:
    """log p per step [steps, samples] of a guided euler run with the path estimator on the 2-D toy."""
    posterior = PosteriorConfig(variance="path")
    run = DNGRun(DNGConfig(lambda0=5.0, posterior=posterior), sig, stochastic_sampler=False)
    x = x0
    for a, b in zip(sig[:-1], sig[1:]):
        pred = TOY_2D.predict(x, a)
        d = run.guide(x, a, pred.d_uncond, None, [pred.d_neg], 0.0, probe=_toy_probe(TOY_2D, a))
        x = d if b == 0.0 else x + (b - a) * (x - d) / a
    run.finish(x)
    return torch.tensor([st.p[0] for st in run.trace.steps], dtype=DTYPE).log()


def test_an_images_guidance_does_not_depend_on_the_rest_of_its_batch():
    """The divergence probe draws each image's direction from its own stream (seeded by step and batch index), so
    the first images of a batch of 6 are guided exactly as the same images in a batch of 2 (as ComfyUI's initial
    noise: image i of a batch is image i of a larger batch). With one stream for the batch the directions of
    every step after the first would differ, and with them the posterior."""
    sig = [float(v) for v in karras_sigmas(12, SIGMA_MIN, SIGMA_MAX)]
    g = torch.Generator().manual_seed(3)
    x0 = sig[0] * torch.randn(6, TOY_2D.mixture.dim, generator=g, dtype=DTYPE)
    alone, in_batch = _path_run_log_p(x0[:2], sig), _path_run_log_p(x0, sig)
    assert alone.shape == (len(sig) - 1, 2)
    # equal up to float64 rounding (a batched sum may add in another order)
    assert (alone - in_batch[:, :2]).abs().max() < 1e-9
    # the probe is not idle here: other images (other directions, other states) end elsewhere
    assert (in_batch[-1, 2:] - in_batch[-1, :1]).abs().max() > 1e-3
