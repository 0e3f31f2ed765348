"""DNGRun / NegativePromptRun / SLDRun under the call patterns of real samplers; traces, history, SLD.

The samplers are transcriptions of ComfyUI's k-diffusion loops (comfy/k_diffusion/sampling.py): sample_euler,
sample_heun (second call at sigma_{i+1} with the predictor, none on the last step) and sample_dpmpp_2s_ancestral
(second call at the off-schedule midpoint sigma_fn(t + h / 2)). The "model" is a deterministic toy with different
predictions per batch element; the run's guide() is the CFG function the sampler sees.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch

from dng_core import (SLD_PRESETS, DNGConfig, DNGRun, GuidanceTrace, NegativePromptRun, PosteriorConfig,
                      PosteriorTracker, SLDConfig, SLDRun, SLDState, TraceHistory, sld_denoised, sld_step,
                      tensor_fingerprint)

N_STEPS = 8
SCHEDULE = [14.6, 8.0, 4.5, 2.4, 1.2, 0.6, 0.28, 0.1, 0.0]
BATCH = 3
SHAPE = (BATCH, 2, 4, 4)
# The sampled evidence (the paper's): the bookkeeping tests below rebuild its posterior by hand.
CONFIG = DNGConfig(lambda0=2.0, posterior=PosteriorConfig(prior=0.2, temperature=0.5, offset=1e-3, p_min=1e-6,
                                                          p_max=0.95, evidence="sampled"))


class ToyModel:
    """D_u shrinks x towards 0, D_neg towards a per-element target (so every element has its own posterior)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(7)
        self.target = torch.randn(SHAPE, generator=g, dtype=torch.float64) * torch.tensor(
            [0.02, 0.05, 0.1], dtype=torch.float64).view(BATCH, 1, 1, 1)
        self.pos_target = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        self.calls: list[tuple[float, torch.Tensor]] = []

    def predict(self, x: torch.Tensor, sigma: float):
        k = 1.0 / (1.0 + sigma ** 2)
        d_u = k * x
        d_neg = k * x + (1 - k) * self.target
        d_pos = k * x + (1 - k) * self.pos_target
        return d_u, d_pos, d_neg


def make_denoiser(run, model: ToyModel, cfg_scale: float = 0.0, with_pos: bool = False):
    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        model.calls.append((sigma, x.clone()))
        d_u, d_pos, d_neg = model.predict(x, sigma)

        def probe(x_probe: torch.Tensor):  # the path estimator's divergence probe (not counted as a call)
            p_u, _, p_neg = model.predict(x_probe, sigma)
            return p_u, [p_neg]
        # ComfyUI passes sigma as a tensor; float64 here so that the manual references below are exact
        return run.guide(x, torch.tensor([sigma] * x.shape[0], dtype=torch.float64), d_u,
                         d_pos if with_pos else None, [d_neg], cfg_scale, probe=probe)
    return denoise


def sample_euler(denoise, x, sigmas):
    xs = [x]
    for i in range(len(sigmas) - 1):
        d = (x - denoise(x, sigmas[i])) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        xs.append(x)
    return x, xs


def sample_heun(denoise, x, sigmas):
    xs, predictors = [x], []
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            predictors.append(x_2)
            denoised_2 = denoise(x_2, sigmas[i + 1])
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
        xs.append(x)
    return x, xs, predictors


def sample_dpmpp_2s_ancestral(denoise, x, sigmas, seed=0, eta=1.0):
    """With eta = 1 the midpoint sigma_fn(t + h / 2) = sqrt(sigma_i sigma_down) = sigma_{i+1} exactly (sigma_down =
    sigma_{i+1}^2 / sigma_i): the second call is then heun-like, on the schedule. eta < 1 puts it off the schedule."""
    g = torch.Generator().manual_seed(seed)
    xs, midpoints = [x], []
    for i in range(len(sigmas) - 1):
        s, s_n = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, s)
        sigma_up = min(s_n, eta * (s_n ** 2 * (s ** 2 - s_n ** 2) / s ** 2) ** 0.5)
        sigma_down = (s_n ** 2 - sigma_up ** 2) ** 0.5
        if sigma_down == 0:
            x = x + (x - denoised) / s * (sigma_down - s)
        else:
            t, t_next = -math.log(s), -math.log(sigma_down)
            h = t_next - t
            mid = math.exp(-(t + 0.5 * h))
            midpoints.append(mid)
            x_2 = (mid / s) * x - math.expm1(-h * 0.5) * denoised
            denoised_2 = denoise(x_2, mid)
            x = (sigma_down / s) * x - math.expm1(-h) * denoised_2
        if s_n > 0:
            x = x + torch.randn(x.shape, generator=g, dtype=x.dtype) * sigma_up
        xs.append(x)
    return x, xs, midpoints


def _x0(seed: int = 1) -> torch.Tensor:
    return SCHEDULE[0] * torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _manual_posterior(xs: list[torch.Tensor], model: ToyModel) -> tuple[PosteriorTracker, list[torch.Tensor]]:
    """The posterior over the real path x_0 .. x_N with first-call predictions; the scale used at every step."""
    tracker = PosteriorTracker(CONFIG.posterior, BATCH)
    scales = []
    for i in range(N_STEPS):
        scales.append(tracker.scale(CONFIG.lambda0))
        d_u, _, d_neg = model.predict(xs[i], SCHEDULE[i])
        tracker.update(xs[i], xs[i + 1], d_neg, d_u, SCHEDULE[i], SCHEDULE[i + 1])
    return tracker, scales


def _check_run_bookkeeping(run) -> None:
    assert run.trace is not None
    assert len(run.trace.steps) == N_STEPS
    assert run.trace.step_indices() == list(range(N_STEPS))
    assert [r.sigma for r in run.trace.steps] == pytest.approx(SCHEDULE[:-1])
    assert run.steps_confirmed == N_STEPS


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_eta0.5"])
def test_dngrun_advances_once_per_sampler_step(sampler: str) -> None:
    model = ToyModel()
    run = DNGRun(CONFIG, SCHEDULE)
    denoise = make_denoiser(run, model)
    if sampler == "euler":
        x, xs = sample_euler(denoise, _x0(), SCHEDULE)
        calls = N_STEPS
    elif sampler == "heun":
        x, xs, predictors = sample_heun(denoise, _x0(), SCHEDULE)
        calls = 2 * N_STEPS - 1
    else:
        eta = 0.5 if sampler.endswith("eta0.5") else 1.0
        x, xs, mids = sample_dpmpp_2s_ancestral(denoise, _x0(), SCHEDULE, eta=eta)
        calls = N_STEPS + len(mids)
        assert len(mids) == N_STEPS - 1
        on_schedule = [any(math.isclose(m, s, rel_tol=1e-9) for s in SCHEDULE) for m in mids]
        assert all(on_schedule) if eta == 1.0 else not any(on_schedule)
    run.finish(x)
    assert run.model_calls == len(model.calls) == calls
    assert run.posterior_updates == N_STEPS
    _check_run_bookkeeping(run)
    # the committed posterior is the one of the real path x_0 .. x_N (first-call predictions), and the scale used
    # at step i came from the posterior after x_{i-1} -> x_i
    manual, scales = _manual_posterior(xs, model)
    torch.testing.assert_close(run.final_posterior()[0], manual.p, rtol=1e-12, atol=0)
    torch.testing.assert_close(run.trace.series("scale")[:, 0, :], torch.stack(scales), rtol=1e-9, atol=0)
    # different predictions per element -> different posteriors
    p = run.final_posterior()[0]
    assert len(set(round(float(v), 12) for v in p)) == BATCH
    if sampler == "heun":
        # power check: folding in the predictor instead of x_{i+1} gives another posterior
        wrong = PosteriorTracker(CONFIG.posterior, BATCH)
        for i in range(N_STEPS - 1):
            d_u, _, d_neg = model.predict(xs[i], SCHEDULE[i])
            wrong.update(xs[i], predictors[i], d_neg, d_u, SCHEDULE[i], SCHEDULE[i + 1])
        assert float((wrong.p - manual.p).abs().max()) > 1e-6


def test_dngrun_inner_calls_use_the_steps_scale() -> None:
    """An off-schedule call (dpmpp_2s_ancestral's midpoint with eta < 1) is guided with the step's scale."""
    model = ToyModel()
    run = DNGRun(CONFIG, SCHEDULE)
    seen = []

    def denoise(x, sigma):
        d_u, _, d_neg = model.predict(x, sigma)
        out = run.guide(x, torch.tensor(sigma, dtype=torch.float64), d_u, None, [d_neg], 0.0)
        lam = ((d_u - out) / (d_neg - d_u)).flatten(1).median(1).values  # out = d_u - lam (d_neg - d_u)
        seen.append((sigma, lam))
        return out

    x, _xs, _mids = sample_dpmpp_2s_ancestral(denoise, _x0(), SCHEDULE, eta=0.5)
    run.finish(x)
    scales = run.trace.series("scale")[:, 0, :]
    step = -1
    for sigma, lam in seen:
        if any(math.isclose(sigma, s, rel_tol=1e-9) for s in SCHEDULE[:-1]):
            step += 1
        torch.testing.assert_close(lam, scales[step], rtol=1e-6, atol=1e-9)


def test_dngrun_uses_a_python_float_sigma_exactly() -> None:
    results = []
    for as_tensor in (False, True):
        model = ToyModel()
        run = DNGRun(CONFIG, SCHEDULE)

        def denoise(x, sigma):
            d_u, _, d_neg = model.predict(x, sigma)
            sig = torch.tensor(sigma, dtype=torch.float64) if as_tensor else sigma
            return run.guide(x, sig, d_u, None, [d_neg], 0.0)

        x, _ = sample_euler(denoise, _x0(), SCHEDULE)
        run.finish(x)
        results.append(run.final_posterior())
    assert torch.equal(results[0], results[1])


def test_dngrun_without_final_latent_and_reuse() -> None:
    model = ToyModel()
    run = DNGRun(CONFIG, SCHEDULE)
    x, _ = sample_euler(make_denoiser(run, model), _x0(), SCHEDULE)
    trace = run.finish()  # no x_final: the last transition cannot be folded in
    assert run.posterior_updates == N_STEPS - 1 and len(trace.steps) == N_STEPS
    assert run.finish(x) is trace and run.posterior_updates == N_STEPS - 1  # finish is idempotent


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2s_ancestral"])
def test_np_and_sld_runs_record_one_step_per_sampler_step(sampler: str) -> None:
    for run in (NegativePromptRun(0.7, SCHEDULE), SLDRun(SLD_PRESETS["medium"], SCHEDULE)):
        model = ToyModel()
        denoise = make_denoiser(run, model, cfg_scale=7.0, with_pos=True)
        fn = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral}[sampler]
        x = fn(denoise, _x0(), SCHEDULE)[0]
        run.finish(x)
        _check_run_bookkeeping(run)
        if isinstance(run, NegativePromptRun):
            assert bool((run.trace.series("scale") == 0.7).all())
        else:
            assert run.state.step == N_STEPS


def test_sld_momentum_advances_once_per_step_under_heun() -> None:
    config = SLDConfig(warmup=2, guidance_scale=50.0, threshold=0.0, momentum_scale=0.5, momentum_beta=0.6)
    model = ToyModel()
    run = SLDRun(config, SCHEDULE)
    first_outputs = []

    def denoise(x, sigma):
        d_u, d_pos, d_neg = model.predict(x, sigma)
        out = run.guide(x, torch.tensor(sigma, dtype=torch.float64), d_u, d_pos, [d_neg], 7.0)
        model.calls.append((sigma, x.clone(), out))
        return out

    x, xs, _pred = sample_heun(denoise, _x0(), SCHEDULE)
    run.finish(x)
    # manual SLD over the first calls only (at the real x_i)
    state = SLDState()
    for i in range(N_STEPS):
        d_u, d_pos, d_neg = model.predict(xs[i], SCHEDULE[i])
        expected, _ = sld_denoised(xs[i], SCHEDULE[i], d_u, d_pos, d_neg, 7.0, config, state)
        first_outputs.append(expected)
    assert state.step == run.state.step == N_STEPS
    torch.testing.assert_close(run.state.momentum, state.momentum, rtol=1e-12, atol=1e-12)
    real_first = [out for (sigma, xin, out) in model.calls
                  for i in range(N_STEPS) if sigma == SCHEDULE[i] and torch.equal(xin, xs[i])]
    assert len(real_first) == N_STEPS
    for got, want in zip(real_first, first_outputs):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # power check: advancing at every call (heun's second calls too) gives another momentum
    state2 = SLDState()
    for (sigma, xin, _out) in model.calls:
        d_u, d_pos, d_neg = model.predict(xin, sigma)
        sld_denoised(xin, sigma, d_u, d_pos, d_neg, 7.0, config, state2)
    assert state2.step > N_STEPS and float((state2.momentum - state.momentum).abs().max()) > 1e-6


# ---- SLD itself -----------------------------------------------------------------------------------------------

def diffusers_sld(noise_pred_text, noise_pred_uncond, noise_pred_safety_concept, guidance_scale, i,
                  safety_momentum, sld_guidance_scale, sld_warmup_steps, sld_threshold, sld_momentum_scale,
                  sld_mom_beta):
    """diffusers StableDiffusionPipelineSafe.perform_safety_guidance + the final CFG line, transcribed."""
    noise_guidance = noise_pred_text - noise_pred_uncond
    if safety_momentum is None:
        safety_momentum = torch.zeros_like(noise_guidance)
    scale = torch.clamp(torch.abs((noise_pred_text - noise_pred_safety_concept)) * sld_guidance_scale, max=1.0)
    safety_concept_scale = torch.where((noise_pred_text - noise_pred_safety_concept) >= sld_threshold,
                                       torch.zeros_like(scale), scale)
    noise_guidance_safety = torch.mul((noise_pred_safety_concept - noise_pred_uncond), safety_concept_scale)
    noise_guidance_safety = noise_guidance_safety + sld_momentum_scale * safety_momentum
    safety_momentum = sld_mom_beta * safety_momentum + (1 - sld_mom_beta) * noise_guidance_safety
    if i >= sld_warmup_steps:
        noise_guidance = noise_guidance - noise_guidance_safety
    noise_pred = noise_pred_uncond + guidance_scale * noise_guidance
    return noise_pred, safety_momentum


@pytest.mark.parametrize("preset", list(SLD_PRESETS))
def test_sld_step_matches_diffusers(preset: str) -> None:
    cfg = SLD_PRESETS[preset]
    g = torch.Generator().manual_seed(3)
    state = SLDState()
    momentum = None
    for i in range(12):
        e_u, e_p, e_s = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) * 0.05 for _ in range(3))
        ours, effective = sld_step(e_u, e_p, e_s, 7.5, cfg, state)
        ref, momentum = diffusers_sld(e_p, e_u, e_s, 7.5, i, momentum, cfg.guidance_scale, cfg.warmup,
                                      cfg.threshold, cfg.momentum_scale, cfg.momentum_beta)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state.momentum, momentum, rtol=1e-12, atol=1e-12)
        assert (float(effective.abs().max()) == 0.0) == (i < cfg.warmup)


def test_sld_warmup_applies_no_safety_but_accrues_momentum() -> None:
    cfg = SLDConfig(warmup=3, guidance_scale=100.0, threshold=0.5, momentum_scale=0.5, momentum_beta=0.5)
    g = torch.Generator().manual_seed(4)
    e_u, e_p, e_s = (torch.randn(1, 16, generator=g, dtype=torch.float64) for _ in range(3))
    state = SLDState()
    momenta = []
    for i in range(5):
        eps, effective = sld_step(e_u, e_p, e_s, 5.0, cfg, state)
        momenta.append(state.momentum.clone())
        plain = e_u + 5.0 * (e_p - e_u)
        if i < 3:
            torch.testing.assert_close(eps, plain)
            assert float(effective.abs().max()) == 0.0
        else:
            assert float((eps - plain).abs().max()) > 1e-3 and float(effective.min()) > 0
    assert float(momenta[0].abs().max()) > 0  # momentum accrued during warm-up
    assert float((momenta[2] - momenta[1]).abs().max()) > 0


def test_sld_presets() -> None:
    expected = {"weak": (15, 20.0, 0.0, 0.0, 0.0), "medium": (10, 1000.0, 0.01, 0.3, 0.4),
                "strong": (7, 2000.0, 0.025, 0.5, 0.7), "max": (0, 5000.0, 1.0, 0.5, 0.7)}
    for name, values in expected.items():
        c = SLD_PRESETS[name]
        assert (c.warmup, c.guidance_scale, c.threshold, c.momentum_scale, c.momentum_beta) == values
    with pytest.raises(ValueError, match="momentum_beta"):
        SLDConfig(momentum_beta=1.0)
    with pytest.raises(ValueError, match="warmup"):
        SLDConfig(warmup=-1)


# ---- trace and history ----------------------------------------------------------------------------------------

def _finished_run(seed: int = 1) -> tuple[DNGRun, torch.Tensor]:
    model = ToyModel()
    run = DNGRun(CONFIG, SCHEDULE)
    x, _ = sample_euler(make_denoiser(run, model), _x0(seed), SCHEDULE)
    run.finish(x)
    return run, x


def test_trace_json_round_trip() -> None:
    run, x = _finished_run()
    text = run.trace.to_json()
    back = GuidanceTrace.from_json(text)
    assert back.to_dict() == run.trace.to_dict() == json.loads(text)
    assert back.output_fingerprint == tensor_fingerprint(x)
    assert back.params["lambda0"] == CONFIG.lambda0 and back.method == "dng"
    torch.testing.assert_close(back.series("p"), run.trace.series("p"))
    with pytest.raises(ValueError):
        GuidanceTrace.from_json(json.dumps({"format": "other", "version": 1}))


def test_trace_bounds() -> None:
    trace = GuidanceTrace("dng", batch_size=5, max_steps=4, max_batch=2)
    for i in range(6):
        rec = trace.record(i, 1.0 / (i + 1), torch.full((1, 5), float(i)), torch.full((1, 5), 0.5))
        assert (rec is None) == (i >= 4)
    assert len(trace.steps) == 4 and trace.truncated
    assert all(len(r.scale[0]) == 2 and len(r.p[0]) == 2 for r in trace.steps)
    small = GuidanceTrace("np", batch_size=2, max_batch=2)
    small.record(0, 1.0, torch.tensor([[1.0, float("inf")]]))
    assert not small.truncated
    json.loads(small.to_json(allow_nan=False))  # non-finite values are made JSON-safe


def test_history_finds_run_by_latent() -> None:
    history = TraceHistory(max_runs=2)
    run_a, x_a = _finished_run(1)
    run_b, x_b = _finished_run(2)
    history.add(run_a.trace)
    history.add(run_b.trace)
    assert history.find(x_a) is run_a.trace and history.find(x_b) is run_b.trace
    assert history.find(x_a + 1e-3) is None
    assert history.find(x_a.to(torch.float32)) is run_a.trace  # fingerprint is on float32 values
    run_c, x_c = _finished_run(3)
    history.add(run_c.trace)  # bounded: the oldest is dropped
    assert len(history) == 2 and history.find(x_a) is None and history.latest() is run_c.trace
    dup = copy.deepcopy(run_c.trace)
    history.add(dup)
    assert history.find(x_c) is dup  # newest first
    with pytest.raises(ValueError):
        TraceHistory(max_runs=0)


@pytest.mark.parametrize("stochastic, expected", [(True, "kernel"), (False, "path"), (None, "kernel")])
def test_auto_posterior_variance_resolves_per_sampler(stochastic, expected) -> None:
    """'auto' is the explicit estimator for the run's sampler: same posterior, same trace, recorded as resolved."""
    from dng_core import PosteriorVariance

    assert PosteriorVariance.AUTO.resolve(stochastic).value == expected
    assert PosteriorVariance.KERNEL.resolve(False) is PosteriorVariance.KERNEL  # explicit choices stay
    auto = DNGConfig(CONFIG.lambda0, PosteriorConfig(**{**CONFIG.posterior.as_dict(), "variance": "auto"}))
    explicit = DNGConfig(CONFIG.lambda0, PosteriorConfig(**{**CONFIG.posterior.as_dict(), "variance": expected}))
    other = DNGConfig(CONFIG.lambda0, PosteriorConfig(
        **{**CONFIG.posterior.as_dict(), "variance": "step" if expected == "kernel" else "kernel"}))
    finals = {}
    for name, config in (("auto", auto), ("explicit", explicit), ("other", other)):
        model = ToyModel()
        run = DNGRun(config, SCHEDULE, stochastic_sampler=stochastic)
        x, _ = sample_euler(make_denoiser(run, model), _x0(), SCHEDULE)
        run.finish(x)
        finals[name] = (run.final_posterior(), run.trace.params)
    torch.testing.assert_close(finals["auto"][0], finals["explicit"][0], rtol=0, atol=0)
    assert not torch.allclose(finals["auto"][0], finals["other"][0]), "the two estimators must differ here"
    params = finals["auto"][1]
    assert params["variance"] == expected and params["variance_requested"] == "auto"
    assert params["stochastic_sampler"] is stochastic
    assert "variance_requested" not in finals["explicit"][1]


@pytest.mark.parametrize("evidence", ["sampled", "uncorrected"])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_a_split_schedule_continued_equals_the_whole_run(sampler: str, evidence: str) -> None:
    """Two passes, SCHEDULE[:4] then SCHEDULE[3:] on the first pass's output, with the second continuing the first
    (RunContinuation), give the posterior, scales and trace of one run over the whole schedule: exactly for euler
    (one call per step). Heun's last call of the first pass (its predictor at sigma_3) is a candidate first call of
    step 3 in the whole run, but an inner call of step 2 in the split one (sigma_3 is not a step of the first
    pass), so it is guided with step 2's scale there and the paths differ by that much (here < 1e-3 relative)."""
    sample = sample_euler if sampler == "euler" else (lambda d, x, s: sample_heun(d, x, s)[:2])
    config = DNGConfig(CONFIG.lambda0, replace(CONFIG.posterior, evidence=evidence))
    whole = DNGRun(config, SCHEDULE)
    x_whole, _ = sample(make_denoiser(whole, ToyModel()), _x0(), SCHEDULE)
    whole.finish(x_whole)

    first = DNGRun(config, SCHEDULE[:4])
    model = ToyModel()
    x_mid, _ = sample(make_denoiser(first, model), _x0(), SCHEDULE[:4])
    first.finish(x_mid)
    second = DNGRun(config, SCHEDULE[3:])
    assert second.continue_from(first.continuation(), BATCH)
    x_end, _ = sample(make_denoiser(second, model), x_mid, SCHEDULE[3:])
    second.finish(x_end)

    tol = {"rtol": 0, "atol": 0} if sampler == "euler" else {"rtol": 2e-3, "atol": 1e-6}
    # heun: < 1e-3 of the largest |x| (one element of 96 is off by 2.3e-3 of itself with the uncorrected evidence)
    torch.testing.assert_close(x_end, x_whole, **(tol if sampler == "euler" else
                                                  {"rtol": 0, "atol": 1e-3 * float(x_whole.abs().max())}))
    torch.testing.assert_close(second.final_posterior(), whole.final_posterior(), **tol)
    torch.testing.assert_close(second.trace.series("scale"), whole.trace.series("scale"), **tol)
    if sampler == "euler":
        torch.testing.assert_close(second.trace.series("p"), whole.trace.series("p"), rtol=0, atol=0)
    assert second.trace.step_indices() == whole.trace.step_indices() == list(range(N_STEPS))
    assert second.trace.total_steps == N_STEPS and second.trace.state_updates == N_STEPS
    assert second.trace.model_calls == whole.trace.model_calls


def test_a_continued_pass_carries_the_uncorrected_path_offset() -> None:
    """With the uncorrected evidence the path estimator follows the state without DNG's pushes (x + offset, the
    offset carried by each euler step); a pass continuing an earlier one starts from the offset that one reached,
    which is the whole run's at that step (euler over the same path: exactly)."""
    config = DNGConfig(CONFIG.lambda0, replace(CONFIG.posterior, evidence="uncorrected", variance="path"))
    model = ToyModel()
    first = DNGRun(config, SCHEDULE[:4])
    x_mid, _ = sample_euler(make_denoiser(first, model), _x0(), SCHEDULE[:4])
    first.finish(x_mid)
    carried = first.continuation().state.path_offset
    assert carried is not None and float(carried.abs().max()) > 1e-3 * float(x_mid.abs().max())
    whole = DNGRun(config, SCHEDULE)
    sample_euler(make_denoiser(whole, ToyModel()), _x0(), SCHEDULE[:5])  # steps 0-3 of the whole schedule
    whole_step3 = whole._pending.state[1].offset  # step 3's inputs, not yet confirmed
    torch.testing.assert_close(carried, whole_step3, rtol=1e-12, atol=0)
    second = DNGRun(config, SCHEDULE[3:])
    assert second.continue_from(first.continuation(), BATCH)
    sample_euler(make_denoiser(second, model), x_mid, SCHEDULE[3:5])
    torch.testing.assert_close(second._pending.state[1].offset, whole_step3, rtol=1e-12, atol=0)
    # without the carry the second pass would start from no offset at all
    assert float(whole_step3.abs().max()) > 0


def test_only_the_rest_of_the_schedule_continues_a_run() -> None:
    first = DNGRun(CONFIG, SCHEDULE[:4])
    x, _ = sample_euler(make_denoiser(first, ToyModel()), _x0(), SCHEDULE[:4])
    first.finish(x)
    cont = first.continuation()
    assert cont is not None and cont.last_sigma == SCHEDULE[3]
    assert not DNGRun(CONFIG, SCHEDULE).continue_from(cont, BATCH)  # starts at sigma_max again: a new run
    assert not DNGRun(CONFIG, SCHEDULE[3:]).continue_from(cont, BATCH + 1)  # another batch
    other = DNGConfig(lambda0=3.0, posterior=CONFIG.posterior)
    assert not DNGRun(other, SCHEDULE[3:]).continue_from(cont, BATCH)  # other settings
    assert not NegativePromptRun(0.5, SCHEDULE[3:]).continue_from(cont, BATCH)  # another method
    ended = DNGRun(CONFIG, SCHEDULE)
    xe, _ = sample_euler(make_denoiser(ended, ToyModel()), _x0(), SCHEDULE)
    ended.finish(xe)
    assert ended.continuation().last_sigma == 0.0
    assert not DNGRun(CONFIG, [0.0, 0.0]).continue_from(ended.continuation(), BATCH)  # ended at 0: nothing to continue


@pytest.mark.parametrize("data_scale", [1.0, 0.5])
def test_the_late_push_acts_only_below_two_data_scales_on_a_stochastic_sampler(data_scale: float) -> None:
    """stochastic_push 'late' (the default): on a stochastic sampler the scale is 0 above sigma = 2 s and (within
    the push bound) late_push_gain x lambda0 p / (1 - p) at and below it, while the posterior is tracked all along;
    a deterministic sampler, an unknown one and the paper's form are not cut (their runs equal the full push's
    exactly)."""
    from dng_core import StochasticPush
    from dng_core.posterior import guidance_scale
    from dng_core.transmission import LATE_PUSH_GAIN

    rate = DNGConfig(40.0, PosteriorConfig(prior=0.2, temperature=0.5, offset=0.5, p_min=1e-6, p_max=0.95),
                     deterministic_push="raw", stochastic_push="full")
    late = replace(rate, stochastic_push=StochasticPush.LATE)
    assert DNGConfig().stochastic_push is StochasticPush.LATE and DNGConfig().late_push_gain == LATE_PUSH_GAIN == 6.0
    assert late.as_dict()["stochastic_push"] == "late" and rate.as_dict()["stochastic_push"] == "full"
    assert late.as_dict()["late_push_gain"] == LATE_PUSH_GAIN

    def sample(config, stochastic):
        run = DNGRun(config, SCHEDULE, stochastic_sampler=stochastic, data_scale=data_scale)
        x, _, _ = sample_dpmpp_2s_ancestral(make_denoiser(run, ToyModel()), _x0(), SCHEDULE, seed=3)
        run.finish(x)
        return x, run.trace

    _, trace = sample(late, True)
    cut = 2.0 * data_scale
    assert trace.params["push_cut_sigma"] == cut and trace.params["push_cut_model_sigma"] == cut  # VE: the same
    from dng_core import Parametrisation
    rf = Parametrisation.RECTIFIED_FLOW
    assert rf.sigma_from_ve(cut) == pytest.approx(cut / (1 + cut)) and rf.sigma_ve(rf.sigma_from_ve(cut)) == pytest.approx(cut)
    scales, p = trace.series("scale"), trace.series("p")
    above = [i for i, s in enumerate(SCHEDULE[:-1]) if s > cut]
    below = [i for i, s in enumerate(SCHEDULE[:-1]) if s <= cut]
    assert above and below
    assert torch.count_nonzero(scales[above]) == 0
    expected = guidance_scale(p[below].log(), torch.tensor(late.lambda0 * LATE_PUSH_GAIN, dtype=torch.float64))
    # at most gain x lambda0 p / (1 - p): less only where bound_push holds the push within sigma (tested below)
    assert (scales[below] <= expected * (1 + 1e-9)).all() and (scales[below] > 0).all()
    assert torch.isclose(scales[below], expected, rtol=1e-9, atol=0).any()
    assert not torch.allclose(p[above[-1]], torch.full_like(p[0], 0.2)), "the posterior is tracked during the cut"

    for stochastic, config in ((False, rate), (None, rate), (True, replace(rate, posterior=replace(
            rate.posterior, form="paper", offset=1e-3)))):
        x_full, full = sample(config, stochastic)
        x_late, cut_run = sample(replace(config, stochastic_push=StochasticPush.LATE), stochastic)
        assert "push_cut_sigma" not in cut_run.params
        torch.testing.assert_close(x_late, x_full, rtol=0, atol=0)
        torch.testing.assert_close(cut_run.series("scale"), full.series("scale"), rtol=0, atol=0)


@pytest.mark.parametrize("data_scale", [1.0, 0.5])
def test_the_deterministic_late_push_is_the_matched_push_cut_at_two_data_scales(data_scale: float) -> None:
    """deterministic_push 'late': on a deterministic sampler the scale is 0 above sigma = 2 s and, at and below it,
    deterministic_late_gain x lambda0 p / (1 - p) x T(sigma) (the matched scaling), held within sigma by bound_push; the
    posterior is tracked all along. On a stochastic sampler, an unknown one and in the paper's form the option
    does nothing (their runs equal the 'matched' / unscaled runs exactly)."""
    from dng_core import DeterministicPush
    from dng_core.posterior import guidance_scale
    from dng_core.transmission import DETERMINISTIC_LATE_PUSH_GAIN, ode_to_sde_gain_ratio

    matched = DNGConfig(0.5, PosteriorConfig(prior=0.2, temperature=0.5, offset=0.5, p_min=1e-6, p_max=0.95),
                        deterministic_push="matched", stochastic_push="full")
    late = replace(matched, deterministic_push="late")
    assert late.deterministic_push is DeterministicPush.LATE and late.as_dict()["deterministic_push"] == "late"
    assert late.as_dict()["deterministic_late_gain"] == DETERMINISTIC_LATE_PUSH_GAIN != late.late_push_gain

    def sample(config, stochastic):
        run = DNGRun(config, SCHEDULE, stochastic_sampler=stochastic, data_scale=data_scale)
        if stochastic:
            x, _, _ = sample_dpmpp_2s_ancestral(make_denoiser(run, ToyModel()), _x0(), SCHEDULE, seed=3)
        else:
            x, _ = sample_euler(make_denoiser(run, ToyModel()), _x0(), SCHEDULE)
        run.finish(x)
        return x, run.trace

    _, trace = sample(late, False)
    cut = 2.0 * data_scale
    assert trace.params["push_cut_sigma"] == cut and trace.params["push_data_scale"] == data_scale
    scales, p = trace.series("scale"), trace.series("p")
    above = [i for i, s in enumerate(SCHEDULE[:-1]) if s > cut]
    below = [i for i, s in enumerate(SCHEDULE[:-1]) if s <= cut]
    assert above and below
    assert torch.count_nonzero(scales[above]) == 0
    ratio = torch.tensor([ode_to_sde_gain_ratio(SCHEDULE[i], data_scale) for i in below], dtype=torch.float64)
    expected = guidance_scale(p[below].log(), torch.tensor(late.lambda0 * DETERMINISTIC_LATE_PUSH_GAIN, dtype=torch.float64))
    expected = expected * ratio.view(-1, *([1] * (expected.dim() - 1)))
    # at most gain x lambda0 p / (1 - p) x T: less only where bound_push holds the push within sigma
    assert (scales[below] <= expected * (1 + 1e-9)).all() and (scales[below] > 0).all()
    assert torch.isclose(scales[below], expected, rtol=1e-9, atol=0).any()
    assert not torch.allclose(p[above[-1]], torch.full_like(p[0], 0.2)), "the posterior is tracked during the cut"
    x_matched, _ = sample(matched, False)
    assert not torch.equal(sample(late, False)[0], x_matched)

    for stochastic, config in ((True, matched), (None, matched), (False, replace(matched, posterior=replace(
            matched.posterior, form="paper", offset=1e-3)))):
        x_ref, ref = sample(config, stochastic)
        x_late, run = sample(replace(config, deterministic_push=DeterministicPush.LATE), stochastic)
        assert "push_cut_sigma" not in run.params
        torch.testing.assert_close(x_late, x_ref, rtol=0, atol=0)
        torch.testing.assert_close(run.series("scale"), ref.series("scale"), rtol=0, atol=0)


def test_the_late_push_gain_multiplies_lambda0_exactly() -> None:
    """lambda0 L with the late push's gain G is the same run, bit for bit, as lambda0 G L with gain 1 (the gain
    multiplies lambda0 before anything else), so the defaults grid can compare rows of either kind; with gain 1 at
    L the run differs. A gain that is not a finite number > 0 is refused."""
    from dng_core.transmission import LATE_PUSH_GAIN

    base = DNGConfig(12.5, PosteriorConfig(prior=0.05, temperature=0.5, offset=0.5, p_min=1e-6, p_max=0.95))

    def sample(config):
        run = DNGRun(config, SCHEDULE, stochastic_sampler=True, data_scale=1.0)
        x, _, _ = sample_dpmpp_2s_ancestral(make_denoiser(run, ToyModel()), _x0(), SCHEDULE, seed=5)
        run.finish(x)
        return x, run.trace.series("scale")

    x_gain, s_gain = sample(base)
    x_one, s_one = sample(replace(base, lambda0=12.5 * LATE_PUSH_GAIN, late_push_gain=1.0))
    torch.testing.assert_close(x_gain, x_one, rtol=0, atol=0)
    torch.testing.assert_close(s_gain, s_one, rtol=0, atol=0)
    x_low, _ = sample(replace(base, late_push_gain=1.0))
    assert not torch.equal(x_low, x_gain)
    for name in ("late_push_gain", "deterministic_late_gain"):
        for bad in (0.0, -1.0, math.nan, math.inf):
            with pytest.raises(ValueError, match=name):
                replace(base, **{name: bad})


def test_the_deterministic_late_gain_multiplies_lambda0_exactly() -> None:
    """deterministic_push 'late' at lambda0 L and gain G is the same euler run, bit for bit, as lambda0 G L / 6 at
    gain 6 (the defaults grid's session-22 rows, run at gain 6, stand for the default gain's)."""
    from dng_core.transmission import DETERMINISTIC_LATE_PUSH_GAIN

    base = DNGConfig(3.0, PosteriorConfig(prior=0.05, temperature=0.5, offset=0.5, p_min=1e-6, p_max=0.95),
                     deterministic_push="late")

    def sample(config):
        run = DNGRun(config, SCHEDULE, stochastic_sampler=False, data_scale=1.0)
        x, _ = sample_euler(make_denoiser(run, ToyModel()), _x0(), SCHEDULE)
        run.finish(x)
        return x, run.trace.series("scale")

    x_gain, s_gain = sample(base)
    x_six, s_six = sample(replace(base, lambda0=3.0 * DETERMINISTIC_LATE_PUSH_GAIN / 6.0, deterministic_late_gain=6.0))
    torch.testing.assert_close(x_gain, x_six, rtol=0, atol=0)
    torch.testing.assert_close(s_gain, s_six, rtol=0, atol=0)
    assert not torch.equal(sample(replace(base, deterministic_late_gain=6.0))[0], x_gain)


def test_bound_push_holds_each_concepts_push_within_sigma() -> None:
    """The late push's bound on a case with a known answer: D_neg - D_u of RMS c per image, so the largest
    lambda is sigma / c (c 0.1: 15, above the scale 10, kept); smaller scales, unpredicted concepts (None) and a zero direction are left as they are."""
    from dng_core.transmission import bound_push

    d_u = torch.zeros(4, 1, 2, 2, dtype=torch.float64)
    c = torch.tensor([2.0, 0.5, 0.0, 0.1], dtype=torch.float64).view(4, 1, 1, 1)
    d_neg = d_u + c * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64).view(1, 1, 2, 2)  # RMS c
    scale = torch.tensor([[10.0, 10.0, 10.0, 10.0], [7.0, 7.0, 7.0, 7.0]], dtype=torch.float64)
    out = bound_push(scale, d_u, [d_neg, None], sigma=1.5)
    torch.testing.assert_close(out[0], torch.tensor([0.75, 3.0, 10.0, 10.0], dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(out[1], scale[1], rtol=0, atol=0)
    pushed = (out[0].view(4, 1, 1, 1) * (d_neg - d_u)).flatten(1).pow(2).mean(1).sqrt()
    assert (pushed[[0, 1, 3]] <= 1.5 * (1 + 1e-12)).all()
    assert torch.equal(scale, torch.tensor([[10.0, 10.0, 10.0, 10.0], [7.0, 7.0, 7.0, 7.0]], dtype=torch.float64))  # not in place
