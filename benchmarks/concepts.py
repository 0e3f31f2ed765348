"""Several negative concepts and adaptive pruning (issue 13): cost, change against full DNG, removal.

Everything runs through ComfyUI's real executor with the pack's nodes (DNG Concept chains into the DNG patch).

Reference model (digits8, trained; N images per point, one seed):

* ``unrelated``: positive digit 7 at cfg 3; concepts 0 (K = 1) or 0, 3, 5, 8 (K = 4), none of which the
  positive produces;
* ``related``: unconditional generation (the removal benchmark's setting), concept 0 (K = 1) or 0, 3, 5, 8
  (K = 4); each of them is present in about a tenth of the unguided samples; forbidden % scores digit 0.

Per point: DNG at the node defaults with pruning off ("full") and on; plain sampling and negative prompting
(concept 0, scale NP_SCALE) as yardsticks. ``cost_ratio_vs_cfg``: model predictions per step (rows of the
diffusion model's calls, counted by a forward hook) over plain CFG's 2; ``mean_abs_change_vs_full``: mean
|x_pruned - x_full| over negative prompting's mean |x_NP - x_plain| (same seed), 0 for the full rows;
``forbidden_pct``: digit 0 among the samples (reference classifier).

Wall time (``--wall``): plain CFG against DNG with K = 1 and K = 4, pruning on and off, interleaved in one
process, on digits8 (batch 64) and on the tiny random-weight SD1.5 (64x64, batch 2; random weights: whether
its concepts settle says nothing).

Writes benchmarks/results/concepts.json (rows with the keys model, sampler, steps, K, case, pruning,
cost_ratio_vs_cfg, mean_abs_change_vs_full, forbidden_pct, n, ...) and concepts.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import Bench, Scorer, digit_prompt, log, mean_se  # noqa: E402
from devtools.dng_defaults import chain_concepts, dng_node_defaults  # noqa: E402
from devtools.tiny_families import ForwardRows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
NP_SCALE = 0.5
UNRELATED = ["0", "3", "5", "8"]
CASES = {"unrelated": {"positive_digit": "7", "cfg": 3.0}, "related": {"positive_digit": None, "cfg": 1.0}}


def digit_concepts(p: dict, digits: list[str]) -> dict:
    """DNG Concept nodes for ``digits`` (lambda0: the DNG node's), chained into the patch's more_concepts."""
    return chain_concepts(p, [{"class_type": "DNGDigitConditioning", "inputs": {"digit": d}} for d in digits],
                          [f"digit {d}" for d in digits])


def dng_prompt(case: str, k: int, prune: bool, *, n: int, seed: int, steps: int, sampler: str) -> dict:
    p = digit_prompt(method="dng", batch_size=n, seed=seed, steps=steps, sampler=sampler, negative_digit="0",
                     **CASES[case], **{**dng_node_defaults(), "prune_concepts": prune})
    return digit_concepts(p, UNRELATED[1:k])


def _runs(bench: Bench, make, n: int, batch: int, seed: int):
    """``n`` samples in runs of ``batch`` images (seeds seed, seed + 1, ...): (samples, [traces])."""
    samples, traces = [], []
    for i in range(max(1, n // batch)):
        out = bench.run(make(batch, seed + i))
        samples.append(out.samples)
        traces.append(out.trace)
    return torch.cat(samples), traces


def reference_rows(bench: Bench, scorer: Scorer, *, n: int, seed: int, steps: int, sampler: str,
                   batch: int) -> list[dict]:
    """``batch``: images per run. A concept stops being predicted only when every image of its run has
    settled, so pruning saves most at batch 1 (ComfyUI's usual batch) and almost nothing in a batch of 500."""
    rows = []
    model = None
    for case in CASES:
        def plain_or_np(method, **kw):
            return lambda b, s: digit_prompt(method=method, batch_size=b, seed=s, steps=steps, sampler=sampler,
                                             negative_digit="0", **CASES[case], **kw)
        plain, _ = _runs(bench, plain_or_np("plain"), n, batch, seed)
        npx, _ = _runs(bench, plain_or_np("np", scale=NP_SCALE), n, batch, seed)
        np_change = float((npx - plain).abs().mean())
        if model is None:
            model = bench.runner.output_of("1")[0][0].model.diffusion_model
        for k in (1, 4):
            full = None
            for prune in (False, True):
                counter = ForwardRows(model)
                try:
                    samples, traces = _runs(bench, lambda b, s: dng_prompt(case, k, prune, n=b, seed=s, steps=steps,
                                                                           sampler=sampler), n, batch, seed)
                finally:
                    counter.close()
                calls = counter.take()
                predictions = sum(calls) / len(samples)
                score = scorer.score(samples, bootstrap=0)
                change = 0.0 if full is None else float((samples - full).abs().mean()) / np_change
                predicted = torch.cat([t.predicted_series().float() for t in traces], dim=1) > 0.5
                row = {"model": "digits8", "sampler": sampler, "steps": steps, "K": k, "case": case,
                       "pruning": prune, "batch": batch, "cost_ratio_vs_cfg": round(predictions / steps / 2, 4),
                       "predictions_per_step": round(predictions / steps, 3),
                       "concept_predictions_saved_pct": round(100 * (1 - float(predicted.float().mean())), 1),
                       "mean_abs_change_vs_full": change, "np_mean_abs_change": np_change,
                       "forbidden_pct": score["forbidden_pct"], "forbidden_se_pct": score["forbidden_se_pct"],
                       "n": len(samples), "seed": seed, "variance": traces[0].params["variance"],
                       "first_pruned_step": _first_pruned(predicted)}
                if full is None:
                    full = samples
                rows.append(row)
                log(f"{sampler} batch {batch} {case} K={k} pruning={prune}: cost {row['cost_ratio_vs_cfg']:.2f}x CFG, "
                    f"saved {row['concept_predictions_saved_pct']} % of concept predictions, change vs full "
                    f"{change:.4f} of NP's, forbidden {row['forbidden_pct']:.1f} +- {row['forbidden_se_pct']:.1f} %")
    return rows


def _first_pruned(predicted) -> float | None:
    """The mean first step at which a concept was pruned, over the runs x concepts where one was."""
    firsts = [int(col.logical_not().nonzero()[0]) for col in predicted.T if (~col).any()]
    return round(statistics.fmean(firsts), 1) if firsts else None


def wall_rows(bench: Bench, repeats: int, steps: int) -> list[dict]:
    """Interleaved wall times of plain CFG and DNG (K = 1, 4; pruning off / on), ratios per repeat."""
    from devtools import tiny_families as TF

    TF.register_conditioning_node()
    sd15 = TF.install_family("sd15")

    def variants(model: str):
        if model == "digits8":
            base = dict(n=64, seed=5, steps=steps, sampler="euler_ancestral")
            yield "plain", digit_prompt(method="plain", batch_size=64, seed=5, steps=steps,
                                        sampler="euler_ancestral", negative_digit="0", **CASES["unrelated"])
            for k in (1, 4):
                for prune in (False, True):
                    yield f"K={k} pruning={prune}", dng_prompt("unrelated", k, prune, **base)
        else:
            yield "plain", TF.family_prompt("sd15", sd15, "plain", sampler="euler_ancestral", steps=steps, seed=5)
            for k in (1, 4):
                for prune in (False, True):
                    p = TF.family_prompt("sd15", sd15, "patch", sampler="euler_ancestral", steps=steps, seed=5,
                                         dng={**dng_node_defaults(), "prune_concepts": prune})
                    chain_concepts(p, [{"class_type": TF.CONDITIONING_NODE,
                                        "inputs": {"family": "sd15", "role": f"concept{i}", "seed": 0}}
                                       for i in range(k - 1)], [""] * (k - 1))
                    yield f"K={k} pruning={prune}", p

    out = []
    for model in ("digits8", "sd15_tiny"):
        prompts = dict(variants(model))
        for p in prompts.values():  # warm-up (model load, caches)
            bench.runner.run(p, check=True)
        times = {name: [] for name in prompts}
        for i in range(repeats):
            order = list(prompts) if i % 2 == 0 else list(reversed(prompts))
            for name in order:
                p = json.loads(json.dumps(prompts[name]))
                p["5"]["inputs"]["seed"] = 100 + i
                t0 = time.perf_counter()
                bench.runner.run(p, check=True)
                times[name].append(time.perf_counter() - t0)
        for name in prompts:
            if name == "plain":
                continue
            m, se = mean_se([a / b for a, b in zip(times[name], times["plain"])])
            out.append({"model": model, "variant": name, "wall_ratio_vs_cfg": round(m, 3), "se": round(se, 3),
                        "repeats": repeats, "steps": steps, "plain_s": round(statistics.fmean(times["plain"]), 3)})
            log(f"wall {model} {name}: {m:.2f} +- {se:.2f} x plain CFG")
    return out


def write_markdown(res: dict, path: Path) -> None:
    L = [f"# Several concepts and pruning (issue 13), ComfyUI {res['host']}", "",
         f"`python benchmarks/concepts.py`; digits8, N = {res['n']} per point (in runs of 1 image, seeds "
         f"{res['seed']}...; or one run of N), seed {res['seed']}, "
         f"{res['steps']} steps, DNG at the node defaults. Cost: model predictions per step over plain CFG's 2. "
         f"Change: mean |x - x_full| over negative prompting's mean |x_NP - x_plain| (concept 0, scale {NP_SCALE}).",
         "", "| sampler | images per run | case | K | pruning | cost vs CFG | concept predictions saved | change vs "
         "full (of NP's) | forbidden % (digit 0) | mean first pruned step |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['sampler']} | {r['batch']} | {r['case']} | {r['K']} | {'on' if r['pruning'] else 'off'} | "
                 f"{r['cost_ratio_vs_cfg']:.2f}x | {r['concept_predictions_saved_pct']} % | "
                 f"{r['mean_abs_change_vs_full']:.4f} | {r['forbidden_pct']:.1f} +- {r['forbidden_se_pct']:.1f} | "
                 f"{r['first_pruned_step']} |")
    if res.get("wall"):
        L += ["", "Wall time against plain CFG (interleaved, mean +- standard error):", "",
              "| model | variant | wall ratio | plain run (s) |", "|---|---|---|---|"]
        for r in res["wall"]:
            L.append(f"| {r['model']} | {r['variant']} | {r['wall_ratio_vs_cfg']:.2f} +- {r['se']:.2f} "
                     f"(n={r['repeats']}) | {r['plain_s']} |")
    L += ["", res.get("note", ""), ""]
    path.write_text("\n".join(L))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batches", default="1,500", help="images per run, per pass (n is split into runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--samplers", default="euler_ancestral,euler")
    ap.add_argument("--wall", type=int, default=4, help="interleaved wall-time repeats (0: skip)")
    ap.add_argument("--out", default=str(RESULTS / "concepts"))
    a = ap.parse_args(argv)
    from devtools.tiny_checkpoint import host_version

    bench = Bench()
    scorer = Scorer(removed=0)
    rows = []
    for sampler in a.samplers.split(","):
        for batch in (int(b) for b in a.batches.split(",")):
            rows += reference_rows(bench, scorer, n=a.n, seed=a.seed, steps=a.steps, sampler=sampler,
                                   batch=min(batch, a.n))
    res = {"host": host_version(), "n": a.n, "seed": a.seed, "steps": a.steps, "np_scale": NP_SCALE,
           "rows": rows, "wall": wall_rows(bench, a.wall, a.steps) if a.wall else []}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    write_markdown(res, out.with_suffix(".md"))
    log(f"wrote {out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
