"""Which images carry a grid cell's unrelated change, and what raised their posterior (issue 11, mnist16 euler).

Reruns a grid point of the unrelated case (DNG at the node defaults) against the grid's cached plain samples, with
the pack's ``PosteriorTracker.propose_path`` wrapped (its result unchanged) to record, per image and step, the
three terms of the path identity (dng_core/path.py): the gradient term (D_c - D_u) . dx / sigma^2, the sigma term
without the divergence ((|D_c - x|^2 - |D_u - x|^2) / sigma^3 dsigma) and the divergence term, and the log
posterior after the step (after the temperature, the offset and the rate bound). Prints and writes
benchmarks/results/unrelated_tail_<cell>_seed<S>.md: the share of the change carried by the top 5 % of the
images, the per-step means of the terms for the top 5 % and the rest, the top images' totals, and the last steps
of the top three and the median image with the sigma term also read at the pushed state (the one-sided evidence
reads x + offset, the state without DNG's pushes, with predictions made at the pushed x). On a stochastic
sampler's cell (the kernel estimator: no path terms) it records each step's update of log p instead and gives
the per-step means and the top images' largest log p and largest one-step rise.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/unrelated_tail.py --seed 1     # ~4 min
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import (environment, per_image_change, point_study_args, wrap_pack_method,  # noqa: E402
                               write_point_study)
from benchmarks.defaults_grid import OUT, Point, _Runner  # noqa: E402


def _sigma_term(point, x: torch.Tensor, parametrisation) -> torch.Tensor:
    """(|D_c - x|^2 - |D_u - x|^2) / sigma^3 of a path point with the state read at ``x``: the point's own
    d l / d sigma (PathPoint.terms) without its divergence part."""
    _, _, d_sigma, s = replace(point, x=x).terms(parametrisation)
    return d_sigma - point.div_diff.to(d_sigma) / s


def record_path_terms(records: list) -> None:
    """Wrap the pack's path-point builder (to know the pushed state x behind each point, whose x is x + offset
    with the one-sided evidence) and its propose_path (to record the terms)."""
    pushed: dict[int, tuple] = {}

    def wrap_point(original):
        def path_point(self, k):
            out = original(self, k)
            if out is not None:
                pushed[id(out)] = (self.x, None if self.offset is None else self.offset[k])
            return out
        return path_point

    def wrap_propose(original):
        def propose_path(self, start, end):
            new = original(self, start, end)
            x0, g0, h0, s0 = start.terms(self.parametrisation)
            x1, g1, h1, s1 = end.terms(self.parametrisation)
            grad = 0.5 * ((g0 + g1) * (x1 - x0)).sum(1)
            div = 0.5 * (start.div_diff.double() / s0 + end.div_diff.double() / s1) * (s1 - s0)
            sig = 0.5 * (h0 + h1) * (s1 - s0) - div
            (xa, _), (xb, off) = pushed.get(id(start), (start.x, None)), pushed.get(id(end), (end.x, None))
            at_pushed = 0.5 * (_sigma_term(start, xa, self.parametrisation)
                               + _sigma_term(end, xb, self.parametrisation)) * (s1 - s0)
            off_norm = torch.zeros_like(new) if off is None else off.double().flatten(1).norm(dim=1)
            records.append((start.sigma, end.sigma, grad.cpu(), sig.cpu(), div.cpu(), new.detach().cpu().clone(),
                            at_pushed.cpu(), off_norm.cpu()))
            return new
        return propose_path

    wrap_pack_method("dng_core.run", "_StepInputs", "path_point", wrap_point)
    wrap_pack_method("dng_core.posterior", "PosteriorTracker", "propose_path", wrap_propose)


def record_kernel_steps(records: list) -> None:
    """Wrap the pack's kernel-estimator proposal (its result unchanged) to record, per step, sigma, sigma' and
    each image's log p before and after the step (stochastic samplers' cells: no path terms there)."""
    def wrap(original):
        def propose(self, x, x_next, d_neg, d_u, sigma, sigma_next):
            new = original(self, x, x_next, d_neg, d_u, sigma, sigma_next)
            records.append((float(sigma), float(sigma_next), self.log_p.detach().cpu().clone(),
                            new.detach().cpu().clone()))
            return new
        return propose

    wrap_pack_method("dng_core.posterior", "PosteriorTracker", "propose", wrap)


def _kernel_lines(records: list, change: torch.Tensor, order: torch.Tensor, top: torch.Tensor,
                  rest: torch.Tensor) -> list[str]:
    """Per step: the mean evidence (log p after minus before, after the temperature, offset and rate bound) and
    log p of the top 5 % and the rest; then the top images' largest log p and where it was reached."""
    n = change.numel()
    before, after = torch.stack([r[2] for r in records]), torch.stack([r[3] for r in records])
    inc = after - before
    lines = ["| step (sigma) | top 5 %: update, log p | the rest: update, log p |", "|---|---|---|"]
    for i, r in enumerate(records):
        lines.append(f"| {r[0]:.3f} -> {r[1]:.3f} | {float(inc[i, top].mean()):.2f}, {float(after[i, top].mean()):.2f} "
                     f"| {float(inc[i, rest].mean()):.2f}, {float(after[i, rest].mean()):.2f} |")
    lines += ["", "| image | change | max log p (at sigma) | final log p | largest one-step rise (at sigma) |",
              "|---:|---:|---|---:|---|"]
    for j in top[:10].tolist() + [int(order[n // 2])]:
        k, m = int(after[:, j].argmax()), int(inc[:, j].argmax())
        lines.append(f"| {j} | {float(change[j]):.4f} | {float(after[k, j]):.2f} ({records[k][1]:.3f}) | "
                     f"{float(after[-1, j]):.2f} | {float(inc[m, j]):.2f} ({records[m][0]:.3f}) |")
    return lines


def analyse(cell: str, seed: int, lambda0: float, overrides: dict) -> list[str]:
    offset_trust = overrides["offset_trust"]
    model, sampler, steps = cell.split("/")
    runner = _Runner(OUT, overrides)  # loads the pack (offset_trust: patched into its runs)
    records: list = []
    record_path_terms(records)
    kernel_records: list = []
    record_kernel_steps(kernel_records)
    ref, samples = runner.sample_against_plain(Point(model, sampler, int(steps), seed, "unrelated", "dng", lambda0))
    change = per_image_change(samples, ref)
    n = change.numel()
    order = change.argsort(descending=True)
    top, rest = order[: n // 20], order[n // 20:]
    lines = [f"# Unrelated change of {cell}, seed {seed}, lambda0 {lambda0:g}: which images, and why", "",
             f"Generated by `benchmarks/unrelated_tail.py`. ComfyUI {environment()['comfyui']}, {n} images "
             "(the grid's unrelated point). log p is after the temperature, offset and rate bound. "
             f"offset_trust {offset_trust:g} (dng_core.PosteriorConfig; 0: no bound).", "",
             f"Mean change {float(change.mean()):.4f}; median {float(change.median()):.4f}; the top 5 % carry "
             f"{float(change[top].sum() / change.sum()):.0%}; without the top 1 / 2 images: "
             f"{float((change.sum() - change[order[0]]) / (n - 1)):.4f} / "
             f"{float((change.sum() - change[order[:2]].sum()) / (n - 2)):.4f}.", ""]
    if not records:  # the kernel estimator (stochastic samplers): no path terms
        return lines + _kernel_lines(kernel_records, change, order, top, rest)
    G, S, D, LP = (torch.stack([r[k] for r in records]) for k in (2, 3, 4, 5))
    lines += ["| step (sigma) | top 5 %: grad / sigma / div term, log p | the rest: grad / sigma / div term, log p |",
              "|---|---|---|"]
    for i, r in enumerate(records):
        def m(t, idx):
            return float(t[i, idx].mean())
        lines.append(f"| {r[0]:.3f} -> {r[1]:.3f} | {m(G, top):.2f} / {m(S, top):.2f} / {m(D, top):.2f}, "
                     f"{m(LP, top):.2f} | {m(G, rest):.2f} / {m(S, rest):.2f} / {m(D, rest):.2f}, {m(LP, rest):.2f} |")
    lines += ["", "| image | change | max log p | final log p | total grad / sigma / div term |", "|---:|---:|---:|---:|---|"]
    for j in top[:10].tolist():
        lines.append(f"| {j} | {float(change[j]):.4f} | {float(LP[:, j].max()):.2f} | {float(LP[-1, j]):.2f} | "
                     f"{float(G[:, j].sum()):.1f} / {float(S[:, j].sum()):.1f} / {float(D[:, j].sum()):.1f} |")
    lines += ["", "The last eight steps of the top three images and of the median one. The one-sided evidence reads the",
              "state without DNG's pushes, x + offset, with the predictions made at the pushed x; the sigma term read at",
              "the pushed x instead, and |offset|, show whether the two agree.", "",
              "| image | sigma after the step | log p | grad / sigma / div term | sigma term at the pushed x | |offset| |",
              "|---:|---:|---:|---|---:|---:|"]
    P, O = torch.stack([r[6] for r in records]), torch.stack([r[7] for r in records])
    for j in top[:3].tolist() + [int(order[n // 2])]:
        for i in range(max(0, len(records) - 8), len(records)):
            lines.append(f"| {j} | {records[i][1]:.3f} | {float(LP[i, j]):.2f} | {float(G[i, j]):.1f} / "
                         f"{float(S[i, j]):.1f} / {float(D[i, j]):.1f} | {float(P[i, j]):.1f} | {float(O[i, j]):.2f} |")
    return lines


def main() -> None:
    cell, seed, lambda0, overrides, tag = point_study_args(__doc__.splitlines()[0])
    write_point_study("unrelated_tail", cell, seed, tag, analyse(cell, seed, lambda0, overrides))


if __name__ == "__main__":
    main()
