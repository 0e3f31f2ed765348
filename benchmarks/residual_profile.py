"""What the 0s that DNG leaves behind look like to its posterior (issue 11's 50-step ancestral cell).

The grid's one digits8 miss is euler_ancestral at 50 steps: DNG at the default leaves 0.7-1.0 % of the images
a 0 (seeds 0 / 1), and lambda0 90 barely moves it (0.6-0.9 %). Whether that is a tuning failure or a limit
depends on what the posterior did on those images:

* *clamped*: p reached p_max, so lambda sat at its bound lambda0 p_max / (1 - p_max) and the push was not enough;
* *late*: p rose only after the image's class had formed (few steps left to push);
* *missed*: p stayed near the prior (the estimator never saw the concept).

Unconditional generation (remove 0), the grid's removal case, in batches of ``--batch`` images (the trace keeps
every image of a batch of 64) at seeds ``--seed-base`` + 0, 1, ...: plain, DNG at the node defaults (``--lambda0``),
and negative prompting at ``--np-scale`` (the grid's matched NP scale on euler_ancestral). Per image: the
reference classifier's label under each method; for DNG, the largest p and lambda, the first step with
lambda >= 1 and the number of steps at the clamp. Writes benchmarks/results/residual_profile.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/residual_profile.py --steps 20 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import RESULTS, Bench, Scorer, digit_prompt, environment, log, mean_se  # noqa: E402
from devtools.dng_defaults import dng_node_defaults  # noqa: E402


def profile(bench: Bench, scorer: Scorer, *, model: str, sampler: str, steps: int, lambda0: float,
            np_scale: float, seeds: list[int], batch: int) -> dict[str, Any]:
    """Labels under plain / DNG / NP and DNG's posterior per image, over ``seeds`` (one batch each)."""
    dng_params = {**dng_node_defaults(), "lambda0": lambda0}
    p_max = float(dng_params["p_max"])
    labels: dict[str, list[int]] = {"plain": [], "dng": [], "np": []}
    max_p: list[float] = []
    max_lam: list[float] = []
    first_push: list[int] = []  # first step with lambda >= 1, or -1
    clamped_steps: list[int] = []
    sigmas: list[float] = []
    for seed in seeds:
        common = dict(batch_size=batch, seed=seed, steps=steps, sampler=sampler, model_name=model)
        labels["plain"] += scorer.predict(bench.run(digit_prompt(method="plain", **common)).samples).tolist()
        labels["np"] += scorer.predict(bench.run(digit_prompt(method="np", scale=np_scale, **common)).samples).tolist()
        out = bench.run(digit_prompt(method="dng", **dng_params, **common))
        labels["dng"] += scorer.predict(out.samples).tolist()
        p = out.trace.series("p")[:, 0, :]  # [steps, batch]
        if p.shape[1] != batch:
            raise RuntimeError(f"the trace kept {p.shape[1]} of {batch} images: use --batch <= 64")
        sigmas = [r.sigma for r in out.trace.steps]
        lam = out.trace.series("scale")[:, 0, :]
        max_p += p.max(0).values.tolist()
        max_lam += lam.max(0).values.tolist()
        first_push += [int(col.nonzero()[0]) if col.any() else -1 for col in (lam >= 1.0).T]
        clamped_steps += (p >= p_max * (1 - 1e-6)).sum(0).tolist()
    n = len(max_p)
    plain0 = [labels["plain"][i] == scorer.removed for i in range(n)]
    dng0 = [labels["dng"][i] == scorer.removed for i in range(n)]
    np0 = [labels["np"][i] == scorer.removed for i in range(n)]

    def group(idx: list[int]) -> dict[str, Any]:
        if not idx:
            return {"n": 0}
        firsts = [first_push[i] for i in idx if first_push[i] >= 0]
        median_first = int(torch.tensor(firsts).median()) if firsts else None
        return {
            "n": len(idx),
            "max_p_mean_se": mean_se([max_p[i] for i in idx]),
            "max_lambda_mean_se": mean_se([max_lam[i] for i in idx]),
            "reached_lambda_1": sum(first_push[i] >= 0 for i in idx) / len(idx),
            "first_lambda_1_step_median": median_first,
            "first_lambda_1_sigma_median": None if median_first is None else sigmas[median_first],
            "clamped_steps_mean_se": mean_se([float(clamped_steps[i]) for i in idx]),
            "reached_clamp": sum(clamped_steps[i] > 0 for i in idx) / len(idx),
        }

    residual = [i for i in range(n) if dng0[i]]
    removed = [i for i in range(n) if plain0[i] and not dng0[i]]
    return {
        "model": model, "sampler": sampler, "steps": steps, "lambda0": lambda0, "np_scale": np_scale,
        "seeds": seeds, "batch": batch, "n": n, "p_max": p_max,
        "forbidden_pct": {k: 100.0 * sum(v == scorer.removed for v in labels[k]) / n for k in labels},
        "residual": group(residual),
        "removed": group(removed),
        "residual_was_plain_0": sum(plain0[i] for i in residual) / max(1, len(residual)),
        "residual_also_np_0": sum(np0[i] for i in residual) / max(1, len(residual)),
        "np_residual_also_dng_0": sum(dng0[i] for i in range(n) if np0[i]) / max(1, sum(np0)),
        "sigmas": sigmas,
    }


def _fmt(ms: Any) -> str:
    return "-" if ms is None else f"{ms[0]:.3g} +- {ms[1]:.2g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits8")
    ap.add_argument("--sampler", default="euler_ancestral")
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--lambda0", type=float, default=75.0)
    ap.add_argument("--np-scale", type=float, default=0.4)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed-base", type=int, default=100)
    ap.add_argument("--out", default=str(RESULTS / "residual_profile"))
    args = ap.parse_args(argv)

    bench, scorer = Bench(), Scorer(removed=0, model_name=args.model)
    seeds = list(range(args.seed_base, args.seed_base + args.batches))
    rows = []
    for steps in args.steps:
        r = profile(bench, scorer, model=args.model, sampler=args.sampler, steps=steps, lambda0=args.lambda0,
                    np_scale=args.np_scale, seeds=seeds, batch=args.batch)
        rows.append(r)
        log(f"{args.sampler}/{steps}: forbidden {r['forbidden_pct']}; residual {r['residual']}; "
            f"removed {r['removed']}")
    env = environment()
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    lines = [f"# The 0s DNG leaves behind, seen by its posterior (issue 11), ComfyUI {env['comfyui']}", "",
             f"`python benchmarks/residual_profile.py`: {args.model}, {args.sampler}, unconditional generation with 0 "
             f"removed, {args.batches} batches of {args.batch} (seeds {seeds[0]}-{seeds[-1]}), DNG at the node "
             f"defaults with lambda0 {args.lambda0:g}, NP at scale {args.np_scale:g}. *Residual*: images DNG leaves a 0; "
             "*removed*: plain 0s that DNG turned into another digit. First lambda >= 1: median step (sigma).", "",
             "| steps | forbidden % plain / DNG / NP | group | n | max p | max lambda | reached lambda >= 1 | "
             "first lambda >= 1 | reached the clamp | steps at the clamp |", "|---|---|---|---:|---|---|---|---|---|---|"]
    for r in rows:
        f = r["forbidden_pct"]
        for name in ("residual", "removed"):
            g = r[name]
            if not g["n"]:
                lines.append(f"| {r['steps']} | {f['plain']:.1f} / {f['dng']:.1f} / {f['np']:.1f} | {name} | 0 | | | | | | |")
                continue
            step = g["first_lambda_1_step_median"]
            first = "-" if step is None else f"{step} of {r['steps']} (sigma {g['first_lambda_1_sigma_median']:.2f})"
            lines.append(f"| {r['steps']} | {f['plain']:.1f} / {f['dng']:.1f} / {f['np']:.1f} | {name} | {g['n']} | "
                         f"{_fmt(g['max_p_mean_se'])} | {_fmt(g['max_lambda_mean_se'])} | "
                         f"{100 * g['reached_lambda_1']:.0f} % | {first} | "
                         f"{100 * g['reached_clamp']:.0f} % | {_fmt(g['clamped_steps_mean_se'])} |")
    lines += [""]
    for r in rows:
        lines.append(f"- {r['steps']} steps: of DNG's residual 0s, {100 * r['residual_was_plain_0']:.0f} % were 0s "
                     f"without guidance and {100 * r['residual_also_np_0']:.0f} % stay 0s under NP; of NP's residual 0s "
                     f"{100 * r['np_residual_also_dng_0']:.0f} % stay 0s under DNG.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
