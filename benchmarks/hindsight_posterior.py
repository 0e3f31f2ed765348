"""DNG's push driven by a posterior known in hindsight: is mnist16's miss the push, or what the posterior knows when?

Issue 11's mnist16 cells miss the safety or the deactivation target at every lambda0, and Session 16
(`benchmarks/model_posterior.py`) measured why in terms of the model's own posterior p(c | x_t): at no step does it
rank the classifier's 0s above the other images better than AUC 0.95-0.97, and at the noise levels where DNG's push
acts (sigma 3-5) 6-18 % of an unrelated prompt's 7s rank with the 0s that must be reached. That was a measured
account, not a proof: DNG's dynamics (its posterior moves as it pushes) could act on a different share. This
benchmark takes the dynamics out. It reruns the grid's removal and unrelated points of a deterministic cell with
DNG's push, lambda = lambda0 p / (1 - p) times the matched push's gain (everything `DNGRun._scale` does), but with
each image's p *fixed* for the whole run and read from a source chosen here instead of the running tracker:

* ``label``: p_max for the images that plain sampling with the same seed ends as the classifier's forbidden digit,
  p_min for the rest: the push with a perfect ranking, known from the first step (what the mechanism can do);
* ``model:K``: the model's own posterior after step K of the plain path (`model_posterior.py`'s reading: prior
  0.1, temperature 1, offset 0, no rate bound), clamped to the node's [p_min, p_max]: that posterior's ranking at
  step K, known in hindsight from the first step, with DNG's p / (1 - p) (which spans three orders of magnitude
  over the 0s: the confident ones get pushed far harder than the weakest one that must be reached);
* ``model:K:line``: p_max for the images the model's posterior after step K ranks at or above the removal run's
  line (`model_posterior.min_collateral`: rejecting in that order down to it leaves <= 1 % 0s), p_min for the
  rest: the label arm's push, on the images that posterior singles out; the unrelated run is cut at the same line;
* ``dng``: DNG's own running posterior, every input at the node default (with ``--push-below``: DNG with no push
  above sigma on a deterministic sampler, what the late push does on the stochastic ones).

``--push-below SIGMA`` switches the push off above sigma (with ``model:K`` read after the step that ends at or
above SIGMA, a remover that acts only on what it knows, after it knows it: on a deterministic sampler the state
there is plain sampling's, whose posterior the arm reads). In the fixed-p arms every other input is the node's
default, except ``prune_concepts`` off (the pruner reads the running tracker) and the kernel estimator (the
tracker's own reading is not used; it only saves the path estimator's two predictions per step).

Measured on mnist16 euler 20, seeds 0 and 1 (ComfyUI 0.33.0; the figures and what they mean:
benchmarks/results/hindsight_posterior.md, docs/step_invariance.md, Session 21).

Rows go to benchmarks/results/hindsight_posterior.json in the grid's row format (method "dng", with the arm in
``arm``) and the verdicts, against the grid's NP and SLD rows of the same cell and seed as the grid computes them,
to benchmarks/results/hindsight_posterior.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hindsight_posterior.py --seed 1 --arm model:13 --lambda0s 75 300
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hindsight_posterior.py --report   # the table from the json
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

import torch  # noqa: E402

from benchmarks.common import RESULTS, log, wrap_pack_method  # noqa: E402
from benchmarks.defaults_grid import MAX_FORBIDDEN, MAX_UPPER, OUT, Point, _fmt, _Runner, cell_verdict  # noqa: E402
from benchmarks.model_posterior import logit, measure, min_collateral  # noqa: E402
from dng_core import guidance_scale  # noqa: E402

JSON = RESULTS / "hindsight_posterior.json"
MARKDOWN = RESULTS / "hindsight_posterior.md"
#: node inputs that differ from the defaults in every run here (why: the module docstring)
OVERRIDES = {"prune_concepts": False, "posterior_variance": "kernel"}


def fixed_log_p(runner: _Runner, pt: Point, arm: str, p_min: float, p_max: float) -> torch.Tensor | None:
    """Each image's log p for the whole run, [N], from ``arm`` (``label``, ``model:K`` or ``model:K:line``;
    ``dng``: None, DNG's own running posterior)."""
    if arm == "dng":
        return None
    if arm == "label":
        scorer = runner.scorer(pt.model)
        zero = torch.as_tensor(scorer.predict(runner.plain_reference(pt))) == scorer.removed
        return two_level(zero, p_min, p_max)
    parts = arm.split(":")
    if parts[0] != "model" or len(parts) not in (2, 3) or parts[2:] not in ([], ["line"]):
        raise ValueError(f"--arm must be 'label', 'model:K' or 'model:K:line', got {arm!r}")
    k = int(parts[1])
    cell = f"{pt.model}/{pt.sampler}/{pt.steps}"
    log_p = measure(cell, pt.seed, pt.case)["log_p"]  # [steps, N], the plain path's posterior after each step
    if not 1 <= k <= log_p.shape[0]:
        raise ValueError(f"step K must be in 1..{log_p.shape[0]}, got {k}")
    if parts[2:] == ["line"]:
        removal = measure(cell, pt.seed, "removal")
        return over_the_line(log_p[k - 1], removal["log_p"][k - 1], removal["zero"], p_min, p_max)
    return log_p[k - 1].double().clamp(math.log(p_min), math.log(p_max))


def over_the_line(log_p: torch.Tensor, removal_log_p: torch.Tensor, zero: torch.Tensor, p_min: float,
                  p_max: float) -> torch.Tensor:
    """log p_max for the images whose ``log_p`` is at or above the removal run's line, log p_min for the rest.
    The line is the posterior (as log-odds) of the last image a remover rejecting the removal run's images in
    the order of ``removal_log_p`` must reject to leave <= 1 % 0s (``zero``: the classifier's verdicts)."""
    _, line = min_collateral(logit(removal_log_p), zero)
    return two_level(logit(log_p) >= line, p_min, p_max)


def two_level(pushed: torch.Tensor, p_min: float, p_max: float) -> torch.Tensor:
    """log p_max where ``pushed``, log p_min elsewhere."""
    return torch.where(pushed, math.log(p_max), math.log(p_min)).double()


def hold_scale(log_p: torch.Tensor | None, push_below: float | None) -> None:
    """Make every DNGRun the pack builds scale its push by ``log_p`` ([N]; None: its trackers' posterior, as
    always) instead of its trackers' posterior, and (``push_below``) not push where sigma (variance-exploding)
    is above it."""
    def wrap(original):
        def _scale(self, running_log_p, sigma):
            fixed = running_log_p if log_p is None else log_p.to(running_log_p).reshape(1, -1).expand_as(
                running_log_p)
            scale = original(self, fixed, sigma)
            if push_below is not None and float(self.parametrisation.sigma_ve(sigma)) > push_below:
                return torch.zeros_like(scale)
            return scale
        return _scale

    wrap_pack_method("dng_core.run", "DNGRun", "_scale", wrap)


def arm_name(arm: str, push_below: float | None) -> str:
    return arm if push_below is None else f"{arm}, push below sigma {push_below:g}"


def run_arm(cell: str, seed: int, arm: str, lambda0s: list[float], push_below: float | None,
            cases: list[str], dng: dict[str, str] | None = None) -> list[dict]:
    model, sampler, steps = cell.split("/")
    runner = _Runner(OUT, {**({} if arm == "dng" else OVERRIDES), **(dng or {})})
    rows = []
    for case in cases:
        probe = Point(model, sampler, int(steps), seed, case, "dng", 0.0)
        fixed = fixed_log_p(runner, probe, arm, runner.dng["p_min"], runner.dng["p_max"])
        hold_scale(fixed, push_below)
        for lambda0 in lambda0s:
            pt = Point(model, sampler, int(steps), seed, case, "dng", lambda0)
            runner.bench.runner.reset()
            row = runner.run(pt)
            row.update(arm=arm_name(arm, push_below) + "".join(f", {k} {v}" for k, v in (dng or {}).items()),
                       dng_params={"lambda0": lambda0, **runner.settings, "push_below": push_below,
                                   "p_source": arm})
            # how many images the fixed p pushes with lambda >= 1 (before the matched push's gain)
            row["pushed_share_pct"] = None if fixed is None else 100.0 * float(
                (guidance_scale(fixed, lambda0) >= 1.0).double().mean())
            log(f"{cell} seed {seed} {row['arm']} {case} lambda0 {lambda0:g}: forbidden {row['forbidden_pct']:.1f} % "
                f"(upper {row['forbidden_upper95']:.2f}), change {row['mean_abs_change']}, destroyed "
                f"{row['destroyed_pct']:.1f} % ({row['seconds']:.0f} s)")
            rows.append(row)
    return rows


def grid_rows(model: str, sampler: str, steps: int, seed: int) -> list[dict]:
    """The grid's rows of one cell and seed: the baselines and plain, and DNG's at the node defaults."""
    rows = json.loads((RESULTS / "defaults_grid.json").read_text())
    return [r for r in rows if (r["model"], r["sampler"], r["steps"], r["seed"]) == (model, sampler, steps, seed)
            and (r["method"] != "dng" or r.get("uses_defaults"))]


def report(rows: list[dict]) -> list[str]:
    """The verdicts of each arm's points, and DNG's own at the node defaults for comparison."""
    lines = ["# DNG's push driven by a posterior known in hindsight", "",
             "Generated by `benchmarks/hindsight_posterior.py` (what each arm is: its docstring). Targets as the "
             "grid's (`benchmarks/results/defaults_grid.md`): forbidden <= 1 % with the Wilson upper 95 % bound <= "
             "1.5 %; KL and FD_clf <= 0.5 of NP's and SLD's at equal forbidden % (interpolated on the grid's rows of "
             "the same cell and seed); unrelated change <= 0.10 of NP's at its matched scale. 'pushed' is the share "
             "of images whose fixed p gives lambda0 p / (1 - p) >= 1.", "",
             "| cell | seed | p from | lambda0 | forbidden % (upper 95) | KL / NP | KL / SLD | FD / NP | FD / SLD "
             "| unrelated / NP | destroyed % | pushed %, removal / unrelated | host |",
             "|---|---:|---|---:|---|---|---|---|---|---|---:|---|---|"]
    keys = sorted({(r["model"], r["sampler"], r["steps"], r["seed"]) for r in rows})
    for model, sampler, steps, seed in keys:
        base = grid_rows(model, sampler, steps, seed)
        mine = [r for r in rows if (r["model"], r["sampler"], r["steps"], r["seed"]) == (model, sampler, steps, seed)]
        arms = [("DNG (the node defaults, the grid's rows)", [r for r in base if r["method"] == "dng"])]
        arms += [(a, [r for r in mine if r["arm"] == a]) for a in dict.fromkeys(r["arm"] for r in mine)]
        others = [r for r in base if r["method"] != "dng"]
        for arm, arm_rows in arms:
            for lambda0 in sorted({r["strength"] for r in arm_rows if r["case"] == "removal"}):
                if arm.startswith("DNG") and lambda0 not in (75.0, 105.0, 150.0, 200.0):
                    continue
                v = cell_verdict(others + arm_rows, lambda0=lambda0)
                pushed = {r["case"]: r.get("pushed_share_pct") for r in arm_rows if r["strength"] == lambda0}
                removal = next(r for r in arm_rows if r["case"] == "removal" and r["strength"] == lambda0)
                safe = v.get("forbidden_pct", 99) <= MAX_FORBIDDEN and v.get("forbidden_upper95", 99) <= MAX_UPPER
                lines.append(
                    f"| {model}/{sampler}/{steps} | {seed} | {arm} | {lambda0:g} | {v.get('forbidden_pct', 0):.1f} "
                    f"({v.get('forbidden_upper95', 0):.2f}) {'met' if safe else 'MISSED'} | "
                    + " | ".join(_fmt(v.get(f"{m}_ratio_{b}"), 2) for m in ("kl", "fd_clf") for b in ("np", "sld"))
                    + f" | {_fmt(v.get('change_ratio'), 2)} | {removal.get('destroyed_pct', 0):.1f} | "
                    f"{_fmt(pushed.get('removal'))} / {_fmt(pushed.get('unrelated'))} | {removal['host']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="mnist16/euler/20", metavar="MODEL/SAMPLER/STEPS")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--arm", default="model:13", help="label, or model:K (the plain path's posterior after step K)")
    ap.add_argument("--lambda0s", type=float, nargs="+", default=[75.0])
    ap.add_argument("--push-below", type=float, default=None, help="no push above this sigma (variance-exploding)")
    ap.add_argument("--dng", nargs="+", default=[], metavar="KEY=VALUE",
                    help="a node combo input other than its default, e.g. stochastic_push=full")
    ap.add_argument("--cases", nargs="+", default=["removal", "unrelated"], choices=("removal", "unrelated"))
    ap.add_argument("--out", type=Path, default=JSON, help="the json to append rows to (merge parts with --merge)")
    ap.add_argument("--merge", type=Path, nargs="*", default=None, help="part files to append to the json")
    ap.add_argument("--report", action="store_true", help="only write the table from the json")
    args = ap.parse_args()
    rows = json.loads(JSON.read_text()) if JSON.is_file() else []
    if args.merge is not None:
        for part in args.merge:
            rows += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
        JSON.write_text(json.dumps(rows, indent=1) + "\n")
    elif not args.report:
        new = run_arm(args.cell, args.seed, args.arm, args.lambda0s, args.push_below, args.cases,
                      dict(item.split("=", 1) for item in args.dng))
        if args.out == JSON:
            rows += new
            JSON.write_text(json.dumps(rows, indent=1) + "\n")
        else:
            with args.out.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
            return
    lines = report(rows)
    MARKDOWN.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
