"""dng_core.transmission on the case with a known answer: the linear-Gaussian model, sampled with ComfyUI's euler
and euler_ancestral updates (comfy/k_diffusion/sampling.py: sample_euler, sample_euler_ancestral with eta 1).

Both updates are linear in x and in the prediction, so the effect of a push on the final sample is the same for
every draw of the ancestral noise: it is propagated here without noise, exactly."""

from __future__ import annotations

import math

import pytest

from dng_core.transmission import ode_gain, ode_to_sde_gain_ratio, sde_gain

S = 0.5  # the data's scale
SIGMAS = [80.0 * (0.002 / 80.0) ** (i / 3999) for i in range(4000)] + [0.0]


def _final_displacement(push_at: int, ancestral: bool) -> float:
    """d x_final / d(push) for a unit push on D at step ``push_at`` (D -> D + 1 at that step only)."""
    e = 0.0  # the difference of x between the pushed and the unpushed run
    for i, (a, b) in enumerate(zip(SIGMAS[:-1], SIGMAS[1:])):
        k = S * S / (S * S + a * a)  # D(x) = mu + k (x - mu): d D = k d x (+ the push)
        d_d = k * e + (1.0 if i == push_at else 0.0)
        if ancestral:
            up = math.sqrt(b * b * (a * a - b * b) / (a * a)) if b > 0 else 0.0
            to = math.sqrt(b * b - up * up)  # sigma_down
        else:
            to = b
        # x' = x + (x - D) / a * (to - a), on the differences
        e = e + (e - d_d) / a * (to - a)
    return e


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0, 8.0])
def test_gains_and_their_ratio_on_the_linear_gaussian_model(sigma):
    i = min(range(len(SIGMAS) - 1), key=lambda j: abs(SIGMAS[j] - sigma))
    a, b = SIGMAS[i], SIGMAS[i + 1]
    ode, sde = _final_displacement(i, ancestral=False), _final_displacement(i, ancestral=True)
    # the step's own share: (1 - b / a) on euler, (1 - b^2 / a^2) on euler_ancestral; then the gain from b to 0
    assert ode == pytest.approx((1 - b / a) * ode_gain(b, S), rel=2e-3)
    assert sde == pytest.approx((1 - b * b / (a * a)) * sde_gain(b, S), rel=2e-3)
    assert sde / ode == pytest.approx(ode_to_sde_gain_ratio(a, S), rel=5e-3)


def test_the_ratio_crosses_one_at_sqrt3_s_and_bad_scales_are_refused():
    assert ode_to_sde_gain_ratio(math.sqrt(3) * S, S) == pytest.approx(1.0)
    assert ode_to_sde_gain_ratio(0.0, S) == 2.0 and ode_to_sde_gain_ratio(math.inf, S) == 0.0
    assert ode_to_sde_gain_ratio(100 * S, S) == pytest.approx(0.02, rel=1e-3)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="data_scale"):
            ode_to_sde_gain_ratio(1.0, bad)
