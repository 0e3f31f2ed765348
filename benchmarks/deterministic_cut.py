"""Where the deterministic late push's cut sits (issue 11, docs/step_invariance.md Session 23).

The default late push on deterministic samplers (``deterministic_push`` ``late``) pushes only on the steps whose
start sigma is at or below 2 s (``dng_core.transmission.late_push_cut``). That is all or nothing per step, so it
is not step-count-free: on the digit models' 20-step schedule the step 2.27 -> 1.74 is not pushed though 53 % of
its log-sigma interval lies below 2, on the 50-step one 42 % of the step 2.12 -> 1.92. This benchmark runs grid
points (``benchmarks/defaults_grid.py``'s protocol and scoring) with the pack's ``DNGRun`` patched two ways:

* ``--weight-straddling``: the step that straddles the cut pushes with that share of its (bounded) push, so the
  push covers the same log-sigma interval at any step count;
* ``--cut-factor F``: the cut moves to F x 2 s (deterministic samplers only; the stochastic samplers' cut stays).

The deterministic gain is set through lambda0 (``--gain G`` runs lambda0 75 G / 16, the same run bit for bit as
gain G at lambda0 75: ``tests/core/test_runs.py::test_the_deterministic_late_gain_multiplies_lambda0_exactly``).
Rows go to ``<out>/parts`` like the grid's, keyed as the default's, so they are never merged into the grid's
json (the patch is not a setting the grid knows): read them with ``--show``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deterministic_cut.py --out /tmp/cut15 --cut-factor 0.75 \\
        --gain 16 --cells digits8/dpmpp_2m/20 --seeds 0 1 --cases unrelated   # ~1 min a point
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deterministic_cut.py --out /tmp/cut15 --show
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.defaults_grid import CASES, OUT, RESULTS, run_shard  # noqa: E402  (after the path set-up)


def straddling_share(sigma: float, next_sigma: float, cut: float) -> float | None:
    """The share of the log-sigma interval of the step sigma -> next_sigma that lies below ``cut``, for a step
    that straddles it (sigma > cut > next_sigma > 0); None for any other step."""
    if not (sigma > cut > next_sigma > 0.0):
        return None
    return math.log(cut / next_sigma) / math.log(sigma / next_sigma)


def _deterministic_late(run) -> bool:
    # a DNGRun with the deterministic late push: its cut is set and the matched scaling is on
    return run._push_cut_sigma is not None and run._push_scale_s is not None


def patch_pack(cut_factor: float, weight_straddling: bool) -> None:
    """Patch each of the pack's copies of dng_core.run (load the pack first: ``Bench()``)."""
    from benchmarks.common import pack_copies

    for run in pack_copies("dng_core.run"):
        cls = run.DNGRun
        init, scale, bound = cls.__init__, cls._scale, run.bound_push
        weights: dict[float, float] = {}  # the straddling step's start sigma -> its share (one per schedule)

        def patched_init(self, *args, _init=init, **kwargs):
            _init(self, *args, **kwargs)
            if _deterministic_late(self):
                self._push_cut_sigma *= cut_factor

        def patched_scale(self, log_p, sigma, _scale=scale, _weights=weights):
            j = self.aligner.candidate_step(sigma, 0)
            if not (weight_straddling and _deterministic_late(self)) or j is None or j + 1 >= len(self.aligner.sigmas):
                return _scale(self, log_p, sigma)
            cut, s = self._push_cut_sigma, float(self.parametrisation.sigma_ve(sigma))
            share = straddling_share(s, float(self.parametrisation.sigma_ve(self.aligner.sigmas[j + 1])), cut)
            if share is None:  # not the straddling step: the default's all-or-nothing cut
                return _scale(self, log_p, sigma)
            _weights[round(s, 6)] = share
            self._push_cut_sigma = math.inf  # the push as if below the cut; bound_push then takes the share
            try:
                return _scale(self, log_p, sigma)
            finally:
                self._push_cut_sigma = cut

        def patched_bound(scale_, d_u, d_negs, sigma, _bound=bound, _weights=weights):
            return _bound(scale_, d_u, d_negs, sigma) * _weights.get(round(float(sigma), 6), 1.0)

        cls.__init__, cls._scale, run.bound_push = patched_init, patched_scale, patched_bound


def show(out: Path) -> list[str]:
    """Each row of ``out`` against the grid's committed verdict of its cell (unrelated: / NP's matched change)."""
    verdicts = json.loads((RESULTS / "defaults_grid_verdicts.json").read_text())["at_default"]
    by_cell = {(v["model"], v["sampler"], v["steps"], v["seed"]): v for v in verdicts}
    lines = []
    for part in sorted((out / "parts").glob("*.jsonl")):
        for line in part.read_text().splitlines():
            r: dict[str, Any] = json.loads(line)
            v = by_cell[(r["model"], r["sampler"], r["steps"], r["seed"])]
            cell = f"{r['model']}/{r['sampler']}/{r['steps']} seed {r['seed']} lambda0 {r['strength']:g}"
            if r["case"] == "unrelated":
                b = v["unrelated_change_np"]
                lines.append(f"{cell}: unrelated {r['mean_abs_change'] / b:.3f} +- {r['change_se'] / b:.3f} of NP's "
                             f"(the default: {v['change_ratio']:.3f})")
            else:
                lines.append(f"{cell}: forbidden {r['forbidden_pct']:.1f} % (upper {r['forbidden_upper95']:.2f}), "
                             f"KL {r['kl']:.4f}, FD_clf {r['fd_clf']:.2f}, destroyed {r['destroyed_pct']:.1f} % "
                             f"(the default: {v['forbidden_pct']:.2f} %, KL {v['kl']:.4f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="parts folder (never the grid's)")
    ap.add_argument("--show", action="store_true", help="print the rows in --out against the default and exit")
    ap.add_argument("--cut-factor", type=float, default=1.0, help="the deterministic cut at F x 2 s")
    ap.add_argument("--weight-straddling", action="store_true", help="push the straddling step by its share")
    ap.add_argument("--gain", type=float, default=16.0, help="the deterministic late gain (via lambda0)")
    ap.add_argument("--cells", nargs="+", default=["digits8/dpmpp_2m/20"], metavar="MODEL/SAMPLER/STEPS")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    args = ap.parse_args(argv)
    if args.show:
        print("\n".join(show(args.out)))
        return 0
    if args.out.resolve() == OUT.resolve():
        ap.error("--out must not be the grid's folder: these rows carry the default's keys")
    from benchmarks.common import Bench
    from dng_core import DNGConfig

    Bench()  # loads the pack (once per process), whose own copy of dng_core.run the nodes call
    patch_pack(args.cut_factor, args.weight_straddling)
    config = DNGConfig()
    cells = [(m, s, int(n)) for m, s, n in (c.split("/") for c in args.cells)]
    run_shard("0/1", args.seeds, args.out, {}, cells, methods=["dng"],
              lambda0s=[config.lambda0 * args.gain / config.deterministic_late_gain], cases=args.cases)
    print("\n".join(show(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
