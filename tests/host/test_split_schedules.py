"""A schedule split over two sampling passes is one DNG run; a genuinely new run starts from the prior.

Continuation (KSamplerAdvanced 0-3 returning leftover noise, then 3-6 on its LATENT; SplitSigmas with two
SamplerCustomAdvanced and the DNG guider): the second pass starts from the posterior where the first left it,
numbers its steps 3-5, and its trace holds the whole schedule (6 steps, 6 posterior updates). New runs
(img2img on a decoded-and-re-encoded image, a second pass on a fully denoised latent, a changed latent) start
from the prior.
"""

from __future__ import annotations

import torch

from tests.support.prompts import PRIOR, dng_prompt, guider_prompt

STEPS, SPLIT = 6, 3


def _ran(runner, prompt):
    return runner.run(prompt, check=True)


def _trace(runner, latent_node, patch_node="10"):
    history = runner.output_of(patch_node)[1][0]
    latent = runner.output_of(latent_node)[0][0]["samples"]
    trace = history.find(latent)
    assert trace is not None, f"no recorded run matches the LATENT of node {latent_node}"
    return trace


def _p(trace) -> torch.Tensor:
    return trace.series("p")[:, 0, :]  # [steps, batch]


def _advanced_pair(seed: int, second_start: int = SPLIT, leftover: str = "enable", batch_size: int = 2) -> dict:
    p = dng_prompt(sampler="euler_ancestral", seed=seed, steps=STEPS, batch_size=batch_size)
    common = {"model": ["10", 0], "noise_seed": seed, "steps": STEPS, "cfg": 7.0, "sampler_name": "euler_ancestral",
              "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0]}
    p["5"] = {"class_type": "KSamplerAdvanced", "inputs": {**common, "add_noise": "enable", "latent_image": ["4", 0],
              "start_at_step": 0, "end_at_step": SPLIT, "return_with_leftover_noise": leftover}}
    p["20"] = {"class_type": "KSamplerAdvanced", "inputs": {**common, "add_noise": "disable", "latent_image": ["5", 0],
               "start_at_step": second_start, "end_at_step": STEPS, "return_with_leftover_noise": "disable"}}
    p["6"]["inputs"]["samples"] = ["20", 0]
    p["11"]["inputs"]["latent"] = ["20", 0]
    return p


def test_ksampler_advanced_continuation_continues_the_posterior(prompt_runner, pack_nodes):
    res = _ran(prompt_runner, _advanced_pair(seed=71))
    first, whole = _trace(prompt_runner, "5"), _trace(prompt_runner, "20")
    assert first.step_indices() == [0, 1, 2] and first.total_steps == SPLIT
    assert whole.step_indices() == list(range(STEPS)) and whole.total_steps == STEPS
    assert whole.state_updates == STEPS and whole.model_calls == STEPS
    # the first three steps are the first pass's, and the second pass starts from where it ended, not the prior
    torch.testing.assert_close(_p(whole)[:SPLIT], _p(first), rtol=0, atol=0)
    assert not torch.allclose(_p(whole)[SPLIT], torch.full_like(_p(whole)[SPLIT], PRIOR))
    # the live curve of the second pass goes on from the first: its run_start carries the earlier steps
    starts = [e.data for e in res.events_of("dng.run_start")]
    assert [s["continues"] for s in starts] == [False, True]
    assert [r["step"] for r in starts[1]["steps"]] == [0, 1, 2] and starts[1]["total_steps"] == STEPS
    steps = [e.data["step"] for e in res.events_of("dng.step")]
    assert steps == list(range(STEPS))
    # the plot of the second sampler's LATENT shows the whole schedule
    import json

    plotted = json.loads(prompt_runner.output_of("11")[1][0])
    assert [s["step"] for s in plotted["steps"]] == list(range(STEPS))


def test_split_sigmas_with_the_guider_continues_the_posterior(prompt_runner, pack_nodes):
    p = guider_prompt(sampler="euler_ancestral", steps=STEPS, seed=72)
    p["15"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["13", 0], "step": SPLIT}}
    p["5"]["inputs"]["sigmas"] = ["15", 0]
    p["16"] = {"class_type": "DisableNoise", "inputs": {}}
    p["20"] = {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["16", 0], "guider": ["10", 0],
               "sampler": ["12", 0], "sigmas": ["15", 1], "latent_image": ["5", 0]}}
    p["6"]["inputs"]["samples"] = ["20", 0]
    p["11"]["inputs"]["latent"] = ["20", 0]
    _ran(prompt_runner, p)
    first, whole = _trace(prompt_runner, "5"), _trace(prompt_runner, "20")
    assert first.step_indices() == [0, 1, 2]
    assert whole.step_indices() == list(range(STEPS)) and whole.state_updates == STEPS
    torch.testing.assert_close(_p(whole)[:SPLIT], _p(first), rtol=0, atol=0)


def test_a_second_pass_on_a_fully_denoised_latent_starts_anew(prompt_runner, pack_nodes):
    """A hires-fix style second pass (the first ended at sigma 0) is a new run: prior, steps from 0."""
    p = _advanced_pair(seed=73, leftover="disable")
    p["5"]["inputs"]["end_at_step"] = STEPS  # the first pass denoises fully
    p["20"]["inputs"].update({"add_noise": "enable", "start_at_step": SPLIT})
    _ran(prompt_runner, p)
    second = _trace(prompt_runner, "20")
    assert second.step_indices() == [0, 1, 2] and second.total_steps == STEPS - SPLIT
    torch.testing.assert_close(_p(second)[0], torch.full_like(_p(second)[0], PRIOR), rtol=1e-12, atol=0)


def test_img2img_on_a_reencoded_image_starts_anew(prompt_runner, pack_nodes):
    p = _advanced_pair(seed=74)
    # decode the first pass and encode it again: another latent, so a new run (prior, steps from 0)
    p["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    p["22"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["21", 0], "vae": ["1", 2]}}
    p["20"]["inputs"]["latent_image"] = ["22", 0]
    _ran(prompt_runner, p)
    second = _trace(prompt_runner, "20")
    assert second.step_indices() == [0, 1, 2]
    torch.testing.assert_close(_p(second)[0], torch.full_like(_p(second)[0], PRIOR), rtol=1e-12, atol=0)


def test_a_continuation_may_change_the_sampler(prompt_runner, pack_nodes):
    """Ancestral for the first pass, deterministic for the rest: still one run (the posterior's estimator follows
    each pass's sampler, 'auto')."""
    p = _advanced_pair(seed=75)
    p["20"]["inputs"]["sampler_name"] = "euler"
    _ran(prompt_runner, p)
    first, whole = _trace(prompt_runner, "5"), _trace(prompt_runner, "20")
    assert whole.step_indices() == list(range(STEPS))
    torch.testing.assert_close(_p(whole)[:SPLIT], _p(first), rtol=0, atol=0)
