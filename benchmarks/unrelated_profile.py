"""Where DNG's change of unrelated images comes from, per model and sampler (issue 11's mnist16 cells).

The grid's deactivation target compares DNG's mean change of images that never contained the concept with
negative prompting's. This benchmark splits that mean: per image (median, the share the top 5 % carry), and per
step (DNG's mean lambda and the fraction of images whose lambda exceeds 1, from the trace of the first 64
images), with the correlation between an image's largest lambda and its change.

Unrelated case of the grid: positive 7 at cfg 2.5, concept 0, N 500, seed 0, 20 steps, DNG at the node defaults;
change: mean |x_DNG - x_plain| per image (same seed). Writes benchmarks/results/unrelated_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import RESULTS, Bench, digit_prompt, environment, log  # noqa: E402
from benchmarks.defaults_grid import UNRELATED  # noqa: E402
from devtools.dng_defaults import dng_node_defaults  # noqa: E402

CELLS = (("digits8", "euler"), ("digits8", "dpmpp_2m"), ("digits8", "euler_ancestral"), ("mnist16", "euler"),
         ("mnist16", "euler_ancestral"))
STEPS = 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "unrelated_profile"))
    args = ap.parse_args(argv)

    bench = Bench()
    rows = []
    for model, sampler in CELLS:
        common = dict(batch_size=args.n, seed=args.seed, steps=STEPS, sampler=sampler, model_name=model,
                      positive_digit=UNRELATED["positive"], negative_digit=UNRELATED["negative"], cfg=UNRELATED["cfg"])
        plain = bench.run(digit_prompt(method="plain", **common)).samples
        np_change = float((bench.run(digit_prompt(method="np", scale=0.5, **common)).samples - plain).abs().mean())
        dng = bench.run(digit_prompt(method="dng", **dng_node_defaults(), **common))
        change = (dng.samples - plain).abs().flatten(1).mean(1)
        ordered = change.sort(descending=True).values
        top = max(1, round(0.05 * change.numel()))
        lam = dng.trace.series("scale")[:, 0, :]  # [steps, first 64 images]
        kept = lam.shape[1]
        corr = torch.corrcoef(torch.stack([lam.max(0).values, change[:kept].double()]))[0, 1]
        rows.append({
            "model": model, "sampler": sampler, "n": int(change.numel()), "mean_change": float(change.mean()),
            "median_change": float(change.median()), "np_mean_change": np_change,
            "top5_share": float(ordered[:top].sum() / ordered.sum()),
            "corr_max_lambda_change": float(corr),
            "lambda_mean_per_step": [round(float(v), 3) for v in lam.mean(1)],
            "frac_lambda_above_1_per_step": [round(float(v), 3) for v in (lam > 1).double().mean(1)]})
        r = rows[-1]
        log(f"{model} {sampler}: mean {r['mean_change']:.4f} (NP 0.5: {np_change:.4f}), median "
            f"{r['median_change']:.4f}, top 5 % carry {100 * r['top5_share']:.0f} %, corr {r['corr_max_lambda_change']:.2f}")

    env = environment()
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "seed": args.seed, "rows": rows}, indent=1))
    lines = [f"# Where DNG's change of unrelated images comes from (issue 11), ComfyUI {env['comfyui']}", "",
             f"`python benchmarks/unrelated_profile.py`; unrelated case (positive 7, cfg 2.5, concept 0), N {args.n}, "
             f"seed {args.seed}, {STEPS} steps, DNG at the node defaults. Change: mean |x_DNG - x_plain| per image; "
             "NP: negative prompting at scale 0.5 (mean). lambda per step: mean over the first 64 images.", "",
             "| model | sampler | mean change (/ NP 0.5) | median (/ NP 0.5) | top 5 % carry | corr(max lambda, change) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['mean_change']:.4f} ({r['mean_change'] / r['np_mean_change']:.3f})"
                     f" | {r['median_change']:.4f} ({r['median_change'] / r['np_mean_change']:.3f}) | "
                     f"{100 * r['top5_share']:.0f} % | {r['corr_max_lambda_change']:.2f} |")
    lines += ["", "Mean lambda per step / fraction of images with lambda > 1 per step:", ""]
    for r in rows:
        lines.append(f"- {r['model']} {r['sampler']}: {r['lambda_mean_per_step']} / "
                     f"{r['frac_lambda_above_1_per_step']}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
