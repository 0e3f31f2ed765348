"""CI-size class-removal benchmark through the real host (benchmarks/removal.py, ``--ci`` configuration).

Removes digit 0 from the pack's digits8 reference model with DNG (posterior_variance auto, the default; prior 0.05,
temperature 1, lambda0 12.5: ``CI["dng_settings"]``) and with negative prompting (paper form, scales 0.3-0.6),
both as the pack's nodes in an API prompt run by ComfyUI's executor, N = 500 samples per point, euler_ancestral,
20 steps, seed 1 (not the published benchmark's seed 0, so the test does not replay the numbers its points were
chosen from). It checks the paper's central claim at equal safety, with margins:

* safety: DNG leaves at most 1 % of the samples in the removed class;
* quality: DNG's KL(uniform over the kept classes || histogram) is at most half of negative prompting's at matched
  safety: NP's weakest point at least as safe as DNG's (or, if none is, NP's safest point, which favours NP).

Measured (seed 1, N = 500; seeds do not carry between hosts, 0.33 seeds CPU noise differently):

=============  ==================  ============  ====================================  =========
host           DNG forbidden       DNG KL        matched NP (scale: forbidden, KL)     KL ratio
=============  ==================  ============  ====================================  =========
0.33.0 (main)  0.4 % (se 0.3)      0.025         0.4: 0.4 %, 0.097                     0.26
0.3.75 (floor) 0.4 % (se 0.3)      0.018         0.5: 0.4 %, 0.093                     0.19
=============  ==================  ============  ====================================  =========

Seed 2 gave DNG 0.0 % / KL 0.015 (0.33.0) and 0.4 % / 0.024 (0.3.75). Margins: 0.6 points below the 1 % bar
(2 of 500 samples against 5) and a KL ratio of 0.19-0.26 against the 0.5 asserted. About 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import time

from benchmarks.common import Bench, Scorer, weakest_safe
from benchmarks.removal import CI, CI_ESTIMATOR, MAX_FORBIDDEN, run_point

SEED = 1
SAMPLER = "euler_ancestral"
MAX_KL_RATIO = 0.5


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
