"""A trial for issue 11's mnist16 euler_ancestral cell: the ancestral push moved to where the posterior separates.

Not a node setting: a benchmark-side patch of the pack's ``DNGRun._scale`` that tests one reading of two measurements.

* ``benchmarks/push_transmission.py``: on both reference models a push at sigma 2-23 moves euler_ancestral's final
  image 2.4-3.2x further, relative to euler's, than the linear-Gaussian ratio T(sigma) that the matched push rests
  on says (the ratio ea / euler is 0.55-0.71 at sigma 23 -> 5.4 against T's 0.22, 1.1-1.3 at 5.4 -> 1.7 against
  0.69; at sigma < 1.7 it is T's or below).
* ``benchmarks/model_posterior.py``: on euler_ancestral the model's own posterior separates the classifier's 0s from
  the other digits poorly at sigma 3-7.5 (AUC 0.72-0.86) and well below sigma 1.7 (0.96-0.985).

So on the ancestral sampler the pushes at sigma 2-23, where the posterior cannot yet tell the images apart, weigh
2-3x more than the matched push intends. The trial multiplies an ancestral run's lambda by
c(sigma) = min(1, T(sigma) / measured ratio), interpolated in ln sigma between the windows of
``push_transmission_<model>_seed0.json``: the early pushes shrink 2-4x, the late ones stay. It runs the grid's
removal and unrelated points at the node defaults otherwise and reads the targets against the grid's committed
NP and SLD rows of the same cell and seed.

``--warmup-sigma S`` instead drops the push above S and keeps it whole below: with S 2.5, where the ancestral
posterior starts to separate, mnist16 euler_ancestral meets every target but FD_clf (its removal floor) at seed 0,
lambda0 300 (docs/step_invariance.md, Session 17). ``--sampler``/``--steps`` run digits8's other stochastic cells.
With S 2 it is what the node input ``stochastic_push`` ``late`` does on the digit models (sigma_data 1) since
session 18 (at gain 1; since session 20 it is the default, at 6 x lambda0); the trials here shape the full push.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ancestral_push_shape.py --seed 0 --lambda0s 150 300  # ~6 min a lambda0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ancestral_push_shape.py --warmup-sigma 2.5 --lambda0s 300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, environment, log, wrap_pack_method  # noqa: E402
from benchmarks.defaults_grid import OUT, Point, _Runner, cell_verdict  # noqa: E402
from benchmarks.push_transmission import WINDOWS, predicted_ratio  # noqa: E402


def push_shape(model: str) -> list[tuple[float, float]]:
    """(ln sigma, c) per window of the measured transmission, by increasing sigma: c = min(1, T / measured)."""
    data = json.loads((RESULTS / f"push_transmission_{model}_seed0.json").read_text())
    by = {(r["sampler"], tuple(r["window"])): r["change"] for r in data["rows"]}
    sig, points = data["sigmas"], []
    for a, b in WINDOWS:
        if sig[b] <= 0:
            continue
        measured = by[("euler_ancestral", (a, b))] / by[("euler", (a, b))]
        points.append((0.5 * (math.log(sig[a]) + math.log(sig[b])), min(1.0, predicted_ratio(sig, (a, b)) / measured)))
    return sorted(points)


def shape_at(points: list[tuple[float, float]], sigma: float) -> float:
    """c(sigma): linear in ln sigma between the windows, constant beyond them."""
    x = math.log(max(sigma, 1e-6))
    if x <= points[0][0]:
        return points[0][1]
    for (x0, c0), (x1, c1) in zip(points, points[1:]):
        if x <= x1:
            return c0 + (c1 - c0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def patch_ancestral_push(shape: Callable[[float], float]) -> None:
    """Every run the pack builds that does not scale its push as a deterministic one (ancestral samplers) takes
    ``shape(sigma)`` on its lambda."""
    def wrap(original):
        def _scale(self, log_p, sigma):
            scale = original(self, log_p, sigma)
            if self._push_scale_s is not None:
                return scale
            return scale * shape(float(self.parametrisation.sigma_ve(sigma)))
        return _scale

    wrap_pack_method("dng_core.run", "DNGRun", "_scale", wrap)


def write_markdown(out: Path, model: str, seed: int, warmup_sigma: float | None, sampler: str = "euler_ancestral",
                   steps: int = 20) -> None:
    """The trial's table (from its json) beside the node defaults' own rows, against the grid's baselines."""
    data = json.loads(out.with_suffix(".json").read_text())
    cell = (model, sampler, steps)
    grid = [r for r in json.loads((RESULTS / "defaults_grid.json").read_text())
            if (r["model"], r["sampler"], r["steps"], r["seed"]) == (*cell, seed)]
    baselines = [r for r in grid if r["method"] != "dng"]
    defaults = [r for r in grid if r["method"] == "dng" and r.get("uses_defaults")]
    what = "shaped by the measured transmission" if warmup_sigma is None else "after a guidance-free warm-up"
    lines = [f"# {model} {sampler} {steps}, seed {seed}: the ancestral push {what} (a trial), ComfyUI "
             f"{data['env']['comfyui']}", "",
             f"`benchmarks/ancestral_push_shape.py`; node defaults but {data['shape']}. Targets against the grid's "
             "committed NP and SLD rows of the same cell and seed; the node defaults' own rows for comparison.", "",
             "| push | lambda0 | forbidden % (upper 95) | KL / NP | KL / SLD | FD / NP | FD / SLD | unrelated / NP |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    trial = "shaped (trial)" if warmup_sigma is None else "warm-up (trial)"
    for name, dng in (("node defaults", defaults), (trial, data["rows"])):
        for lambda0 in sorted({r["strength"] for r in dng if r["case"] == "removal"}):
            v = cell_verdict([*baselines, *dng], lambda0)
            lines.append(f"| {name} | {lambda0:g} | {v['forbidden_pct']:.1f} ({v['forbidden_upper95']:.1f}) | "
                         f"{fmt(v.get('kl_ratio_np'))} | {fmt(v.get('kl_ratio_sld'))} | "
                         f"{fmt(v.get('fd_clf_ratio_np'))} | {fmt(v.get('fd_clf_ratio_sld'))} | "
                         f"{fmt(v.get('change_ratio'))} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist16", choices=("digits8", "mnist16"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lambda0s", type=float, nargs="+", default=[150.0, 300.0])
    ap.add_argument("--warmup-sigma", type=float, default=None,
                    help="instead of the measured shape: no push above this sigma, the full push below it")
    ap.add_argument("--sampler", default="euler_ancestral", choices=("euler_ancestral", "dpmpp_2m_sde"))
    ap.add_argument("--steps", type=int, default=20, choices=(20, 50))
    ap.add_argument("--markdown", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args(argv)
    tag = "" if args.warmup_sigma is None else f"_warmup_sigma{args.warmup_sigma:g}".replace(".", "p")
    cell = "" if (args.sampler, args.steps) == ("euler_ancestral", 20) else f"_{args.sampler}_{args.steps}"
    out = RESULTS / f"ancestral_push_shape_{args.model}{cell}_seed{args.seed}{tag}"
    if not args.markdown:
        run_trial(out, args.model, args.seed, args.lambda0s, args.warmup_sigma, args.sampler, args.steps)
    write_markdown(out, args.model, args.seed, args.warmup_sigma, args.sampler, args.steps)
    return 0


def run_trial(out: Path, model: str, seed: int, lambda0s: list[float], warmup_sigma: float | None,
              sampler: str = "euler_ancestral", steps: int = 20) -> None:
    """Run the removal and unrelated points at each lambda0 with the ancestral push shaped; rows to the json (a
    lambda0 run again replaces its rows)."""
    done = json.loads(out.with_suffix(".json").read_text())["rows"] if out.with_suffix(".json").is_file() else []
    # the shapes act on the full push (the default before session 20): the late push would cut and scale it again
    runner = _Runner(OUT, {"stochastic_push": "full"})
    points = push_shape(model)
    if warmup_sigma is None:
        shape, described = (lambda sigma: shape_at(points, sigma)), (
            "lambda times c(sigma) = min(1, T / measured ea/euler ratio), from `push_transmission_" + model
            + "_seed0.json`: " + ", ".join(f"{c:.2f} at sigma {math.exp(x):.2g}" for x, c in points))
    else:
        shape = lambda sigma: 0.0 if sigma > warmup_sigma else 1.0  # noqa: E731
        described = f"no push above sigma {warmup_sigma:g} (a guidance-free warm-up), the full push below"
    patch_ancestral_push(shape)
    rows = [r for r in done if r["strength"] not in lambda0s]
    for lambda0 in lambda0s:
        for case in ("removal", "unrelated"):
            runner.bench.runner.reset()
            row = runner.run(Point(model, sampler, steps, seed, case, "dng", lambda0))
            row["uses_defaults"] = False
            rows.append(row)
            log(f"lambda0 {lambda0:g} {case}: forbidden {row['forbidden_pct']:.1f} % change {row['mean_abs_change']}")
    out.with_suffix(".json").write_text(json.dumps({"env": environment(), "shape": described, "rows": rows},
                                                   indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
