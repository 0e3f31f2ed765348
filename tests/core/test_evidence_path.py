"""The posterior's evidence path (posterior.EvidencePath): the paper's ``sampled`` step against ``uncorrected``,
``unguided`` and ``one_sided``.

A case with a known answer: predictions that do not depend on x (D_u = 0, D_pos = a, D_neg = b, the denoisers of
point masses) and steps that land on the Gaussian kernel's mean. Then one kernel step's evidence is exactly
coef_d^2 (2 <D_g - D_u, Delta> - |Delta|^2) / (2 v) with Delta = b (sampled; D_g the guided prediction) and the same
with D_g = s a, DNG's own push left out (uncorrected); and the derivation in EvidencePath's docstring predicts
where the sampled loop settles: lambda* = s <a, b> / |b|^2 - 1/2, whatever lambda0.
"""

from __future__ import annotations

import math

import pytest
import torch

from dng_core import PAPER_MODE, DNGConfig, DNGRun, EvidencePath, Parametrisation, PosteriorConfig, reverse_kernel
from dng_core.path import euler_coefficients

CFG = 3.0
VE = Parametrisation.VARIANCE_EXPLODING
SHAPE = (2, 1, 4, 4)


def _vectors(overlap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """a (the positive's shift) and b (the concept's) with |a| = |b| = 0.5 and <a, b> / |b|^2 = overlap."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(SHAPE[1:], generator=g, dtype=torch.float64)
    v = torch.randn(SHAPE[1:], generator=g, dtype=torch.float64)
    u = u / u.norm()
    v = v - (v * u).sum() * u
    v = v / v.norm()
    b = 0.5 * u
    a = 0.5 * (overlap * u + math.sqrt(1 - overlap ** 2) * v)
    return a.expand(SHAPE).clone(), b.expand(SHAPE).clone()


def _run(evidence: str, lambda0: float, schedule: list[float], overlap: float, stochastic: bool = True,
         prior: float = 0.05) -> tuple[DNGRun, torch.Tensor]:
    """Sample with constant predictions; ancestral steps land on the kernel's mean, deterministic ones are euler
    steps. Returns the run and the scales used at each step, [steps, B]."""
    # offset_trust 0: with predictions that do not depend on x the Hessian of log p(c- | x) is 0, so the path
    # estimator's first-order reading of the unpushed state is exact at any offset and these closed forms hold
    # without the trust radius, which guards denoisers that do depend on x (tests/core/test_offset_trust.py)
    config = DNGConfig(lambda0, PosteriorConfig(prior=prior, temperature=1.0, offset=0.0, p_min=1e-6,
                                                p_max=0.999, max_rate=0.0, evidence=evidence, offset_trust=0.0),
                       deterministic_push="raw", stochastic_push="full")  # the scales below are lambda0 p / (1 - p):
    # the push unscaled and at every noise level (these schedules lie above the late push's cut, 2 s)
    run = DNGRun(config, schedule, stochastic_sampler=stochastic)
    a, b = _vectors(overlap)
    d_u = torch.zeros(SHAPE, dtype=torch.float64)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * schedule[0]
    for s, s_next in zip(schedule[:-1], schedule[1:]):
        sig = torch.tensor([s] * SHAPE[0], dtype=torch.float64)
        d_g = run.guide(x, sig, d_u, a, [b], CFG, probe=lambda xp: (d_u, [b]))
        if stochastic:
            k = reverse_kernel(torch.tensor([s], dtype=torch.float64), torch.tensor([s_next], dtype=torch.float64), VE)
            x = k.coef_x * x + k.coef_d * d_g
        else:
            x = x + (s_next - s) * (x - d_g) / s
    trace = run.finish(x)
    return run, trace.series("scale")[:, 0, :]


def _p_used(run: DNGRun) -> torch.Tensor:
    return run.trace.series("p")[:, 0, :]


@pytest.mark.parametrize("evidence, overlap", [("sampled", 0.6), ("uncorrected", 0.6), ("unguided", 0.6),
                                               ("one_sided", 0.6), ("one_sided", -0.6)])
def test_one_kernel_step_has_the_closed_form_evidence(evidence: str, overlap: float) -> None:
    schedule = [4.0, 3.0, 2.0]
    lambda0, prior = 7.0, 0.05
    run, scales = _run(evidence, lambda0, schedule, overlap=overlap, prior=prior)
    a, b = _vectors(overlap)
    lam = lambda0 * prior / (1 - prior)
    assert scales[0].tolist() == pytest.approx([lam, lam])
    # the step read: the guided one (sampled), without DNG's push (uncorrected), the positive's own (unguided),
    # and one-sided: the positive's own where CFG's extrapolation points towards the concept, else the cfg one
    one_sided = a if overlap > 0 else CFG * a
    d_g = {"sampled": CFG * a - lam * b, "uncorrected": CFG * a, "unguided": a, "one_sided": one_sided}[evidence]
    k = reverse_kernel(torch.tensor([4.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64), VE)
    expected = (k.coef_d ** 2 * (2 * (d_g * b).flatten(1).sum(1) - (b * b).flatten(1).sum(1)) / (2 * k.variance))
    log_p = _p_used(run).log()
    assert (log_p[1] - log_p[0]).tolist() == pytest.approx(expected.tolist(), rel=1e-9)


def test_the_two_paths_differ_by_the_push() -> None:
    """The uncorrected evidence of a step exceeds the sampled one by coef_d^2 * 2 lambda |b|^2 / (2 v)."""
    schedule = [4.0, 3.0, 2.0]
    runs = {e: _run(e, 7.0, schedule, overlap=0.6)[0] for e in ("sampled", "uncorrected")}
    gap = _p_used(runs["uncorrected"]).log()[1] - _p_used(runs["sampled"]).log()[1]
    _, b = _vectors(0.6)
    k = reverse_kernel(torch.tensor([4.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64), VE)
    lam = 7.0 * 0.05 / 0.95
    expected = k.coef_d ** 2 * 2 * lam * (b * b).sum() / SHAPE[0] / (2 * k.variance)
    assert gap.tolist() == pytest.approx([float(expected)] * SHAPE[0], rel=1e-9)


SCHEDULE = [8.0 * (0.2 / 8.0) ** (i / 59) for i in range(60)] + [0.0]


@pytest.mark.parametrize("stochastic, lambda0", [(True, 40.0), (True, 400.0), (False, 40.0)],
                         ids=["kernel-40", "kernel-400", "path-40"])
def test_the_sampled_loop_settles_at_lambda_star_whatever_lambda0(stochastic: bool, lambda0: float) -> None:
    """Sampled evidence: lambda settles where the expected evidence is 0, s <a, b> / |b|^2 - 1/2 = 1.3 here,
    and with the kernel estimator at a lambda0 ten times larger too; the drift along b stays half the concept's.
    (The path estimator reads the state, which remembers the early pushes of a large lambda0: at 400 it is
    still below lambda* when this 60-step schedule ends.)"""
    overlap = 0.6
    _, scales = _run("sampled", lambda0, SCHEDULE, overlap, stochastic=stochastic)
    star = CFG * overlap - 0.5
    settled = scales[-15:-1].mean(0)
    assert settled.tolist() == pytest.approx([star] * SHAPE[0], rel=0.1)


@pytest.mark.parametrize("stochastic", [True, False], ids=["kernel", "path"])
def test_uncorrected_evidence_saturates_where_the_positive_pulls_and_falls_where_not(stochastic: bool) -> None:
    lambda0 = 1.0
    _, pulled = _run("uncorrected", lambda0, SCHEDULE, overlap=0.6, stochastic=stochastic)
    _, unrelated = _run("uncorrected", lambda0, SCHEDULE, overlap=0.0, stochastic=stochastic)
    top = lambda0 * 0.999 / (1 - 0.999)
    assert float(pulled[-2].min()) == pytest.approx(top, rel=1e-6)       # p at p_max
    assert float(unrelated[-2].max()) < 0.5 * float(unrelated[0].min())  # p falls
    # the sampled loop on the same pull stays far below the top
    _, sampled = _run("sampled", lambda0, SCHEDULE, overlap=0.6, stochastic=stochastic)
    assert float(sampled[-2].max()) < 0.01 * top


@pytest.mark.parametrize("stochastic", [True, False], ids=["kernel", "path"])
def test_unguided_evidence_reads_the_positive_at_cfg_1(stochastic: bool) -> None:
    """The unguided evidence reads the step of s = 1, so its threshold is <a, b> / |b|^2 = 1/2 whatever the cfg,
    where the uncorrected one reads s <a, b> / |b|^2 against 1/2. Known answer: the unguided posterior at overlap
    0.9 is the uncorrected one at overlap 0.3 (s = 3: the same pull along b, 0.9), step for step; at overlap 0.3
    the uncorrected posterior climbs (3 x 0.3 > 1/2) and the unguided one does not (0.3 < 1/2)."""
    lambda0 = 1.0
    _, weak_uncorrected = _run("uncorrected", lambda0, SCHEDULE, overlap=0.3, stochastic=stochastic)
    _, weak_unguided = _run("unguided", lambda0, SCHEDULE, overlap=0.3, stochastic=stochastic)
    _, strong_unguided = _run("unguided", lambda0, SCHEDULE, overlap=0.9, stochastic=stochastic)
    torch.testing.assert_close(strong_unguided, weak_uncorrected, rtol=1e-6, atol=0)
    assert float(weak_uncorrected[-2].min()) > 10 * float(weak_uncorrected[0].max())
    assert float(weak_unguided[-2].max()) < 0.1 * float(weak_uncorrected[-2].min())


@pytest.mark.parametrize("stochastic", [True, False], ids=["kernel", "path"])
def test_one_sided_evidence_is_the_smaller_of_uncorrected_and_unguided(stochastic: bool) -> None:
    """One-sided reads the cfg-1 step where CFG's extrapolation points towards the concept and the cfg step where
    it points away. Known answers, step for step: at overlap 0.3 it is the unguided posterior (so p does not
    climb on a positive that pulls 0.3 of the concept's pull at cfg 3, where the uncorrected one does), at
    overlap -0.3 the uncorrected one (CFG's push away from the concept switches the guidance off sooner than
    the unguided reading would)."""
    lambda0 = 1.0
    for overlap, same_as in ((0.3, "unguided"), (-0.3, "uncorrected")):
        _, one_sided = _run("one_sided", lambda0, SCHEDULE, overlap=overlap, stochastic=stochastic)
        _, other = _run(same_as, lambda0, SCHEDULE, overlap=overlap, stochastic=stochastic)
        torch.testing.assert_close(one_sided, other, rtol=1e-9, atol=0)
    _, away_unguided = _run("unguided", lambda0, SCHEDULE, overlap=-0.3, stochastic=stochastic)
    _, away = _run("one_sided", lambda0, SCHEDULE, overlap=-0.3, stochastic=stochastic)
    assert float(away[-2].max()) < 0.1 * float(away_unguided[-2].min())


def test_one_sided_evidence_decides_per_image_and_concept() -> None:
    """Two concepts, b (overlap 0.6 with a) and -b: CFG's extrapolation points towards the first and away from
    the second, so the first concept's posterior is the unguided one and the second's the uncorrected one, in
    the same run."""
    a, b = _vectors(0.6)
    schedule = [4.0, 3.0, 2.0, 1.0]
    posteriors = {}
    for evidence in ("one_sided", "unguided", "uncorrected"):
        config = DNGConfig(1.0, PosteriorConfig(prior=0.05, temperature=1.0, offset=0.0, p_min=1e-6, p_max=0.999,
                                                max_rate=0.0, evidence=evidence), stochastic_push="full")
        run = DNGRun(config, schedule, concepts=2, stochastic_sampler=True)
        d_u = torch.zeros(SHAPE, dtype=torch.float64)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * schedule[0]
        for s, s_next in zip(schedule[:-1], schedule[1:]):
            sig = torch.tensor([s] * SHAPE[0], dtype=torch.float64)
            d_g = run.guide(x, sig, d_u, a, [b, -b], CFG)
            k = reverse_kernel(torch.tensor([s], dtype=torch.float64), torch.tensor([s_next], dtype=torch.float64),
                               VE)
            x = k.coef_x * x + k.coef_d * d_g
        # the evidence read depends on the path only through x' - coef_x x - coef_d (pushes taken out), so the
        # three runs, whose states differ, still give comparable per-step evidence: compare the increments
        posteriors[evidence] = run.finish(x).series("p").log().diff(dim=0)
    torch.testing.assert_close(posteriors["one_sided"][:, 0], posteriors["unguided"][:, 0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(posteriors["one_sided"][:, 1], posteriors["uncorrected"][:, 1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("parametrisation", list(Parametrisation))
def test_euler_coefficients_are_the_step_derivatives(parametrisation: Parametrisation) -> None:
    """d x' / d x and d x' / d D of one euler step in the sampler's state, by finite differences."""
    from dng_core.path import _ve

    s, s_next = (0.8, 0.5) if parametrisation is Parametrisation.RECTIFIED_FLOW else (3.0, 1.5)

    def step(x: float, d: float) -> float:
        alpha, ve = _ve(s, parametrisation)
        alpha_n, ve_n = _ve(s_next, parametrisation)
        x_ve = x / alpha
        return alpha_n * (x_ve + (ve_n - ve) * (x_ve - d) / ve)

    h = 1e-6
    dx = (step(0.3 + h, 0.2) - step(0.3 - h, 0.2)) / (2 * h)
    dd = (step(0.3, 0.2 + h) - step(0.3, 0.2 - h)) / (2 * h)
    assert euler_coefficients(s, s_next) == pytest.approx((dx, dd), rel=1e-6)


def test_evidence_path_round_trips_and_the_paper_mode_is_sampled() -> None:
    assert PosteriorConfig().evidence is EvidencePath.ONE_SIDED
    assert PosteriorConfig(prior=0.01, **PAPER_MODE).evidence is EvidencePath.SAMPLED
    config = PosteriorConfig(evidence="uncorrected")
    assert config.evidence is EvidencePath.UNCORRECTED
    assert config.as_dict()["evidence"] == "uncorrected"
    with pytest.raises(ValueError):
        PosteriorConfig(evidence="closed")
