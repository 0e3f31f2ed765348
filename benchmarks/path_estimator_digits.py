"""Which posterior estimator tells, during unguided sampling, that a sample becomes the concept? On the trained
digits8 reference model (pure torch, no ComfyUI): N unconditional samples (seed 0) with euler (deterministic) and
euler_ancestral, 20 and 50 Karras steps (14.61 -> 0.0292, ComfyUI's range for this model), p tracked for the
concept "0" from the prior 0.1, scored at the end against the reference classifier's label of the sample:

* ``kernel``: the paper's Algorithm 2 (the ancestral reverse kernel's likelihood ratio);
* ``step``: the same with the variance (sigma - sigma')^2 (the pack's estimator for deterministic samplers);
* ``path``: the total derivative of log p(c | x, sigma) along the sampler's path (docs/step_invariance.md), with
  the divergence difference estimated by a finite-difference Hutchinson probe per step (Rademacher eps,
  h = 0.01 sigma; two extra predictions per step), trapezoid rule.

Figures: AUC of the final p for "is a 0", mean p over the samples that are 0s and over the others. A setting
that holds on every sampler needs p|0 of the same size on both samplers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/path_estimator_digits.py [N]     # ~2 min at N = 1000
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reference_model import NULL_LABEL, load_classifier, load_denoiser, weights_path  # noqa: E402
from reference_model.schedule import timestep_from_sigma  # noqa: E402

torch.set_num_threads(1)
net, cfg = load_denoiser(weights_path("digits8_unet")); net.eval()
clf, _ = load_classifier(weights_path("digits8_classifier")); clf.eval()
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
RESULTS = ROOT / "benchmarks" / "results"
CONCEPT = 0
PRIOR = 0.1

def denoise(x, s, label):
    t = timestep_from_sigma(torch.tensor([s])).expand(x.shape[0])
    x_vp = x / math.sqrt(1 + s * s)
    lab = torch.full((x.shape[0],), label, dtype=torch.long)
    with torch.no_grad():
        eps = net(x_vp, t, lab)
    return x - s * eps

def karras(n, smin, smax, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return [float(v) for v in s] + [0.0]

def auc(score, label):
    order = np.argsort(score); ranks = np.empty(len(score)); ranks[order] = np.arange(1, len(score) + 1)
    pos = label.sum(); neg = len(label) - pos
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))

def run(sampler, steps, probes=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    sig = karras(steps, 0.0292, 14.61)
    x = sig[0] * torch.randn(N, 1, 8, 8, generator=g)
    lp = {"kernel": torch.full((N,), math.log(PRIOR), dtype=torch.float64)}
    lp["step"] = lp["kernel"].clone(); lp["path"] = lp["kernel"].clone()
    def node(x, s):
        du, dc = denoise(x, s, NULL_LABEL), denoise(x, s, CONCEPT)
        h = 0.01 * s
        div = torch.zeros(N, dtype=torch.float64)
        for _ in range(probes):
            e = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).float()
            dd = (denoise(x + h * e, s, CONCEPT) - dc) - (denoise(x + h * e, s, NULL_LABEL) - du)
            div += (e * dd).flatten(1).sum(1).double() / h / probes
        a, b = (dc - x).flatten(1).double(), (du - x).flatten(1).double()
        gx = ((dc - du) / s ** 2).flatten(1).double()
        ds = ((a * a).sum(1) - (b * b).sum(1)) / s ** 3 + div / s
        return du, dc, gx, ds
    du, dc, gx0, ds0 = node(x, sig[0])
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        if sampler == "euler":
            xn = x + (sn - s) * (x - du) / s
        else:
            if sn == 0:
                xn = du.clone()
            else:
                r = sn ** 2 / s ** 2; v = (s ** 2 - sn ** 2) * sn ** 2 / s ** 2
                xn = r * x + (1 - r) * du + math.sqrt(v) * torch.randn(x.shape, generator=g)
        if sn == 0:
            x = xn; break
        r = sn ** 2 / s ** 2; v = (s ** 2 - sn ** 2) * sn ** 2 / s ** 2
        shift = ((1 - r) * (dc - du)).flatten(1).double(); res = (xn - r * x - (1 - r) * du).flatten(1).double()
        diff = (shift * shift).sum(1) - 2 * (res * shift).sum(1)
        lp["kernel"] = (lp["kernel"] - diff / (2 * v)).clamp(math.log(1e-6), 0)
        lp["step"] = (lp["step"] - diff / (2 * (s - sn) ** 2)).clamp(math.log(1e-6), 0)
        du_n, dc_n, gx1, ds1 = node(xn, sn)
        dx = (xn - x).flatten(1).double()
        lp["path"] = (lp["path"] + 0.5 * ((gx0 + gx1) * dx).sum(1) + (sn - s) * 0.5 * (ds0 + ds1)).clamp(math.log(1e-6), 0)
        x, du, dc, gx0, ds0 = xn, du_n, dc_n, gx1, ds1
    with torch.no_grad():
        label = (clf.predict(x.clamp(-1, 1)) == CONCEPT).numpy()
    out = {"zeros": float(label.mean())}
    for k, v in lp.items():
        p = v.exp().numpy()
        out[k] = (round(auc(p, label), 3), round(float(p.mean()), 3), round(float(p[label].mean()), 3), round(float(p[~label].mean()), 4))
    return out


def main() -> int:
    t0 = time.perf_counter()
    rows, lines = [], ["# Posterior estimators on the digits8 model: which one sees the 0s coming", "",
                       f"Host: none (pure torch, `benchmarks/path_estimator_digits.py`). N = {N}, seed 0, prior 0.1, "
                       "concept 0, unguided sampling. Cells: AUC of the final p for 'the sample is a 0' / mean p "
                       "over the 0s / mean p over the others.", "",
                       "| sampler | steps | probes | 0s | kernel | step | path |", "|---|---:|---:|---:|---|---|---|"]
    for sampler in ("euler", "euler_ancestral"):
        for steps in (20, 50):
            for probes in (1, 4):
                r = run(sampler, steps, probes)
                rows.append({"sampler": sampler, "steps": steps, "probes": probes, "n": N, "seed": 0, **{
                    k: ({"auc": v[0], "mean_p": v[1], "p_given_0": v[2], "p_given_other": v[3]} if k != "zeros" else v)
                    for k, v in r.items()}})
                cells = [f"{r[k][0]:.3f} / {r[k][2]:.3f} / {r[k][3]:.4f}" for k in ("kernel", "step", "path")]
                lines.append(f"| {sampler} | {steps} | {probes} | {r['zeros']:.3f} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "path_estimator_digits.json").write_text(json.dumps(
        {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/path_estimator_digits.py " + str(N), "host": None,
         "runtime_s": round(time.perf_counter() - t0, 1), "rows": rows}, indent=1) + "\n")
    (RESULTS / "path_estimator_digits.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
