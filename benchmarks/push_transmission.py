"""How far a push on the prediction at a given noise level moves the final image, on euler and euler_ancestral,
measured on the reference models (issue 11: the matched push's premise).

DNG scales its push on deterministic samplers by T(sigma) = 2 s / sqrt(s^2 + sigma^2) (``dng_core.transmission``),
the ratio of the linear-Gaussian model's gains on the reverse SDE and the probability-flow ODE, so that one lambda0
moves the final image equally far on both sampler classes. This benchmark measures that ratio on the trained models:
negative prompting (NP, a fixed push scale (D_neg - D_u)) applied on one window of steps only, the rest plain, by
splitting the run into KSamplerAdvanced segments (``common.split_at_steps``); each windowed run is compared with a
plain run split at the same steps (a split reseeds the ancestral noise of each segment). The measured ratio of the
two samplers' changes per window is set against T at the window's noise levels (s = the model's sigma_data, 1).

Unrelated case of the grid (positive 7 at cfg 2.5, concept 0), N 500, 20 normal steps. Change: mean |x - x_ref| per
pixel, +- its standard error over images.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/push_transmission.py --model mnist16 --seed 0   # ~15 min
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

from benchmarks.common import (RESULTS, Bench, digit_prompt, environment, log, mean_se,  # noqa: E402
                               per_image_change, split_at_steps)
from benchmarks.defaults_grid import N_UNRELATED, UNRELATED  # noqa: E402
from devtools.dng_defaults import dng_node_defaults  # noqa: E402
from dng_core.transmission import ode_to_sde_gain_ratio  # noqa: E402

SAMPLERS = ("euler", "euler_ancestral")
STEPS = 20
WINDOWS = ((0, 4), (4, 8), (8, 12), (12, 16), (16, 20))
NP_SCALE = 0.5
DATA_SCALE = 1.0  # the digit models' sigma_data (nodes.patch.data_scale_of)


def window_prompt(model: str, sampler: str, window: tuple[int, int], *, push: bool, n: int, seed: int) -> dict:
    """The unrelated prompt split at the window's ends; NP on the window's steps when ``push``, plain elsewhere."""
    p = digit_prompt(method="plain", model_name=model, batch_size=n, seed=seed, steps=STEPS, sampler=sampler,
                     positive_digit=UNRELATED["positive"], negative_digit=UNRELATED["negative"], cfg=UNRELATED["cfg"])
    a, b = window
    ks = [k for k in (a, b) if 0 < k < STEPS]
    inside = [(lo, hi) == (a, b) for lo, hi in zip([0, *ks], [*ks, STEPS])]
    models, negatives = [], []
    for i, pushed in enumerate(inside):
        if pushed and push:
            node_id = str(12 + i)
            p[node_id] = {"class_type": "DNGNegativePrompting",
                          "inputs": {"model": ["1", 0], "empty_conditioning": ["2", 0], "scale": NP_SCALE}}
            models.append([node_id, 0])
            negatives.append(["3", 0])
        else:
            models.append(["1", 0])
            negatives.append(["2", 0])
    return split_at_steps(p, ks=ks, models=models, negatives=negatives, positive=["8", 0], latent=["4", 0],
                          seed=seed, steps=STEPS, cfg=UNRELATED["cfg"], sampler=sampler)


def schedule(bench: Bench, model: str, seed: int) -> list[float]:
    """The sigmas of the 20-step normal schedule (from a one-image DNG run's trace)."""
    p = digit_prompt(method="dng", model_name=model, batch_size=1, seed=seed, steps=STEPS, sampler="euler",
                     positive_digit=UNRELATED["positive"], negative_digit=UNRELATED["negative"], cfg=UNRELATED["cfg"],
                     **dng_node_defaults())
    trace = bench.run(p).trace
    return [s.sigma for s in trace.steps] + [0.0]


def predicted_ratio(sigmas: list[float], window: tuple[int, int]) -> float:
    """T averaged over the window's steps, each weighted by its ODE gain (the share of the euler change it makes)."""
    num = den = 0.0
    for i in range(*window):
        s0, s1 = sigmas[i], sigmas[i + 1]
        mid = math.sqrt(s0 * max(s1, 1e-3))
        w = abs(math.log(s0 / max(s1, 1e-3))) * DATA_SCALE / math.hypot(DATA_SCALE, mid)
        num += w * ode_to_sde_gain_ratio(mid, DATA_SCALE)
        den += w
    return num / den


def write_markdown(out: Path) -> None:
    data = json.loads(out.with_suffix(".json").read_text())
    env, sig = data["env"], data["sigmas"]
    by = {(r["sampler"], tuple(r["window"])): r for r in data["rows"]}
    lines = [f"# How far a push at each noise level moves the final image: {data['model']}, euler vs "
             f"euler_ancestral (ComfyUI {env['comfyui']})", "",
             f"`python benchmarks/push_transmission.py --model {data['model']} --seed {data['seed']}`; the grid's "
             f"unrelated case (positive 7, cfg 2.5, concept 0), N {data['n']}, seed {data['seed']}, {STEPS} normal "
             f"steps. NP at scale {NP_SCALE} on one window of steps, plain elsewhere; change: mean |x - x_ref| per "
             "pixel (+- se over images) against a plain run split at the same steps. Predicted: the linear-Gaussian "
             f"ratio T(sigma) = 2 s / sqrt(s^2 + sigma^2) (s {DATA_SCALE:g}) that the matched push multiplies "
             "lambda by on euler, averaged over the window.", "",
             "| steps (sigma) | euler | euler_ancestral | measured ratio ea / euler | predicted T |",
             "|---|---|---|---|---:|"]
    for w in WINDOWS:
        a, b = by[("euler", w)], by[("euler_ancestral", w)]
        ratio = b["change"] / a["change"]
        se = ratio * math.hypot(a["se"] / a["change"], b["se"] / b["change"])
        lines.append(f"| [{w[0]}, {w[1]}) ({sig[w[0]]:.2f} -> {sig[w[1]]:.2f}) | {a['change']:.4f} +- {a['se']:.4f} | "
                     f"{b['change']:.4f} +- {b['se']:.4f} | {ratio:.2f} +- {se:.2f} | "
                     f"{predicted_ratio(sig, w):.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist16", choices=("digits8", "mnist16"))
    ap.add_argument("--n", type=int, default=N_UNRELATED)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args(argv)
    out = RESULTS / f"push_transmission_{args.model}_seed{args.seed}"
    if args.markdown:
        write_markdown(out)
        return 0
    bench = Bench()
    rows = []
    for sampler in SAMPLERS:
        for w in WINDOWS:
            kw = {"n": args.n, "seed": args.seed}
            ref = bench.run(window_prompt(args.model, sampler, w, push=False, **kw)).samples
            pushed = bench.run(window_prompt(args.model, sampler, w, push=True, **kw)).samples
            change, se = mean_se(per_image_change(pushed, ref).tolist())
            rows.append({"sampler": sampler, "window": list(w), "change": change, "se": se})
            log(f"{args.model} {sampler} {w}: {rows[-1]['change']:.4f} +- {rows[-1]['se']:.4f}")
    out.with_suffix(".json").write_text(json.dumps({"env": environment(), "model": args.model, "n": args.n,
                                                    "seed": args.seed, "sigmas": schedule(bench, args.model, args.seed),
                                                    "rows": rows}, indent=1))
    write_markdown(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
