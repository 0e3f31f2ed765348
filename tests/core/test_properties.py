"""Bad inputs are refused with a ValueError that names the argument; any finite input gives finite outputs.

Property tests (hypothesis, few examples, no deadline) for PosteriorConfig, DNGConfig, PosteriorTracker /
posterior_increment, guidance_scale and combine_guidance. Bounds on p hold exactly for log p; p = exp(log p) can
miss them by the log/exp round trip (relative |log p| * 2.2e-16).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dng_core import (LAMBDA0_MAX, DNGConfig, NegativePromptRun, Parametrisation, PathPoint, PosteriorConfig,
                      PosteriorForm, PosteriorTracker, PosteriorVariance, combine_guidance, guidance_scale,
                      posterior_increment)

# DNG_HYPOTHESIS_EXAMPLES=1000 for a deeper search than the suite's modest default.
SETTINGS = settings(max_examples=int(os.environ.get("DNG_HYPOTHESIS_EXAMPLES", "40")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

probability = st.floats(min_value=1e-300, max_value=1.0, exclude_min=False, exclude_max=True).filter(lambda p: p > 0)
not_probability = st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan),
                            st.just(math.inf), st.just(-math.inf))
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


def _raises_naming(name: str, fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), f"{name!r} not named in {str(info.value)!r}"
    return str(info.value)


# ---- configuration --------------------------------------------------------------------------------------------

@SETTINGS
@given(a=probability, b=probability)
def test_config_p_min_must_be_below_p_max(a: float, b: float) -> None:
    p_min, p_max = max(a, b), min(a, b)  # p_min >= p_max
    msg = _raises_naming("p_min", PosteriorConfig, prior=p_max, p_min=p_min, p_max=p_max)
    assert "p_max" in msg


@SETTINGS
@given(prior=not_probability)
def test_config_prior_outside_unit_interval(prior: float) -> None:
    _raises_naming("prior", PosteriorConfig, prior=prior, p_min=1e-6, p_max=0.9)


@SETTINGS
@given(p_min=st.floats(0.01, 0.4), p_max=st.floats(0.5, 0.99), below=st.booleans(), frac=st.floats(0.01, 0.99))
def test_config_prior_outside_clamp(p_min: float, p_max: float, below: bool, frac: float) -> None:
    prior = p_min * frac if below else p_max + (1 - p_max) * frac
    assume(0 < prior < 1 and not (p_min <= prior <= p_max))
    _raises_naming("prior", PosteriorConfig, prior=prior, p_min=p_min, p_max=p_max)


@SETTINGS
@given(name=st.sampled_from(["p_min", "p_max"]), value=not_probability)
def test_config_bounds_must_be_probabilities(name: str, value: float) -> None:
    kwargs = {"prior": 0.5, "p_min": 1e-6, "p_max": 0.9, name: value}
    _raises_naming(name, PosteriorConfig, **kwargs)


@SETTINGS
@given(tau=st.one_of(st.floats(max_value=0.0), non_finite))
def test_config_temperature_must_be_positive_and_finite(tau: float) -> None:
    _raises_naming("temperature", PosteriorConfig, temperature=tau)


@SETTINGS
@given(offset=non_finite)
def test_config_offset_must_be_finite(offset: float) -> None:
    _raises_naming("offset", PosteriorConfig, offset=offset)


@SETTINGS
@given(lam=st.one_of(st.floats(max_value=0.0, exclude_max=True), st.floats(min_value=LAMBDA0_MAX,
                                                                           exclude_min=True), non_finite))
def test_dngconfig_lambda0_range(lam: float) -> None:
    _raises_naming("lambda0", DNGConfig, lambda0=lam)
    _raises_naming("scale", NegativePromptRun, lam, [1.0, 0.0])


@SETTINGS
@given(lam=st.floats(0.0, LAMBDA0_MAX), tau=st.floats(1e-6, 1e6), offset=st.floats(-1e6, 1e6))
def test_valid_configs_are_accepted(lam: float, tau: float, offset: float) -> None:
    cfg = DNGConfig(lambda0=lam, posterior=PosteriorConfig(prior=0.3, temperature=tau, offset=offset,
                                                           p_min=1e-9, p_max=0.99))
    assert cfg.max_scale == pytest.approx(lam * 99.0)
    assert cfg.as_dict()["lambda0"] == lam


# ---- tracker inputs -------------------------------------------------------------------------------------------

ARGS = ("x", "x_next", "denoised_neg", "denoised_uncond")


def _inputs(batch: int = 2, shape: tuple[int, ...] = (3, 4), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn((batch,) + shape, generator=g) for name in ARGS}


def _call_update(tracker: PosteriorTracker, t: dict[str, torch.Tensor], sigma=1.0, sigma_next=0.5):
    return tracker.update(t["x"], t["x_next"], t["denoised_neg"], t["denoised_uncond"], sigma, sigma_next)


def _call_increment(t: dict[str, torch.Tensor], sigma=1.0, sigma_next=0.5):
    return posterior_increment(t["x"], t["x_next"], t["denoised_neg"], t["denoised_uncond"], sigma, sigma_next,
                               PosteriorConfig())


@SETTINGS
@given(which=st.sampled_from(ARGS[1:]), extra=st.integers(1, 3), axis=st.integers(0, 2))
def test_mismatched_shapes_are_named(which: str, extra: int, axis: int) -> None:
    t = _inputs()
    shape = list(t[which].shape)
    shape[axis] += extra
    t[which] = torch.zeros(shape)
    _raises_naming(which, _call_increment, t)
    _raises_naming(which, _call_update, PosteriorTracker(PosteriorConfig(), 2), t)


@SETTINGS
@given(which=st.sampled_from(ARGS), bad=non_finite, index=st.integers(0, 23),
       dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]))
def test_non_finite_predictions_are_named(which: str, bad: float, index: int, dtype: torch.dtype) -> None:
    t = {k: v.to(dtype) for k, v in _inputs().items()}
    t[which].view(-1)[index] = bad
    msg = _raises_naming(which, _call_increment, t)
    assert "NaN" in msg or "inf" in msg
    tracker = PosteriorTracker(PosteriorConfig(), 2)
    before = tracker.log_p.clone()
    _raises_naming(which, _call_update, tracker, t)
    assert torch.equal(tracker.log_p, before) and tracker.updates == 0  # a refused update leaves no trace


def test_other_bad_inputs() -> None:
    t = _inputs()
    _raises_naming("sigma", _call_increment, t, torch.tensor([1.0, 2.0, 3.0]))
    _raises_naming("batch", _call_update, PosteriorTracker(PosteriorConfig(), 3), t)
    _raises_naming("batch_size", PosteriorTracker, PosteriorConfig(), 0)
    scalar = {k: v[0, 0, 0] for k, v in t.items()}  # no batch dimension
    with pytest.raises(ValueError):
        _call_increment(scalar)


# ---- finiteness -----------------------------------------------------------------------------------------------

def _config_strategy():
    @st.composite
    def build(draw):
        p_min = draw(st.floats(1e-300, 0.4))
        p_max = draw(st.sampled_from([0.5, 0.8, 0.99, 1 - 1e-9, 0.9999999999999999]))
        prior = draw(st.floats(p_min, p_max))
        return PosteriorConfig(prior=prior, temperature=draw(st.floats(1e-6, 1e6)),
                               offset=draw(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([1e300, -1e300]))),
                               p_min=p_min, p_max=p_max,
                               # the path estimator needs predictions at both ends: test_path_update_... below
                               variance=draw(st.sampled_from([v for v in PosteriorVariance
                                                              if v is not PosteriorVariance.PATH])),
                               form=draw(st.sampled_from(list(PosteriorForm))),
                               max_rate=draw(st.sampled_from([0.0, 1e-3, 4.0, 1e300])))
    return build()


def _sigma_pairs(parametrisation: Parametrisation):
    top = 1.0 if parametrisation is Parametrisation.RECTIFIED_FLOW else 1e4
    sig = st.floats(0.0, top)
    special = st.sampled_from(["equal", "zero", "tiny", "any", "up"])

    @st.composite
    def build(draw):
        s = draw(sig)
        kind = draw(special)
        if kind == "equal":
            return s, s
        if kind == "zero":
            return s, 0.0
        if kind == "tiny":
            return s, draw(st.sampled_from([1e-300, 5e-324, 1e-30, 1e-12]))
        if kind == "up":  # a step that goes up (restart-like); must not break anything
            return s, min(top, s * 2 + 1e-3)
        return s, draw(st.floats(0.0, s)) if s > 0 else 0.0
    return build()


@st.composite
def _tensors(draw, dtype: torch.dtype, batch: int, huge: bool):
    limit = float(torch.finfo(dtype).max) if huge else 1e4
    values = st.floats(-limit, limit, allow_nan=False, allow_infinity=False, width=64)
    out = {}
    for name in ARGS:
        flat = draw(st.lists(values, min_size=batch * 3, max_size=batch * 3))
        out[name] = torch.tensor(flat, dtype=torch.float64).to(dtype).reshape(batch, 3)
    return out


def _ve_log_drop(sigma: float, sigma_next: float, parametrisation: Parametrisation) -> float:
    """ln(sigma_ve / sigma_ve'), 0 unless the step lowers a finite, positive noise level."""
    def ve(s: float) -> float:
        if parametrisation is Parametrisation.RECTIFIED_FLOW:
            return s / (1.0 - s) if s < 1.0 else math.inf
        return s
    a, b = ve(sigma), ve(sigma_next)
    if not (0.0 < b < a < math.inf):
        return 0.0
    return math.log(a) - math.log(b)


@pytest.mark.parametrize("parametrisation", list(Parametrisation))
@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]), batch=st.integers(1, 3),
       huge=st.booleans(), steps=st.integers(1, 3))
def test_path_update_is_finite_and_bounded_for_any_finite_input(parametrisation, data, dtype, batch, huge,
                                                                 steps) -> None:
    """The path estimator's update: finite, inside [p_min, p_max], and rising by at most R min(ln(sigma / sigma'),
    1) per step."""
    config = data.draw(_config_strategy())
    config = PosteriorConfig(**{**config.as_dict(), "variance": "path"})
    tracker = PosteriorTracker(config, batch, parametrisation=parametrisation)
    lo, hi = math.log(config.p_min), math.log(config.p_max)
    for _ in range(steps):
        sigma, sigma_next = data.draw(_sigma_pairs(parametrisation))
        ends = []
        for s_ in (sigma, sigma_next):
            t = data.draw(_tensors(dtype, batch, huge))
            div = torch.tensor(data.draw(st.lists(st.floats(-1e30, 1e30), min_size=batch, max_size=batch)),
                               dtype=torch.float64)
            ends.append(PathPoint(t["x"], s_, t["denoised_neg"], t["denoised_uncond"], div))
        before = tracker.log_p.clone()
        tracker.commit(tracker.propose_path(*ends))
        assert bool(torch.isfinite(tracker.log_p).all())
        assert bool(((tracker.log_p >= lo) & (tracker.log_p <= hi)).all())
        if config.form is PosteriorForm.RATE and config.max_rate > 0:
            drop = min(_ve_log_drop(sigma, sigma_next, parametrisation), 1.0)
            assert bool((tracker.log_p - before <= config.max_rate * drop * (1 + 1e-9) + 1e-300).all())


@pytest.mark.parametrize("parametrisation", list(Parametrisation))
@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]),
       batch=st.integers(1, 3), huge=st.booleans(), lambda0=st.floats(0.0, LAMBDA0_MAX), steps=st.integers(1, 3))
def test_any_finite_input_gives_finite_bounded_posterior(parametrisation, data, dtype, batch, huge, lambda0,
                                                         steps) -> None:
    config = data.draw(_config_strategy())
    tracker = PosteriorTracker(config, batch, parametrisation=parametrisation)
    lo, hi = math.log(config.p_min), math.log(config.p_max)
    for _ in range(steps):
        t = data.draw(_tensors(dtype, batch, huge))
        sigma, sigma_next = data.draw(_sigma_pairs(parametrisation))
        inc = posterior_increment(t["x"], t["x_next"], t["denoised_neg"], t["denoised_uncond"], sigma, sigma_next,
                                  config, parametrisation)
        assert not bool(torch.isnan(inc).any())
        p = _call_update(tracker, t, sigma, sigma_next)
        assert bool(torch.isfinite(tracker.log_p).all())
        assert bool(((tracker.log_p >= lo) & (tracker.log_p <= hi)).all())
        # p = exp(log p) may miss the bound by the log/exp round trip: relative |log p| * eps <= 691 * 2.2e-16
        assert bool(((p >= config.p_min * (1 - 1e-12)) & (p <= config.p_max * (1 + 1e-12))).all())
        scale = tracker.scale(lambda0)
        assert bool(torch.isfinite(scale).all()) and bool((scale >= 0).all())
        # relative slack, plus an absolute one for subnormal lambda0 (5e-324 * 1.0 rounds up to 5e-324 > bound)
        assert float(scale.max()) <= lambda0 * config.p_max / (1 - config.p_max) * (1 + 1e-9) + 1e-300
        if sigma_next == 0.0 or sigma_next == sigma:
            assert bool((inc == 0).all())  # no evidence at sigma' = 0 or sigma' = sigma
        if config.form is PosteriorForm.RATE and config.max_rate > 0:  # no step rises faster than the bound
            drop = min(_ve_log_drop(sigma, sigma_next, parametrisation), 1.0)
            assert bool((inc <= config.max_rate * drop * (1 + 1e-9) + 1e-300).all())
        # the guided prediction in the predictions' own dtype: finite (float16 saturates, see combine_guidance)
        if dtype == torch.float16 or not huge:
            out = combine_guidance(t["denoised_uncond"], t["x"], [t["denoised_neg"]], scale[None], 7.5)
            assert out.dtype == dtype and bool(torch.isfinite(out).all())


@SETTINGS
@given(log_p=st.floats(-800.0, -1e-300), lambda0=st.floats(0.0, LAMBDA0_MAX))
def test_guidance_scale_is_finite_and_exact(log_p: float, lambda0: float) -> None:
    lam = float(guidance_scale(torch.tensor([log_p], dtype=torch.float64), lambda0)[0])
    assert math.isfinite(lam) and lam >= 0
    p = math.exp(log_p)
    if 1e-300 < p < 1 - 1e-6:
        assert lam == pytest.approx(lambda0 * p / (1 - p), rel=1e-9, abs=1e-300)


@SETTINGS
@given(data=st.data(), batch=st.integers(1, 3), concepts=st.integers(1, 3), with_pos=st.booleans(),
       cfg=st.floats(0.0, 30.0))
def test_combine_guidance_fp16_saturates(data, batch, concepts, with_pos, cfg) -> None:
    """float16 predictions with any scale up to the largest lambda a config allows: finite, clipped to fp16."""
    big = st.floats(-65504.0, 65504.0, width=16)
    shape = (batch, 2)

    def draw_tensor():
        return torch.tensor(data.draw(st.lists(big, min_size=batch * 2, max_size=batch * 2)),
                            dtype=torch.float16).reshape(shape)

    d_u = draw_tensor()
    d_pos = draw_tensor() if with_pos else None
    negs = [draw_tensor() for _ in range(concepts)]
    lam_max = LAMBDA0_MAX * 0.9999999999999999 / (1 - 0.9999999999999999)
    scales = torch.tensor([[data.draw(st.floats(0.0, lam_max)) for _ in range(batch)] for _ in range(concepts)],
                          dtype=torch.float64)
    out = combine_guidance(d_u, d_pos, negs, scales, cfg)
    assert out.dtype == torch.float16 and out.shape == shape and bool(torch.isfinite(out).all())


def test_combine_guidance_rule_and_shapes() -> None:
    g = torch.Generator().manual_seed(0)
    d_u, d_pos, n1, n2 = (torch.randn(3, 4, 5, generator=g, dtype=torch.float64) for _ in range(4))
    scales = torch.tensor([[0.0, 1.0, 2.0], [0.5, 0.0, 3.0]], dtype=torch.float64)
    out = combine_guidance(d_u, d_pos, [n1, n2], scales, 7.0)
    expected = d_u + 7.0 * (d_pos - d_u) - scales[0].view(3, 1, 1) * (n1 - d_u) - scales[1].view(3, 1, 1) * (n2 - d_u)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    _raises_naming("denoised_negs[1]", combine_guidance, d_u, d_pos, [n1, n2[:2]], scales, 7.0)
    _raises_naming("denoised_pos", combine_guidance, d_u, d_pos[:, :2], [n1], scales[:1], 7.0)
    _raises_naming("scales", combine_guidance, d_u, None, [n1, n2], scales[:1], 7.0)


def test_combine_guidance_float32_huge_inputs_stay_finite() -> None:
    d_u = torch.full((1, 4), 3e38, dtype=torch.float32)
    d_neg = torch.full((1, 4), -3e38, dtype=torch.float32)
    out = combine_guidance(d_u, None, [d_neg], torch.tensor([[1.0]]), 0.0)
    assert bool(torch.isfinite(out).all())
