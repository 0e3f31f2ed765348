"""Bad inputs to the DNG nodes: the host's own checks stay on, and each error is attached to the input it
concerns (what the UI outlines). The node's own cross-field rule (p_min < prior < p_max) takes only those three
inputs; everything else (sampler_name, scheduler, steps, cfg, denoise, seed, lambda0, ...) is the host's.

The table of what a user sees is printed with ``-s``.
"""

from __future__ import annotations

import math

import pytest

from tests.support.prompts import dng_prompt, guider_prompt


def _sampler_prompt(**overrides) -> dict:
    """DNGSampler ("5") in place of patch + KSampler; overrides go to its inputs."""
    p = dng_prompt(sampler="euler_ancestral", seed=5)
    ks = p["5"]["inputs"]
    p["5"] = {"class_type": "DNGSampler", "inputs": {
        **{k: ks[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                              "latent_image", "denoise")},
        "model": ["1", 0], "empty_conditioning": ["8", 0],
        **{k: v for k, v in p["10"]["inputs"].items() if k not in ("model", "empty_conditioning")}}}
    p["5"]["inputs"].update(overrides)
    p["11"]["inputs"]["trace"] = ["5", 1]
    del p["10"]
    return p


def _errors_of(res, node: str) -> list[dict]:
    return (res.node_errors.get(node) or {}).get("errors", [])


# (case, overrides, the inputs the error must be attached to, text the message must contain)
SAMPLER_CASES = [
    ("sampler_name bogus", {"sampler_name": "bogus"}, {"sampler_name"}, "bogus"),
    ("scheduler bogus", {"scheduler": "bogus"}, {"scheduler"}, "bogus"),
    ("posterior_variance bogus", {"posterior_variance": "bogus"}, {"posterior_variance"}, "bogus"),
    ("evidence bogus", {"evidence": "bogus"}, {"evidence"}, "bogus"),
    ("deterministic_push bogus", {"deterministic_push": "bogus"}, {"deterministic_push"}, "bogus"),
    ("stochastic_push bogus", {"stochastic_push": "bogus"}, {"stochastic_push"}, "bogus"),
    ("denoise 2.0", {"denoise": 2.0}, {"denoise"}, "bigger than max"),
    ("cfg -5", {"cfg": -5.0}, {"cfg"}, "smaller than min"),
    ("seed -1", {"seed": -1}, {"seed"}, "smaller than min"),
    ("steps 0", {"steps": 0}, {"steps"}, "smaller than min"),
    ("lambda0 -1", {"lambda0": -1.0}, {"lambda0"}, "smaller than min"),
    ("temperature 0", {"temperature": 0.0}, {"temperature"}, "smaller than min"),
    ("p_min 0.6 > p_max 0.55", {"p_min": 0.6, "p_max": 0.55}, {"prior", "p_min", "p_max"}, "p_min"),
    ("prior 0.9 > p_max 0.8", {"prior": 0.9, "p_max": 0.8}, {"prior", "p_min", "p_max"}, "prior"),
    ("p_max 2.0", {"p_max": 2.0}, {"prior", "p_min", "p_max"}, "p_max must be a number in [0.5, 0.999999]"),
]


@pytest.mark.parametrize("case,overrides,inputs,needle", SAMPLER_CASES, ids=[c[0] for c in SAMPLER_CASES])
def test_dng_sampler_rejects_bad_input_on_that_input(prompt_runner, pack_nodes, case, overrides, inputs, needle):
    res = prompt_runner.run(_sampler_prompt(**overrides))
    if res.valid and case.endswith("bogus"):
        # ComfyUI 0.3.75 does not check V3 combo values at validation; the node refuses them before sampling
        err = res.error or {}
        print(f"\n{case:<26} -> (execution) {err.get('exception_message')}")
        assert not res.success and f"{case.split()[0]} 'bogus' is not one of" in err.get("exception_message", "")
        return
    assert not res.valid, f"{case}: accepted"
    errors = _errors_of(res, "5")
    attached = {e["extra_info"]["input_name"] for e in errors}
    text = " | ".join(f"{e['extra_info']['input_name']}: {e['message']} ({e['details']})" for e in errors)
    print(f"\n{case:<26} -> {text}")
    assert attached == inputs, f"{case}: errors attached to {sorted(attached)}"
    assert needle in text and "Traceback" not in text


@pytest.mark.parametrize("node", ["patch", "guider"])
def test_patch_and_guider_attach_errors_to_their_inputs(prompt_runner, pack_nodes, node):
    p = dng_prompt(lambda0=-1.0) if node == "patch" else guider_prompt(lambda0=-1.0)
    res = prompt_runner.run(p)
    assert {e["extra_info"]["input_name"] for e in _errors_of(res, "10")} == {"lambda0"}
    p = dng_prompt(p_min=0.6, p_max=0.55) if node == "patch" else guider_prompt(p_min=0.6, p_max=0.55)
    res = prompt_runner.run(p)
    assert {e["extra_info"]["input_name"] for e in _errors_of(res, "10")} == {"prior", "p_min", "p_max"}
    if node == "guider":
        res = prompt_runner.run(guider_prompt(cfg=-5.0))
        assert {e["extra_info"]["input_name"] for e in _errors_of(res, "10")} == {"cfg"}


@pytest.mark.parametrize("where", ["sampler", "guider"])
def test_nan_cfg_fails_naming_cfg(prompt_runner, pack_nodes, where):
    """NaN passes every comparison, so the host's range check lets it through (JSON allows NaN); the node
    refuses it before sampling, naming the input."""
    p = _sampler_prompt(cfg=math.nan) if where == "sampler" else guider_prompt(cfg=math.nan)
    res = prompt_runner.run(p)
    assert res.valid and not res.success
    err = res.error
    print(f"\ncfg NaN ({where}) -> {err['exception_type']}: {err['exception_message']}")
    assert "cfg must be a number in [0, 100]" in err["exception_message"]
    assert "x_next" not in err["exception_message"]
