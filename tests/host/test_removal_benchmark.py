"""CI-size class-removal benchmark through the real host (benchmarks/removal.py, ``--ci`` configuration).

Removes digit 0 from the pack's digits8 reference model with DNG (posterior_variance auto, the default) and with
negative prompting (paper form), both as the pack's nodes in an API prompt run by ComfyUI's executor, N = 500
samples per point, euler_ancestral, 20 steps,
and checks the paper's central claim at equal safety: DNG keeps the class histogram of the kept classes closer to
uniform (lower KL) than negative prompting.

"Matched" safety: for each method, the weakest point of its small sweep with forbidden <= 1 % (or, if none
reaches 1 %, its safest point). The test fails if DNG does not reach the safety NP reaches (DNG never gets to
<= 1 % while NP does, or DNG's safest point is less safe than NP's), or if DNG's KL at its matched point is not
below NP's. A seed different from the published benchmark's (seed 0) is used, so the test does not merely replay
the numbers the sweep points were chosen from. Runs in about 2-4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import time

from benchmarks.common import Bench, Scorer, interpolate_at, weakest_safe
from benchmarks.removal import CI, CI_ESTIMATOR, MAX_FORBIDDEN, run_point

SEED = 1
SAMPLER = "euler_ancestral"


def test_dng_kl_below_np_at_matched_forbidden(prompt_runner, pack_nodes, rig_timings):
    t0 = time.perf_counter()
    bench = Bench(runner=prompt_runner)
    scorer = Scorer(removed=0)
    n, steps = CI["n"], CI["steps"]
    assert n >= 500

    dng = [run_point(bench, scorer, "dng", SAMPLER, steps, n, SEED, lam, CI_ESTIMATOR) for lam in CI["dng"]]
    np_ = [run_point(bench, scorer, "np", SAMPLER, steps, n, SEED, s) for s in CI["np"]]
    elapsed = time.perf_counter() - t0
    rig_timings["removal benchmark (CI size)"] = elapsed

    for r in dng + np_:
        print(f"{r['method']:>4} scale={r['scale']:<5g} forbidden={r['forbidden_pct']:5.1f} % KL={r['kl']:.3f} "
              f"(se {r['kl_se']:.3f}) FD_clf={r['fd_clf']:.2f} KID_clf={r['kid_clf']:.3f} ({r['seconds']:.0f} s)")
    d, d_met = weakest_safe(dng, MAX_FORBIDDEN)
    b, b_met = weakest_safe(np_, MAX_FORBIDDEN)
    print(f"matched: DNG lambda0={d['scale']:g} ({d['forbidden_pct']:.1f} %, KL {d['kl']:.3f}) vs NP scale="
          f"{b['scale']:g} ({b['forbidden_pct']:.1f} %, KL {b['kl']:.3f}); interpolated KL at 1 %: DNG "
          f"{interpolate_at(dng, MAX_FORBIDDEN, 'kl')} NP {interpolate_at(np_, MAX_FORBIDDEN, 'kl')}; "
          f"{elapsed:.0f} s")

    # Matched safety: DNG must get as safe as NP does.
    if b_met:
        assert d_met, f"NP reaches <= {MAX_FORBIDDEN} % forbidden, DNG's sweep never does: {dng}"
    else:
        assert d["forbidden_pct"] <= b["forbidden_pct"], "DNG's safest point is less safe than NP's"
    # The claim: at matched safety DNG keeps the kept classes closer to uniform.
    assert d["kl"] < b["kl"], (f"DNG KL {d['kl']:.3f} (lambda0 {d['scale']:g}, {d['forbidden_pct']:.1f} %) is not "
                               f"below NP KL {b['kl']:.3f} (scale {b['scale']:g}, {b['forbidden_pct']:.1f} %)")
