"""The reference digits model as a ComfyUI MODEL (nodes/reference_nodes.py), in-process through the real host."""

from __future__ import annotations

import torch

from devtools import host as H
from tests.support.reference_prompts import reference_prompt


def test_loader_gives_an_eps_model_with_the_ddpm_linear_schedule(prompt_runner, pack_nodes):
    prompt_runner.run(reference_prompt(method="plain", batch_size=4, steps=4), check=True)
    patcher = prompt_runner.output_of("1")[0][0]
    sampling = patcher.model.model_sampling
    assert patcher.model.model_type.name == "EPS"
    schedule = H.pack_module("reference_model.schedule")
    # ComfyUI's sigmas for sqrt_linear 1e-4..0.02 must be the schedule the network was trained with.
    torch.testing.assert_close(sampling.sigmas.double(), schedule.sigmas_f64(), rtol=1e-6, atol=0)
    latent = prompt_runner.output_of("4")[0][0]["samples"]
    assert latent.shape == (4, 1, 8, 8) and not latent.any()
    image = prompt_runner.output_of("6")[0][0]
    assert image.shape == (1, 4 * 10, 8 * 4 * 10, 3)  # 10 = 8 px + a 1 px frame each side and 0.0 <= image.min() and image.max() <= 1.0


def test_digit_conditioning_selects_the_digit(prompt_runner, pack_nodes):
    """Conditional samples of digit 3 (cfg 3) are classified as 3 by the shipped classifier."""
    p = reference_prompt(method="plain", batch_size=64, steps=20, seed=5, cfg=3.0)
    p["8"] = {"class_type": "DNGDigitConditioning", "inputs": {"digit": "3"}}
    p["5"]["inputs"]["positive"] = ["8", 0]
    prompt_runner.run(p, check=True)
    x = prompt_runner.output_of("5")[0][0]["samples"]
    ref = H.pack_module("reference_model")
    clf, _ = ref.load_classifier(ref.weights_path("digits8_classifier"))
    share = (clf.predict(x.clamp(-1, 1)) == 3).float().mean().item()
    print(f"digit 3 conditional: {share:.2%} classified as 3")
    assert share >= 0.8


def test_dng_removes_the_negative_digit_through_the_ksampler(prompt_runner, pack_nodes):
    """The effect on the trained model: digit 0 mostly gone with DNG, present without it (same seed)."""
    ref = H.pack_module("reference_model")
    clf, _ = ref.load_classifier(ref.weights_path("digits8_classifier"))
    shares = {}
    # the paper's MNIST setting, in the paper's form (Algorithm 2 with its kernel estimator)
    for method, params in (("plain", {}), ("dng", dict(lambda0=5.0, prior=0.25, temperature=0.25, offset=0.0,
                                                       p_max=0.99, posterior_form="paper",
                                                       posterior_variance="kernel"))):
        prompt_runner.run(reference_prompt(method=method, batch_size=300, steps=20, seed=9, **params), check=True)
        x = prompt_runner.output_of("5")[0][0]["samples"]
        shares[method] = (clf.predict(x.clamp(-1, 1)) == 0).float().mean().item()
    print(f"share of zeros: {shares}")
    assert shares["plain"] >= 0.05  # about 10 % of an unconditional sample are zeros
    assert shares["dng"] <= 0.02
