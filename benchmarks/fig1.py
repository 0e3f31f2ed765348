"""Paper Fig. 1 on Gaussian mixtures with exact denoisers: CFG towards the complement, DNG with the exact and the
tracked posterior, and negative prompting, sampled with euler_ancestral (eta = 1).

    .venv/bin/python benchmarks/fig1.py                # 1-D and 2-D, 20,000 samples, 256 steps, seed 0
    .venv/bin/python benchmarks/fig1.py --no-2d --n 5000

Writes benchmarks/results/fig1.json, fig1.png (1-D histograms) and fig1_2d.png (2-D histograms). The mixtures,
sampler and methods are those of tests/core/test_fig1.py (shared helpers in devtools/toy_mixture.py); the test
docstring explains the metric, the noise floor and the settings of the tracked run.

Top-level keys of fig1.json are the 1-D toy (the paper's figure); "toys" holds both toys in full, and "diagnostics"
the runs that locate the gap of the tracked posterior (true prior, more steps, exact-transition filter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from devtools.toy_mixture import (SIGMA_MAX, SIGMA_MIN, TOY_1D, TOY_2D, TRACKED_P_MAX, TRACKED_P_MIN,  # noqa: E402
                                    TRACKED_PRIOR, Fig1Result, Toy, dng_tracked_config, fig1_sigmas,
                                    kept_relative_weights, mode_fractions, run_dng_exact_filter, run_dng_tracked,
                                    run_fig1, tracked_posterior_error)

METHODS = ("cfg_complement", "dng_exact", "dng_tracked", "np")
TITLES = {"cfg_complement": "CFG towards the complement (scale 1)", "dng_exact": "DNG, exact posterior (lambda0 = 1)",
          "dng_tracked": f"DNG, tracked posterior (DNGRun, p0 = {TRACKED_PRIOR})", "np": "Negative prompting (scale 1)"}
METRIC = {1: "wasserstein1 (1-D, vs an exact target sample of the same size)",
          2: "sliced wasserstein1 (64 evenly spread directions, vs an exact target sample of the same size)"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def summarise(res: Fig1Result) -> dict:
    toy = res.toy
    out: dict = {m: res.distance(m) for m in METHODS}
    out.update({
        "metric": METRIC[toy.mixture.dim],
        "noise_floor": res.floor_mean,
        "noise_floor_pairs": res.floor,
        "distance_in_floors": {m: res.distance(m) / res.floor_mean for m in METHODS},
        "forbidden_mass_tracked": res.forbidden_mass("dng_tracked"),
        "forbidden_mass": {m: res.forbidden_mass(m) for m in METHODS},
        "forbidden_mass_exact_target_sample": float(mode_fractions(toy.mixture, res.reference)[toy.removed]),
        "kept_relative_weights": {m: res.kept_weights(m).tolist() for m in METHODS},
        "target_kept_weights": toy.target.weights.tolist(),
        "far_samples_abs_gt_8": {m: int((res.samples[m].abs() > 8).any(1).sum()) for m in METHODS},
        "dng_exact_capped_evaluations": res.extra["dng_exact"]["capped_evaluations"],
        "dng_tracked_posterior_updates": res.extra["dng_tracked"]["posterior_updates"],
        "mixture": {"means": toy.mixture.means.tolist(), "stds": toy.mixture.stds.tolist(),
                    "weights": toy.mixture.weights.tolist(), "removed": toy.removed},
    })
    return out


def diagnostics(toy: Toy, n: int, steps: int, seed: int, full: bool) -> dict:
    """Forbidden mass of variants of the tracked run: where does its gap to (b) come from?"""
    out: dict = {}
    gen = lambda k: torch.Generator().manual_seed(1000 * seed + k)  # noqa: E731
    sig = fig1_sigmas(steps)
    log(f"{toy.name}: diagnostics: tracked run with the true prior {toy.prior}")
    res = run_dng_tracked(toy, n, sig, gen(5), dng_tracked_config(prior=toy.prior))
    out[f"forbidden_tracked_true_prior_{steps}_steps"] = float(mode_fractions(toy.mixture, res.samples)[toy.removed])
    log(f"{toy.name}: diagnostics: exact-transition filter in the same loop")
    res = run_dng_exact_filter(toy, n, sig, gen(5))
    out[f"forbidden_exact_transition_filter_{steps}_steps"] = float(
        mode_fractions(toy.mixture, res.samples)[toy.removed])
    if full:
        for more in (4 * steps,):
            log(f"{toy.name}: diagnostics: tracked run with the true prior, {more} steps")
            res = run_dng_tracked(toy, n, fig1_sigmas(more), gen(5), dng_tracked_config(prior=toy.prior))
            out[f"forbidden_tracked_true_prior_{more}_steps"] = float(
                mode_fractions(toy.mixture, res.samples)[toy.removed])
        for side in (0, 2):
            other = Toy(f"{toy.name}_remove_{side}", toy.mixture, side)
            for prior in (other.prior, TRACKED_PRIOR):
                log(f"{toy.name}: diagnostics: side mode {side} removed instead, tracked, prior {prior}")
                res = run_dng_tracked(other, n, sig, gen(5), dng_tracked_config(prior=prior))
                out[f"side_mode_{side}_removed_tracked_prior_{prior:g}"] = {
                    "forbidden": float(mode_fractions(other.mixture, res.samples)[side]),
                    "kept_relative_weights": kept_relative_weights(other, res.samples).tolist(),
                    "target_kept_weights": other.target.weights.tolist()}
        log(f"{toy.name}: diagnostics: tracked posterior error on unguided paths vs steps")
        out["mean_abs_p_error_unguided_vs_steps"] = {
            str(k): tracked_posterior_error(toy, min(n, 4000), fig1_sigmas(k), gen(11)) for k in (64, 256, 1024)}
    return out


def plot_1d(res: Fig1Result, path: Path) -> None:
    toy = res.toy
    every = np.concatenate([res.reference.numpy()[:, 0]] + [res.samples[m].numpy()[:, 0] for m in METHODS])
    lo, hi = np.percentile(every, 0.02) - 0.5, np.percentile(every, 99.98) + 0.5  # NP's modes move far out
    bins = np.linspace(lo, hi, 161)
    grid = np.linspace(lo, hi, 600)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), sharey=True)
    for ax, m in zip(axes, METHODS):
        s = res.samples[m].numpy()[:, 0]
        inside = s[(s >= lo) & (s <= hi)]
        ax.hist(inside, bins=bins, density=False, weights=np.full(inside.shape, 1.0 / (len(s) * (bins[1] - bins[0]))),
                color="tab:blue", alpha=0.6, label="samples")
        ax.plot(grid, toy.target.density_1d(grid), color="tab:green", lw=1.5, label="target")
        ax.plot(grid, toy.mixture.density_1d(grid), color="gray", lw=1, ls=":", label="unguided")
        ax.axvline(float(toy.mixture.means[toy.removed, 0]), color="tab:red", lw=1, ls="--", label="removed mode")
        outside = f", {100 * (1 - len(inside) / len(s)):.2f} % off the plot" if len(inside) < len(s) else ""
        ax.set_title(f"{TITLES[m]}\nd = {res.distance(m):.3f} ({res.distance(m) / res.floor_mean:.1f} floors), "
                     f"removed-mode mass {100 * res.forbidden_mass(m):.2f} %{outside}", fontsize=8)
        ax.set_xlabel("x")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Fig. 1, 1-D: {res.n} samples, euler_ancestral (eta 1), {res.steps} Karras steps "
                 f"sigma {SIGMA_MAX:g} -> {SIGMA_MIN:g} -> 0; W1 noise floor {res.floor_mean:.3f}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_2d(res: Fig1Result, path: Path) -> None:
    toy = res.toy
    fig, axes = plt.subplots(1, 5, figsize=(21, 5.0))
    panels = [("target (exact samples)", res.reference)] + [(TITLES[m], res.samples[m]) for m in METHODS]
    lim = max(float(np.percentile(p[1].abs().numpy(), 99.9)) for p in panels) + 0.5
    for ax, (title, s) in zip(axes, panels):
        ax.hist2d(s[:, 0].numpy(), s[:, 1].numpy(), bins=120, range=[[-lim, lim], [-lim, lim]], cmap="Blues",
                  cmin=1)
        r = toy.mixture.means[toy.removed]
        ax.plot([float(r[0])], [float(r[1])], "x", color="tab:red", ms=10, mew=2)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        name = next((m for m in METHODS if TITLES[m] == title), None)
        if name is not None:
            title += (f"\nd = {res.distance(name):.3f} ({res.distance(name) / res.floor_mean:.1f} floors), "
                      f"removed {100 * res.forbidden_mass(name):.2f} %")
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"Fig. 1, 2-D (red x: removed mode): {res.n} samples, {res.steps} steps; sliced-W1 noise floor "
                 f"{res.floor_mean:.3f}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="samples per method (default 20000)")
    ap.add_argument("--steps", type=int, default=256, help="sampler steps (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-2d", action="store_true", help="only the 1-D toy")
    ap.add_argument("--no-diagnostics", action="store_true", help="skip the runs that explain the tracked gap")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    toys = [TOY_1D] + ([] if args.no_2d else [TOY_2D])
    summaries, diags = {}, {}
    for toy in toys:
        res = run_fig1(toy, n=args.n, steps=args.steps, seed=args.seed, progress=log)
        summaries[toy.name] = summarise(res)
        s = summaries[toy.name]
        log(f"{toy.name}: noise floor {s['noise_floor']:.4f}; " + "; ".join(
            f"{m} {s[m]:.4f} ({s['distance_in_floors'][m]:.1f} floors, removed-mode mass "
            f"{100 * s['forbidden_mass'][m]:.2f} %, kept {np.round(s['kept_relative_weights'][m], 4).tolist()})"
            for m in METHODS) + f"; target kept {np.round(s['target_kept_weights'], 4).tolist()}")
        png = args.out_dir / ("fig1.png" if toy.mixture.dim == 1 else "fig1_2d.png")
        (plot_1d if toy.mixture.dim == 1 else plot_2d)(res, png)
        log(f"{toy.name}: wrote {png}")
        if not args.no_diagnostics:
            diags[toy.name] = diagnostics(toy, args.n, args.steps, args.seed, full=toy.mixture.dim == 1)
            log(f"{toy.name}: diagnostics {json.dumps(diags[toy.name])}")

    first = summaries[TOY_1D.name]
    result = {
        **{k: first[k] for k in ("cfg_complement", "dng_exact", "dng_tracked", "np", "metric", "noise_floor",
                                 "forbidden_mass_tracked")},
        "toy": TOY_1D.name,
        "settings": {
            "n_samples": args.n, "steps": args.steps, "seed": args.seed, "sampler": "euler_ancestral, eta = 1 (VE)",
            "schedule": f"karras rho 7, sigma {SIGMA_MAX} -> {SIGMA_MIN}, then 0", "start": "x = sigma_max * z",
            "lambda0": 1.0, "np_scale": 1.0, "cfg_scale": 1.0,
            "tracked": {"prior": TRACKED_PRIOR, "temperature": 1.0, "offset": 0.0, "p_min": TRACKED_P_MIN,
                        "p_max": TRACKED_P_MAX},
            "noise_floor_pairs": len(first["noise_floor_pairs"]),
            "torch": torch.__version__, "dtype": "float64",
        },
        "toys": summaries,
        "diagnostics": diags,
        "elapsed_s": round(time.time() - t0, 1),
    }
    out = args.out_dir / "fig1.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out} in {result['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
