"""API-format prompts using the pack's nodes, shared by the in-process and the HTTP tests."""

from __future__ import annotations

from devtools.host import txt2img_prompt

PRIOR = 0.01
# The plumbing tests' setting (the authors' CIFAR-10 values). The push at every noise level, at lambda0 (times the
# matched T(sigma) on deterministic samplers), so that the scale at the first step is known exactly; the late
# pushes (the node defaults) have their own tests.
DNG_DEFAULTS = {"lambda0": 5.0, "prior": PRIOR, "temperature": 0.2, "offset": 2e-4, "p_min": 1e-6, "p_max": 0.8,
                "posterior_variance": "kernel", "stochastic_push": "full", "deterministic_push": "matched"}


def dng_prompt(*, sampler="euler", steps=4, cfg=7.0, seed=0, batch_size=1, node="DynamicNegativeGuidance",
               filename_prefix="dng_test", **dng) -> dict:
    """txt2img with the DNG patch between the loader and the KSampler.

    Node ids: "1" loader, "2" positive, "3" negative (the concept), "4" latent, "5" KSampler, "6" VAEDecode,
    "7" SaveImage, "8" empty prompt, "10" the patch, "11" DNG Trace Plot of "5".
    """
    p = txt2img_prompt(sampler_name=sampler, steps=steps, cfg=cfg, seed=seed, batch_size=batch_size,
                       negative="a dog", filename_prefix=filename_prefix)
    p["8"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}}
    p["10"] = {"class_type": node, "inputs": {"model": ["1", 0], "empty_conditioning": ["8", 0],
                                              **{**DNG_DEFAULTS, **dng}}}
    p["5"]["inputs"]["model"] = ["10", 0]
    p["11"] = {"class_type": "DNGTracePlot", "inputs": {"trace": ["10", 1], "latent": ["5", 0], "log_scale": False,
                                                       "save_json": False, "filename_prefix": "dng_trace",
                                                       "width": 256, "height": 256}}
    return p


def guider_prompt(sampler="heun", steps=4, seed=5, cfg=5.0, **dng) -> dict:
    """The DNG guider ("10") with SamplerCustomAdvanced ("5"); same ids as ``dng_prompt`` otherwise."""
    p = dng_prompt(steps=steps, seed=seed, **dng)
    p["10"] = {"class_type": "DNGGuider", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "empty_conditioning": ["8", 0], "cfg": cfg,
        **{k: v for k, v in p["10"]["inputs"].items() if k not in ("model", "empty_conditioning")}}}
    p["12"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    p["13"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": steps,
                                                          "denoise": 1.0}}
    p["14"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
    p["5"] = {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["14", 0], "guider": ["10", 0],
              "sampler": ["12", 0], "sigmas": ["13", 0], "latent_image": ["4", 0]}}
    return p
