"""The pack's nodes in a real ComfyUI (in-process, real executor and cache) with the tiny random-weight SD1.5
checkpoint. Random weights prove plumbing: step counts, batching, caching, traces; not image quality."""

from __future__ import annotations

import json

import pytest
import torch

from devtools import host as H
from tests.support.prompts import PRIOR, dng_prompt, guider_prompt

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2s_ancestral", "uni_pc", "ddim",
            "lcm"]
TWO_CALLS_PER_STEP = {"heun", "dpmpp_2s_ancestral"}


def starts_at_prior(trace) -> bool:
    p0 = trace.series("p")[0]
    return bool(torch.allclose(p0, torch.full_like(p0, PRIOR), rtol=1e-12))


def push_factors(trace) -> torch.Tensor:
    """[steps, 1, 1]: the deterministic push scaling T(sigma) of each step (1 where the run does not scale its
    push: ancestral samplers, deterministic_push 'raw'); the SD1.5 checkpoint is variance-exploding."""
    from dng_core.transmission import ode_to_sde_gain_ratio

    s = trace.params.get("push_data_scale")
    return torch.tensor([ode_to_sde_gain_ratio(st.sigma, s) if s else 1.0 for st in trace.steps],
                        dtype=torch.float64).reshape(-1, 1, 1)


def run_ok(runner, prompt):
    return runner.run(prompt, check=True)


def latent_of(runner, node_id="5") -> torch.Tensor:
    return runner.output_of(node_id)[0][0]["samples"]


def trace_of(runner, latent_node="5", patch_node="10"):
    history = runner.output_of(patch_node)[1][0]
    trace = history.find(latent_of(runner, latent_node))
    assert trace is not None, "no recorded run matches the sampler's latent"
    return trace


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_posterior_advances_once_per_step(prompt_runner, pack_nodes, sampler):
    steps = 4
    run_ok(prompt_runner, dng_prompt(sampler=sampler, steps=steps, seed=11))
    trace = trace_of(prompt_runner)
    print(f"{sampler}: steps={steps} model_calls={trace.model_calls} posterior_updates={trace.state_updates} "
          f"trace_len={len(trace.steps)}")
    assert trace.state_updates == steps
    assert len(trace.steps) == steps
    assert trace.step_indices() == list(range(steps))
    expected_calls = 2 * steps - 1 if sampler in TWO_CALLS_PER_STEP else steps
    if sampler == "uni_pc":
        assert steps <= trace.model_calls <= steps + 1
    else:
        assert trace.model_calls == expected_calls
    p = trace.series("p")
    assert torch.allclose(p[0], torch.full_like(p[0], PRIOR)), "every run starts from the prior"
    assert not torch.allclose(p[1:], torch.full_like(p[1:], PRIOR)), "the posterior never moved"
    lam = trace.series("scale")
    # a concept every image has settled on is pruned (not predicted, no guidance) once its posterior sits at the
    # floor, which on this random-weight checkpoint can happen within 4 steps
    predicted = trace.predicted_series()[:, 0].reshape(-1, 1, 1).to(lam.dtype)
    assert torch.allclose(lam, predicted * 5.0 * p / (1 - p) * push_factors(trace), rtol=1e-9)


def test_batch_elements_keep_separate_posteriors(prompt_runner, pack_nodes):
    # euler: the only randomness is the initial noise, which ComfyUI draws for the whole batch in one call, so
    # element 0 of a batch of 3 starts from the batch-1 noise.
    run_ok(prompt_runner, dng_prompt(sampler="euler", steps=6, seed=3, batch_size=1))
    single = trace_of(prompt_runner).series("p")[:, 0, :]
    run_ok(prompt_runner, dng_prompt(sampler="euler", steps=6, seed=3, batch_size=3))
    batch = trace_of(prompt_runner).series("p")[:, 0, :]
    assert batch.shape == (6, 3)
    # Element 0's posterior must match the batch-1 posterior, whatever the other elements do.
    torch.testing.assert_close(batch[:, 0], single[:, 0], rtol=1e-3, atol=1e-9)
    print("p per step and element:\n", batch)
    assert not torch.allclose(batch[:, 0], batch[:, 1]) and not torch.allclose(batch[:, 1], batch[:, 2])


def test_every_run_starts_from_the_prior_with_cached_patch(prompt_runner, pack_nodes):
    run_ok(prompt_runner, dng_prompt(sampler="euler_ancestral", seed=21))
    history = prompt_runner.output_of("10")[1][0]
    first = trace_of(prompt_runner)
    res = run_ok(prompt_runner, dng_prompt(sampler="euler_ancestral", seed=22))
    assert "10" in res.cached_nodes, "the patch node should come from the cache on the second prompt"
    assert prompt_runner.output_of("10")[1][0] is history
    second = trace_of(prompt_runner)
    assert second is not first
    assert starts_at_prior(first) and starts_at_prior(second)


def test_two_ksamplers_sharing_a_patched_model_keep_separate_traces(prompt_runner, pack_nodes):
    p = dng_prompt(sampler="euler_ancestral", seed=31)
    p["20"] = json.loads(json.dumps(p["5"]))
    p["20"]["inputs"]["seed"] = 32
    p["21"] = {"class_type": "DNGTracePlot", "inputs": {**p["11"]["inputs"], "latent": ["20", 0]}}
    run_ok(prompt_runner, p)
    a, b = trace_of(prompt_runner, "5"), trace_of(prompt_runner, "20")
    assert a is not b and a.output_fingerprint != b.output_fingerprint
    assert len(a.steps) == len(b.steps) == 4
    assert starts_at_prior(a) and starts_at_prior(b)
    assert not torch.equal(a.series("p"), b.series("p"))


def test_input_model_is_left_untouched(prompt_runner, pack_nodes):
    run_ok(prompt_runner, dng_prompt())
    original = prompt_runner.output_of("1")[0][0]
    patched = prompt_runner.output_of("10")[0][0]
    assert patched is not original
    assert "sampler_cfg_function" not in original.model_options
    assert "sampler_calc_cond_batch_function" not in original.model_options
    assert not any("dng" in str(k) for w in original.wrappers.values() for k in w)
    assert "sampler_cfg_function" in patched.model_options
    assert patched.model_options.get("disable_cfg1_optimization") is True


def test_dng_still_acts_at_cfg_one(prompt_runner, pack_nodes):
    p = dng_prompt(cfg=1.0, seed=41, prior=0.5)  # prior 0.5: lambda = lambda0 from the first step
    run_ok(prompt_runner, p)
    guided = latent_of(prompt_runner).clone()
    trace = trace_of(prompt_runner)
    assert trace.steps[0].scale == [[pytest.approx(5.0 * float(push_factors(trace)[0]))]]
    plain = H.txt2img_prompt(cfg=1.0, seed=41, negative="a dog", filename_prefix="dng_test")
    run_ok(prompt_runner, plain)
    assert not torch.allclose(guided, latent_of(prompt_runner), atol=1e-3)


def test_lambda0_zero_equals_plain_ksampler_with_empty_negative(prompt_runner, pack_nodes):
    run_ok(prompt_runner, dng_prompt(lambda0=0.0, seed=51, cfg=6.0))
    dng = latent_of(prompt_runner).clone()
    plain = H.txt2img_prompt(cfg=6.0, seed=51, negative="", filename_prefix="dng_test")
    run_ok(prompt_runner, plain)
    ref = latent_of(prompt_runner)
    torch.testing.assert_close(dng, ref, rtol=1e-4, atol=1e-4)
    # and with lambda0 > 0 the negative does change the result (the test above could not pass vacuously)
    run_ok(prompt_runner, dng_prompt(lambda0=5.0, prior=0.5, seed=51, cfg=6.0))
    assert not torch.allclose(latent_of(prompt_runner), ref, atol=1e-3)


def test_post_cfg_hooks_of_other_nodes_keep_running(prompt_runner, pack_nodes):
    run_ok(prompt_runner, dng_prompt(seed=61))
    alone = latent_of(prompt_runner).clone()
    p = dng_prompt(seed=61)
    p["12"] = {"class_type": "CFGNorm", "inputs": {"model": ["1", 0], "strength": 0.5}}  # a post-CFG function
    p["10"]["inputs"]["model"] = ["12", 0]
    res = run_ok(prompt_runner, p)
    assert not res.events_of("dng.warning")
    assert not torch.allclose(alone, latent_of(prompt_runner), atol=1e-4)
    assert prompt_runner.output_of("10")[0][0].model_options.get("sampler_post_cfg_function")


def test_replacing_another_nodes_cfg_function_is_announced(prompt_runner, pack_nodes, recorder):
    p = dng_prompt(seed=62)
    p["12"] = {"class_type": "RescaleCFG", "inputs": {"model": ["1", 0], "multiplier": 0.7}}  # the one CFG slot
    p["10"]["inputs"]["model"] = ["12", 0]
    res = run_ok(prompt_runner, p)
    messages = [e.data["message"] for e in res.events_of("dng.warning")]
    assert any("replaces a CFG function" in m for m in messages)


def test_trace_plot_outputs_image_and_json(prompt_runner, pack_nodes, host):
    p = dng_prompt(sampler="euler_ancestral", seed=81, batch_size=2)
    p["11"]["inputs"].update({"save_json": True, "filename_prefix": "dng_trace_test", "log_scale": True})
    res = run_ok(prompt_runner, p)
    image, text = prompt_runner.output_of("11")[0][0], prompt_runner.output_of("11")[1][0]
    assert image.shape == (1, 256, 256, 3) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    data = json.loads(text)
    assert data["method"] == "dng" and data["batch_size"] == 2 and len(data["steps"]) == 4
    previews = res.images("11")
    assert previews and previews[0].exists()
    saved = sorted((host.folder_paths.get_output_directory() and
                    __import__("pathlib").Path(host.folder_paths.get_output_directory())).glob("dng_trace_test_*.json"))
    assert saved and json.loads(saved[-1].read_text())["steps"] == data["steps"]


def test_dng_sampler_node_matches_patch_plus_ksampler(prompt_runner, pack_nodes):
    run_ok(prompt_runner, dng_prompt(sampler="euler_ancestral", seed=91))
    via_patch = latent_of(prompt_runner).clone()
    p = dng_prompt(sampler="euler_ancestral", seed=91)
    ks = p["5"]["inputs"]
    p["5"] = {"class_type": "DNGSampler", "inputs": {
        **{k: ks[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                              "latent_image", "denoise")},
        "model": ["1", 0], "empty_conditioning": ["8", 0],
        **{k: v for k, v in p["10"]["inputs"].items() if k not in ("model", "empty_conditioning")}}}
    p["11"]["inputs"]["trace"] = ["5", 1]
    del p["10"]
    run_ok(prompt_runner, p)
    torch.testing.assert_close(latent_of(prompt_runner), via_patch)
    trace = prompt_runner.output_of("5")[1][0].find(latent_of(prompt_runner))
    assert trace is not None and len(trace.steps) == 4 and trace.state_updates == 4


@pytest.mark.parametrize("sampler", ["euler_ancestral", "heun"])
def test_guider_with_sampler_custom_advanced(prompt_runner, pack_nodes, sampler):
    run_ok(prompt_runner, guider_prompt(sampler=sampler, posterior_variance="auto"))
    trace = trace_of(prompt_runner)
    assert len(trace.steps) == 4 and trace.state_updates == 4
    assert trace.model_calls == (7 if sampler == "heun" else 4)
    # heun is deterministic: the path estimator probes through the guider too (at least once per step: heun's
    # predictor call at the next sigma is a first-call candidate until the real first call replaces it)
    assert (trace.probe_calls >= 4) if sampler == "heun" else trace.probe_calls == 0
    assert starts_at_prior(trace)


@pytest.mark.parametrize("estimator", ["kernel", "path"])
def test_guider_equals_patch_with_ksampler(prompt_runner, pack_nodes, estimator):
    """Same result through the guider and the patch, for both estimators (the path one probes through each)."""
    run_ok(prompt_runner, guider_prompt(sampler="euler", seed=6, cfg=5.0, posterior_variance=estimator))
    via_guider = latent_of(prompt_runner).clone()
    assert trace_of(prompt_runner).probe_calls == (4 if estimator == "path" else 0)
    run_ok(prompt_runner, dng_prompt(sampler="euler", seed=6, cfg=5.0, posterior_variance=estimator))
    torch.testing.assert_close(latent_of(prompt_runner), via_guider, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("node,params,method", [
    ("DNGNegativePrompting", {"scale": 0.5}, "np"),
    ("DNGSafeLatentDiffusion", {"preset": "strong", "warmup": 10, "safety_scale": 1000.0, "threshold": 0.01,
                                "momentum_scale": 0.3, "momentum_beta": 0.4}, "sld"),
])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_baseline_patches_record_one_scale_per_step(prompt_runner, pack_nodes, node, params, method, sampler):
    p = dng_prompt(sampler=sampler, seed=101)
    p["10"] = {"class_type": node, "inputs": {"model": ["1", 0], "empty_conditioning": ["8", 0], **params}}
    run_ok(prompt_runner, p)
    trace = trace_of(prompt_runner)
    assert trace.method == method and len(trace.steps) == 4 and trace.state_updates == 4
    scale = trace.series("scale")
    assert scale.shape == (4, 1, 1) and torch.isfinite(scale).all()
    if method == "np":
        assert torch.all(scale == 0.5)
    else:  # strong preset: warm-up 7 > 4 steps, so no safety term yet
        assert torch.all(scale == 0.0)


def test_live_step_events_reach_the_client(prompt_runner, pack_nodes):
    res = run_ok(prompt_runner, dng_prompt(sampler="euler_ancestral", seed=111, batch_size=2))
    starts = res.events_of("dng.run_start")
    steps = res.events_of("dng.step")
    assert len(starts) == 1 and starts[0].data["node"] == "10" and starts[0].data["total_steps"] == 4
    assert [e.data["step"] for e in steps] == [0, 1, 2, 3]
    assert all(e.sid == "dng-tests" for e in steps)
    assert len(steps[0].data["scale"][0]) == 2 and len(steps[0].data["p"][0]) == 2


def test_three_predictions_share_one_batched_forward_pass(prompt_runner, pack_nodes, host):
    import comfy.patcher_extension

    run_ok(prompt_runner, dng_prompt(steps=3, batch_size=2))
    patched = prompt_runner.output_of("10")[0][0].clone()
    batches = []

    def count(executor, x, t, *args, **kwargs):
        batches.append(int(x.shape[0]))
        return executor(x, t, *args, **kwargs)

    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "count", count)
    positive, negative = prompt_runner.output_of("2")[0][0], prompt_runner.output_of("3")[0][0]
    latent = prompt_runner.output_of("4")[0][0]
    host.nodes.common_ksampler(patched, 0, 3, 7.0, "euler", "normal", positive, negative, latent)
    assert batches == [6, 6, 6]  # one call per step: (positive, negative, empty) x batch 2


class _ToyDenoiser:
    """Just enough of a wrapped ComfyUI model for k-diffusion's sampler functions to run on (shrinks x)."""

    def __init__(self) -> None:
        import comfy.model_sampling
        from types import SimpleNamespace as NS

        class Sampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
            pass

        ms = Sampling()
        self.inner_model = NS(inner_model=NS(model_sampling=ms), model_sampling=ms,
                              model_patcher=NS(get_model_object=lambda name: ms))

    def __call__(self, x, sigma, **_):
        return x * 0.5 / (1 + sigma.view(-1, 1, 1, 1) ** 2) ** 0.5


def test_sampler_noise_classification_matches_what_the_samplers_do(host, pack_nodes):
    """'auto' picks the kernel for samplers that inject noise: check the name-based rule against each of
    ComfyUI's sampler functions run twice with different noise seeds (same start): stochastic iff they differ."""
    import comfy.samplers

    classify = H.pack_module("nodes.patch").sampler_is_stochastic
    sigmas = torch.tensor([14.6, 8.0, 4.5, 2.4, 1.2, 0.6, 0.28, 0.1, 0.0])
    checked, expected_by_name = {}, {}
    for name in comfy.samplers.KSAMPLER_NAMES:
        sampler = comfy.samplers.sampler_object(name)
        expected_by_name[name] = classify(sampler)
        try:
            outs = [sampler.sampler_function(_ToyDenoiser(), torch.full((1, 4, 8, 8), 3.0), sigmas.clone(),
                                             extra_args={"seed": seed}, callback=None, disable=True,
                                             **sampler.extra_options) for seed in (1, 2)]
        except Exception:  # needs a real model (the *_cfg_pp samplers read the CFG function's output)
            continue
        checked[name] = not torch.equal(outs[0], outs[1])
    print({n: (checked.get(n), expected_by_name[n]) for n in expected_by_name})
    assert len(checked) >= 25, f"too few samplers ran on the toy model: {sorted(checked)}"
    wrong = {n: (checked[n], expected_by_name[n]) for n in checked if checked[n] != expected_by_name[n]}
    assert not wrong, f"(injects noise, classified stochastic) disagree for {wrong}"
    assert {n for n, s in checked.items() if s} >= {"euler_ancestral", "dpmpp_2m_sde", "ddpm", "lcm"}
    for name in ("ddim", "uni_pc", "uni_pc_bh2"):  # not k-diffusion functions; all deterministic
        assert classify(comfy.samplers.sampler_object(name)) is False, name
    assert classify(comfy.samplers.KSAMPLER(comfy.samplers.sampler_object("euler_ancestral").sampler_function,
                                            extra_options={"eta": 0.0})) is False
    assert classify(object()) is None


@pytest.mark.parametrize("sampler, resolved", [("euler", "path"), ("euler_ancestral", "kernel")])
def test_auto_posterior_variance_is_the_estimator_for_the_sampler(prompt_runner, pack_nodes, sampler, resolved):
    run_ok(prompt_runner, dng_prompt(sampler=sampler, seed=61, posterior_variance="auto"))
    auto = latent_of(prompt_runner).clone()
    trace = trace_of(prompt_runner)
    assert trace.params["variance"] == resolved and trace.params["variance_requested"] == "auto"
    assert trace.params["stochastic_sampler"] is (resolved == "kernel")
    run_ok(prompt_runner, dng_prompt(sampler=sampler, seed=61, posterior_variance=resolved))
    torch.testing.assert_close(latent_of(prompt_runner), auto, rtol=0, atol=0)
    # the path estimator probes once per step (2 more predictions: the empty prompt and the concept)
    assert trace.probe_calls == (trace.state_updates if resolved == "path" else 0)
    other = "kernel" if resolved == "path" else "path"
    run_ok(prompt_runner, dng_prompt(sampler=sampler, seed=61, posterior_variance=other))
    assert not torch.equal(trace_of(prompt_runner).series("p"), trace.series("p")), "estimators must differ"


@pytest.mark.parametrize("sampler, scaled", [("euler", True), ("euler_ancestral", False)])
def test_deterministic_push_scales_the_guidance_by_the_transmission_ratio(prompt_runner, pack_nodes, sampler, scaled):
    """deterministic_push 'matched' (the plumbing tests' setting): on a deterministic sampler the scale at sigma is
    lambda0 p / (1 - p) times 2 s / sqrt(s^2 + sigma^2), s the checkpoint's sigma_data (1.0 for SD1.5); never on
    an ancestral one; 'raw' leaves it unscaled. Read at the first step, where p is the prior."""
    from dng_core.transmission import ode_to_sde_gain_ratio

    run_ok(prompt_runner, dng_prompt(sampler=sampler, seed=62, batch_size=2))
    trace = trace_of(prompt_runner)
    assert starts_at_prior(trace) and trace.params["deterministic_push"] == "matched"
    assert trace.params.get("push_data_scale") == (1.0 if scaled else None)
    first = trace.steps[0]
    unscaled = trace.params["lambda0"] * PRIOR / (1 - PRIOR)
    factor = ode_to_sde_gain_ratio(first.sigma, 1.0) if scaled else 1.0
    assert first.scale[0] == pytest.approx([unscaled * factor] * 2, rel=1e-9)
    assert (factor < 0.2) is scaled  # SD1.5's first sigma is ~14.6: the ODE keeps a push the SDE forgets
    matched = latent_of(prompt_runner).clone()
    run_ok(prompt_runner, dng_prompt(sampler=sampler, seed=62, batch_size=2, deterministic_push="raw"))
    raw = trace_of(prompt_runner)
    assert raw.steps[0].scale[0] == pytest.approx([unscaled] * 2, rel=1e-9)
    assert torch.equal(latent_of(prompt_runner), matched) is not scaled


def _assert_pushed_only_below_two(trace, gain: float, matched: bool) -> None:
    """The late push on SD1.5 (s = 1, variance-exploding): scale 0 at the steps above sigma 2 and, below, at most
    gain x lambda0 p / (1 - p) (x T(sigma) when ``matched``), equal to it somewhere: less where the push is held
    within sigma (dng_core.transmission.bound_push), 0 where a concept settled and was pruned."""
    from dng_core.posterior import guidance_scale
    from dng_core.transmission import ode_to_sde_gain_ratio

    sigmas = [st.sigma for st in trace.steps]
    above = [i for i, s in enumerate(sigmas) if s > 2.0]
    below = [i for i, s in enumerate(sigmas) if s <= 2.0]
    assert above and below, sigmas
    scales, p = trace.series("scale"), trace.series("p")
    assert torch.count_nonzero(scales[above]) == 0
    unbounded = guidance_scale(p[below].log(), trace.params["lambda0"] * gain)
    if matched:
        ratio = torch.tensor([ode_to_sde_gain_ratio(sigmas[i], 1.0) for i in below], dtype=unbounded.dtype)
        unbounded = unbounded * ratio.view(-1, *([1] * (unbounded.dim() - 1)))
    assert (scales[below] <= unbounded.to(scales) * (1 + 1e-9)).all() and (scales[below] > 0).any()
    assert torch.isclose(scales[below], unbounded.to(scales), rtol=1e-9, atol=0).any()


@pytest.mark.parametrize("sampler, cut", [("euler_ancestral", True), ("dpmpp_2m_sde", True), ("euler", False)])
def test_the_late_push_acts_only_below_sigma_two_s_on_a_stochastic_sampler(prompt_runner, pack_nodes, sampler, cut):
    """stochastic_push 'late' (the default): on a sampler that adds noise the scale is 0 at the steps above sigma =
    2 s (s: the checkpoint's sigma_data, 1 for SD1.5) and at most 6 x lambda0 p / (1 - p) below (the late push's
    gain), equal to it somewhere; a deterministic sampler is not cut by it, its image is the 'full' one's."""
    from dng_core.transmission import LATE_PUSH_GAIN

    run_ok(prompt_runner, dng_prompt(sampler=sampler, steps=6, seed=63, batch_size=2, stochastic_push="full"))
    full = latent_of(prompt_runner).clone()
    late = dng_prompt(sampler=sampler, steps=6, seed=63, batch_size=2)
    del late["10"]["inputs"]["stochastic_push"]  # the input left out: the node's default, late
    run_ok(prompt_runner, late)
    trace = trace_of(prompt_runner)
    assert trace.params["stochastic_push"] == "late" and trace.params.get("push_cut_sigma") == (2.0 if cut else None)
    assert trace.params["late_push_gain"] == LATE_PUSH_GAIN == 6.0
    assert trace.params.get("push_cut_model_sigma") == (2.0 if cut else None)  # SD1.5: variance-exploding
    assert torch.equal(latent_of(prompt_runner), full) is not cut
    if cut:
        _assert_pushed_only_below_two(trace, LATE_PUSH_GAIN, matched=False)


@pytest.mark.parametrize("sampler, cut", [("euler", True), ("euler_ancestral", False)])
def test_the_deterministic_late_push_cuts_the_matched_push_at_sigma_two_s(prompt_runner, pack_nodes, sampler, cut):
    """deterministic_push 'late' (the default): on a deterministic sampler the scale is 0 above sigma = 2 s and at
    most deterministic_late_gain (16) x lambda0 p / (1 - p) x T(sigma) below (the matched push at its own gain,
    held within sigma), equal to it somewhere; on a sampler that adds noise it does nothing (the 'matched' image)."""
    from dng_core.transmission import DETERMINISTIC_LATE_PUSH_GAIN

    run_ok(prompt_runner, dng_prompt(sampler=sampler, steps=6, seed=64, batch_size=2))  # the plumbing's 'matched'
    matched = latent_of(prompt_runner).clone()
    late = dng_prompt(sampler=sampler, steps=6, seed=64, batch_size=2)
    del late["10"]["inputs"]["deterministic_push"]  # the input left out: the node's default, late
    run_ok(prompt_runner, late)
    trace = trace_of(prompt_runner)
    assert trace.params["deterministic_push"] == "late" and trace.params.get("push_cut_sigma") == (2.0 if cut else None)
    assert trace.params["deterministic_late_gain"] == DETERMINISTIC_LATE_PUSH_GAIN == 16.0
    assert torch.equal(latent_of(prompt_runner), matched) is not cut
    if cut:
        _assert_pushed_only_below_two(trace, DETERMINISTIC_LATE_PUSH_GAIN, matched=True)
