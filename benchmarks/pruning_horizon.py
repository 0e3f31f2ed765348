"""How early can a posterior-defined rule prune an absent concept? (issue 13's cost goal)

Pruning saves a concept's predictions only on the steps after it is pruned. On digits8 at 20 steps, K = 4
concepts cost 3x plain CFG per step (6 rows against 2) on euler_ancestral; an average of 1.3x needs every
absent concept pruned from step 3 on ((3 x 6 + 17 x 2) / 40 = 1.3), before any re-probe. This benchmark asks
whether the tracked posterior can tell, that early, an image in which the concept would appear from one in
which it would not:

* ``related``: unconditional generation with concept 0 (digit 0), the removal benchmark's setting. Each image
  is labelled by a paired plain run (same seed, same noise): "present" when that run's image is a 0.
* ``unrelated``: positive 7 at cfg 3 with concept 0 (issue 13's unrelated case), every image "absent".

DNG runs with the concept's posterior tracked on every step (pruning off), twice: lambda0 = 0 (guidance off, so
the posterior reads the unguided path: what can be known), and at the node defaults (what the node sees).
Per step k, over images: the AUC of p_k separating present from absent images of the related case, and the
fraction of present images a threshold would prune if it pruned 90 % of the unrelated case's images at step k
(the rule a pruner would need for 1.3x).

Writes benchmarks/results/pruning_horizon.{json,md}. Rows: sampler, lambda0, step, auc, auc_se,
present_pruned_at_90, n_present, n_absent, median_p_present, median_p_absent, median_p_unrelated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import Bench, Scorer, digit_prompt, environment, log  # noqa: E402
from devtools.dng_defaults import dng_node_defaults  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BATCH = 64  # the trace keeps the first 64 images of a run, so every image of a batch of 64 is kept


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a present image's p > an absent image's p), ties counted half (Mann-Whitney)."""
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    diff = pos.reshape(-1, 1) - neg.reshape(1, -1)
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def auc_se(a: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil's standard error of an AUC."""
    if not (0.0 < a < 1.0) or n_pos == 0 or n_neg == 0:
        return 0.0
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def posteriors(bench: Bench, case: str, lambda0: float, seed: int, sampler: str, steps: int) -> torch.Tensor:
    """p per step and image, [steps, BATCH], of concept 0 in one run."""
    params = {**dng_node_defaults(), "lambda0": lambda0, "prune_concepts": False}
    extra = {"positive_digit": "7", "cfg": 3.0} if case == "unrelated" else {}
    out = bench.run(digit_prompt(method="dng", batch_size=BATCH, seed=seed, steps=steps, sampler=sampler,
                                 **extra, **params))
    return out.trace.series("p")[:, 0, :]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=8, help=f"runs of {BATCH} images per case (seeds 0..runs-1)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--samplers", default="euler_ancestral,euler")
    ap.add_argument("--out", default=str(RESULTS / "pruning_horizon"))
    args = ap.parse_args(argv)

    bench, scorer = Bench(), Scorer(removed=0)
    lambda0_default = float(dng_node_defaults()["lambda0"])
    rows: list[dict] = []
    for sampler in args.samplers.split(","):
        present = []
        for seed in range(args.runs):
            plain = bench.run(digit_prompt(method="plain", batch_size=BATCH, seed=seed, steps=args.steps,
                                           sampler=sampler)).samples
            present.append(torch.from_numpy(scorer.predict(plain) == 0))
        present_t = torch.cat(present)
        for lambda0 in (0.0, lambda0_default):
            rel = torch.cat([posteriors(bench, "related", lambda0, s, sampler, args.steps)
                             for s in range(args.runs)], dim=1)
            unr = torch.cat([posteriors(bench, "unrelated", lambda0, s, sampler, args.steps)
                             for s in range(args.runs)], dim=1)
            for k in range(rel.shape[0]):
                pos, neg = rel[k, present_t], rel[k, ~present_t]
                threshold = torch.quantile(unr[k], 0.9)
                a = auc(pos, neg)
                rows.append({
                    "sampler": sampler, "steps": args.steps, "lambda0": lambda0, "step": k, "auc": a,
                    "auc_se": auc_se(a, pos.numel(), neg.numel()),
                    "present_pruned_at_90": float((pos <= threshold).double().mean()),
                    "n_present": int(pos.numel()), "n_absent": int(neg.numel()), "n_unrelated": int(unr.shape[1]),
                    "median_p_present": float(pos.median()), "median_p_absent": float(neg.median()),
                    "median_p_unrelated": float(unr[k].median())})
                r = rows[-1]
                log(f"{sampler} lambda0 {lambda0:g} step {k}: AUC {a:.3f} +- {r['auc_se']:.3f}, present pruned "
                    f"at the 90 % unrelated threshold {100 * r['present_pruned_at_90']:.0f} %")

    out = Path(args.out)
    env = environment()
    out.with_suffix(".json").write_text(json.dumps({"env": env, "seeds": list(range(args.runs)), "batch": BATCH,
                                                    "rows": rows}, indent=1))
    lines = [f"# How early can pruning tell an absent concept? (issue 13), ComfyUI {env['comfyui']}", "",
             f"`python benchmarks/pruning_horizon.py`; digits8, {args.steps} steps, concept 0, {args.runs} runs of "
             f"{BATCH} images per case (seeds 0-{args.runs - 1}), DNG at the node defaults with pruning off; "
             "lambda0 0 = guidance off (the posterior reads the unguided path). Present: the paired plain "
             "run's image is a 0. AUC: p_k separating present from absent images (0.5 = no information); "
             "pruned: present images at or below the p that 90 % of the unrelated case's images (positive 7, "
             "cfg 3) reach at step k.", "",
             "| sampler | lambda0 | step | AUC (se) | present pruned | median p present / absent / unrelated |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['lambda0']:g} | {r['step']} | {r['auc']:.3f} ({r['auc_se']:.3f}) | "
                     f"{100 * r['present_pruned_at_90']:.0f} % | {r['median_p_present']:.1e} / "
                     f"{r['median_p_absent']:.1e} / {r['median_p_unrelated']:.1e} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
