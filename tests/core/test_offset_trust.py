"""The trust radius of the one-sided evidence's offset (path.offset_trust_radius, PosteriorConfig.offset_trust).

The path estimator reads log p(c- | x) at the state without DNG's pushes, x + offset, with the predictions made at
the pushed x: a first-order reading whose error is half of offset . (Cov_c - Cov_u) / sigma^4 . offset. Known
answers: the radius in both parametrisations, the clamp, the bound on two Gaussians (where the Hessian is known in
closed form), and a whole DNG run on the exact 1-D mixture where, without the radius, DNG's own push is read as
evidence for the concept (the runaway measured on mnist16, docs/step_invariance.md, Sessions 14-15).
"""

from __future__ import annotations

import math

import pytest
import torch

from devtools.toy_mixture import TOY_1D, VE, Sampler, flow_euler_step, karras_sigmas, run_dng_tracked
from dng_core import DNGConfig, Parametrisation, PosteriorConfig
from dng_core.path import clamp_offset, offset_trust_radius

EULER = Sampler("euler", flow_euler_step, VE, False)  # x' = x + (s' - s) (x - D) / s, VE's euler as well


def test_the_radius_is_trust_times_sigma_in_the_ve_state() -> None:
    assert offset_trust_radius(0.7, Parametrisation.VARIANCE_EXPLODING, 1.5) == pytest.approx(1.05)
    # flow state x = (1 - t) x_ve: alpha sigma_ve = t
    assert offset_trust_radius(0.3, Parametrisation.RECTIFIED_FLOW, 2.0) == pytest.approx(0.6)
    assert offset_trust_radius(0.7, Parametrisation.VARIANCE_EXPLODING, 0.0) == math.inf
    with pytest.raises(ValueError, match="offset_trust"):
        PosteriorConfig(offset_trust=-1.0)


def test_the_clamp_scales_each_row_onto_the_ball_and_keeps_its_direction() -> None:
    offset = torch.zeros(2, 3, 1, 2, 2, dtype=torch.float64)
    offset[0, 0, 0, 0, 0] = 3.0   # norm 3: scaled to 2
    offset[1, 2] = 0.5            # norm 1: kept
    out = clamp_offset(offset, 2.0)
    assert float(out[0, 0].norm()) == pytest.approx(2.0)
    assert float(out[0, 0, 0, 0, 0]) == pytest.approx(2.0)
    torch.testing.assert_close(out[1, 2], offset[1, 2])
    assert float(out.abs().sum()) == pytest.approx(2.0 + 2.0)
    assert clamp_offset(offset, math.inf) is offset


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_the_first_order_reading_is_within_trust_squared_over_two_nats_on_gaussians(sigma: float) -> None:
    """Two Gaussian classes N(m_k, s_k^2 I): l = log N(x; m_c, (s_c^2 + sigma^2) I) - log N(x; m_u, (s_u^2 +
    sigma^2) I), whose Hessian (1 / (s_u^2 + sigma^2) - 1 / (s_c^2 + sigma^2)) I lies within +-1 / sigma^2: the
    error of l(x) + grad l(x) . offset at |offset| = sigma is at most 1/2 nat, and reaches it as s_c -> 0,
    s_u -> infinity (the bound is tight)."""
    g = torch.Generator().manual_seed(0)
    d = 16

    def l(x, m_c, v_c, m_u, v_u):
        return (-((x - m_c) ** 2).sum(-1) / (2 * v_c) - d / 2 * math.log(v_c)
                + ((x - m_u) ** 2).sum(-1) / (2 * v_u) + d / 2 * math.log(v_u))

    worst = 0.0
    for s_c, s_u in ((0.3, 1.0), (1e-4, 1e4), (2.0, 0.1)):
        m_c, m_u = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
        v_c, v_u = s_c ** 2 + sigma ** 2, s_u ** 2 + sigma ** 2
        x = 0.5 * (m_c + m_u) + torch.randn(64, d, generator=g, dtype=torch.float64)  # l stays O(1e4): exact in f64
        off = torch.randn(64, d, generator=g, dtype=torch.float64)
        off = clamp_offset(off[None] * 1e6, offset_trust_radius(sigma, VE, 1.0))[0]  # |off| = sigma
        grad = -(x - m_c) / v_c + (x - m_u) / v_u  # (D_c - D_u) / sigma^2 by Tweedie
        err = (l(x + off, m_c, v_c, m_u, v_u) - l(x, m_c, v_c, m_u, v_u) - (grad * off).sum(-1)).abs()
        assert float(err.max()) <= 0.5 + 1e-9
        worst = max(worst, float(err.max()))
    assert worst > 0.49


def _euler_run(offset_trust: float) -> tuple[float, float, float]:
    """DNG (node defaults but lambda0 75, ``offset_trust`` and the push at every noise level, deterministic_push
    'matched', the default before session 22, under which the runaway was measured) on the exact 1-D mixture,
    euler, 20 Karras steps: (share of samples in the removed mode, share whose final p is at p_max, share
    destroyed: > 4 of their mode's standard deviations from its mean)."""
    config = DNGConfig(lambda0=75.0, posterior=PosteriorConfig(offset_trust=offset_trust), deterministic_push="matched")
    res = run_dng_tracked(TOY_1D, 2000, karras_sigmas(20, 0.002, 80.0), torch.Generator().manual_seed(0), config,
                          sampler=EULER)
    mix = TOY_1D.mixture
    labels = mix.classify(res.samples)
    far = (res.samples - mix.means[labels]).norm(dim=1) / mix.stds[labels]
    at_top = res.extra["final_p"] > 0.99 * config.posterior.p_max
    return (float((labels == TOY_1D.removed).double().mean()), float(at_top.double().mean()),
            float((far > 4).double().mean()))


def test_a_large_push_is_not_read_as_evidence_for_the_concept() -> None:
    """Without the radius (offset_trust 0, the estimator before session 15) DNG's push at p_max is carried as an
    offset far beyond sigma and read, linearly, as evidence for the concept: about a quarter of the samples end
    pinned at p_max and pushed > 4 sd off their mode (measured: 26 % destroyed, 45 % at p_max with 19 % in
    the removed mode). With the default radius p ends at p_max for the samples in the removed mode and only
    them, no sample is destroyed, and the removal is the same."""
    removed_0, top_0, destroyed_0 = _euler_run(0.0)
    removed_1, top_1, destroyed_1 = _euler_run(PosteriorConfig().offset_trust)
    assert destroyed_0 > 0.10 and top_0 > removed_0 + 0.10  # the runaway, as measured on mnist16
    assert destroyed_1 < 0.005
    assert abs(top_1 - removed_1) < 0.01
    assert abs(removed_1 - removed_0) < 0.01
