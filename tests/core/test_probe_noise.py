"""The path estimator's probe noise (dng_core/path.py): its variance bound, and the debiasing that uses it.

On a linear denoiser pair D_c(x) = M_c x, D_u(x) = M_u x the probe's finite difference is exact, so the
Hutchinson sample's mean (tr A), its variance (sum_{i != j} A_ij^2 + A_ij A_ji) and the bound's mean
(2 ||A||_F^2), A = M_c - M_u, are known in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from dng_core.path import (PROBE_SEED, PathPoint, divergence_difference, divergence_noise_bound,
                           path_log_odds_change, path_noise_variance, probe_direction)
from dng_core.posterior import PosteriorConfig, PosteriorTracker, PosteriorVariance

N = 48  # dimensions of the toy "image"
DRAWS = 4000


def _linear_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    m_c = torch.randn(N, N, generator=gen, dtype=torch.float64) / math.sqrt(N)
    m_u = torch.randn(N, N, generator=gen, dtype=torch.float64) / math.sqrt(N)
    return m_c, m_u


def _probe_samples(sigma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Hutchinson samples, bound estimates, A) over DRAWS probe directions of the linear pair at one x."""
    m_c, m_u = _linear_pair()
    x = torch.randn(1, N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 0.01 * sigma
    d_c, d_u = x @ m_c.T, x @ m_u.T
    est, bound = [], []
    for step in range(DRAWS):
        eps = probe_direction((1, N), step).to(torch.float64)
        xp = x + h * eps
        args = (d_c, d_u, xp @ m_c.T, xp @ m_u.T, sigma)
        est.append(divergence_difference(eps, h, *args))
        bound.append(divergence_noise_bound(h, *args))
    return torch.cat(est), torch.cat(bound), m_c - m_u


def test_the_probe_and_its_variance_bound_match_their_closed_forms_on_a_linear_pair():
    est, bound, a = _probe_samples()
    trace = float(torch.trace(a))
    off = a - torch.diag(torch.diag(a))
    exact_var = float((off * off).sum() + (off * off.T).sum())  # Rademacher: sum_{i != j} A_ij^2 + A_ij A_ji
    frob2 = float((a * a).sum())
    se_mean = math.sqrt(exact_var / DRAWS)
    assert abs(float(est.mean()) - trace) < 4 * se_mean
    assert float(est.var()) == pytest.approx(exact_var, rel=0.1)
    assert float(bound.mean()) == pytest.approx(2 * frob2, rel=0.03)
    assert exact_var <= 2 * frob2  # the bound is one (and not a loose one for a generic A: ~ a factor 1-2)
    assert float(bound.mean()) < 2.5 * exact_var


def test_the_steps_shares_add_up_to_the_run_variance_bound():
    """Probes shared by adjacent steps are correlated; the shares must still bound the sum's variance, and on a
    geometric schedule with one noise level per point, where adjacent coefficients are nearly equal, nearly
    attain it."""
    sigmas = [10.0 * 0.8 ** k for k in range(15)]
    v = 3.0  # the same probe variance at every point
    gen = torch.Generator().manual_seed(2)
    batch = 20000
    zeros = torch.zeros(batch, 1, dtype=torch.float64)
    points = [PathPoint(zeros, s, zeros, zeros, math.sqrt(v) * torch.randn(batch, generator=gen, dtype=torch.float64),
                        torch.full((batch,), v, dtype=torch.float64)) for s in sigmas]
    total = sum(path_log_odds_change(a, b) for a, b in zip(points, points[1:]))
    shares = sum(path_noise_variance(a, b) for a, b in zip(points, points[1:]))
    exact = v * sum((0.5 * ((sigmas[k + 1] if k + 1 < len(sigmas) else sigmas[k])
                            - (sigmas[k - 1] if k > 0 else sigmas[k])) / sigmas[k]) ** 2
                    for k in range(len(sigmas)))
    assert float(total.var()) == pytest.approx(exact, rel=0.05)
    assert exact <= float(shares[0]) < 1.2 * exact


def test_debiasing_takes_tau_times_half_the_variance_off_the_evidence():
    sigma0, sigma1 = 2.0, 1.5
    x = torch.zeros(3, 4, dtype=torch.float64)
    var0 = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    var1 = torch.tensor([0.0, 2.0, 8.0], dtype=torch.float64)
    start = PathPoint(x, sigma0, x, x, torch.zeros(3, dtype=torch.float64), var0)
    end = PathPoint(x, sigma1, x, x, torch.zeros(3, dtype=torch.float64), var1)
    expected_v = 0.5 * (sigma1 - sigma0) ** 2 * (var0 / sigma0 ** 2 + var1 / sigma1 ** 2)
    assert torch.allclose(path_noise_variance(start, end), expected_v)
    logs = {}
    for debias in (False, True):
        config = PosteriorConfig(variance=PosteriorVariance.PATH, prior=0.01, temperature=0.9, max_rate=0.0,
                                 debias_probe=debias)
        logs[debias] = PosteriorTracker(config, 3).propose_path(start, end)
    assert torch.allclose(logs[False] - logs[True], 0.9 * 0.9 * expected_v / 2)
    # without a variance (a host or step that gave none) nothing is taken off
    bare = [PathPoint(x, s, x, x, torch.zeros(3, dtype=torch.float64)) for s in (sigma0, sigma1)]
    assert torch.equal(path_noise_variance(*bare), torch.zeros(3, dtype=torch.float64))


def test_debias_probe_must_be_a_bool():
    with pytest.raises(ValueError, match="debias_probe"):
        PosteriorConfig(debias_probe="yes")  # type: ignore[arg-type]


def test_a_path_run_with_debias_probe_takes_off_its_probes_bound():
    """A whole DNG run on a linear toy whose concept slope differs from the unconditional one (A = c(sigma) I,
    so each probe's bound is 2 c^2 n exactly): with lambda0 0 the paths of the two runs are the same, and the
    final log posteriors differ by tau^2 / 2 times the sum of the steps' shares."""
    from dng_core import DNGConfig, DNGRun

    schedule = [14.6, 8.0, 4.5, 2.4, 1.2, 0.6, 0.28, 0.1, 0.0]
    shape = (2, 2, 4, 4)
    n = 2 * 4 * 4
    target = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.05

    def slopes(sigma: float) -> tuple[float, float]:
        return 1.0 / (1.0 + sigma ** 2), 1.0 / (1.0 + 2.0 * sigma ** 2)

    def final_log_p(debias: bool) -> torch.Tensor:
        config = DNGConfig(0.0, PosteriorConfig(prior=0.2, temperature=0.7, offset=0.0, max_rate=0.0,
                                                variance="path", evidence="sampled", debias_probe=debias))
        run = DNGRun(config, schedule)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 14.6
        for sigma, sigma_next in zip(schedule, schedule[1:]):
            k_u, k_c = slopes(sigma)

            def probe(xp, k_u=k_u, k_c=k_c):
                return k_u * xp, [k_c * xp + (1 - k_c) * target]
            d_u = k_u * x
            out = run.guide(x, torch.tensor([sigma] * shape[0], dtype=torch.float64), d_u, None,
                            [k_c * x + (1 - k_c) * target], 0.0, probe=probe)
            x = x + (sigma_next - sigma) * (x - out) / sigma
        run.finish(x)
        return run.trackers[0].log_p

    plain, debiased = final_log_p(False), final_log_p(True)
    bounds = [2.0 * (slopes(s)[1] - slopes(s)[0]) ** 2 * n for s in schedule[:-1]]
    shares = sum(0.5 * (s1 - s0) ** 2 * (v0 / s0 ** 2 + v1 / s1 ** 2)
                 for s0, s1, v0, v1 in zip(schedule[:-2], schedule[1:-1], bounds, bounds[1:]))
    assert shares > 0.05  # the toy's probes are noisy enough for the check to mean something
    assert bool(((plain > math.log(1e-6)) & (plain < math.log(0.8))).all())  # no clamp in play
    torch.testing.assert_close(plain - debiased, torch.full_like(plain, 0.7 ** 2 * shares / 2), rtol=1e-9, atol=1e-12)


def test_the_probe_stream_is_per_image_and_fixed_by_seed_step_and_index():
    """Image i's direction depends on (seed, step, i) only: the same in a batch of 3 as of 64, a fixed draw of a
    generator seeded (seed * 1000003 + step) * 1000033 + i (the stream the committed benchmark rows were made
    with), +-1 with about half of each sign, and different between steps and between images."""
    shape = (64, 4, 8, 8)
    big, small = probe_direction(shape, 5), probe_direction((3, *shape[1:]), 5)
    assert torch.equal(big[:3], small)
    for i in (0, 2, 63):
        gen = torch.Generator().manual_seed((PROBE_SEED * 1_000_003 + 5) * 1_000_033 + i)
        want = torch.randint(0, 2, shape[1:], generator=gen, dtype=torch.int8).to(torch.float32) * 2 - 1
        assert torch.equal(big[i], want)
    assert set(big.unique().tolist()) == {-1.0, 1.0} and abs(float(big.mean())) < 0.02
    assert not torch.equal(big, probe_direction(shape, 6)) and not torch.equal(big[0], big[1])
    assert big.dtype == torch.float32
