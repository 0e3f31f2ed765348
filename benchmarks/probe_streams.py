"""How much of a grid figure is the path estimator's probe draw (issue 11, the mnist16 cells).

On deterministic samplers the posterior reads each step with the path estimator, whose divergence term is one
Hutchinson sample per image and step (``dng_core.path.divergence_difference``) along a Rademacher direction drawn
from a fixed stream (``probe_direction``, seeded by PROBE_SEED, the step and the image's index in the batch).
The grid runs every point with that one stream, so a figure that rests on a few images (the unrelated change of
mnist16 euler: late false alarms on 2-3 % of the images, docs/step_invariance.md, Session 10) may be the draw of
those images' probes rather than the setting. This benchmark reruns grid points on the same images (same seed)
with other probe streams: the default of ``probe_direction``'s seed is patched in every copy of
``dng_core.path`` the process holds (the pack's own copy is imported under the pack's name), nothing else
changes. Rows are the grid's (``benchmarks/defaults_grid.py``'s runner) plus ``probe_seed``; they are not grid
rows and are kept apart in benchmarks/results/probe_streams.{json,md}.

Two estimator variants, for the same comparison (neither is a node input; both patch the pack's copy):
``--debias-probe`` (``PosteriorConfig.debias_probe``: tau V / 2 off each step's evidence, V the probes' variance
bound) and ``--probes K`` (K independent probes averaged per step, 2 K extra predictions a step).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_streams.py --cell mnist16/euler/20 --seed 1 \
        --case unrelated --probe-seeds 777 778 779
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, environment, log, mean_se, pack_copies  # noqa: E402
from benchmarks.defaults_grid import OUT, Point, _Runner  # noqa: E402

OUT_JSON = RESULTS / "probe_streams.json"


def set_probe_seed(seed: int) -> None:
    """Make the nodes' ``probe_direction`` draw from stream ``seed`` (its default seed, in the pack's copy)."""
    for module in pack_copies("dng_core.path"):
        module.probe_direction.__defaults__ = (seed,)


def set_debias_probe(on: bool) -> None:
    """Make the nodes' posterior take the probe's noise bound off the evidence (``PosteriorConfig.debias_probe``,
    not a node input: every tracker the pack's copy builds gets its config with the field set)."""
    for module in pack_copies("dng_core.posterior"):
        cls = module.PosteriorTracker
        original = getattr(cls, "_unpatched_init", cls.__init__)
        cls._unpatched_init = original

        def init(self, config, *args, _original=original, **kwargs):
            _original(self, replace(config, debias_probe=on), *args, **kwargs)

        cls.__init__ = init


def set_probes(count: int) -> None:
    """Make the nodes' path estimator average ``count`` probes per step (independent directions: the step index
    is shifted by 100000 per extra probe) instead of one; not a node input, each probe costs two predictions."""
    for module in pack_copies("dng_core.run"):
        cls = module.DNGRun
        original = getattr(cls, "_one_probe_divergences", cls._divergences)
        cls._one_probe_divergences = original
        if count == 1:
            cls._divergences = original
            continue

        def averaged(self, step, x, sigma, d_u, d_negs, _original=original):
            draws = [_original(self, step + 100000 * j, x, sigma, d_u, d_negs) for j in range(count)]
            if draws[0] is None:
                return None
            divs = [None if draws[0][0][k] is None else sum(d[0][k] for d in draws) / count
                    for k in range(len(d_negs))]
            noise = [None if draws[0][1][k] is None else sum(d[1][k] for d in draws) / count ** 2
                     for k in range(len(d_negs))]
            return divs, noise

        cls._divergences = averaged


def run(cell: str, seed: int, cases: list[str], probe_seeds: list[int], lambda0: float,
        debias_probe: bool = False, probes: int = 1) -> list[dict[str, Any]]:
    model, sampler, steps = cell.split("/")
    runner = _Runner(OUT, {})
    set_debias_probe(debias_probe)
    set_probes(probes)
    from dng_core.path import PROBE_SEED

    rows = []
    for probe_seed in probe_seeds:
        set_probe_seed(probe_seed)
        runner.bench.runner.reset()  # the prompt is the same for every stream: without this the executor's cache answers
        for case in cases:
            pt = Point(model, sampler, int(steps), seed, case, "dng", lambda0)
            row = {**runner.run(pt), "probe_seed": probe_seed, "default_stream": probe_seed == PROBE_SEED,
                   "debias_probe": debias_probe, "probes": probes}
            log(f"{pt.key} probe seed {probe_seed}{' debiased' if debias_probe else ''} probes {probes}: "
                + (f"change {row['mean_abs_change']:.4f}" if case == "unrelated" else
                   f"forbidden {row['forbidden_pct']:.1f} %") + f" ({row['seconds']:.0f} s)")
            rows.append(row)
    return rows


def write(rows: list[dict[str, Any]]) -> None:
    OUT_JSON.write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Probe streams: the same grid point with other draws of the path estimator's probe", "",
             "Generated by `benchmarks/probe_streams.py` (see its docstring). Same images (seed), same setting (the",
             "node defaults), only the stream of Rademacher probe directions differs. Host: "
             + ", ".join(sorted({f"ComfyUI {r['host']}" for r in rows})) + ". The default stream's rows with",
             "one probe and no debiasing are the grid's own (same runner); the first rows of the other streams came",
             "from this script's prototype (the same runner and patch, run from a scratch file in session 13). The",
             "debias_probe and probes columns are estimator variants (see the script's docstring), not node inputs.",
             ""]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["sampler"], r["steps"], r["seed"], r["case"], r["strength"],
                           r.get("debias_probe", False), r.get("probes", 1)), []).append(r)
    lines += ["| cell | seed | case | lambda0 | debias_probe | probes a step | per stream (default stream first) "
              "| mean +- se over streams |", "|---|---|---|---:|---|---:|---|---|"]
    for (model, sampler, steps, seed, case, lam, debias, probes), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: (not r["default_stream"], r["probe_seed"]))
        metric = "mean_abs_change" if case == "unrelated" else "forbidden_pct"
        vals = [r[metric] for r in rs]
        m, se = mean_se(vals)
        fmt = "{:.4f}" if case == "unrelated" else "{:.2f} %"
        per = ", ".join(f"{fmt.format(v)} ({r['probe_seed']}{', default' if r['default_stream'] else ''})"
                        for v, r in zip(vals, rs))
        lines.append(f"| {model} {sampler} {steps} | {seed} | {case} | {lam:g} | {'on' if debias else 'off'} | {probes} | {per} | "
                     f"{fmt.format(m)} +- {fmt.format(se) if not math.isnan(se) else '-'} |")
    (RESULTS / "probe_streams.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="mnist16/euler/20", metavar="MODEL/SAMPLER/STEPS")
    ap.add_argument("--seed", type=int, default=1, help="the grid seed (the images)")
    ap.add_argument("--case", nargs="+", default=["unrelated"], choices=["removal", "unrelated"])
    ap.add_argument("--probe-seeds", type=int, nargs="+", required=True)
    ap.add_argument("--lambda0", type=float, default=None, help="default: the node default")
    ap.add_argument("--debias-probe", action="store_true", help="PosteriorConfig.debias_probe on (not a node input)")
    ap.add_argument("--probes", type=int, default=1, help="probes averaged per step (not a node input)")
    args = ap.parse_args()
    from dng_core import DNGConfig

    lambda0 = DNGConfig().lambda0 if args.lambda0 is None else args.lambda0
    new = run(args.cell, args.seed, args.case, args.probe_seeds, lambda0, args.debias_probe, args.probes)
    old = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else []  # read late: runs may share the file
    key = lambda r: (r["model"], r["sampler"], r["steps"], r["seed"], r["case"], r["strength"],  # noqa: E731
                     r.get("debias_probe", False), r.get("probes", 1), r["probe_seed"])
    merged = {key(r): r for r in old + new}
    write(sorted(merged.values(), key=key))
    print(json.dumps({"environment": environment(), "rows": len(merged)}))


if __name__ == "__main__":
    main()
