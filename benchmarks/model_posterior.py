"""What the model's own posterior says about the classifier's forbidden digits (issue 11).

DNG steers by p(c | x_t), the concept's posterior *under the diffusion model*; the benchmark counts a removal by
a separate classifier. Where the two disagree, a remover that follows the model's posterior cannot see the
classifier's 0s, and reaching the classifier's bar then takes pushes on images the posterior does not single
out. This benchmark measures that disagreement, with no guidance at all.

It samples a deterministic cell plainly (DNG at lambda0 0: no push, the images are plain sampling's, checked
against the grid's cached plain samples) with the posterior tracker set to read the model's posterior of the
negative class along the path: prior = the class's share of the training data, temperature 1, offset 0, no rate
bound, the widest p range the node allows, no pruning. On a deterministic sampler the path estimator's running
sum of per-step evidence follows log p(c | x_t) (docs/step_invariance.md, "The posterior along any path"), up to
the trapezoid rule's error and the Hutchinson probe's noise; a second probe stream measures the latter, and the
two streams averaged show how much of the figures is that noise.

Per step, with the classifier's verdict on each final image: how well the running posterior ranks the images
that end as the classifier's 0s above the rest (AUC), and the *collateral*: the fewest other images a remover
that rejects in the posterior's order must reject to leave <= 1 % 0s. Any remover whose push grows with the
model's posterior (DNG's lambda = lambda0 p / (1 - p) does) meets the safety bar only by acting on about that
share of the images the bar does not ask it to touch. The grid's unrelated run (positive 7) is read the same way,
along its path and as DNG reads it (``one_sided``): the share of its images at or above that remover's line at
each step is what the deactivation target asks DNG to leave alone. Only the order is used: the posterior's level
is not calibrated below sigma ~0.5, where the evidence is mostly the models' error (see the results).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/model_posterior.py --cell mnist16/euler/20 --seed 1  # ~20 min
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import environment, per_image_change, set_posterior_fields, write_point_study  # noqa: E402
from benchmarks.defaults_grid import OUT, Point, _Runner, is_deterministic, node_defaults  # noqa: E402
from benchmarks.probe_streams import set_probe_seed  # noqa: E402
from benchmarks.removal_tail import record_commits  # noqa: E402
from dng_core import PosteriorConfig  # noqa: E402
from dng_core.path import PROBE_SEED  # noqa: E402

CLASS_PRIOR = 0.1  # each digit's share of the training data (MNIST's 0s: 9.9 %; the 8x8 digits': 10.0 %)
EXACT_READING = {"prior": CLASS_PRIOR, "temperature": 1.0, "offset": 0.0, "p_min": 1e-9, "p_max": 0.999999,
                 "prune_concepts": False}
SECOND_PROBE_SEED = 777


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney statistic)."""
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    diff = pos.double().reshape(-1, 1) - neg.double().reshape(1, -1)
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def read_posterior(runner: _Runner, pt: Point, probe_seed: int) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(final samples, log p per step [steps, N], the sigma each row is read at) for one probe stream."""
    set_probe_seed(probe_seed)
    runner.bench.runner.reset()
    records: list = []
    record_commits(records)
    out = runner.bench.run(runner.prompt(pt))
    sigmas = [r.sigma for r in out.trace.steps]
    return out.samples, torch.stack(records).double(), sigmas


def min_collateral(score: torch.Tensor, zero: torch.Tensor, bar: float = 1.0) -> tuple[float, float]:
    """(the smallest share (%) of non-0 images a remover must reject, rejecting in order of ``score`` (highest
    first), to leave at most ``bar`` % 0s among the images it keeps; the score of the last image it rejects)."""
    order = torch.argsort(score, descending=True)
    z = zero[order].double()
    n = z.numel()
    if float(z.sum()) <= bar / 100 * n:
        return 0.0, float("inf")
    zeros_left = z.sum() - torch.cumsum(z, 0)  # after rejecting the first m + 1
    kept = n - torch.arange(1, n + 1, dtype=torch.float64)
    ok = (zeros_left <= bar / 100 * kept) & (kept > 0)
    m = int(torch.nonzero(ok)[0]) if bool(ok.any()) else n - 1
    return 100 * float((1 - z[:m + 1]).sum() / (1 - z).sum()), float(score[order[m]])


@functools.cache
def _process_runner() -> _Runner:
    return _Runner(OUT, {})  # loads the pack: one host per process, whichever reading a run needs


def shared_runner(dng: dict, max_rate: float) -> _Runner:
    """The process's runner, set up for DNG inputs ``dng`` (over the node defaults) and dng_core's ``max_rate``."""
    runner = _process_runner()
    runner.dng = {**node_defaults(), **dng}
    set_posterior_fields(max_rate=max_rate)
    return runner


def cache_path(cell: str, seed: int, tag: str) -> Path:
    return OUT / "cache" / f"model_posterior_{cell.replace('/', '_')}_seed{seed}_{tag}_{environment()['comfyui']}.pt"


def measure(cell: str, seed: int, case: str = "removal", evidence: str = "sampled", estimator: str = "auto") -> dict:
    """Sample (or load from the grid's cache) the per-step log p of both probe streams and the verdicts.
    ``case`` "unrelated": the grid's unrelated run (positive 7 with CFG 2.5). ``evidence`` "sampled": the
    posterior of the 0s read along the path (with no push the sampled step is the path's own); "one_sided": DNG's
    own reading, which counts CFG's pull towards the 7 only where it points away from the 0s (in the removal run,
    whose positive is empty, the two are the same). ``estimator``: the node's ``posterior_variance`` (``auto``:
    the path estimator on deterministic samplers, the kernel on ancestral ones)."""
    model, sampler, steps = cell.split("/")
    tag = (case if evidence == "sampled" else f"{case}_{evidence}") + ("" if estimator == "auto" else f"_{estimator}")
    path = cache_path(cell, seed, tag)
    if path.is_file():
        return torch.load(path)
    runner = shared_runner({**EXACT_READING, "evidence": evidence, "posterior_variance": estimator},
                           max_rate=0.0)  # 0: no rate bound
    pt = Point(model, sampler, int(steps), seed, case, "dng", 0.0)
    plain = runner.plain_reference(pt)
    samples, log_p, sigmas = read_posterior(runner, pt, PROBE_SEED)
    _, log_p2, _ = read_posterior(runner, pt, SECOND_PROBE_SEED)
    set_probe_seed(PROBE_SEED)
    scorer = runner.scorer(model)
    data = {"log_p": log_p, "log_p2": log_p2, "sigmas": sigmas,
            "zero": torch.as_tensor(scorer.predict(samples)) == scorer.removed,
            "max_plain_difference": float((samples - plain.float()).abs().max())}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def unrelated_change(cell: str, seed: int, lambda0: float) -> torch.Tensor:
    """Per image, how far DNG at the node defaults and ``lambda0`` moves the grid's unrelated images (mean
    absolute change per pixel against plain sampling with the same seed; cached)."""
    model, sampler, steps = cell.split("/")
    path = cache_path(cell, seed, f"unrelated_change_lambda{lambda0:g}")
    if path.is_file():
        return torch.load(path)
    runner = shared_runner({}, max_rate=PosteriorConfig().max_rate)
    runner.bench.runner.reset()
    plain, samples = runner.sample_against_plain(Point(model, sampler, int(steps), seed, "unrelated", "dng", lambda0))
    change = per_image_change(samples, plain)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(change, path)
    return change


def change_by_rank(cell: str, seed: int, lambda0: float, sigmas: list[float], step_lines: list[float],
                   unrelated_dng: dict) -> list[str]:
    """Which of the unrelated images DNG moves at ``lambda0``: those over each step's removal line, or others."""
    change = unrelated_change(cell, seed, lambda0)
    lines = ["", f"Which unrelated images DNG moves at lambda0 {lambda0:g} (node defaults otherwise; mean change per "
             f"pixel {float(change.mean()):.4f}): the images over each step's line by DNG's reading, their share of "
             "the run's total change, and their mean change against the rest's.", "",
             "| step (sigma) | images over the line % | their share of the change % | their mean change | "
             "the rest's mean change |", "|---|---:|---:|---:|---:|"]
    for i in range(len(sigmas) - 2):
        over = logit(unrelated_dng["log_p"][i]) >= step_lines[i]
        if not bool(over.any()) or bool(over.all()):
            continue
        lines.append(f"| {sigmas[i]:.3f} -> {sigmas[i + 1]:.3f} | {100 * float(over.double().mean()):.1f} | "
                     f"{100 * float(change[over].sum() / change.sum()):.0f} | {float(change[over].mean()):.4f} | "
                     f"{float(change[~over].mean()):.4f} |")
    return lines


def logit(log_p: torch.Tensor) -> torch.Tensor:
    return log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-12))


def estimator_used(cell: str, estimator: str) -> str:
    """The estimator ``auto`` resolves to on the cell's sampler."""
    if estimator != "auto":
        return estimator
    return "path" if is_deterministic(cell.split("/")[1]) else "kernel"


def analyse(cell: str, seed: int, lambda0s: Sequence[float] = (), estimator: str = "auto") -> list[str]:
    data, unrelated = measure(cell, seed, estimator=estimator), measure(cell, seed, "unrelated", estimator=estimator)
    unrelated_dng = measure(cell, seed, "unrelated", "one_sided", estimator=estimator)
    used = estimator_used(cell, estimator)
    probe_note = ("" if used == "path" else " The kernel estimator draws no probe: the two streams are the same "
                  "reading.")
    log_p, log_p2, sigmas, zero = data["log_p"], data["log_p2"], data["sigmas"], data["zero"]
    n, k = int(zero.numel()), int(zero.sum())
    aucs = [auc(logit(lp)[zero], logit(lp)[~zero]) for lp in log_p]
    best = max(range(len(aucs)), key=lambda i: aucs[i])
    at = lambda i: f"{sigmas[i + 1]:.3f}" if i + 1 < len(sigmas) else "0"  # noqa: E731
    lo, lo2 = logit(log_p[best]), logit(log_p2[best])
    per_step = [min_collateral(logit(lp), zero) for lp in log_p]  # (collateral %, the line) per step
    lines = [f"# The model's own posterior of the 0s on {cell}, seed {seed} (plain sampling)", "",
             f"Generated by `benchmarks/model_posterior.py`. ComfyUI {environment()['comfyui']}; the grid's removal "
             f"point ({n} images) and unrelated point ({int(unrelated['zero'].numel())} images, positive 7), both "
             f"unguided (largest difference from the cached plain samples: {data['max_plain_difference']:.2g}, "
             f"{unrelated['max_plain_difference']:.2g}). Tracker: prior {CLASS_PRIOR}, temperature 1, offset 0, no "
             f"rate bound, p in [1e-9, 0.999999], the {used} estimator; the classifier's 0s are the final images' "
             f"verdicts.{probe_note}", "",
             f"- the classifier's 0s: {k} ({100 * k / n:.1f} %).",
             f"- the posterior ranks them best at sigma {at(best)} (after step {best + 1}): AUC {aucs[best]:.3f} "
             f"(stream 2: {auc(lo2[zero], lo2[~zero]):.3f}); leaving <= 1 % 0s by rejecting in its order takes "
             f"rejecting {per_step[best][0]:.1f} % of the other images (two probes averaged: "
             f"{min_collateral((lo + lo2) / 2, zero)[0]:.1f} %).",
             f"- probe noise there: the two probe streams' log-odds differ by {float((lo - lo2).std()):.2f} (SD).",
             f"- below sigma ~0.5 the 0s' mean log-odds fall ({float(lo[zero].mean()):.2f} at sigma {at(best)}, "
             f"{float(logit(log_p[-1])[zero].mean()):.2f} at the end) and the last step scrambles the order: there the "
             "evidence (the difference of two denoisers over sigma^3) is the models' error more than the class. The "
             "posterior's level is therefore not calibrated at low noise and only its order is used here.", "",
             "When the evidence arrives: the running posterior after each step (stream 1). Collateral: the fewest "
             "non-0 images (%) a remover that rejects in the order of this reading must reject to leave <= 1 % 0s "
             "among the rest; two probes: the two streams' log-odds averaged (half the probe's variance), so what "
             "is left is the model's posterior, not the estimator's noise. Unrelated over the line: the share of "
             "the unrelated run's images (positive 7, none of them meant to change) whose posterior of the 0s at "
             "the same step is at or above the last image that remover rejects; read along the path (the model's "
             "posterior) and as DNG reads it (`one_sided`: CFG's pull towards the 7 counted where it points away "
             "from the 0s).", "",
             "| step (sigma) | AUC, 0s vs the rest | collateral at 1 % % | two probes: AUC, collateral % | "
             "unrelated over the line %: path, DNG's reading | 0s: mean log-odds | the rest: mean log-odds | "
             "unrelated: mean log-odds, DNG's reading |", "|---|---:|---:|---|---|---:|---:|---|"]
    for i in range(log_p.shape[0]):
        lo_i, mean_i = logit(log_p[i]), (logit(log_p[i]) + logit(log_p2[i])) / 2
        collateral, line = per_step[i]
        un_i, dng_i = logit(unrelated["log_p"][i]), logit(unrelated_dng["log_p"][i])
        lines.append(f"| {sigmas[i]:.3f} -> {at(i)} | {aucs[i]:.3f} | {collateral:.1f} | "
                     f"{auc(mean_i[zero], mean_i[~zero]):.3f}, {min_collateral(mean_i, zero)[0]:.1f} | "
                     f"{100 * float((un_i >= line).double().mean()):.1f}, "
                     f"{100 * float((dng_i >= line).double().mean()):.1f} | {float(lo_i[zero].mean()):.2f} | "
                     f"{float(lo_i[~zero].mean()):.2f} | {float(un_i.mean()):.2f}, {float(dng_i.mean()):.2f} |")
    for lambda0 in lambda0s:
        lines += change_by_rank(cell, seed, lambda0, sigmas, [line for _, line in per_step], unrelated_dng)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="mnist16/euler/20", metavar="MODEL/SAMPLER/STEPS")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lambda0s", type=float, nargs="*", default=[],
                    help="also run DNG (node defaults) on the unrelated point at these lambda0 and show which images "
                         "it moves")
    ap.add_argument("--estimator", default="auto", choices=("auto", "path", "kernel"),
                    help="the posterior's estimator (the node's posterior_variance; auto: path on deterministic "
                         "samplers, kernel on ancestral ones)")
    args = ap.parse_args()
    tag = "" if args.estimator == "auto" else f"_{args.estimator}"
    write_point_study("model_posterior", args.cell, args.seed, tag,
                      analyse(args.cell, args.seed, args.lambda0s, args.estimator))


if __name__ == "__main__":
    main()
