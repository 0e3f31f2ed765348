"""Why DNG changes unrelated images more on dpmpp_2m than on euler (issue 11's dpmpp_2m cells).

The grid (defaults_grid.md) finds DNG's change of an unrelated image ~1.5x larger on dpmpp_2m than on euler at
20 steps, while negative prompting's (NP) change is the same on both. This benchmark separates the two things
that could differ:

* **the guidance**: DNG's per-step lambda, from its trace (the first 64 images), on both samplers;
* **the sampler's response to a push**: NP at a fixed scale applied on all steps, on the early steps [0, k) only
  (then plain) and on the late steps [k, 20) only, by splitting the run into two KSamplerAdvanced segments at
  step k. Each windowed run is compared with a plain run split at the same step (a split restarts dpmpp_2m's
  multistep history, so the split plain run is the windowed run's reference).

Unrelated case of the grid: digits8, positive 7 at cfg 2.5, concept 0, N 500, seed 0. Change: mean |x - x_ref|.
Writes benchmarks/results/sampler_response.{json,md}.
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

from benchmarks.common import RESULTS, Bench, digit_prompt, environment, log, split_at_step  # noqa: E402
from benchmarks.defaults_grid import UNRELATED  # noqa: E402
from devtools.dng_defaults import dng_node_defaults  # noqa: E402

SAMPLERS = ("euler", "dpmpp_2m")
STEPS = 20
SPLIT = 12  # DNG's mean lambda on the unrelated case is < 0.01 from step 12 on (measured: see the lambda table)
NP_SCALE = 0.5


def unrelated_prompt(method: str, *, n: int, seed: int, sampler: str, **params: Any) -> dict:
    return digit_prompt(method=method, batch_size=n, seed=seed, steps=STEPS, sampler=sampler,
                        positive_digit=UNRELATED["positive"], negative_digit=UNRELATED["negative"],
                        cfg=UNRELATED["cfg"], **params)


def split_prompt(first: str, second: str, *, n: int, seed: int, sampler: str, k: int = SPLIT) -> dict:
    """Two KSamplerAdvanced segments, [0, k) then [k, STEPS), each ``plain`` or ``np`` (NP_SCALE). "5" is the
    second segment (the final latent), "11" the first, "12" / "13" their NP patches."""
    p = unrelated_prompt("plain", n=n, seed=seed, sampler=sampler)

    def model_of(method: str, node_id: str) -> list:
        if method == "plain":
            return ["1", 0]
        p[node_id] = {"class_type": "DNGNegativePrompting",
                      "inputs": {"model": ["1", 0], "empty_conditioning": ["2", 0], "scale": NP_SCALE}}
        return [node_id, 0]

    negative = {"plain": ["2", 0], "np": ["3", 0]}
    return split_at_step(p, k=k, models=(model_of(first, "12"), model_of(second, "13")),
                         negatives=(negative[first], negative[second]), positive=["8", 0], latent=["4", 0],
                         seed=seed, steps=STEPS, cfg=UNRELATED["cfg"], sampler=sampler)


def write_markdown(out: Path) -> None:
    data = json.loads(out.with_suffix(".json").read_text())
    rows, env = data["rows"], data["env"]
    by = {(r["sampler"], r["run"]): r for r in rows}
    lines = [f"# DNG and negative prompting on euler and dpmpp_2m (issue 11), ComfyUI {env['comfyui']}", "",
             f"`python benchmarks/sampler_response.py`; digits8, unrelated case (positive 7, cfg 2.5, concept 0), "
             f"N {data['n']}, seed {data['seed']}, {STEPS} steps. Change: mean |x - x_ref| (+- se over images); "
             "windowed runs against the plain run split at the same step.", "",
             "| run | euler | dpmpp_2m | dpmpp_2m / euler |", "|---|---|---|---|"]
    for what in [r["run"] for r in rows if r["sampler"] == SAMPLERS[0] and "mean_abs_change" in r]:
        a, b = by[(SAMPLERS[0], what)], by[(SAMPLERS[1], what)]
        se = lambda r: f" +- {r['se']:.4f}" if "se" in r else ""  # noqa: E731
        ratio = b["mean_abs_change"] / a["mean_abs_change"] if a["mean_abs_change"] > 0 else float("nan")
        lines.append(f"| {what} | {a['mean_abs_change']:.4f}{se(a)} | {b['mean_abs_change']:.4f}{se(b)} | "
                     f"{ratio:.2f} |")
    lines += ["", "DNG's mean lambda per step (first 64 images):", ""]
    for s in SAMPLERS:
        lines.append(f"- {s}: {by[(s, 'DNG lambda per step (mean of the first 64 images)')]['lambda_mean_per_step']}")
    lam = [by[(s, "DNG lambda per step (mean of the first 64 images)")]["lambda_mean_per_step"] for s in SAMPLERS]
    early = [by[(s, f"NP {NP_SCALE} on steps [0, {SPLIT})")] for s in SAMPLERS]
    ratio = early[1]["mean_abs_change"] / early[0]["mean_abs_change"]
    ratio_se = ratio * math.hypot(early[0]["se"] / early[0]["mean_abs_change"],
                                  early[1]["se"] / early[1]["mean_abs_change"])
    lines += ["", f"Reading: the guidance is the same on both samplers (mean lambda per step differs by at most "
              f"{max(abs(a - b) for a, b in zip(*lam)):.4f}), but dpmpp_2m moves the image {ratio:.2f} +- "
              f"{ratio_se:.2f}x as far as euler for a push on the steps where DNG's lambda lives (before step "
              f"{SPLIT}), and about as far for a push on every step; so at equal settings DNG's unrelated change, "
              "as a fraction of NP's, is larger on dpmpp_2m by about that factor."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "sampler_response"))
    ap.add_argument("--markdown", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args(argv)
    if args.markdown:
        write_markdown(Path(args.out))
        return 0

    bench = Bench()
    defaults = dng_node_defaults()
    rows: list[dict] = []
    for sampler in SAMPLERS:
        kw = {"n": args.n, "seed": args.seed, "sampler": sampler}
        plain = bench.run(unrelated_prompt("plain", **kw)).samples
        plain_split = bench.run(split_prompt("plain", "plain", **kw)).samples
        dng = bench.run(unrelated_prompt("dng", **kw, **defaults))
        lam = dng.trace.series("scale")[:, 0, :].mean(-1)
        runs = {
            "DNG (node defaults)": (dng.samples, plain),
            f"NP {NP_SCALE} on all steps": (bench.run(unrelated_prompt("np", scale=NP_SCALE, **kw)).samples, plain),
            f"NP {NP_SCALE} on steps [0, {SPLIT})": (bench.run(split_prompt("np", "plain", **kw)).samples, plain_split),
            f"NP {NP_SCALE} on steps [{SPLIT}, {STEPS})": (bench.run(split_prompt("plain", "np", **kw)).samples,
                                                       plain_split),
        }
        for what, (x, ref) in runs.items():
            per_image = (x.float() - ref.float()).abs().flatten(1).mean(1)
            rows.append({"sampler": sampler, "run": what, "mean_abs_change": float(per_image.mean()),
                         "se": float(per_image.std() / per_image.numel() ** 0.5)})
            log(f"{sampler} {what}: change {rows[-1]['mean_abs_change']:.4f} +- {rows[-1]['se']:.4f}")
        rows.append({"sampler": sampler, "run": "DNG lambda per step (mean of the first 64 images)",
                     "lambda_mean_per_step": [round(float(v), 4) for v in lam]})
        rows.append({"sampler": sampler, "run": "split control: plain split vs unsplit",
                     "mean_abs_change": float((plain_split.float() - plain.float()).abs().mean())})

    env = environment()
    Path(args.out).with_suffix(".json").write_text(json.dumps({"env": env, "n": args.n, "seed": args.seed,
                                                               "rows": rows}, indent=1))
    write_markdown(Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
