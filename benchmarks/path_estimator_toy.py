"""How well each posterior estimator follows the exact p(c- | x_sigma) along a sampler's path, at 20 to 160 steps,
on the Gaussian-mixture toys with exact denoisers (devtools/toy_mixture.py; no ComfyUI). Groundwork for a
step-count- and sampler-independent DNG setting (docs/step_invariance.md).

Estimators, all integrating log p(c- | x) from its exact value at sigma_max:

* ``kernel``: the paper's Algorithm 2, the Gaussian reverse-kernel likelihood ratio of each step (exact in the
  limit for ancestral steps, whose x' is a draw from that kernel);
* ``path_exact_div``: the total derivative of log p(c- | x, sigma) along the path (docs/step_invariance.md),

      d log p = (D_c - D_u) . dx / sigma^2
                + dsigma [ (|D_c - x|^2 - |D_u - x|^2) / sigma^3 + (div D_c - div D_u) / sigma ],

  trapezoid rule over each step, with the toy's exact divergences: an identity, so this measures the
  discretisation alone;
* ``path_two_group``: the same with the divergence difference approximated from the two predictions and the
  tracked p alone, div D_c - div D_u ~ -(p / (1 - p)) |D_c - D_u|^2 / sigma^2 (the between-group spread of the
  partition {c-, not c-}, assuming equal spread inside both groups): what a host could compute without extra
  model calls.

Samplers: euler (deterministic, the probability-flow ODE) and euler_ancestral, unguided (the path is plain
sampling), Karras schedule 80 -> 0.03. Figures at the last sigma > 0: mean |p - p_exact|, the fraction of samples
on the same side of 0.5 as the exact posterior, and mean p against the exact mean.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/path_estimator_toy.py        # ~1 min; writes the results
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.toy_mixture import DTYPE, TOY_1D, TOY_2D, Toy, ancestral_step, karras_sigmas  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
N = 4000
STEPS = (20, 40, 80, 160)
SIGMA_MIN, SIGMA_MAX = 0.03, 80.0
ESTIMATORS = ("kernel", "path_exact_div", "path_two_group")


def _divergences(toy: Toy, x: torch.Tensor, sigma: float, d_u: torch.Tensor) -> torch.Tensor:
    """div D_c - div D_u exactly: a Gaussian component shrinks by c_k, the mixture adds its components' spread."""
    mix = toy.mixture
    w = mix.log_resp(x, sigma).exp()
    c = mix.shrink(sigma)
    comps = torch.stack([mix.component_denoiser(x, sigma, k) for k in range(mix.k)], 1)  # [N, K, d]
    div_u = mix.dim * (w * c).sum(1) + (w * ((comps - d_u[:, None]) ** 2).sum(2)).sum(1) / sigma ** 2
    return mix.dim * c[toy.removed] - div_u


def _slope(toy: Toy, x: torch.Tensor, sigma: float, log_p: torch.Tensor, estimator: str):
    """(d log p / dx, d log p / dsigma) at (x, sigma) for the path estimators."""
    pred = toy.predict(x, sigma)
    a, b = pred.d_neg - x, pred.d_uncond - x
    dsigma = ((a * a).sum(1) - (b * b).sum(1)) / sigma ** 3
    if estimator == "path_exact_div":
        dsigma = dsigma + _divergences(toy, x, sigma, pred.d_uncond) / sigma
    else:
        p = log_p.clamp(max=-1e-12).exp()
        dsigma = dsigma - (p / (1 - p)) * ((pred.d_neg - pred.d_uncond) ** 2).sum(1) / sigma ** 3
    return (pred.d_neg - pred.d_uncond) / sigma ** 2, dsigma


def kernel_evidence(x: torch.Tensor, x_next: torch.Tensor, d_neg: torch.Tensor, d_uncond: torch.Tensor,
                    sigma: float, sigma_next: float) -> torch.Tensor:
    """The paper's per-step evidence: the log-likelihood ratio of x_next under the concept's and the
    unconditional Gaussian reverse kernel of the step sigma -> sigma_next (VE state)."""
    r = sigma_next ** 2 / sigma ** 2
    v = (sigma ** 2 - sigma_next ** 2) * r
    shift = (1 - r) * (d_neg - d_uncond)
    residual = x_next - (r * x + (1 - r) * d_uncond)
    return -((shift * shift).sum(1) - 2 * (residual * shift).sum(1)) / (2 * v)


def path_increment(toy: Toy, x: torch.Tensor, x_next: torch.Tensor, sigma: float, sigma_next: float,
                   log_p: torch.Tensor, estimator: str) -> torch.Tensor:
    """The path identity over one step, trapezoid rule (``estimator``: path_exact_div or path_two_group)."""
    g0, d0 = _slope(toy, x, sigma, log_p, estimator)
    g1, d1 = _slope(toy, x_next, sigma_next, log_p, estimator)
    return 0.5 * ((g0 + g1) * (x_next - x)).sum(1) + (sigma_next - sigma) * 0.5 * (d0 + d1)


def run(toy: Toy, sampler: str, steps: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sig = [float(s) for s in karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)]
    x = sig[0] * torch.randn(N, toy.mixture.dim, generator=g, dtype=DTYPE)
    log_p = {e: toy.exact_log_posterior(x, sig[0]) for e in ESTIMATORS}
    for i in range(len(sig) - 2):  # the last step (to sigma = 0) carries no evidence for any of them
        s, sn = sig[i], sig[i + 1]
        pred = toy.predict(x, s)
        if sampler == "euler":
            xn = x + (sn - s) * (x - pred.d_uncond) / s
        else:
            xn = ancestral_step(x, pred.d_uncond, s, sn, g)
        log_p["kernel"] = log_p["kernel"] + kernel_evidence(x, xn, pred.d_neg, pred.d_uncond, s, sn)
        for e in ("path_exact_div", "path_two_group"):
            log_p[e] = log_p[e] + path_increment(toy, x, xn, s, sn, log_p[e], e)
        x = xn
    exact = toy.exact_log_posterior(x, sig[-2]).exp()
    out = {"toy": toy.name, "sampler": sampler, "steps": steps, "n": N, "seed": seed, "sigma_end": sig[-2],
           "exact_mean_p": float(exact.mean())}
    for e, lp in log_p.items():
        p = lp.clamp(max=0.0).exp()
        out[e] = {"mean_abs_err": float((p - exact).abs().mean()),
                  "side_agreement": float(((p > 0.5) == (exact > 0.5)).double().mean()),
                  "mean_p": float(p.mean())}
    return out


def main() -> int:
    t0 = time.perf_counter()
    rows = [run(toy, sampler, steps) for toy in (TOY_1D, TOY_2D) for sampler in ("euler", "euler_ancestral")
            for steps in STEPS]
    lines = ["# Posterior estimators along sampler paths on the exact toys", "",
             "Host: none (pure torch, `benchmarks/path_estimator_toy.py`). N = 4000, seed 0, Karras 80 -> 0.03; "
             "figures at the last sigma > 0. err: mean |p - p_exact|; side: samples on the exact posterior's side "
             "of 0.5; p: mean p (exact in the first column).", "",
             "| toy | sampler | steps | exact mean p | kernel err / side / p | path (exact div) err / side / p | "
             "path (two-group div) err / side / p |", "|---|---|---:|---:|---|---|---|"]
    for r in rows:
        cells = [f"{r[e]['mean_abs_err']:.2g} / {r[e]['side_agreement']:.3f} / {r[e]['mean_p']:.3f}"
                 for e in ESTIMATORS]
        lines.append(f"| {r['toy']} | {r['sampler']} | {r['steps']} | {r['exact_mean_p']:.3f} | " + " | ".join(cells)
                     + " |")
        print(lines[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "path_estimator_toy.json").write_text(json.dumps(
        {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/path_estimator_toy.py", "host": None,
         "runtime_s": round(time.perf_counter() - t0, 1), "rows": rows}, indent=1) + "\n")
    (RESULTS / "path_estimator_toy.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
