"""CI-size removal and deactivation benchmarks through the real host, DNG at the node defaults.

Removal (benchmarks/removal.py, ``--ci``): removes digit 0 from the pack's digits8 reference model with DNG at the
node defaults (``CI["dng"]``, ``CI["dng_settings"]``: the setting the defaults grid chose) and with negative
prompting (paper form, scales 0.3-0.6), both as the pack's nodes in an API prompt run by ComfyUI's executor,
N = 500 samples per point, euler_ancestral, 20 steps, seed 1 (not the grid's seed 0, so the test does not replay
the numbers the defaults were chosen from). It checks the paper's central claim at equal safety, with margins:

* safety: DNG leaves at most 1 % of the samples in the removed class;
* quality: DNG's KL(uniform over the kept classes || histogram) is at most half of negative prompting's at matched
  safety: NP's weakest point at least as safe as DNG's (or, if none is, NP's safest point, which favours NP).

Deactivation: positive 7 with CFG 2.5, negative 0 (unrelated), N = 500, same sampler and seed: DNG at the defaults
changes the images (mean |x - x_plain|) by at most 0.10 of what negative prompting at scale 0.4 changes them. 0.4
is NP's weakest scale with <= 1 % forbidden on the main host (0.5 on the floor); the smaller scale changes the
images less, so it is the stricter comparison.

Measured at the defaults (evidence one_sided, lambda0 75, prior 3e-4, temperature 0.9, offset 0.7 per e-fold,
auto estimator, and since session 20 the late push: no push above sigma 2, 6 x lambda0 below, held within sigma;
seed 1, N = 500; seeds do not carry between hosts, 0.33 seeds CPU noise differently):

=============  ==============  =======  ==================================  ========  ===========================
host           DNG forbidden   DNG KL   matched NP (scale: forbidden, KL)   KL ratio  unrelated change DNG / NP
=============  ==============  =======  ==================================  ========  ===========================
0.33.0 (main)  0.0 %           0.048    0.5: 0.2 %, 0.146                   0.33      0.0042 / 0.0785 = 0.053
0.3.75 (floor) 0.0 %           0.056    0.6: 0.2 %, 0.147                   0.38      0.0038 / 0.0771 = 0.049
=============  ==============  =======  ==================================  ========  ===========================

(No NP point is as safe as DNG's 0.0 %, so NP's safest point is the match, which favours NP.) Margins: all 5
allowed samples in the removed class to spare, a KL ratio of 0.33-0.38 against 0.5 (the thinnest margin,
1.3-1.5x; the grid at this cell, N 1000, both seeds, interpolated at equal forbidden %: 0.17-0.18 of NP's), and
an unrelated change 0.049-0.053 of NP's against 0.10 (1.9-2.0x). With the full push (sessions 9-19): KL 0.022 /
0.023 (ratio 0.15), unrelated 0.073 / 0.063: the late push trades a slightly less uniform class histogram for
less change to unrelated images. About 3.5 minutes on 2 cores.
"""

from __future__ import annotations

import time

from benchmarks.common import Bench, Scorer, digit_prompt, weakest_safe
from benchmarks.removal import CI, CI_ESTIMATOR, MAX_FORBIDDEN, default_lambda0, node_defaults, run_point

SEED = 1
SAMPLER = "euler_ancestral"
MAX_KL_RATIO = 0.5
MAX_CHANGE_RATIO = 0.10
NP_MATCHED_SCALE = 0.4


def test_dng_safe_and_kl_below_half_of_np_at_matched_forbidden(prompt_runner, pack_nodes, rig_timings):
    t0 = time.perf_counter()
    bench = Bench(runner=prompt_runner)
    scorer = Scorer(removed=0)
    n, steps = CI["n"], CI["steps"]
    assert n >= 500

    (dng,) = [run_point(bench, scorer, "dng", SAMPLER, steps, n, SEED, lam, CI_ESTIMATOR, CI["dng_settings"])
              for lam in CI["dng"]]
    np_ = [run_point(bench, scorer, "np", SAMPLER, steps, n, SEED, s) for s in CI["np"]]
    elapsed = time.perf_counter() - t0
    rig_timings["removal benchmark (CI size)"] = elapsed

    for r in [dng, *np_]:
        print(f"{r['method']:>4} scale={r['scale']:<5g} forbidden={r['forbidden_pct']:5.1f} % "
              f"(se {r['forbidden_se_pct']:.1f}) KL={r['kl']:.3f} (se {r['kl_se']:.3f}) FD_clf={r['fd_clf']:.2f} "
              f"({r['seconds']:.0f} s)")
    b, b_as_safe = weakest_safe(np_, dng["forbidden_pct"])
    print(f"matched: DNG lambda0={dng['scale']:g} ({dng['forbidden_pct']:.1f} %, KL {dng['kl']:.3f}) vs NP scale="
          f"{b['scale']:g} ({b['forbidden_pct']:.1f} %, KL {b['kl']:.3f}, as safe: {b_as_safe}); "
          f"KL ratio {dng['kl'] / b['kl']:.2f}; {elapsed:.0f} s")

    assert dng["forbidden_pct"] <= MAX_FORBIDDEN, f"DNG leaves {dng['forbidden_pct']:.1f} % of the samples as 0"
    assert dng["kl"] <= MAX_KL_RATIO * b["kl"], (
        f"DNG KL {dng['kl']:.3f} ({dng['forbidden_pct']:.1f} %) is not at most {MAX_KL_RATIO} x NP's KL "
        f"{b['kl']:.3f} (scale {b['scale']:g}, {b['forbidden_pct']:.1f} %)")


def test_dng_leaves_unrelated_images_nearly_unchanged(prompt_runner, pack_nodes, rig_timings):
    t0 = time.perf_counter()
    bench = Bench(runner=prompt_runner)
    common = dict(batch_size=CI["n"], seed=SEED, steps=CI["steps"], sampler=SAMPLER, positive_digit="7",
                  negative_digit="0", cfg=2.5)
    plain = bench.run(digit_prompt(method="plain", **common)).samples.float()
    dng = bench.run(digit_prompt(method="dng", lambda0=default_lambda0(), posterior_variance=CI_ESTIMATOR,
                                 **node_defaults(), **common))
    np_ = bench.run(digit_prompt(method="np", scale=NP_MATCHED_SCALE, **common)).samples.float()
    rig_timings["deactivation benchmark (CI size)"] = time.perf_counter() - t0
    change_dng = float((dng.samples.float() - plain).abs().mean())
    change_np = float((np_ - plain).abs().mean())
    print(f"unrelated negative: DNG (defaults) change {change_dng:.4f}, NP {NP_MATCHED_SCALE} change "
          f"{change_np:.4f}, ratio {change_dng / change_np:.3f}")
    assert change_np > 0.02, "negative prompting must visibly change the images, or the comparison says nothing"
    assert change_dng <= MAX_CHANGE_RATIO * change_np, (
        f"DNG changes unrelated images by {change_dng:.4f}, more than {MAX_CHANGE_RATIO} x NP's {change_np:.4f}")
