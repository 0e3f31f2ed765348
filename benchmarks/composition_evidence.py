"""The evidence readings on the shapes model: today's default against the previous one, paired, one process.

``composition.py`` measured DNG at the defaults of its day (the paper's ``sampled`` evidence, lambda0 120); the
node default is now ``one_sided`` at lambda0 75 (``dng_core.posterior.EvidencePath``), with the late push on
samplers that add noise. This runs, per sampler and case, from one seed: plain sampling, DNG at today's node
defaults, the same with the full push, DNG at the previous default (evidence sampled, lambda0 120, the full push,
every other input at today's default) and negative prompting at scale 3 (the unrelated change's
yardstick, as in composition.md). Cases as in composition.py: **related** ("red circle and blue square" minus
"red circle": red circles shown, blue squares kept) and **unrelated** ("blue square" minus "red circle": mean
|x - x_plain| and its fraction of NP 3's).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/composition_evidence.py --samplers euler_ancestral --part ea
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/composition_evidence.py --samplers euler --part euler
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/composition_evidence.py --merge

Writes benchmarks/results/composition_evidence.{json,md} (host, seed and N in every row).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, environment, log, trace_summary  # noqa: E402
from benchmarks.composition import CASES, CFG, SAMPLERS, STEPS, ShapesScorer, score, shapes_prompt  # noqa: E402

NP_SCALE = 3.0
#: label -> (method, params): the previous default keeps every other input at today's default
#: (sessions 9-19's default, the full push on samplers that add noise, and the one before it, sampled at 120, push the
#: full way too; on deterministic samplers the push setting does nothing, so a part run before session 20 there
#: has no ``dng_full_push`` row: it would equal ``dng_default``)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain", {}),
    "dng_default": ("dng", {}),
    "dng_full_push": ("dng", {"stochastic_push": "full"}),
    "dng_previous_default": ("dng", {"evidence": "sampled", "lambda0": 120.0, "stochastic_push": "full"}),
    "np3": ("np", {"scale": NP_SCALE}),
}
PARTS = RESULTS / "composition_evidence_parts"


def run(samplers: list[str], n: int, seed: int) -> list[dict]:
    from benchmarks.common import Bench

    bench, scorer, env = Bench(), ShapesScorer(), environment()
    rows = []
    for sampler in samplers:
        for case in ("related", "unrelated"):
            c = CASES[case]
            plain = None
            for label, (method, params) in METHODS.items():
                out = bench.run(shapes_prompt(method=method, positive=c["positive"], negative=c["negative"],
                                              batch_size=n, seed=seed, sampler=sampler, **params))
                x = out.samples.clamp(-1, 1)
                plain = x if label == "plain" else plain
                diff = (x - plain).abs().flatten(1).mean(1)
                row = {"model": "shapes16", "sampler": sampler, "steps": STEPS, "cfg": CFG, "seed": seed,
                       "case": case, "label": label, "method": method, "params": params,
                       **score(scorer.presence(x), c, None),
                       "change_vs_plain": diff.mean().item(), "change_vs_plain_se": diff.std().item() / math.sqrt(n),
                       "seconds": round(out.seconds, 1), "host": env["comfyui"]}
                if out.trace is not None:
                    ts = trace_summary(out.trace)
                    row["final_p_mean"] = ts.get("final_p_mean")
                    row["max_lambda_mean"] = ts.get("max_lambda_mean")
                rows.append(row)
                log(f"{sampler} {case} {label}: forbidden {row['forbidden_pct']:.1f} +- {row['forbidden_se']:.1f} %, "
                    f"kept {row['kept_pct']:.1f} %, change {row['change_vs_plain']:.4f} ({out.seconds:.0f} s)")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["# The evidence readings on the shapes model", "",
             f"Host: ComfyUI {', '.join(sorted({r['host'] for r in rows}))}; N = {rows[0]['n']}, seed "
             f"{rows[0]['seed']}, {STEPS} steps, cfg {CFG}. Today's default: evidence one_sided, lambda0 75, "
             "on samplers that add noise the late push (stochastic_push late, 6 x lambda0 below sigma 2); "
             "dng_full_push: the same with the push at every noise level (the default of sessions 9-19); the "
             "previous default: evidence sampled, lambda0 120, the full push (other inputs at today's defaults). "
             "On euler the push setting does nothing (no dng_full_push row: it equals dng_default). "
             "Written by `benchmarks/composition_evidence.py`.", "",
             "| sampler | method | related: red circles shown (%) | blue squares kept (%) | unrelated: change vs "
             "plain | fraction of NP 3's |", "|---|---|---|---|---|---|"]
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        np_change = next(r["change_vs_plain"] for r in rows if r["sampler"] == sampler and r["case"] == "unrelated"
                         and r["label"] == "np3")
        for label in METHODS:
            if not any(r["sampler"] == sampler and r["label"] == label for r in rows):
                continue  # a label this sampler's part predates (see METHODS)
            rel = next(r for r in rows if r["sampler"] == sampler and r["case"] == "related" and r["label"] == label)
            unr = next(r for r in rows if r["sampler"] == sampler and r["case"] == "unrelated" and r["label"] == label)
            lines.append(f"| {sampler} | {label} | {rel['forbidden_pct']:.1f} +- {rel['forbidden_se']:.1f} | "
                         f"{rel['kept_pct']:.1f} +- {rel['kept_se']:.1f} | {unr['change_vs_plain']:.4f} +- "
                         f"{unr['change_vs_plain_se']:.4f} | {unr['change_vs_plain'] / np_change:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--part", help="write the rows to composition_evidence_parts/<PART>.json")
    ap.add_argument("--merge", action="store_true", help="merge the parts into composition_evidence.{json,md}")
    args = ap.parse_args(argv)
    if args.merge:
        rows = [r for part in sorted(PARTS.glob("*.json")) for r in json.loads(part.read_text())]
    else:
        rows = run(args.samplers, args.n, args.seed)
        if args.part:
            PARTS.mkdir(parents=True, exist_ok=True)
            (PARTS / f"{args.part}.json").write_text(json.dumps(rows, indent=1))
            return 0
    (RESULTS / "composition_evidence.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / "composition_evidence.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
