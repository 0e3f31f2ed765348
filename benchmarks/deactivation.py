"""Deactivation (DNG paper Fig. 3 / 4) on the pack's reference digit model, through the real ComfyUI host.

The model generates a POSITIVE digit with ordinary CFG (DNGDigitConditioning positive, cfg > 1) while digit 0 is
the negative concept:

* unrelated: positive 7, negative 0 -- DNG's posterior should fall and leave the images (nearly) unchanged;
* related:   positive 0, negative 0 -- the concept is present, DNG's posterior should rise and act.

Same seeds for every method: plain (the KSampler with the empty label as its negative, i.e. CFG towards the
positive only), DNG (DynamicNegativeGuidance, both posterior estimators) and negative prompting
(DNGNegativePrompting) at equal removal strength: DNG's lambda0 and NP's scale are the points of the removal
benchmark with matched forbidden % (the weakest point of each sweep with <= 1 % forbidden, read from
benchmarks/results/removal_summary.json, or given with --dng-lambda0 / --np-scale). A floor row (DNG with
lambda0 = 0, which must reproduce plain) shows the numerical noise of the comparison.

    .venv/bin/python benchmarks/deactivation.py                   # N = 500, 20 steps, euler_ancestral + euler
    .venv/bin/python benchmarks/deactivation.py --n 256 --samplers euler

Reports per (sampler, case, method): mean |x_method - x_plain| (images clamped to [-1, 1], mean over pixels and
samples), the share of samples whose class changed, forbidden % and positive-digit %, and the lambda trace (mean
applied scale per step, final mean; over the first 64 samples, the trace's cap). Writes
benchmarks/results/deactivation.json (rows with keys sampler, case, method, mean_abs_change,
final_lambda_mean, ...) and deactivation_lambda.png (mean lambda per step per case).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (RESULTS, Bench, Scorer, digit_prompt, environment, ensure_results_dir, log,  # noqa: E402
                               progress, trace_summary)
from benchmarks.removal import DNG_SETTINGS, DNG_TEMPERATURE  # noqa: E402

CASES = {"unrelated": "7", "related": "0"}
NEGATIVE = "0"
# Used when removal_summary.json has no matched point for a sampler (and no --dng-lambda0 / --np-scale).
FALLBACK = {"dng": 5.0, "np": 0.5}


def matched_strengths(sampler: str, estimators: list[str], summary_path: Path) -> dict[str, Any]:
    """{"dng:<est>": lambda0, "np": scale, "source": ...} from the removal benchmark's matched points."""
    out: dict[str, Any] = {}
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())["matched"].get(sampler, {}).get("series", {})
        for key in [f"dng:{e}" for e in estimators] + ["np"]:
            if key in s:
                out[key] = {"scale": s[key]["point"]["scale"], "forbidden_pct": s[key]["point"]["forbidden_pct"],
                            "kl": s[key]["point"]["kl"], "reaches_1pct": s[key]["reaches_target"],
                            "source": f"{summary_path.name}: weakest point with <= 1 % forbidden"}
    return out


def mean_abs_change(x: Any, ref: Any) -> float:
    return float((Scorer.prepare(x) - Scorer.prepare(ref)).abs().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="samples per run (default 500)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=2.5, help="CFG scale towards the positive digit (default 2.5)")
    ap.add_argument("--samplers", nargs="+", default=["euler_ancestral", "euler"])
    ap.add_argument("--estimators", nargs="+", default=["kernel", "step"], choices=["kernel", "step"])
    ap.add_argument("--dng-lambda0", type=float, help="override the matched lambda0 (all samplers)")
    ap.add_argument("--np-scale", type=float, help="override the matched NP scale (all samplers)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--no-floor", action="store_true", help="skip the lambda0 = 0 floor run")
    ap.add_argument("--prior", type=float, help="override DNG's prior (default: removal.DNG_SETTINGS)")
    ap.add_argument("--p-max", type=float, help="override DNG's p_max")
    ap.add_argument("--temperature", nargs="+", metavar="EST=TAU",
                    help="override DNG's temperature, one value for all estimators or kernel=.. step=..")
    ap.add_argument("--summary", type=Path, default=RESULTS / "removal_summary.json",
                    help="the removal benchmark's summary to take the matched strengths from")
    ap.add_argument("--out-prefix", default="deactivation")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True) if out_dir != RESULTS else ensure_results_dir()
    command = ("OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deactivation.py "
               + " ".join(sys.argv[1:] if argv is None else argv))

    settings = dict(DNG_SETTINGS)
    if args.prior is not None:
        settings["prior"] = args.prior
    if args.p_max is not None:
        settings["p_max"] = args.p_max
    temperature = dict(DNG_TEMPERATURE)
    for item in args.temperature or []:
        if "=" in str(item):
            k, v = str(item).split("=")
            temperature[k] = float(v)
        else:
            temperature = {k: float(item) for k in temperature}

    t0 = time.perf_counter()
    bench = Bench()
    scorer = Scorer(removed=0)
    strengths: dict[str, dict] = {}
    for sampler in args.samplers:
        m = matched_strengths(sampler, args.estimators, args.summary)
        for e in args.estimators:
            key = f"dng:{e}"
            if args.dng_lambda0 is not None:
                m[key] = {"scale": args.dng_lambda0, "source": "--dng-lambda0"}
            m.setdefault(key, {"scale": FALLBACK["dng"], "source": "fallback (no removal summary)"})
        if args.np_scale is not None:
            m["np"] = {"scale": args.np_scale, "source": "--np-scale"}
        m.setdefault("np", {"scale": FALLBACK["np"], "source": "fallback (no removal summary)"})
        strengths[sampler] = m
        log(f"{sampler}: strengths {json.dumps({k: v['scale'] for k, v in m.items()})}")

    jobs = []
    for sampler in args.samplers:
        for case in args.cases:
            jobs.append((sampler, case, "plain", None, 0.0))
            if not args.no_floor:
                jobs.append((sampler, case, "dng_floor", args.estimators[0], 0.0))
            for e in args.estimators:
                jobs.append((sampler, case, "dng", e, strengths[sampler][f"dng:{e}"]["scale"]))
            jobs.append((sampler, case, "np", None, strengths[sampler]["np"]["scale"]))

    rows: list[dict] = []
    plain: dict[tuple[str, str], Any] = {}
    plain_pred: dict[tuple[str, str], Any] = {}
    json_path = out_dir / f"{args.out_prefix}.json"
    for sampler, case, method, est, scale in progress(jobs, desc="deactivation runs"):
        common = dict(batch_size=args.n, seed=args.seed, steps=args.steps, sampler=sampler, cfg=args.cfg,
                      positive_digit=CASES[case], negative_digit=NEGATIVE)
        if method == "plain":
            prompt = digit_prompt(method="plain", **common)
        elif method in ("dng", "dng_floor"):
            prompt = digit_prompt(method="dng", lambda0=float(scale), posterior_variance=est,
                                  **{**settings, "temperature": temperature[est]}, **common)
        else:
            prompt = digit_prompt(method="np", scale=float(scale), **common)
        out = bench.run(prompt)
        pred = scorer.predict(out.samples)
        if method == "plain":
            plain[(sampler, case)] = out.samples
            plain_pred[(sampler, case)] = pred
        ref, ref_pred = plain[(sampler, case)], plain_pred[(sampler, case)]
        t = trace_summary(out.trace)
        row = {"sampler": sampler, "case": case, "method": method, "estimator": est,
               "positive": CASES[case], "negative": NEGATIVE, "cfg": args.cfg, "steps": args.steps, "n": args.n,
               "seed": args.seed, "scale": float(scale),
               "mean_abs_change": mean_abs_change(out.samples, ref),
               "class_changed_pct": 100.0 * float((pred != ref_pred).mean()),
               "forbidden_pct": 100.0 * float((pred == 0).mean()),
               "positive_pct": 100.0 * float((pred == int(CASES[case])).mean()),
               "final_lambda_mean": t.get("final_lambda_mean", 0.0),
               "max_lambda_mean": t.get("max_lambda_mean", 0.0),
               "lambda_mean_per_step": [round(v, 5) for v in t.get("lambda_mean_per_step", [])],
               "p_mean_per_step": [round(v, 5) for v in t.get("p_mean_per_step", [])],
               "seconds": round(out.seconds, 2)}
        if method in ("dng", "dng_floor"):
            row["dng_params"] = {k: v for k, v in prompt["10"]["inputs"].items()
                                 if k not in ("model", "empty_conditioning")}
        if method in ("dng", "np"):
            key = f"dng:{est}" if method == "dng" else "np"
            row["strength_source"] = strengths[sampler][key]
        rows.append(row)
        log(f"{sampler} {case} {method}{':' + est if est and method == 'dng' else ''} scale={scale:g}: "
            f"mean|dx| {row['mean_abs_change']:.4f} changed {row['class_changed_pct']:.1f} % forbidden "
            f"{row['forbidden_pct']:.1f} % positive {row['positive_pct']:.1f} % final lambda "
            f"{row['final_lambda_mean']:.3g} ({out.seconds:.0f} s)")
        json_path.write_text(json.dumps(rows, indent=1))

    ratios = {}
    for sampler in args.samplers:
        for case in args.cases:
            npc = [r for r in rows if (r["sampler"], r["case"], r["method"]) == (sampler, case, "np")][0]
            for r in [r for r in rows if (r["sampler"], r["case"], r["method"]) == (sampler, case, "dng")]:
                ratios[f"{sampler}/{case}/dng:{r['estimator']}"] = (
                    r["mean_abs_change"] / npc["mean_abs_change"] if npc["mean_abs_change"] else None)
    meta = {"command": command, "runtime_s": round(time.perf_counter() - t0, 1), "env": environment(),
            "strengths": strengths, "dng_settings": settings, "dng_temperature": temperature,
            "dng_over_np_mean_change": ratios,
            "target": "unrelated case: DNG's mean change <= 10 % of NP's",
            "target_met": {k: (v is not None and v <= 0.10) for k, v in ratios.items() if "/unrelated/" in k}}
    (out_dir / f"{args.out_prefix}_summary.json").write_text(json.dumps(meta, indent=1))
    plot_lambda(out_dir / f"{args.out_prefix}_lambda.png", rows)
    log(f"wrote {json_path}, {args.out_prefix}_summary.json, {args.out_prefix}_lambda.png in "
        f"{meta['runtime_s'] / 60:.1f} min")
    for k, v in ratios.items():
        log(f"DNG / NP mean change {k}: {v:.3f}")
    return 0


def plot_lambda(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    fig, axes = plt.subplots(1, len(samplers), figsize=(5.5 * len(samplers), 4.2), squeeze=False)
    colors = {"unrelated": "C0", "related": "C3"}
    for ax, sampler in zip(axes[0], samplers):
        for r in rows:
            if r["sampler"] != sampler or r["method"] not in ("dng", "np") or not r["lambda_mean_per_step"]:
                continue
            style = {"kernel": "-", "step": "--"}.get(r["estimator"], ":")
            label = (f"{r['case']} (+{r['positive']} / -{r['negative']}): "
                     + (f"DNG {r['estimator']} lambda0 {r['scale']:g}" if r["method"] == "dng"
                        else f"NP {r['scale']:g}"))
            ax.plot(range(len(r["lambda_mean_per_step"])), r["lambda_mean_per_step"], style,
                    color=colors[r["case"]], alpha=1.0 if r["method"] == "dng" else 0.5, label=label)
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_xlabel("sampler step")
        ax.set_ylabel("mean applied scale (lambda_t)")
        ax.set_title(f"{sampler}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Deactivation: DNG's lambda_t falls when the negative (0) is unrelated to the positive", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
