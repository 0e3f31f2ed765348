"""The DNG patch (with KSampler) and the DNG guider (with SamplerCustomAdvanced) on every model family, in a
real ComfyUI: tiny random-weight diffusion models the host detects as SD1.5, SDXL, v-prediction SDXL, SD3,
Flux, Wan 2.1 (video) and Qwen-Image (devtools/tiny_families.py), loaded by UNETLoader through the real
executor. The text encoders are replaced by a stand-in node that outputs CONDITIONING of the encoders' shapes.

Per family: posterior updates == steps with finite outputs; the trace's parametrisation matches the model's
``model_sampling`` (CONST -> rectified flow); lambda0 = 0 gives plain sampling with the empty prompt as the
negative; a batch of 2 keeps two posteriors; the trace plot renders; Wan samples several frames.
Random weights prove plumbing, not guidance effects.
"""

from __future__ import annotations

import time

import pytest
import torch

from devtools import tiny_families as TF
from devtools.dng_defaults import dng_node_defaults

STEPS = 4
NEGATIVES = "empty,negative"  # image 0 of the batch: the concept is the empty prompt; image 1: a prompt
# lambda0 = 0 vs plain: the same arithmetic on the same predictions, batched [pos, neg, empty] instead of
# [pos, empty] (and the guider's own CFG combination), so only float32 rounding separates them: relative to the
# largest latent value (float32 eps is 1.2e-7; a few hundred roundings through 4 steps stay far below 2e-5).
REL_TOL = 2e-5


@pytest.fixture(scope="session")
def family_nodes(host, pack_nodes):
    TF.register_conditioning_node()
    return pack_nodes


@pytest.fixture(scope="session")
def family_build_times() -> dict:
    return {}


@pytest.fixture
def family(request, host, family_build_times):
    f = TF.FAMILIES[request.param]
    t0 = time.perf_counter()
    name = TF.install_family(f)
    family_build_times.setdefault(f.id, time.perf_counter() - t0)
    return f, name


def _run(runner, prompt):
    return runner.run(prompt, check=True)


def _latent(runner) -> torch.Tensor:
    return runner.output_of("5")[0][0]["samples"]


def _trace(runner):
    history = runner.output_of("10")[1][0]
    trace = history.find(_latent(runner))
    assert trace is not None, "no recorded run matches the sampler's latent"
    return trace


def _expected_parametrisation(runner) -> str:
    import comfy.model_sampling

    model = runner.output_of("1")[0][0]
    const = isinstance(model.model.model_sampling, comfy.model_sampling.CONST)
    return "rectified_flow" if const else "variance_exploding"


def _check_run(runner, f: TF.TinyFamily) -> dict:
    latent = _latent(runner)
    trace = _trace(runner)
    assert torch.isfinite(latent).all(), "non-finite latent"
    assert trace.state_updates == STEPS and len(trace.steps) == STEPS
    p, lam = trace.series("p"), trace.series("scale")
    assert torch.isfinite(p).all() and torch.isfinite(lam).all()
    assert p.shape == (STEPS, 1, 2), p.shape
    # image 0's negative is the empty prompt (D_neg = D_u: no evidence, p moves by the offset alone), image 1's
    # is a prompt: one posterior per image keeps them apart even where random weights saturate image 1's
    assert not torch.allclose(p[:, 0, 0], p[:, 0, 1]), "the two images of the batch share one posterior"
    assert float(p[-1, 0, 0]) < 0.1, "an image without the concept (negative = empty prompt) gained evidence"
    param = trace.params["parametrisation"]
    assert param == _expected_parametrisation(runner)
    assert param == ("rectified_flow" if f.flow else "variance_exploding")
    # the path estimator probes once per step, except where the state holds no information about the image:
    # a flow model's first step starts at t = 1 (pure noise, sigma_ve infinite)
    informative = sum(1 for s in trace.steps if 0 < s.sigma < (1.0 if f.flow else float("inf")))
    assert trace.probe_calls == (informative if trace.params["variance"] == "path" else 0)
    plot = runner.output_of("11")[0][0]
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and torch.isfinite(plot).all()
    assert float(plot.std()) > 0.01, "blank trace plot"
    if f.id == "wan":
        assert latent.dim() == 5 and latent.shape[:3] == (2, 16, 3), latent.shape  # 9 frames -> 3 latent frames
        frames = latent[0].transpose(0, 1).flatten(1)
        assert not torch.allclose(frames[0], frames[1]), "the video's frames are identical"
    return {"updates": trace.state_updates, "model_calls": trace.model_calls, "probe_calls": trace.probe_calls,
            "parametrisation": param, "p_last": p[-1, 0].tolist()}


@pytest.mark.parametrize("family", list(TF.FAMILIES), indirect=True)
def test_family_patch_and_guider(prompt_runner, family_nodes, family, family_build_times):
    f, name = family
    dng = dng_node_defaults()
    _run(prompt_runner, TF.family_prompt(f, name, "plain", seed=3))
    plain = _latent(prompt_runner).clone()
    assert torch.isfinite(plain).all()
    model = prompt_runner.output_of("1")[0][0]
    assert type(model.model.model_config).__name__ == f.config_class
    assert model.model.model_type.name == f.model_type

    _run(prompt_runner, TF.family_prompt(f, name, "patch", seed=3, dng={**dng, "lambda0": 0.0}, negative=NEGATIVES))
    zero = _check_run(prompt_runner, f)
    scale = float(plain.abs().max())
    diff = float((_latent(prompt_runner) - plain).abs().max()) / scale
    assert diff <= REL_TOL, f"lambda0 = 0 differs from plain sampling by {diff:.3g} of max|latent| {scale:.3g}"

    rows = TF.ForwardRows(model.model.diffusion_model)
    try:
        _run(prompt_runner, TF.family_prompt(f, name, "patch", seed=3, dng=dng, negative=NEGATIVES))
    finally:
        rows.close()
    patched = _check_run(prompt_runner, f)
    # one batched [positive, negative, empty] call per step (the host did not split it: there is memory to
    # spare here), then the path estimator's [empty, negative] probe where the state is informative
    calls = rows.take()
    assert calls[0] == 6 and calls.count(6) == STEPS and calls.count(4) == patched["probe_calls"], calls
    assert len(calls) == STEPS + patched["probe_calls"]
    patched_latent = _latent(prompt_runner).clone()
    _run(prompt_runner, TF.family_prompt(f, name, "guider", seed=3, dng=dng, negative=NEGATIVES))
    guided = _check_run(prompt_runner, f)
    # the guider and the patch are two wirings of one computation
    guider_vs_patch = float((_latent(prompt_runner) - patched_latent).abs().max()) / scale
    assert guider_vs_patch <= REL_TOL, f"guider and patch differ by {guider_vs_patch:.3g} of max|latent|"
    print(f"\n{f.id}: {f.config_class}/{f.model_type} parametrisation={zero['parametrisation']} "
          f"updates={zero['updates']} lambda0=0 max|diff|/max|latent|={diff:.2e} (max|latent| {scale:.3g}) "
          f"build/cache {family_build_times[f.id]:.1f} s; "
          f"patch p_last={patched['p_last']} calls={patched['model_calls']}+{patched['probe_calls']} probes; "
          f"guider p_last={guided['p_last']} guider-patch {guider_vs_patch:.2e}")


@pytest.mark.parametrize("family", ["sd15", "flux"], indirect=True)
@pytest.mark.parametrize("sampler,variance,per_step", [("lcm", "auto", 3), ("euler", "kernel", 3),
                                                       ("euler", "path", 5)])
def test_cost_at_cfg_one(prompt_runner, family_nodes, family, sampler, variance, per_step):
    """Distilled / few-step use at cfg 1: plain sampling makes one prediction a step (the host skips the
    negative), DNG still acts and makes three, five with the path estimator's probe (none at a flow model's
    t = 1)."""
    f, name = family
    dng = {**dng_node_defaults(), "posterior_variance": variance}
    common = dict(sampler=sampler, scheduler="sgm_uniform", cfg=1.0, batch_size=1, seed=7)
    _run(prompt_runner, TF.family_prompt(f, name, "plain", **common))
    rows = TF.ForwardRows(prompt_runner.output_of("1")[0][0].model.diffusion_model)
    try:
        _run(prompt_runner, TF.family_prompt(f, name, "plain", **{**common, "seed": 8}))
        plain = rows.take()
        _run(prompt_runner, TF.family_prompt(f, name, "patch", dng=dng, **common))
        guided = rows.take()
    finally:
        rows.close()
    trace = _trace(prompt_runner)
    assert plain == [1] * STEPS
    expected = per_step * STEPS - (2 if f.flow and per_step == 5 else 0)
    assert sum(guided) == expected, guided
    assert trace.state_updates == STEPS and trace.steps[-1].scale is not None
