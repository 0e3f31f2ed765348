"""How much the paper's kernel estimator over-reads the evidence of a coarse ancestral step, on the exact toys.

The kernel likelihood ratio of one euler_ancestral step sigma -> sigma' (r = sigma' / sigma; in the VE state
x' = r^2 x + (1 - r^2) D + sigma' sqrt(1 - r^2) z) has, under the concept's own kernel, the expectation

    E[e] = coef^2 |D_c - D_u|^2 / (2 v) = (1 - r^2) |D_c - D_u|^2 / (2 r^2 sigma^2)

(coef = 1 - r^2, v = sigma'^2 (1 - r^2)). The reverse SDE's own information over the same noise levels (the
Girsanov rate: drift difference 2 (D_c - D_u) / sigma per unit sigma, diffusion 2 sigma) is
|D_c - D_u|^2 / sigma^2 * ln(1 / r). Their ratio,

    1 / kappa(r) = (1 - r^2) / (2 r^2 ln(1 / r))   (> 1 for r < 1, -> 1 as r -> 1),

is how much more a step of that size reads than the continuous process it discretises: 1.38x on the middle of
a 20-step Karras schedule (14.61 -> 0.0292, sigma 0.5-5), 1.13x at 50 steps. Multiplying each step's evidence by
kappa(r) makes the kernel's accumulated log-odds the same at any step count, to first order.

Measured here: euler_ancestral on the Gaussian-mixture toys (devtools/toy_mixture.py, exact denoisers), unguided,
Karras 80 -> 0.03, N = 4000, seed 0. Per estimator, the slope of its accumulated change of log-odds (start to
the last sigma > 0) regressed on the exact posterior's change (1 = reads the evidence at its true size), the mean
|p - p_exact| and the share of samples on the exact posterior's side of 0.5. Estimators: ``kernel`` (the paper's,
the pack's default on stochastic samplers), ``kernel x kappa``, and the path identity with the exact divergence
(benchmarks/path_estimator_toy.py). Not a change to the pack: what the next default could build on.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kernel_discretisation.py     # ~1 min; writes the results
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.path_estimator_toy import kernel_evidence, path_increment  # noqa: E402
from devtools.toy_mixture import DTYPE, TOY_1D, TOY_2D, Toy, ancestral_step, karras_sigmas  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
N = 4000
STEPS = (20, 50, 160)
SIGMA_MIN, SIGMA_MAX = 0.03, 80.0
ESTIMATORS = ("kernel", "kernel_kappa", "path_exact_div")


def kappa(r: float) -> float:
    """2 r^2 ln(1/r) / (1 - r^2): the continuous process's information over an ancestral step of ratio r =
    sigma' / sigma, relative to what the step's kernel likelihood ratio reads (module docstring)."""
    if not 0.0 < r < 1.0:
        raise ValueError(f"r must lie in (0, 1), got {r!r}")
    return 2.0 * r * r * math.log(1.0 / r) / (1.0 - r * r)


def schedule_kappa(steps: int, lo: float = 0.5, hi: float = 5.0, sigma_min: float = 0.0292,
                   sigma_max: float = 14.61) -> float:
    """1 / kappa averaged per e-fold over the steps starting in [lo, hi] of a Karras schedule (the digit models'
    range by default): how much the kernel over-reads there."""
    sig = [float(s) for s in karras_sigmas(steps, sigma_min, sigma_max)]
    num = den = 0.0
    for a, b in zip(sig[:-1], sig[1:]):
        if b > 0 and lo <= a <= hi:
            w = math.log(a / b)
            num += w / kappa(b / a)
            den += w
    return num / den


def run(toy: Toy, steps: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sig = [float(s) for s in karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)]
    x = sig[0] * torch.randn(N, toy.mixture.dim, generator=g, dtype=DTYPE)
    start = toy.exact_log_posterior(x, sig[0])
    log_p = {e: start.clone() for e in ESTIMATORS}
    for s, sn in zip(sig[:-2], sig[1:-1]):  # the last step (to sigma = 0) carries no evidence
        pred = toy.predict(x, s)
        xn = ancestral_step(x, pred.d_uncond, s, sn, g)
        e = kernel_evidence(x, xn, pred.d_neg, pred.d_uncond, s, sn)
        log_p["kernel"] = log_p["kernel"] + e
        log_p["kernel_kappa"] = log_p["kernel_kappa"] + kappa(sn / s) * e
        log_p["path_exact_div"] = log_p["path_exact_div"] + path_increment(
            toy, x, xn, s, sn, log_p["path_exact_div"], "path_exact_div")
        x = xn
    exact = toy.exact_log_posterior(x, sig[-2])
    change = exact - start
    out = {"toy": toy.name, "steps": steps, "n": N, "seed": seed}
    for name, lp in log_p.items():
        p, pe = lp.clamp(max=0.0).exp(), exact.exp()
        out[name] = {"slope": float(((lp - start) * change).sum() / (change * change).sum()),
                     "mean_abs_err": float((p - pe).abs().mean()),
                     "side_agreement": float(((p > 0.5) == (pe > 0.5)).double().mean())}
    return out


def main() -> int:
    t0 = time.perf_counter()
    rows = [run(toy, steps) for toy in (TOY_1D, TOY_2D) for steps in STEPS]
    over = {steps: schedule_kappa(steps) for steps in (20, 50)}
    lines = ["# The kernel estimator's over-reading of coarse ancestral steps, on the exact toys", "",
             "Host: none (pure torch, `benchmarks/kernel_discretisation.py`). euler_ancestral, unguided, N = 4000, "
             "seed 0, Karras 80 -> 0.03. slope: the estimator's accumulated change of log-odds regressed on the exact "
             "one (1 = true size); err: mean |p - p_exact| at the last sigma > 0; side: samples on the exact "
             "posterior's side of 0.5.", "",
             f"1 / kappa (over-reading per e-fold) on the digit models' schedule, sigma 0.5-5: {over[20]:.2f} at "
             f"20 steps, {over[50]:.2f} at 50.", "",
             "| toy | steps | kernel slope / err / side | kernel x kappa | path (exact div) |", "|---|---:|---|---|---|"]
    for r in rows:
        cells = [f"{r[e]['slope']:.3f} / {r[e]['mean_abs_err']:.3f} / {r[e]['side_agreement']:.3f}"
                 for e in ESTIMATORS]
        lines.append(f"| {r['toy']} | {r['steps']} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kernel_discretisation.json").write_text(json.dumps(
        {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kernel_discretisation.py", "host": None,
         "runtime_s": round(time.perf_counter() - t0, 1), "over_reading": over, "rows": rows}, indent=1) + "\n")
    (RESULTS / "kernel_discretisation.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
