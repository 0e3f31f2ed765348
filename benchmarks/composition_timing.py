"""When is a composition decided, and when does DNG act? The cause of DNG's under-removal on the shapes model.

``composition.py`` found that on "red circle and blue square" with the negative "red circle", DNG at the node
defaults removes the red circle from 53 -> 35 % of the images where negative prompting at scale 3 reaches 8 %, and
that raising lambda0 helps little. This study separates the two possible causes:

* **the layout is decided early** and guidance that starts late cannot change it: negative prompting (NP) at scale
  3 applied only on the steps ``[k, 20)`` ("late window") or only on ``[0, k)`` ("early window"), by splitting the
  run into two KSamplerAdvanced segments at step k (the first returns its leftover noise, the second continues it);
  two controls split at step 6 with the same method on both sides check that the split itself changes nothing;
* **the posterior rises only after that**: DNG's per-step lambda and p, from its trace (the first 64 images of the
  batch), split by whether the final image still shows the concept, at lambda0 120 (the default when this ran, with the paper's sampled evidence, which these points keep), 400
  and 1000 (the node maximum), and the
  unrelated case at the same lambda0 (what the strength costs where the concept is absent);
* **what a prompt-level prior would buy**: DNG whose prior is raised to what a user who knows the positive names
  the concept would set, with lambda0 chosen so that the guidance starts at NP's scale 3 (lambda0 p0 / (1 - p0) = 3)
  and must then be switched off by the evidence where the concept is absent.

    .venv/bin/python benchmarks/composition_timing.py --part euler_ancestral --samplers euler_ancestral
    .venv/bin/python benchmarks/composition_timing.py --part euler --samplers euler
    .venv/bin/python benchmarks/composition_timing.py --merge

Writes benchmarks/results/composition_timing.{json,md}; ComfyUI's real executor runs every point (N 500, seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import RESULTS, environment, interpolate_at, log, split_at_step  # noqa: E402
from benchmarks.composition import (CASES, CFG, SAMPLERS, STEPS, ShapesScorer, _f, _interp_in_strength,  # noqa: E402
                                    score, shapes_prompt)
from devtools.dng_defaults import dng_node_defaults  # noqa: E402
from reference_model import shapes  # noqa: E402

NP_SCALE = 3.0
WINDOW_STEPS = (2, 4, 6, 8, 12)
CONTROL_SPLIT = 6
#: the first step of the window in which NP alone still removes the concept (measured: see the window table)
DECIDING_FROM = 8
DNG_LAMBDA0 = {"related": (120.0, 400.0, 1000.0), "unrelated": (120.0, 400.0, 1000.0)}  # 1000 is the node maximum
#: prior p0, lambda0 with lambda0 * p0 / (1 - p0) = NP_SCALE (DNG that starts as NP 3 and must switch itself off),
#: and the offset (None = the node default; 0 = evidence only, so that the offset's rise is not mistaken for evidence)
PRIOR_POINTS = ((0.05, 57.0, None), (0.2, 12.0, None), (0.5, 3.0, None), (0.2, 12.0, 0.0))
#: the uncorrected evidence (dng_core.posterior.EvidencePath): lambda0 at a negative prompt's size (the largest
#: scale is 4 lambda0 at p_max 0.8); prior 0.05 with the default offset, or prior 0.5 with no offset
UNCORRECTED_POINTS = ((0.5, 0.05, None), (1.0, 0.05, None), (2.0, 0.05, None), (1.0, 0.5, 0.0), (2.0, 0.5, 0.0))
PARTS = RESULTS / "composition_timing_parts"


def split_prompt(*, first: str, second: str, k: int, positive: str, negative: str, batch_size: int, seed: int,
                 sampler: str, np_scale: float = NP_SCALE) -> dict:
    """Two KSamplerAdvanced segments, steps [0, k) then [k, STEPS), each ``plain`` (the empty prompt as negative)
    or ``np`` (the NP patch with the concept as negative). Ids: "11" first segment, "5" second (the final latent),
    "12"/"13" the NP patch of each segment (common.split_at_step)."""
    p = shapes_prompt(method="plain", positive=positive, negative=negative, batch_size=batch_size, seed=seed,
                      sampler=sampler)
    neg_of = {"plain": ["2", 0], "np": ["3", 0]}

    def model_of(method: str, node_id: str) -> list:
        if method == "plain":
            return ["1", 0]
        p[node_id] = {"class_type": "DNGNegativePrompting",
                      "inputs": {"model": ["1", 0], "empty_conditioning": ["2", 0], "scale": float(np_scale)}}
        return [node_id, 0]

    return split_at_step(p, k=k, models=(model_of(first, "12"), model_of(second, "13")),
                         negatives=(neg_of[first], neg_of[second]), positive=["8", 0], latent=["4", 0], seed=seed,
                         steps=STEPS, cfg=CFG, sampler=sampler)


def points(sampler: str) -> list[dict]:
    out: list[dict] = [{"sampler": sampler, "kind": "reference", "case": c, "method": m, "strength": s}
                       for c in ("related", "unrelated") for m, s in (("plain", 0.0), ("np", NP_SCALE))]
    out += [{"sampler": sampler, "kind": "window", "case": "related", "method": "np", "strength": NP_SCALE,
             "window": w, "k": k} for w in ("late", "early") for k in WINDOW_STEPS]
    out += [{"sampler": sampler, "kind": "control", "case": "related", "method": m, "strength": NP_SCALE,
             "window": "both", "k": CONTROL_SPLIT} for m in ("plain", "np")]
    # the timing and prior studies are of the paper's (sampled) evidence, the node default when they ran
    out += [{"sampler": sampler, "kind": "dng_timing", "case": c, "method": "dng", "strength": lam, "prior": None,
             "evidence": "sampled"} for c, lams in DNG_LAMBDA0.items() for lam in lams]
    out += [{"sampler": sampler, "kind": "prompt_prior", "case": c, "method": "dng", "strength": lam, "prior": p0,
             "offset": off, "evidence": "sampled"} for c in ("related", "unrelated") for p0, lam, off in PRIOR_POINTS]
    out += [{"sampler": sampler, "kind": "uncorrected", "case": c, "method": "dng", "strength": lam, "prior": p0,
             "offset": off, "evidence": "uncorrected"} for c in ("related", "unrelated")
            for lam, p0, off in UNCORRECTED_POINTS]
    return out


def _split_by_outcome(series: torch.Tensor, shown: torch.Tensor) -> dict[str, list[float] | None]:
    """Per-step mean of a [steps, batch_kept] trace series over the images that still show the concept at the end,
    and over those that do not."""
    out: dict[str, list[float] | None] = {}
    for name, mask in (("shown", shown), ("not_shown", ~shown)):
        out[name] = [round(float(v), 4) for v in series[:, mask].mean(1)] if mask.any() else None
    return out


def run_points(pts: Sequence[dict], n: int, seed: int) -> list[dict]:
    from benchmarks.common import Bench

    bench = Bench()
    scorer = ShapesScorer()
    env = environment()
    plain: dict[tuple[str, str], torch.Tensor] = {}
    rows: list[dict] = []
    for pt in pts:
        c = CASES[pt["case"]]
        kw = dict(positive=c["positive"], negative=c["negative"], batch_size=n, seed=seed, sampler=pt["sampler"])
        if pt["kind"] in ("window", "control"):
            if pt["kind"] == "control":
                first = second = pt["method"]
            elif pt["window"] == "late":
                first, second = "plain", "np"
            else:
                first, second = "np", "plain"
            prompt = split_prompt(first=first, second=second, k=pt["k"], **kw)
        elif pt["method"] == "dng":
            params: dict[str, Any] = {"lambda0": pt["strength"]}
            for key in ("prior", "offset", "evidence"):
                if pt.get(key) is not None:
                    params[key] = pt[key]
            prompt = shapes_prompt(method="dng", **kw, **params)
        elif pt["method"] == "np":
            prompt = shapes_prompt(method="np", scale=pt["strength"], **kw)
        else:
            prompt = shapes_prompt(method="plain", **kw)
        out = bench.run(prompt)
        x = out.samples.clamp(-1, 1)
        if pt["kind"] == "reference" and pt["method"] == "plain":
            plain[(pt["sampler"], pt["case"])] = x
        x0 = plain[(pt["sampler"], pt["case"])]
        pres = scorer.presence(x)
        forbidden_kinds = shapes.matching_kinds(c["negative"])
        row = {"model": "shapes16", "steps": STEPS, "cfg": CFG, "seed": seed, "positive": c["positive"],
               "negative": c["negative"], **pt, **score(pres, c, scorer.presence(x0) if x is not x0 else None),
               "change_vs_plain": (x - x0).abs().flatten(1).mean(1).mean().item(),
               "seconds": round(out.seconds, 1), "host": env["comfyui"]}
        if pt["method"] == "dng":
            row["uses_defaults"] = all(pt.get(k) is None for k in ("prior", "offset", "evidence"))
            lam = out.trace.series("scale")[:, 0, :]
            p = out.trace.series("p")[:, 0, :]
            shown = pres[: lam.shape[-1], forbidden_kinds].any(1)
            row["sigma_per_step"] = [round(s.sigma, 4) for s in out.trace.steps]
            row["lambda_mean_per_step"] = [round(float(v), 4) for v in lam.mean(1)]
            row["lambda_per_step_by_outcome"] = _split_by_outcome(lam, shown)
            row["p_per_step_by_outcome"] = _split_by_outcome(p, shown)
            row["trace_images"] = int(lam.shape[-1])
            row["trace_images_shown"] = int(shown.sum())
        rows.append(row)
        log(f"{pt['sampler']:16s} {pt['kind']:12s} {pt['case']:9s} {pt['method']:5s} {pt['strength']:>7g} "
            f"{pt.get('window', '')}{pt.get('k', '')} prior {pt.get('prior')}: forbidden {row['forbidden_pct']:5.1f} %, "
            f"kept {row['kept_pct']:5.1f} %, change {row['change_vs_plain']:.4f} ({out.seconds:.0f}s)")
    return rows


def first_step_above(series: Sequence[float] | None, level: float) -> int | None:
    """The first step whose value reaches ``level`` (None if it never does)."""
    if not series:
        return None
    return next((i for i, v in enumerate(series) if v >= level), None)


def write_markdown(path: Path, rows: Sequence[dict], meta: dict) -> None:
    L = [f"# When the composition is decided and when DNG acts (shapes16, {meta['host']})", "",
         f"N {rows[0]['n']} per point, seed {meta['seed']}, {STEPS} steps normal, cfg {CFG}; related = positive "
         f"\"{CASES['related']['positive']}\", negative \"{CASES['related']['negative']}\"; unrelated = positive "
         f"\"{CASES['unrelated']['positive']}\". Wall time {meta['wall_seconds']} s. Command: `{meta['command']}`.",
         ""]
    for sampler in sorted({r["sampler"] for r in rows}):
        rs = [r for r in rows if r["sampler"] == sampler]
        ref = {(r["case"], r["method"]): r for r in rs if r["kind"] == "reference"}
        L += [f"## {sampler}", "",
              f"Reference: plain {_f(ref[('related', 'plain')]['forbidden_pct'])} % red circles, NP {NP_SCALE:g} "
              f"(all steps) {_f(ref[('related', 'np')]['forbidden_pct'])} %; unrelated change NP {NP_SCALE:g} "
              f"{_f(ref[('unrelated', 'np')]['change_vs_plain'])}.", "",
              f"### NP {NP_SCALE:g} on part of the steps", "",
              "| window | forbidden % | kept % |", "|---|---|---|"]
        for r in rs:
            if r["kind"] in ("window", "control"):
                if r["kind"] == "control":
                    label = f"control: {r['method']} on both sides of a split at step {r['k']}"
                elif r["window"] == "late":
                    label = f"steps [{r['k']}, {STEPS}) (from sigma {meta['sigmas'][sampler][r['k']]:.3g})"
                else:
                    label = f"steps [0, {r['k']}) (down to sigma {meta['sigmas'][sampler][r['k']]:.3g})"
                L.append(f"| {label} | {_f(r['forbidden_pct'])} +- {_f(r['forbidden_se'], 2)} | "
                         f"{_f(r['kept_pct'])} |")
        L += ["", "### DNG: when lambda rises", "",
              f"Images that keep / lose the concept (the first {rows[0].get('trace_images', 64)} of each batch, from "
              f"the trace): the first step whose mean lambda reaches 1, and the mean lambda over the steps "
              f"[{DECIDING_FROM}, {STEPS}) (the window in which NP {NP_SCALE:g} alone still removes the concept "
              f"above).", "",
              "| case | lambda0 | prior | offset | forbidden % | kept % | change vs plain | change / NP 3's | first step "
              "with mean lambda >= 1 | mean lambda, steps 0-3 | mean lambda, deciding steps |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        np_change = ref[("unrelated", "np")]["change_vs_plain"]
        for r in rs:
            if r["method"] != "dng":
                continue
            by = r["lambda_per_step_by_outcome"]
            first = f"{_f(first_step_above(by['shown'], 1.0))} / {_f(first_step_above(by['not_shown'], 1.0))}"
            early = sum(r["lambda_mean_per_step"][:4]) / 4
            late = " / ".join(_f(sum(v[DECIDING_FROM:]) / len(v[DECIDING_FROM:])) if v else "-"
                              for v in (by["shown"], by["not_shown"]))
            ratio = r["change_vs_plain"] / np_change if r["case"] == "unrelated" else None
            L.append(f"| {r['case']} | {r['strength']:g} | {_f(r['prior']) if r['prior'] else 'default'} | "
                     f"{'default' if r.get('offset') is None else _f(r['offset'])} | "
                     f"{_f(r['forbidden_pct'])} +- {_f(r['forbidden_se'], 2)} | {_f(r['kept_pct'])} | "
                     f"{_f(r['change_vs_plain'])} | {_f(ratio)} | {first} | {_f(early)} | {late} |")
        L += uncorrected_table(rs, sampler)
        L.append("")
    path.write_text("\n".join(L) + "\n")


def uncorrected_table(rs: Sequence[dict], sampler: str) -> list[str]:
    """The uncorrected evidence against NP's sweep of composition.json (same model, sampler, seed and N): NP's
    kept % at DNG's safety, and NP's unrelated change at the scale that matches DNG's safety on the related run."""
    comp = RESULTS / "composition.json"
    rows = [r for r in rs if r["kind"] == "uncorrected"]
    if not rows or not comp.exists():
        return []
    grid = json.loads(comp.read_text())  # a list of rows
    np_rel = sorted((dict(r, scale=r["strength"]) for r in grid if r["sampler"] == sampler
                     and r["case"] == "related" and r["method"] == "np"), key=lambda r: r["strength"])
    np_unrel = sorted((r for r in grid if r["sampler"] == sampler and r["case"] == "unrelated"
                       and r["method"] == "np"), key=lambda r: r["strength"])
    L = ["", "### The uncorrected evidence against negative prompting (NP sweep: composition.json)", "",
         "| lambda0 | prior | offset | forbidden % | kept % | NP kept % at that safety | kept ratio | unrelated "
         "change | NP scale at that safety | NP's unrelated change there | ratio |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["case"] != "related":
            continue
        u = next((x for x in rows if x["case"] == "unrelated" and x["strength"] == r["strength"]
                  and x["prior"] == r["prior"] and x.get("offset") == r.get("offset")), None)
        kept_np = interpolate_at(np_rel, r["forbidden_pct"], "kept_pct")
        scale = interpolate_at(np_rel, r["forbidden_pct"], "scale")
        change_np = _interp_in_strength(np_unrel, scale, "change_vs_plain") if scale is not None else None
        L.append(f"| {r['strength']:g} | {_f(r['prior'])} | {'default' if r.get('offset') is None else _f(r['offset'])}"
                 f" | {_f(r['forbidden_pct'])} +- {_f(r['forbidden_se'], 2)} | {_f(r['kept_pct'])} | {_f(kept_np)} | "
                 f"{_f(r['kept_pct'] / kept_np if kept_np else None)} | {_f(u['change_vs_plain'] if u else None)} | "
                 f"{_f(scale)} | {_f(change_np)} | "
                 f"{_f(u['change_vs_plain'] / change_np if u and change_np else None)} |")
    return L


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--part", default=None, help="write the rows to composition_timing_parts/<PART>.json")
    ap.add_argument("--merge", action="store_true", help="merge the parts into composition_timing.{json,md}")
    ap.add_argument("--limit", type=int, default=None, help="run only the first LIMIT points (a smoke run)")
    ap.add_argument("--kinds", nargs="+", default=None,
                    choices=["reference", "window", "control", "dng_timing", "prompt_prior", "uncorrected"],
                    help="only these kinds of point (the reference points are always run: the others need them)")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(f.read_text()) for f in sorted(PARTS.glob("*.json"))]
        rows, seen = [], set()
        for r in (r for part in parts for r in part["rows"]):
            key = (r["sampler"], r["kind"], r["case"], r["method"], r["strength"], r.get("window"), r.get("k"),
                   r.get("prior"), r.get("offset"), r.get("evidence"))
            if key not in seen:  # each part runs the reference points again; keep the first
                seen.add(key)
                rows.append(r)
        meta = {**parts[0]["meta"], "command": [p["meta"]["command"] for p in parts],
                "wall_seconds": sum(p["meta"]["wall_seconds"] for p in parts),
                "sigmas": {k: v for p in parts for k, v in p["meta"]["sigmas"].items()}}
        (RESULTS / "composition_timing.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        write_markdown(RESULTS / "composition_timing.md", rows, meta)
        log(f"wrote {RESULTS / 'composition_timing.md'}")
        return 0
    t0 = time.perf_counter()
    pts = [pt for s in args.samplers for pt in points(s)
           if args.kinds is None or pt["kind"] in args.kinds or pt["kind"] == "reference"][: args.limit]
    rows = run_points(pts, args.n, args.seed)
    env = environment()
    sigmas = {}
    for r in rows:
        if "sigma_per_step" in r:
            sigmas[r["sampler"]] = r["sigma_per_step"] + [0.0]
    meta = {"seed": args.seed, "command": "python benchmarks/composition_timing.py " + " ".join(argv or sys.argv[1:]),
            "wall_seconds": round(time.perf_counter() - t0), "host": env["comfyui"], **env,
            "dng_defaults": dng_node_defaults(), "sigmas": sigmas}
    if args.part:
        PARTS.mkdir(parents=True, exist_ok=True)
        (PARTS / f"{args.part}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    else:
        (RESULTS / "composition_timing.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        if sigmas:
            write_markdown(RESULTS / "composition_timing.md", rows, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
