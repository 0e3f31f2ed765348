"""Which images a removal point leaks or saves, what their posterior did, and how many it destroys (issue 11).

Reruns a grid point of the removal case (DNG at the node defaults, or ``--offset-trust``) against plain sampling
with the same seed (cached beside the grid's plain references), with the pack's ``PosteriorTracker.commit``
wrapped (its result unchanged) to record every image's log p after each step. The reference classifier splits the
images: *leaked* (DNG's image is the forbidden digit), *saved* (plain's is, DNG's is not) and the rest; of the
rest, those DNG turns into another digit are its collateral on the removal run itself. Prints and
writes benchmarks/results/removal_tail_<cell>_seed<S>[_trust<K>].md: the counts, the per-step mean log p of the
three groups, and the destroyed images: those whose RMS value exceeds 1.5 (an image in the data range [-1, 1] has
an RMS of at most 1) or that change by more than 1 per pixel on average. A saved image that is destroyed is not
a removal: the classifier only says it is not a 0.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/removal_tail.py --cell mnist16/euler/20 --seed 1   # ~5 min
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import (DESTROYED_RMS, RESULTS, destroyed_images, environment,  # noqa: E402
                               per_image_change, point_study_args, wrap_pack_method, write_point_study)
from benchmarks.defaults_grid import OUT, Point, _Runner  # noqa: E402


def record_commits(records: list) -> None:
    """Wrap the pack's ``PosteriorTracker.commit`` to record each committed log p, [B] per step."""
    def wrap(original):
        def commit(self, log_p):
            records.append(log_p.detach().cpu().clone())
            return original(self, log_p)
        return commit

    wrap_pack_method("dng_core.posterior", "PosteriorTracker", "commit", wrap)


def digit_counts(labels: torch.Tensor) -> str:
    """"1: 3, 4: 7" for the digits present."""
    counts = torch.bincount(labels.long(), minlength=10)
    return ", ".join(f"{d}: {int(c)}" for d, c in enumerate(counts) if c) or "none"


def turned_digits(y_plain: torch.Tensor, y_new: torch.Tensor, removed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain's images that are not the removed digit, those of them the method turns into another digit): the
    collateral, digits the negative never asked to touch."""
    others = y_plain != removed
    return others, others & (y_new != y_plain)


def np_collateral(runner: _Runner, scorer, cell: str, seed: int) -> str:
    """For scale: negative prompting at the cell's matched scale (the grid's verdicts at the default), the same
    count of other digits turned into another digit; "" where the grid has no matched scale for the cell."""
    import json

    model, sampler, steps = cell.split("/")
    verdicts = json.loads((RESULTS / "defaults_grid_verdicts.json").read_text())["at_default"]
    scale = next((v.get("np_matched_scale") for v in verdicts if (v["model"], v["sampler"], v["steps"], v["seed"])
                  == (model, sampler, int(steps), seed)), None)
    if scale is None:
        return ""
    plain, samples = runner.sample_against_plain(Point(model, sampler, int(steps), seed, "removal", "np", scale))
    y_plain, y_np = torch.as_tensor(scorer.predict(plain)), torch.as_tensor(scorer.predict(samples))
    others, moved = turned_digits(y_plain, y_np, scorer.removed)
    change = per_image_change(samples, plain)
    left = float((y_np == scorer.removed).double().mean())
    return (f"- for scale, negative prompting at its matched scale {scale:g} ({left:.1%} left) turns "
            f"{int(moved.sum())} of {int(others.sum())} ({float(moved.sum() / others.sum()):.1%}) of plain's other "
            f"digits into another digit and changes them by {float(change[others].mean()):.4f} on average.")


def analyse(cell: str, seed: int, lambda0: float, overrides: dict) -> list[str]:
    offset_trust = overrides["offset_trust"]
    model, sampler, steps = cell.split("/")
    runner = _Runner(OUT, overrides)  # loads the pack (offset_trust: patched into its runs)
    records: list = []
    record_commits(records)
    plain, samples = runner.sample_against_plain(Point(model, sampler, int(steps), seed, "removal", "dng", lambda0))
    scorer = runner.scorer(model)
    y_plain = torch.as_tensor(scorer.predict(plain))
    y_dng = torch.as_tensor(scorer.predict(samples))
    log_p = torch.stack(records)  # [steps, N]
    leaked = y_dng == scorer.removed
    saved = (y_plain == scorer.removed) & ~leaked
    rest = ~leaked & ~saved
    change = per_image_change(samples, plain)
    others, moved = turned_digits(y_plain, y_dng, scorer.removed)
    bad_rms, bad_change, plain_rms = destroyed_images(samples), change > 1.0, destroyed_images(plain)
    n = int(y_dng.numel())
    reached = log_p.max(0).values > torch.log(torch.tensor(0.5))  # p went above 0.5: the push ran near full
    lines = [f"# Removal by {cell}, seed {seed}, lambda0 {lambda0:g}: leaked, saved and destroyed images", "",
             f"Generated by `benchmarks/removal_tail.py`. ComfyUI {environment()['comfyui']}, {n} images (the grid's "
             f"removal point). offset_trust {offset_trust:g} (dng_core.PosteriorConfig; 0: no bound)"
             + "".join(f"; {k} {v}" for k, v in overrides.items() if k != "offset_trust")
             + ". log p is after the temperature, offset and rate bound.", "",
             f"- plain: {int((y_plain == scorer.removed).sum())} forbidden digits; DNG: {int(leaked.sum())} leaked "
             f"({int((leaked & (y_plain == scorer.removed)).sum())} of them plain's), {int(saved.sum())} saved.",
             f"- destroyed (RMS > {DESTROYED_RMS}): DNG {int(bad_rms.sum())}, plain {int(plain_rms.sum())}; changed "
             f"by > 1 per pixel: {int(bad_change.sum())}, of them saved images {int((bad_change & saved).sum())}.",
             f"- mean change per pixel: saved {float(change[saved].mean()):.3f}, the rest "
             f"{float(change[rest].mean()):.3f}; saved images whose p exceeded 0.2: "
             f"{float((log_p[:, saved].max(0).values > torch.log(torch.tensor(0.2))).double().mean()):.0%}.",
             f"- plain's other digits that DNG turns into another digit: {int(moved.sum())} of {int(others.sum())} "
             f"({float(moved.sum() / others.sum()):.1%}), to: {digit_counts(y_dng[moved])}; their mean change "
             f"{float(change[moved].mean()) if bool(moved.any()) else 0.0:.3f} per pixel; plain's other digits "
             f"changed by {float(change[others].mean()):.4f} on average (median {float(change[others].median()):.4f}).",
             f"- the saved 0s become: {digit_counts(y_dng[saved])}.",
             f"- leaked images whose p exceeded 0.5 at some step: {int(reached[leaked].sum())} of {int(leaked.sum())};"
             f" saved: {int(reached[saved].sum())} of {int(saved.sum())}.",
             *filter(None, [np_collateral(runner, scorer, cell, seed)]), "",
             "| step | leaked: mean log p (min .. max) | saved: mean log p | the rest: mean log p |",
             "|---:|---|---:|---:|"]
    for i in range(log_p.shape[0]):
        lk = log_p[i, leaked]
        lk_text = f"{float(lk.mean()):.2f} ({float(lk.min()):.2f} .. {float(lk.max()):.2f})" if lk.numel() else "-"
        lines.append(f"| {i} | {lk_text} | {float(log_p[i, saved].mean()):.2f} | {float(log_p[i, rest].mean()):.2f} |")
    return lines


def main() -> None:
    cell, seed, lambda0, overrides, tag = point_study_args(__doc__.splitlines()[0])
    write_point_study("removal_tail", cell, seed, tag, analyse(cell, seed, lambda0, overrides))


if __name__ == "__main__":
    main()
