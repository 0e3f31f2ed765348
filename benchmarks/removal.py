"""Class removal on the pack's reference digit model (DNG paper Sec. 4 / Fig. 2), through the real ComfyUI host.

Remove digit 0 from the digits8 reference model during unconditional generation (positive = empty label,
negative = digit 0) with DNG (lambda0 swept; both posterior estimators, posterior_variance = kernel / step),
negative prompting (DNGNegativePrompting scale swept) and Safe Latent Diffusion (the paper's class-removal
setting: warmup 0, s_S 100, threshold 0.04, s_m 0.1, beta_m 0.2; the KSampler cfg = s_g swept), plus plain
sampling as a reference. Every point is one API prompt (batch_size = N) run by ComfyUI's real executor.

    .venv/bin/python benchmarks/removal.py                 # full run: N = 1000, 20 steps, euler_ancestral + euler
    .venv/bin/python benchmarks/removal.py --ci            # CI size: N = 500, fewer points -> removal_ci.*
    .venv/bin/python benchmarks/removal.py --tune          # the DNG tuning pass -> removal_tuning.json
    .venv/bin/python benchmarks/removal.py --samplers dpmpp_2m --out-prefix removal_dpmpp2m

Per point: forbidden % (the reference classifier says 0), KL(uniform over the kept classes 1-9 || class
histogram), FD_clf and KID_clf (Frechet / kernel inception distance in the classifier's penultimate features
against the digits8 training split without class 0; Inception weights cannot be had offline, so these are not
FID / KID in the Inception sense). Writes benchmarks/results/<prefix>.json (a list of rows),
<prefix>_summary.json (matched comparisons at <= 1 % forbidden), <prefix>.md (tables) and
<prefix>_kl.png / <prefix>_fd.png (safety against KL / FD_clf, one panel per sampler).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.dng_defaults import dng_node_defaults  # noqa: E402
from benchmarks.common import (FEATURE_NOTE, RESULTS, SLD_PAPER, Bench, Scorer, digit_prompt,  # noqa: E402
                               environment, ensure_results_dir, interpolate_at, log, progress, trace_summary,
                               weakest_safe)

# DNG's posterior settings for this model, chosen by the tuning pass (``--tune``, removal_tuning.json; see
# docs/posterior_estimator.md). The paper's MNIST setting is prior 0.25, tau 0.25, delta 0.
DNG_SETTINGS: dict[str, Any] = {"prior": 0.01, "temperature": 4.0, "offset": 0.0, "p_max": 0.8}
# Per-estimator temperatures (the estimators weight the steps differently; the tuning pass found tau = 4 good
# for both at prior 0.01, p_max 0.8).
DNG_TEMPERATURE: dict[str, float] = {"kernel": 4.0, "step": 4.0, "auto": 4.0}

FULL = {
    "n": 1000, "steps": 20, "samplers": ["euler_ancestral", "euler"], "estimators": ["kernel", "step"],
    # lambda0 per "sampler:estimator" (the estimators and samplers need different lambda0 for the same safety;
    # ranges from the tuning pass), "default" for any other sampler
    "dng": {"euler_ancestral:kernel": [1.0, 2.0, 5.0, 10.0, 20.0],
            "euler_ancestral:step": [0.1, 0.2, 0.4, 0.8, 1.6],
            "euler:kernel": [5.0, 10.0, 20.0, 40.0, 80.0],
            "euler:step": [2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0],
            "dpmpp_2m:kernel": [5.0, 10.0, 20.0, 40.0, 80.0, 160.0],
            "dpmpp_2m:step": [5.0, 10.0, 20.0, 40.0, 80.0, 160.0],
            "default": [1.0, 2.0, 5.0, 10.0, 20.0, 40.0]},
    "np": [0.2, 0.3, 0.4, 0.5, 0.6, 0.75],
    # s_g: at N = 300 s_g 0.5 left 1.7 % forbidden and s_g 2 already had KL 0.3-0.5 (euler / euler_ancestral)
    "sld": [0.2, 0.35, 0.5, 0.75, 1.0, 1.5],
}
CI_ESTIMATOR = "auto"  # the node default (= kernel on euler_ancestral)


def node_defaults() -> dict[str, Any]:
    """Every DNG node input at its default except lambda0 and the estimator (each point names its own)."""
    return {k: v for k, v in dng_node_defaults().items() if k not in ("lambda0", "posterior_variance")}


def default_lambda0() -> float:
    return float(dng_node_defaults()["lambda0"])


CI = {
    "n": 500, "steps": 20, "samplers": ["euler_ancestral"], "estimators": [CI_ESTIMATOR],
    # DNG at the node defaults (the setting the defaults grid chose for every sampler and step count)
    "dng": [default_lambda0()],
    "dng_settings": node_defaults(),
    "np": [0.3, 0.4, 0.5, 0.6],
    "sld": [],
}
MAX_FORBIDDEN = 1.0  # "high safety": at most 1 % of the samples in the removed class
METHOD_LABEL = {"plain": "plain", "dng:kernel": "DNG (kernel)", "dng:step": "DNG (step)", "np": "NP", "sld": "SLD"}


def series_key(row: dict) -> str:
    return f"dng:{row['estimator']}" if row["method"] == "dng" else row["method"]


# ------------------------------------------------------------------------------------------------------------
# One point


def point_prompt(method: str, sampler: str, steps: int, n: int, seed: int, scale: float,
                 estimator: str | None = None, dng: dict | None = None) -> dict:
    if method == "plain":
        return digit_prompt(method="plain", batch_size=n, seed=seed, steps=steps, sampler=sampler)
    if method == "dng":
        params = {**DNG_SETTINGS, "temperature": DNG_TEMPERATURE[estimator], **(dng or {}),
                  "posterior_variance": estimator, "lambda0": float(scale)}
        return digit_prompt(method="dng", batch_size=n, seed=seed, steps=steps, sampler=sampler, **params)
    if method == "np":
        return digit_prompt(method="np", batch_size=n, seed=seed, steps=steps, sampler=sampler, scale=float(scale))
    if method == "sld":  # the strength of SLD is s_g, the KSampler cfg (the prompt term is 0 with positive = empty)
        return digit_prompt(method="sld", batch_size=n, seed=seed, steps=steps, sampler=sampler, cfg=float(scale))
    raise ValueError(f"unknown method {method!r}")


def run_point(bench: Bench, scorer: Scorer, method: str, sampler: str, steps: int, n: int, seed: int,
              scale: float, estimator: str | None = None, dng: dict | None = None, keep_samples: bool = False) -> dict:
    prompt = point_prompt(method, sampler, steps, n, seed, scale, estimator, dng)
    out = bench.run(prompt)
    row: dict[str, Any] = {"method": method, "sampler": sampler, "steps": steps, "scale": float(scale), "n": n,
                           "seed": seed, "estimator": estimator if method == "dng" else None}
    row.update(scorer.score(out.samples))
    row["seconds"] = round(out.seconds, 2)
    if method == "dng":
        row["dng_params"] = {k: v for k, v in prompt["10"]["inputs"].items() if k not in ("model", "empty_conditioning")}
    elif method == "sld":
        row["sld_params"] = {k: v for k, v in SLD_PAPER.items()}
    summary = trace_summary(out.trace)
    if summary:
        row["final_lambda_mean"] = summary["final_lambda_mean"]
        row["max_lambda_mean"] = summary["max_lambda_mean"]
        row["lambda_mean_per_step"] = [round(v, 5) for v in summary["lambda_mean_per_step"]]
        if "p_mean_per_step" in summary:
            row["p_mean_per_step"] = [round(v, 5) for v in summary["p_mean_per_step"]]
        row["trace_samples"] = summary["trace_samples"]
    if keep_samples:
        row["_samples"] = out.samples
    return row


def find_row(rows: Sequence[dict], method: str, sampler: str, steps: int, n: int, seed: int, scale: float,
             estimator: str | None = None, dng: dict | None = None) -> dict | None:
    """The row of an earlier run of exactly this point (same patch-node inputs), for ``--resume``."""
    prompt = point_prompt(method, sampler, steps, n, seed, scale, estimator, dng)
    params = ({k: v for k, v in prompt["10"]["inputs"].items() if k not in ("model", "empty_conditioning")}
              if method == "dng" else None)
    for r in rows:
        if ((r["method"], r["sampler"], r["steps"], r["n"], r.get("seed"), r["scale"]) == (method, sampler, steps, n,
                                                                                           seed, float(scale))
                and r.get("estimator") == (estimator if method == "dng" else None)
                and (params is None or r.get("dng_params") == params)):
            return dict(r)
    return None


def dng_scales(config: dict, sampler: str, estimator: str) -> list[float]:
    grid = config["dng"]
    if isinstance(grid, dict):
        return list(grid.get(f"{sampler}:{estimator}", grid["default"]))
    return list(grid)


def sweep_points(config: dict, methods: Sequence[str]) -> list[tuple[str, str, str | None, float]]:
    """(sampler, method, estimator, scale) for every point of the sweep."""
    pts = []
    for sampler in config["samplers"]:
        if "plain" in methods:
            pts.append((sampler, "plain", None, 0.0))
        if "dng" in methods:
            for est in config["estimators"]:
                pts += [(sampler, "dng", est, s) for s in dng_scales(config, sampler, est)]
        if "np" in methods:
            pts += [(sampler, "np", None, s) for s in config["np"]]
        if "sld" in methods:
            pts += [(sampler, "sld", None, s) for s in config["sld"]]
    return pts


# ------------------------------------------------------------------------------------------------------------
# Matched comparison at equal safety


def matched(rows: Sequence[dict], max_forbidden: float = MAX_FORBIDDEN) -> dict:
    """Per sampler and series: the weakest point with forbidden <= max_forbidden (else the safest point), and KL /
    FD_clf / KID_clf interpolated along the sweep at forbidden = max_forbidden; then DNG / baseline ratios."""
    out: dict[str, Any] = {}
    for sampler in sorted({r["sampler"] for r in rows}):
        per: dict[str, Any] = {}
        for key in sorted({series_key(r) for r in rows if r["sampler"] == sampler and r["method"] != "plain"}):
            series = [r for r in rows if r["sampler"] == sampler and series_key(r) == key]
            pick, met = weakest_safe(series, max_forbidden)
            per[key] = {
                "point": {k: pick[k] for k in ("scale", "forbidden_pct", "kl", "kl_se", "fd_clf", "kid_clf")},
                "reaches_target": met,
                "interp_at_target": {m: interpolate_at(series, max_forbidden, m) for m in ("kl", "fd_clf", "kid_clf")},
            }
        ratios: dict[str, Any] = {}
        for dkey in [k for k in per if k.startswith("dng:")]:
            for base in ("np", "sld"):
                if base not in per:
                    continue
                d, b = per[dkey], per[base]
                ratios[f"{dkey}/{base}"] = {
                    "kl_point": _ratio(d["point"]["kl"], b["point"]["kl"]),
                    "fd_point": _ratio(d["point"]["fd_clf"], b["point"]["fd_clf"]),
                    "kl_interp": _ratio(d["interp_at_target"]["kl"], b["interp_at_target"]["kl"]),
                    "fd_interp": _ratio(d["interp_at_target"]["fd_clf"], b["interp_at_target"]["fd_clf"]),
                    "both_reach_target": d["reaches_target"] and b["reaches_target"],
                }
                r = ratios[f"{dkey}/{base}"]
                r["target_met_point"] = (r["both_reach_target"] and r["kl_point"] is not None
                                         and r["kl_point"] <= 0.5 and r["fd_point"] <= 0.5)
        out[sampler] = {"series": per, "ratios": ratios}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a / b)


# ------------------------------------------------------------------------------------------------------------
# Outputs


def write_markdown(path: Path, rows: Sequence[dict], summary: dict, meta: dict) -> None:
    lines = ["# Class removal on the digits8 reference model (remove digit 0)", "",
             f"Host: ComfyUI {meta['env'].get('comfyui', '0.3.75')}.  ",
             f"Command: `{meta['command']}`  ", f"N = {meta['n']} samples per point, {meta['steps']} steps, "
             f"scheduler normal, seed {meta['seed']}; runtime {meta['runtime_s'] / 60:.1f} min on "
             f"{meta['env']['threads']} thread(s){' (' + meta['runtime_note'] + ')' if 'runtime_note' in meta else ''}.  ",
             f"DNG posterior settings: {json.dumps(meta['dng_settings'])}; per-estimator temperature "
             f"{json.dumps(meta['dng_temperature'])}.  ",
             f"SLD: the paper's class-removal setting {json.dumps(SLD_PAPER)}; scale = KSampler cfg = s_g.  ",
             f"{FEATURE_NOTE}  ",
             f"Data floor: FD_clf(held-out without 0, train without 0) = {meta['floor']['fd_clf_heldout']:.3f}, "
             f"KID_clf = {meta['floor']['kid_clf_heldout']:.4f}.  ",
             "KL = KL(uniform over 1-9 || class histogram), nats; kl_se: bootstrap standard error. final lambda: mean "
             "applied scale at the last step over the first 64 samples (the trace keeps 64).", ""]
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        lines += [f"## {sampler}", "",
                  "| method | estimator | scale | forbidden % | KL | KL se | FD_clf | KID_clf | final lambda | hist (0..9) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in [r for r in rows if r["sampler"] == sampler]:
            lam = r.get("final_lambda_mean")
            lines.append(
                f"| {r['method']} | {r['estimator'] or ''} | {r['scale']:g} | {r['forbidden_pct']:.1f} | {r['kl']:.3f} | "
                f"{r['kl_se']:.3f} | {r['fd_clf']:.2f} | {r['kid_clf']:.3f} | "
                f"{'' if lam is None else f'{lam:.3g}'} | {' '.join(f'{h:.2f}' for h in r['hist'])} |")
        s = summary.get(sampler)
        if s:
            lines += ["", f"Matched at <= {MAX_FORBIDDEN:g} % forbidden (weakest point reaching it; 'interp': "
                      "linear interpolation along the sweep at exactly that %):", "",
                      "| series | scale | forbidden % | KL | FD_clf | KID_clf | KL interp | FD interp |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for key, v in s["series"].items():
                p, i = v["point"], v["interp_at_target"]
                flag = "" if v["reaches_target"] else " (never <= target: safest point)"
                lines.append(f"| {METHOD_LABEL.get(key, key)}{flag} | {p['scale']:g} | {p['forbidden_pct']:.1f} | "
                             f"{p['kl']:.3f} | {p['fd_clf']:.2f} | {p['kid_clf']:.3f} | {_fmt(i['kl'], 3)} | "
                             f"{_fmt(i['fd_clf'], 2)} |")
            if s["ratios"]:
                lines += ["", "| DNG / baseline | KL ratio | FD ratio | KL ratio (interp) | FD ratio (interp) | "
                          "target (<= 0.5 both) |", "|---|---:|---:|---:|---:|---|"]
                for key, v in s["ratios"].items():
                    lines.append(f"| {key} | {_fmt(v['kl_point'], 2)} | {_fmt(v['fd_point'], 2)} | "
                                 f"{_fmt(v['kl_interp'], 2)} | {_fmt(v['fd_interp'], 2)} | "
                                 f"{'met' if v['target_met_point'] else 'not met'} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def plot(path: Path, rows: Sequence[dict], metric: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    fig, axes = plt.subplots(1, len(samplers), figsize=(5.5 * len(samplers), 4.2), squeeze=False)
    styles = {"dng:kernel": ("C0", "o-"), "dng:step": ("C2", "s-"), "np": ("C3", "^-"), "sld": ("C1", "v-")}
    for ax, sampler in zip(axes[0], samplers):
        rs = [r for r in rows if r["sampler"] == sampler]
        for key, (color, style) in styles.items():
            series = sorted([r for r in rs if series_key(r) == key], key=lambda r: r["scale"])
            if not series:
                continue
            xs = [r["forbidden_pct"] for r in series]
            ax.plot(xs, [r[metric] for r in series], style, color=color, label=METHOD_LABEL[key])
            for r, x in zip(series, xs):
                ax.annotate(f"{r['scale']:g}", (x, r[metric]), fontsize=7, color=color, xytext=(3, 3),
                            textcoords="offset points")
        for r in [r for r in rs if r["method"] == "plain"]:
            ax.plot([r["forbidden_pct"]], [r[metric]], "k*", markersize=11, label="plain")
        ax.axvline(MAX_FORBIDDEN, color="grey", lw=0.8, ls="--")
        ax.set_xscale("symlog", linthresh=1.0, linscale=1.0)
        ticks = [0, 0.5, 1, 2, 5, 10, 20, 50]
        top = max(r["forbidden_pct"] for r in rs)
        ax.set_xticks([t for t in ticks if t <= max(top * 1.5, 2)])
        ax.set_xticklabels([f"{t:g}" for t in ticks if t <= max(top * 1.5, 2)])
        ax.set_xlim(-0.05, top * 1.3 + 0.1)
        ax.set_xlabel("forbidden % (classifier says 0; linear below 1 %, log above)")
        ax.set_ylabel(label)
        ax.set_title(f"{sampler}, {rs[0]['steps']} steps, N = {rs[0]['n']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Removing digit 0 from the digits8 reference model: safety vs {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------
# Tuning pass for DNG's posterior settings


TUNE_GRID = [  # (prior, temperature, p_max); the paper's MNIST setting first
    (0.25, 0.25, 0.99), (0.25, 1.0, 0.99), (0.05, 1.0, 0.99), (0.05, 4.0, 0.99), (0.01, 4.0, 0.99),
    (0.01, 16.0, 0.99),
]


def tune(bench: Bench, scorer: Scorer, samplers: Sequence[str], estimators: Sequence[str], n: int, steps: int,
         seed: int, grid: Sequence[tuple[float, float, float]], max_runs: int = 4,
         partial: Path | None = None) -> list[dict]:
    """For each setting, search lambda0 (x2.5 up or down from 5) until forbidden % crosses MAX_FORBIDDEN, and
    interpolate KL / FD_clf there. Returns one row per run (with the setting) for removal_tuning.json."""
    rows: list[dict] = []
    jobs = [(s, e, g) for s in samplers for e in estimators for g in grid]
    for sampler, est, (prior, tau, p_max) in progress(jobs, desc="tuning settings"):
        dng = {"prior": prior, "temperature": tau, "offset": 0.0, "p_max": p_max}
        done: list[dict] = []
        lam = 5.0
        for _ in range(max_runs):
            r = run_point(bench, scorer, "dng", sampler, steps, n, seed, lam, est, dng)
            r["setting"] = dng
            done.append(r)
            rows.append(r)
            if partial is not None:
                partial.write_text(json.dumps(rows, indent=1))
            log(f"tune {sampler} {est} prior={prior} tau={tau} p_max={p_max} lambda0={lam:g}: "
                f"forbidden {r['forbidden_pct']:.1f} % KL {r['kl']:.3f} FD {r['fd_clf']:.2f} ({r['seconds']:.0f} s)")
            above = [d for d in done if d["forbidden_pct"] > MAX_FORBIDDEN]
            below = [d for d in done if d["forbidden_pct"] <= MAX_FORBIDDEN]
            if above and below:
                break
            lam = lam * 2.5 if not below else lam / 2.5
    return rows


def tuning_table(rows: Sequence[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["sampler"], r["estimator"], json.dumps(r["setting"], sort_keys=True)) for r in rows})
    for sampler, est, setting in keys:
        series = [r for r in rows if (r["sampler"], r["estimator"], json.dumps(r["setting"], sort_keys=True))
                  == (sampler, est, setting)]
        pick, met = weakest_safe(series)
        out.append({"sampler": sampler, "estimator": est, "setting": json.loads(setting),
                    "kl_at_1pct": interpolate_at(series, MAX_FORBIDDEN, "kl"),
                    "fd_at_1pct": interpolate_at(series, MAX_FORBIDDEN, "fd_clf"),
                    "weakest_safe": {k: pick[k] for k in ("scale", "forbidden_pct", "kl", "fd_clf")},
                    "reaches_target": met})
    return out


# ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ci", action="store_true", help="CI size (N 500, fewer points); writes removal_ci.*")
    ap.add_argument("--tune", action="store_true", help="the DNG tuning pass; writes removal_tuning.json")
    ap.add_argument("--grid", nargs="+", metavar="PRIOR,TAU,PMAX",
                    help="--tune only: settings to try (default: TUNE_GRID), e.g. 0.05,1.0,0.99")
    ap.add_argument("--n", type=int, help="samples per point (full 1000, --ci 500)")
    ap.add_argument("--steps", type=int, help="sampler steps (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers", nargs="+", help="default: euler_ancestral euler (--ci: euler_ancestral)")
    ap.add_argument("--estimators", nargs="+", choices=["kernel", "step", "auto"],
                    help="DNG posterior_variance values (auto = kernel for euler_ancestral, step for euler)")
    ap.add_argument("--methods", nargs="+", default=["plain", "dng", "np", "sld"],
                    choices=["plain", "dng", "np", "sld"])
    ap.add_argument("--dng", type=float, nargs="+", help="lambda0 values")
    ap.add_argument("--prior", type=float, help="override DNG's prior (default DNG_SETTINGS)")
    ap.add_argument("--temperature", type=float, help="override DNG's temperature (all estimators)")
    ap.add_argument("--p-max", type=float, help="override DNG's p_max")
    ap.add_argument("--np", type=float, nargs="+", help="NP scales")
    ap.add_argument("--sld", type=float, nargs="+", help="SLD s_g (KSampler cfg) values")
    ap.add_argument("--out-prefix", help="output file prefix in benchmarks/results (default removal / removal_ci)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--resume", action="store_true",
                    help="reuse the rows already in <out-prefix>.json whose point (sampler, method, estimator, "
                         "scale, N, steps, seed and the patch node's inputs) is unchanged; run only the rest")
    ap.add_argument("--merge", nargs="+", metavar="PREFIX",
                    help="no sampling: merge the rows of earlier runs (e.g. one per sampler, run in parallel) "
                         "into <out-prefix>.json and redo the summary, tables and plots")
    args = ap.parse_args(argv)

    for key, name in (("prior", "prior"), ("p_max", "p_max")):
        if getattr(args, key) is not None:
            DNG_SETTINGS[name] = getattr(args, key)
    if args.temperature is not None:
        DNG_TEMPERATURE.update({k: args.temperature for k in DNG_TEMPERATURE})
    config = dict(CI if args.ci else FULL)
    for key in ("n", "steps", "samplers", "estimators", "dng", "np", "sld"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    prefix = args.out_prefix or ("removal_tuning" if args.tune else "removal_ci" if args.ci else "removal")
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True) if out_dir != RESULTS else ensure_results_dir()
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/removal.py " + " ".join(sys.argv[1:] if argv is None else argv)

    if args.merge:
        return merge(args.merge, prefix, out_dir, command)

    t0 = time.perf_counter()
    bench = Bench()
    scorer = Scorer(removed=0)
    log(f"host + pack loaded in {bench.setup_seconds:.1f} s")

    if args.tune:
        grid = ([tuple(float(v) for v in g.split(",")) for g in args.grid] if args.grid else TUNE_GRID)
        rows = tune(bench, scorer, config["samplers"], config["estimators"], config["n"], config["steps"], args.seed,
                    grid, partial=out_dir / f"{prefix}_partial.json")
        table = tuning_table(rows)
        (out_dir / f"{prefix}.json").write_text(json.dumps(
            {"command": command, "n": config["n"], "steps": config["steps"], "seed": args.seed, "grid": grid,
             "protocol": "per setting: lambda0 from 5, x2.5 up or down until forbidden % crosses 1 %; KL / FD_clf "
                         "interpolated at 1 %", "table": table, "rows": rows,
             "runtime_s": round(time.perf_counter() - t0, 1), "env": environment()}, indent=1))
        for t in table:
            log(f"{t['sampler']} {t['estimator']} {t['setting']}: KL@1% {_fmt(t['kl_at_1pct'], 3)} "
                f"FD@1% {_fmt(t['fd_at_1pct'], 2)} weakest safe {t['weakest_safe']}")
        return 0

    rows: list[dict] = []
    json_path = out_dir / f"{prefix}.json"
    earlier = json.loads(json_path.read_text()) if args.resume and json_path.is_file() else []
    reused = 0
    for sampler, method, est, scale in progress(sweep_points(config, args.methods), desc="removal points"):
        r = find_row(earlier, method, sampler, config["steps"], config["n"], args.seed, scale, est,
                     config.get("dng_settings"))
        if r is not None:
            reused += 1
            r["reused"] = True
        else:
            r = run_point(bench, scorer, method, sampler, config["steps"], config["n"], args.seed, scale, est,
                          config.get("dng_settings"))
        rows.append(r)
        log(f"{sampler} {method}{':' + est if est else ''} scale={scale:g}: forbidden {r['forbidden_pct']:.1f} % "
            f"KL {r['kl']:.3f} FD {r['fd_clf']:.2f} KID {r['kid_clf']:.3f} ({r['seconds']:.0f} s)"
            + (" [reused]" if r.get("reused") else ""))
        json_path.write_text(json.dumps(rows, indent=1))  # partial results survive an interruption
    if reused:
        log(f"reused {reused} of {len(rows)} points from the earlier {json_path.name}")

    meta = {"command": command, "n": config["n"], "steps": config["steps"], "seed": args.seed,
            "runtime_s": round(time.perf_counter() - t0, 1), "env": environment(), "floor": scorer.floor(),
            "dng_settings": DNG_SETTINGS, "dng_temperature": DNG_TEMPERATURE, "feature_note": FEATURE_NOTE,
            "max_forbidden_pct": MAX_FORBIDDEN}
    summary = write_outputs(rows, meta, prefix, out_dir)
    for sampler, s in summary.items():
        for key, v in s["ratios"].items():
            log(f"{sampler} {key}: KL ratio {_fmt(v['kl_point'], 2)} FD ratio {_fmt(v['fd_point'], 2)} "
                f"(interp {_fmt(v['kl_interp'], 2)} / {_fmt(v['fd_interp'], 2)})")
    return 0


def write_outputs(rows: list[dict], meta: dict, prefix: str, out_dir: Path) -> dict:
    summary = matched(rows)
    (out_dir / f"{prefix}.json").write_text(json.dumps(rows, indent=1))
    (out_dir / f"{prefix}_summary.json").write_text(json.dumps({"meta": meta, "matched": summary}, indent=1))
    write_markdown(out_dir / f"{prefix}.md", rows, summary, meta)
    plot(out_dir / f"{prefix}_kl.png", rows, "kl", "KL(uniform 1-9 || histogram)")
    plot(out_dir / f"{prefix}_fd.png", rows, "fd_clf", "FD_clf (classifier features)")
    log(f"wrote {prefix}.json, {prefix}_summary.json, {prefix}.md, {prefix}_kl.png, {prefix}_fd.png in {out_dir} "
        f"(runtime {meta['runtime_s'] / 60:.1f} min)")
    return summary


def merge(parts: Sequence[str], prefix: str, out_dir: Path, command: str) -> int:
    rows: list[dict] = []
    metas = []
    for part in parts:
        rows += json.loads((out_dir / f"{part}.json").read_text())
        metas.append(json.loads((out_dir / f"{part}_summary.json").read_text())["meta"])
    meta = dict(metas[0])
    meta["command"] = " && ".join([m["command"] for m in metas] + [command])
    meta["runtime_s"] = round(sum(m["runtime_s"] for m in metas), 1)
    meta["merged_from"] = list(parts)
    meta["runtime_note"] = "sum of the merged runs' runtimes (they may have run in parallel)"
    write_outputs(rows, meta, prefix, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
