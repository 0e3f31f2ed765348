"""The text-conditioned shapes model as a ComfyUI model (nodes/reference_nodes.py), in-process through the real
host: loader, text encoding (and its validation), latent, image grid, the host's prediction against the pure-torch
network, and a CI-size run of the composition benchmark's related and unrelated cases (benchmarks/composition.py)."""

from __future__ import annotations

import torch

from benchmarks.composition import CASES, shapes_prompt
from devtools import host as H


def _prompt(**kw) -> dict:
    c = CASES["related"]
    base = dict(method="plain", positive=c["positive"], negative=c["negative"], batch_size=4, seed=0,
                sampler="euler", steps=4)
    return shapes_prompt(**{**base, **kw})


def test_loader_latent_and_grid(prompt_runner, pack_nodes):
    prompt_runner.run(_prompt(), check=True)
    patcher = prompt_runner.output_of("1")[0][0]
    assert patcher.model.model_type.name == "EPS"
    schedule = H.pack_module("reference_model.schedule")
    torch.testing.assert_close(patcher.model.model_sampling.sigmas.double(), schedule.sigmas_f64(), rtol=1e-6, atol=0)
    latent = prompt_runner.output_of("4")[0][0]["samples"]
    assert latent.shape == (4, 3, 16, 16) and not latent.any()
    image = prompt_runner.output_of("6")[0][0]
    # one row of the prompt's 64 columns, 16 px + a 1 px frame each side
    assert image.shape == (1, 18, 64 * 18, 3) and 0.0 <= image.min() and image.max() <= 1.0
    # the three colour channels differ: an RGB picture, not a grey one
    assert (image[..., 0] - image[..., 2]).abs().max() > 0.1


def test_host_prediction_is_the_networks(prompt_runner, pack_nodes):
    """The host's denoised output = x - sigma * eps of the pure-torch network on the VP input with the
    conditioning node's context (the model is wired as SD1.x is: eps, discrete DDPM sigmas, c_crossattn)."""
    prompt_runner.run(_prompt(), check=True)
    patcher = prompt_runner.output_of("1")[0][0]
    (ctx, _), = prompt_runner.output_of("8")[0][0]
    tw = H.pack_module("reference_model.text_network")
    sh = H.pack_module("reference_model.shapes")
    ref_model = H.pack_module("reference_model")
    net = tw.load_text_model(ref_model.weights_path("shapes16_unet"))
    torch.testing.assert_close(ctx, net.encoder.encode([CASES["related"]["positive"]]))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16) * 3.0
    sigma = torch.tensor([3.0, 0.5])
    with torch.no_grad():
        denoised = patcher.model.apply_model(x, sigma, c_crossattn=ctx.expand(2, -1, -1))
        ms = patcher.model.model_sampling
        t = ms.timestep(sigma).float()
        eps = net.unet(x / (1 + sigma[:, None, None, None] ** 2).sqrt(), t, ctx.expand(2, -1, -1))
    torch.testing.assert_close(denoised, x - sigma[:, None, None, None] * eps, rtol=1e-4, atol=1e-4)
    assert sh.CONTEXT_LENGTH == ctx.shape[1]


def test_unknown_word_is_rejected_on_the_text_input(prompt_runner, pack_nodes):
    res = prompt_runner.run(_prompt(method="np", scale=1.0, negative="purple circle"))  # "3" feeds the KSampler
    assert not res.valid
    errors = (res.node_errors.get("3") or {}).get("errors", [])
    message = " ".join(f"{e.get('message')} {e.get('details')}" for e in errors)
    print(f"\nunknown word -> {message}")
    assert "purple" in message and "text" in message


def test_prompts_select_their_objects(prompt_runner, pack_nodes):
    """At cfg 3: 'red circle' shows a red circle in nearly every sample; 'red circle and blue square' shows both in
    far more samples than the empty prompt does (the model binds colours to shapes loosely: 41 % / 36 % on the two
    hosts at this seed, 47 % in reference_shapes16.json), which shows both in about 1 %."""
    from benchmarks.composition import ShapesScorer

    scorer = ShapesScorer()
    sh = H.pack_module("reference_model.shapes")
    pair = [sh.kind_index("red circle"), sh.kind_index("blue square")]
    shares = {}
    for positive in ("red circle", CASES["related"]["positive"], ""):
        prompt_runner.run(_prompt(positive=positive, batch_size=64, steps=20, sampler="euler_ancestral", seed=3),
                          check=True)
        pres = scorer.presence(prompt_runner.output_of("5")[0][0]["samples"])
        shares[positive or "(empty)"] = (pres[:, pair[0]] if positive == "red circle" else pres[:, pair].all(1)).float().mean().item()
    print(f"\nnamed objects shown: {shares}")
    assert shares["red circle"] >= 0.9
    assert shares[CASES["related"]["positive"]] >= 0.25
    assert shares["(empty)"] <= 0.1


# CI-size composition run: N, sampler, seed (not the benchmark's seed 0), NP's scale; thresholds in the test
CI_N = 200
# the unrelated case runs at half the related case's N (CI time: 2 x 105 s a host); its ratios and their standard
# errors over the images are printed and quoted below
CI_N_UNRELATED = 100
CI_SAMPLER = "euler_ancestral"
CI_SEED = 1
CI_NP_SCALE = 3.0
# Measured by benchmarks/composition_evidence.py (main host, seed 0, N 500, euler_ancestral; figures in
# benchmarks/results/composition_evidence.md): plain shows the red circle in about half of 'red circle and blue
# square' samples (the model binds colours to shapes loosely), DNG at the defaults fewer, NP at scale 3 in 8 %.
# This test (seed 1, N 200), at the defaults since session 20 (the late push on euler_ancestral): main 48.5 ->
# 17.5 % red circles (NP 6.5 %), blue squares kept 74.5 -> 83.5 %; floor 54.0 -> 11.5 % (NP 8.0 %), 69.5 -> 80.5 %.
# Unrelated change at N 100 (session 25): 0.086 +- 0.028 of NP's on main, 0.127 +- 0.029 on the floor (at N 200:
# 0.053 / 0.109; DNG's change sits in a few images, so the ratio moves with N). The drop bound leaves 3+ standard
# errors of N = 200 to spare, the ratio bound 4.1 / 2.5 standard errors (2.3x / 1.6x; main / floor).
RELATED_PLAIN_MIN = 35.0
RELATED_DNG_MIN_DROP = 8.0  # percentage points fewer red circles than plain
RELATED_DNG_MAX_KEPT_LOSS = 5.0  # percentage points of blue squares DNG may lose against plain
UNRELATED_MAX_RATIO = 0.2
# The uncorrected evidence (EvidencePath; benchmarks/results/composition_timing.md) at a negative prompt's size:
# it removes about as much as NP 3 where the defaults stop short, and changes unrelated images less than NP 3.
# This test, with the late push (the default): main 2.5 % red circles (defaults 17.5, NP 6.5), unrelated change
# 0.43 +- 0.08 of NP's (N 100); floor 4.0 % (11.5, NP 8.0), 0.60 +- 0.10. Bounds: at most half the defaults' red
# circles (3.5x / 1.4x margin), less change than NP (4.1 standard errors on the floor, whose CPU noise gives the
# uncorrected form more unrelated change than main's here).
UNCORRECTED = {"lambda0": 1.0, "prior": 0.05, "evidence": "uncorrected"}
UNCORRECTED_MAX_RATIO = 1.0


def _composition_point(bench, scorer, case: str, method: str, **params) -> tuple[dict, torch.Tensor]:
    from benchmarks.composition import score

    c = CASES[case]
    n = CI_N if case == "related" else CI_N_UNRELATED
    out = bench.run(shapes_prompt(method=method, positive=c["positive"], negative=c["negative"], batch_size=n,
                                  seed=CI_SEED, sampler=CI_SAMPLER, **params))
    x = out.samples.clamp(-1, 1)
    return score(scorer.presence(x), c, None), x


def _paired_ratio(a: torch.Tensor, b: torch.Tensor) -> str:
    """mean(a) / mean(b) +- its first-order standard error over the same images (the delta method on pairs)."""
    r = float(a.mean() / b.mean())
    se = float((a - r * b).std() / b.mean()) / len(a) ** 0.5
    return f"{r:.3f} +- {se:.3f}"


def test_composition_related_and_unrelated_at_ci_size(prompt_runner, pack_nodes):
    """DNG at the node defaults against NP (scale CI_NP_SCALE) on the shapes model, N = CI_N (CI_N_UNRELATED for
    the unrelated case), same seed.
    Related ('red circle and blue square' minus 'red circle'): DNG shows fewer red circles than plain sampling
    and keeps the blue square (it does not reach NP's safety on this model: benchmarks/results/composition.md
    says why); unrelated ('blue square' minus 'red circle'): DNG changes the images far less than NP at the
    scale that removes the concept."""
    from benchmarks.common import Bench, per_image_change
    from benchmarks.composition import ShapesScorer

    bench, scorer = Bench(runner=prompt_runner), ShapesScorer()
    res, xs = {}, {}
    for case in ("related", "unrelated"):
        for label, method, params in (("plain", "plain", {}), ("dng", "dng", {}),
                                      ("np", "np", {"scale": CI_NP_SCALE}), ("uncorrected", "dng", UNCORRECTED)):
            res[case, label], xs[case, label] = _composition_point(bench, scorer, case, method, **params)
    per_image = {m: per_image_change(xs["unrelated", m], xs["unrelated", "plain"])
                 for m in ("dng", "np", "uncorrected")}
    change = {m: c.mean().item() for m, c in per_image.items()}
    for (case, method), r in res.items():
        print(f"\n{case:9s} {method:5s} forbidden {r['forbidden_pct']:5.1f} %  kept {r['kept_pct']:5.1f} %", end="")
    print(f"\nunrelated change vs plain (N {CI_N_UNRELATED}): DNG {change['dng']:.4f}, NP {change['np']:.4f}, "
          f"ratio {_paired_ratio(per_image['dng'], per_image['np'])}; uncorrected {change['uncorrected']:.4f}, "
          f"ratio {_paired_ratio(per_image['uncorrected'], per_image['np'])}")
    assert res["related", "plain"]["forbidden_pct"] >= RELATED_PLAIN_MIN
    assert res["related", "dng"]["forbidden_pct"] <= res["related", "plain"]["forbidden_pct"] - RELATED_DNG_MIN_DROP
    assert res["related", "dng"]["kept_pct"] >= res["related", "plain"]["kept_pct"] - RELATED_DNG_MAX_KEPT_LOSS
    assert res["related", "np"]["forbidden_pct"] < res["related", "dng"]["forbidden_pct"]
    assert change["dng"] <= UNRELATED_MAX_RATIO * change["np"]
    assert res["related", "uncorrected"]["forbidden_pct"] <= 0.5 * res["related", "dng"]["forbidden_pct"]
    assert res["related", "uncorrected"]["kept_pct"] >= res["related", "plain"]["kept_pct"] - RELATED_DNG_MAX_KEPT_LOSS
    assert change["uncorrected"] <= UNCORRECTED_MAX_RATIO * change["np"]
