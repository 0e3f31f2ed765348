"""DNG Trace Plot is a side node: whatever happened to the run, the prompt succeeds, the image is saved, and the
plot (its image, its JSON) and the browser (a dng.warning event, shown as a toast) say what happened.

* a DNG patch bypassed by a custom guider (PerpNegGuider): the run is recorded with a note, the plot shows it;
* the run that made a LATENT dropped from the node's bounded history: the plot shows the newest run and says so;
* nothing recorded yet: the plot is a message image.
"""

from __future__ import annotations

import json

import torch

from tests.support.prompts import PRIOR, dng_prompt, guider_prompt


def _red_pixels(image: torch.Tensor) -> int:
    """Pixels of the notice's red text (#a00000) in a plot image [1, H, W, 3]."""
    px = image[0]
    return int(((px[..., 0] > 0.45) & (px[..., 1] < 0.25) & (px[..., 2] < 0.25)).sum())


def test_bypassed_patch_still_saves_the_image_and_the_plot_says_why(prompt_runner, pack_nodes):
    p = guider_prompt(sampler="euler")
    p["10"] = {"class_type": "PerpNegGuider", "inputs": {"model": ["15", 0], "positive": ["2", 0],
               "negative": ["3", 0], "empty_conditioning": ["8", 0], "cfg": 5.0, "neg_scale": 1.0}}
    p["15"] = {"class_type": "DynamicNegativeGuidance", "inputs": {
        "model": ["1", 0], "empty_conditioning": ["8", 0], "lambda0": 5.0, "prior": PRIOR, "temperature": 0.2,
        "offset": 2e-4, "p_min": 1e-6, "p_max": 0.8, "posterior_variance": "kernel"}}
    p["11"]["inputs"]["trace"] = ["15", 1]  # the plot of the bypassed patch, on the sampler's LATENT
    res = prompt_runner.run(p, check=True)
    assert res.images("7") and res.images("7")[0].is_file(), "the sampler's image was not saved"
    data = json.loads(prompt_runner.output_of("11")[1][0])
    assert data["steps"] == [] and any("did not run" in n for n in data["notes"])
    assert _red_pixels(prompt_runner.output_of("11")[0][0]) > 50, "the plot does not show the note"
    assert any("did not run" in e.data["message"] for e in res.events_of("dng.warning"))


def test_an_evicted_run_is_plotted_with_a_notice_in_the_plot_and_the_browser(prompt_runner, pack_nodes):
    p = dng_prompt(sampler="euler", seed=401)
    prompt_runner.run(p, check=True)
    history = prompt_runner.output_of("10")[1][0]
    first = json.loads(prompt_runner.output_of("11")[1][0])
    assert "notice" not in first
    # later runs of the same (cached) patch push the first one out of the bounded history
    for i in range(history.max_runs):
        # the same graph (all cached, node "5" keeps the first run's LATENT) plus another sampler on the patch
        q = json.loads(json.dumps(p))
        q["25"] = {**q["5"], "inputs": {**q["5"]["inputs"], "seed": 402 + i}}
        q["26"] = {"class_type": "VAEDecode", "inputs": {"samples": ["25", 0], "vae": ["1", 2]}}
        q["27"] = {"class_type": "SaveImage", "inputs": {"images": ["26", 0], "filename_prefix": "evict"}}
        prompt_runner.run(q, check=True)
    p["11"]["inputs"]["width"] = 264  # the plot runs again, on the first run's (cached) LATENT
    res = prompt_runner.run(p, check=True)
    assert "5" in res.cached_nodes
    data = json.loads(prompt_runner.output_of("11")[1][0])
    assert "no longer kept" in data["notice"] and data["output_fingerprint"] != first["output_fingerprint"]
    assert _red_pixels(prompt_runner.output_of("11")[0][0]) > 50
    warnings = [e.data for e in res.events_of("dng.warning")]
    assert any("no longer kept" in w["message"] and w["node"] == "11" for w in warnings)


def test_a_plot_with_no_run_recorded_is_a_message_not_a_failure(prompt_runner, pack_nodes):
    """The plot on a LATENT no sampler of this patch made (the patch feeds no sampler here)."""
    p = dng_prompt(seed=403)
    p["5"]["inputs"]["model"] = ["1", 0]  # the KSampler does not use the patch
    p["10"]["inputs"]["lambda0"] = 4.5  # a fresh patch node output (nothing cached from other tests)
    res = prompt_runner.run(p, check=True)
    data = json.loads(prompt_runner.output_of("11")[1][0])
    assert data["format"] == "dng-trace-status" and "no sampling run has used" in data["notice"]
    assert res.images("7") and _red_pixels(prompt_runner.output_of("11")[0][0]) > 50
