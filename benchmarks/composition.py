"""Remove a concept, keep the rest: DNG, negative prompting and SLD on the text-conditioned shapes model.

The paper's text-to-image cases ("Taylor Swift riding a horse" without Taylor Swift; "an English breakfast"
left alone) on the closest proxy that trains here: the shapes16 reference model (``reference_model/shapes.py``,
``text_network.py``), whose prompts share one encoder and one cross-attention pathway as in Stable Diffusion.
Every point is one API prompt run by ComfyUI's real executor (the pack's shapes nodes, KSampler, the DNG / NP /
SLD patch), batch N, all methods of a case from the same seed so the change against plain sampling is paired.

    .venv/bin/python benchmarks/composition.py                 # full: N 500, euler_ancestral + euler, 20 steps
    .venv/bin/python benchmarks/composition.py --geometry-only # the cosine figures only (pure torch, no host)

Cases (``CASES``): **related** (positive "red circle and blue square", negative "red circle": forbidden = a red
circle is shown, kept = a blue square is), **unrelated** (positive "blue square", negative "red circle": the mean
change against plain sampling as a fraction of NP's), **overlap** (positive "red square", negative "red" or
"circle": what each method does to a prompt that shares a word with the negative).

DNG runs at the node defaults (its lambda0 swept around the default: ``uses_defaults`` marks every row whose other
values are the defaults); NP at its scales; SLD at the diffusers presets. Plain sampling uses the empty prompt as
the KSampler's negative. Geometry: per step, along plain CFG sampling of the positive, the cosine between
(D_pos - D_u) and (D_neg - D_u) for related and unrelated pairs, on this model and on the digits8 model.

Writes benchmarks/results/composition.json (rows: sampler, case, method, strength, n, forbidden_pct, kept_pct,
change_vs_plain, change_vs_np, uses_defaults, and more), composition.md and composition_*.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import RESULTS, environment, interpolate_at, log, trace_summary  # noqa: E402
from devtools.dng_defaults import dng_node_defaults  # noqa: E402
from dng_core.baselines import SLD_PRESETS as SLD_CONFIGS  # noqa: E402
from reference_model import shapes  # noqa: E402

CFG = 3.0
STEPS = 20
SCHEDULER = "normal"
SAMPLERS = ("euler_ancestral", "euler")
#: case -> positive, negative, what counts as forbidden (kinds matching the negative's words), what is kept
CASES: dict[str, dict[str, str]] = {
    "related": {"positive": "red circle and blue square", "negative": "red circle", "kept": "blue square"},
    "unrelated": {"positive": "blue square", "negative": "red circle", "kept": "blue square"},
    "overlap_red": {"positive": "red square", "negative": "red", "kept": "red square"},
    "overlap_circle": {"positive": "red square", "negative": "circle", "kept": "red square"},
}
DNG_LAMBDA0 = (30.0, 60.0, 75.0, 120.0, 240.0)  # 75: today's default; the published run predates it
NP_SCALES = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
SLD_PRESETS = ("weak", "medium", "strong", "max")
OVERLAP_NP = (1.0, 3.0)
OVERLAP_SLD = ("medium", "max")


def shapes_prompt(*, method: str, positive: str, negative: str, batch_size: int, seed: int, sampler: str,
                  steps: int = STEPS, cfg: float = CFG, scheduler: str = SCHEDULER, **params: Any) -> dict:
    """API prompt on the shapes model. Ids: "1" loader, "2" empty prompt, "3" negative, "8" positive, "4" latent,
    "5" KSampler, "6" grid, "7" preview, "10" the patch (absent for plain, whose negative is the empty prompt)."""
    enc = lambda text: {"class_type": "DNGShapesTextEncode", "inputs": {"model": ["1", 0], "text": text}}  # noqa: E731
    p: dict[str, Any] = {
        "1": {"class_type": "DNGShapesModelLoader", "inputs": {}},
        "2": enc(""), "3": enc(negative), "8": enc(positive),
        "4": {"class_type": "DNGEmptyShapesLatent", "inputs": {"model": ["1", 0], "batch_size": int(batch_size)}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": int(seed), "steps": int(steps), "cfg": float(cfg), "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["8", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "DNGShapesToImage", "inputs": {"samples": ["5", 0], "columns": 64, "scale": 1}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    if method == "plain":
        p["5"]["inputs"]["negative"] = ["2", 0]
        return p
    if method == "dng":
        node, inputs = "DynamicNegativeGuidance", {**dng_node_defaults(), **params}
    elif method == "np":
        node, inputs = "DNGNegativePrompting", dict(params)
    elif method == "sld":
        c = SLD_CONFIGS[params["preset"]]
        node, inputs = "DNGSafeLatentDiffusion", {
            "preset": params["preset"], "warmup": c.warmup, "safety_scale": c.guidance_scale,
            "threshold": c.threshold, "momentum_scale": c.momentum_scale, "momentum_beta": c.momentum_beta}
    else:
        raise ValueError(f"unknown method {method!r}")
    p["10"] = {"class_type": node, "inputs": {"model": ["1", 0], "empty_conditioning": ["2", 0], **inputs}}
    p["5"]["inputs"]["model"] = ["10", 0]
    return p


class ShapesScorer:
    """The shapes evaluator: which kinds each sample shows (sigmoid > 0.5)."""

    def __init__(self) -> None:
        from reference_model import load_classifier, weights_path

        self.clf, _ = load_classifier(weights_path("shapes16_evaluator"))

    @torch.no_grad()
    def presence(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(-1, 1)
        return torch.cat([self.clf(x[i:i + 1000]) > 0 for i in range(0, len(x), 1000)])


def _pct_se(k: float, n: int) -> float:
    p = k / n
    return 100.0 * math.sqrt(max(p * (1 - p), 1.0 / n) / n)


def score(pres: torch.Tensor, case: dict[str, str], plain_pres: torch.Tensor | None) -> dict[str, Any]:
    n = len(pres)
    forb = pres[:, shapes.matching_kinds(case["negative"])].any(1).float()
    kept = pres[:, shapes.kind_index(case["kept"])].float()
    out = {"n": n, "forbidden_pct": 100 * forb.mean().item(), "forbidden_se": _pct_se(forb.sum().item(), n),
           "kept_pct": 100 * kept.mean().item(), "kept_se": _pct_se(kept.sum().item(), n),
           "objects_per_image": pres.float().sum(1).mean().item()}
    if plain_pres is not None:
        # the kept objects' kind histogram against plain sampling's: total-variation distance over the kinds that
        # are not forbidden (0 = the same mix of objects, 1 = disjoint)
        allowed = [k for k in range(shapes.NUM_KINDS) if k not in shapes.matching_kinds(case["negative"])]
        h = pres[:, allowed].float().sum(0)
        h0 = plain_pres[:, allowed].float().sum(0)
        out["hist_tv_vs_plain"] = 0.5 * (h / h.sum().clamp(min=1) - h0 / h0.sum().clamp(min=1)).abs().sum().item()
    return out


def points(samplers: Sequence[str], cases: Sequence[str]) -> list[tuple[str, str, str, Any]]:
    out = []
    for sampler in samplers:
        for case in cases:
            out.append((sampler, case, "plain", 0.0))
            lam = DNG_LAMBDA0 if case in ("related", "unrelated") else (float(dng_node_defaults()["lambda0"]),)
            out += [(sampler, case, "dng", v) for v in lam]
            out += [(sampler, case, "np", v) for v in (NP_SCALES if case in ("related", "unrelated") else OVERLAP_NP)]
            out += [(sampler, case, "sld", v) for v in (SLD_PRESETS if case in ("related", "unrelated") else OVERLAP_SLD)]
    return out


def run_grid(samplers: Sequence[str], cases: Sequence[str], n: int, seed: int, runner: Any | None = None,
             keep_samples: bool = False) -> list[dict]:
    from benchmarks.common import Bench

    bench = Bench(runner=runner)
    scorer = ShapesScorer()
    env = environment()
    default_lambda0 = float(dng_node_defaults()["lambda0"])
    rows: list[dict] = []
    plain: dict[tuple[str, str], torch.Tensor] = {}
    for sampler, case, method, strength in points(samplers, cases):
        c = CASES[case]
        params: dict[str, Any] = {}
        if method == "dng":
            params["lambda0"] = strength
        elif method == "np":
            params["scale"] = strength
        elif method == "sld":
            params["preset"] = strength
        prompt = shapes_prompt(method=method, positive=c["positive"], negative=c["negative"], batch_size=n,
                               seed=seed, sampler=sampler, **params)
        out = bench.run(prompt)
        x = out.samples.clamp(-1, 1)
        if method == "plain":
            plain[(sampler, case)] = x
        x0 = plain[(sampler, case)]
        pres, pres0 = scorer.presence(x), scorer.presence(x0)
        row = {"model": "shapes16", "sampler": sampler, "steps": STEPS, "cfg": CFG, "seed": seed, "case": case,
               "positive": c["positive"], "negative": c["negative"], "method": method,
               "strength": float(SLD_CONFIGS[strength].guidance_scale) if method == "sld" else strength,
               "preset": strength if method == "sld" else None,
               "uses_defaults": method == "dng", "is_default": method == "dng" and strength == default_lambda0,
               **score(pres, c, None if method == "plain" else pres0),
               "change_vs_plain": (x - x0).abs().flatten(1).mean(1).mean().item(),
               "change_vs_plain_se": (x - x0).abs().flatten(1).mean(1).std().item() / math.sqrt(len(x)),
               "seconds": round(out.seconds, 1), "host": env["comfyui"]}
        if method == "dng":
            ts = trace_summary(out.trace)
            row["final_p_mean"] = ts.get("final_p_mean")
            row["max_lambda_mean"] = ts.get("max_lambda_mean")
            # when the guidance acts decides what it can still change (layout and colour binding are early)
            row["lambda_mean_per_step"] = [round(v, 4) for v in ts.get("lambda_mean_per_step", [])]
        if keep_samples:
            row["_samples"] = x
        rows.append(row)
        log(f"{sampler:16s} {case:15s} {method:5s} {row['strength']:>7g}: forbidden {row['forbidden_pct']:5.1f} %, "
            f"kept {row['kept_pct']:5.1f} %, change {row['change_vs_plain']:.4f}  ({out.seconds:.0f}s)")
    add_change_vs_np(rows)
    return rows


def _series(rows: Sequence[dict], sampler: str, case: str, method: str) -> list[dict]:
    return sorted((r for r in rows if r["sampler"] == sampler and r["case"] == case and r["method"] == method),
                  key=lambda r: r["strength"])


def _interp_scale(series: Sequence[dict], target_forbidden: float) -> float | None:
    """The NP scale at which the related run's forbidden % crosses ``target_forbidden`` (linear interpolation)."""
    rows = [dict(r, scale=r["strength"]) for r in series]
    return interpolate_at(rows, target_forbidden, "scale")


def _interp_in_strength(series: Sequence[dict], strength: float, key: str) -> float | None:
    xs = [r["strength"] for r in series]
    if not series or not xs[0] <= strength <= xs[-1]:
        return None
    return float(np.interp(strength, xs, [r[key] for r in series]))


def add_change_vs_np(rows: list[dict]) -> None:
    """``change_vs_np`` on the unrelated rows: the change against plain as a fraction of NP's change at the NP
    strength matched on the related run (the NP scale with the same forbidden % as this row's strength there; for
    NP rows their own scale, i.e. 1)."""
    for r in rows:
        r["change_vs_np"] = None
        r["np_matched_scale"] = None
    for r in rows:
        if r["case"] != "unrelated" or r["method"] == "plain":
            continue
        np_unrel = _series(rows, r["sampler"], "unrelated", "np")
        if r["method"] == "np":
            scale = r["strength"]
        else:
            rel = [q for q in _series(rows, r["sampler"], "related", r["method"]) if q["strength"] == r["strength"]]
            if not rel:
                continue
            scale = _interp_scale(_series(rows, r["sampler"], "related", "np"), rel[0]["forbidden_pct"])
        if scale is None:
            continue
        ref = _interp_in_strength(np_unrel, scale, "change_vs_plain")
        if ref:
            r["np_matched_scale"] = scale
            r["change_vs_np"] = r["change_vs_plain"] / ref


def verdicts(rows: Sequence[dict]) -> list[dict]:
    """Per sampler, at DNG's default: preservation vs NP at DNG's safety, the unrelated ratio."""
    out = []
    default = float(dng_node_defaults()["lambda0"])
    for sampler in sorted({r["sampler"] for r in rows}):
        d = [r for r in _series(rows, sampler, "related", "dng") if r["strength"] == default]
        u = [r for r in _series(rows, sampler, "unrelated", "dng") if r["strength"] == default]
        if not d:
            continue
        d = d[0]
        nps = [dict(r, scale=r["strength"]) for r in _series(rows, sampler, "related", "np")]
        np_kept = interpolate_at(nps, d["forbidden_pct"], "kept_pct")
        if np_kept is None and nps:  # DNG safer than every NP point: compare with NP's safest (favours NP)
            best = min(nps, key=lambda r: (r["forbidden_pct"], -r["kept_pct"]))
            np_kept = best["kept_pct"] if best["forbidden_pct"] <= d["forbidden_pct"] else None
        ratio = d["kept_pct"] / np_kept if np_kept else None
        v = {"sampler": sampler, "dng_lambda0": default, "dng_forbidden_pct": d["forbidden_pct"],
             "dng_forbidden_se": d["forbidden_se"], "dng_kept_pct": d["kept_pct"], "np_kept_at_dng_safety": np_kept,
             "kept_ratio": ratio, "kept_target_met": ratio is not None and ratio >= 1.5,
             "unrelated_change_vs_np": u[0]["change_vs_np"] if u else None}
        v["unrelated_target_met"] = v["unrelated_change_vs_np"] is not None and v["unrelated_change_vs_np"] <= 0.10
        out.append(v)
    return out


# ------------------------------------------------------------------------------------------------------------
# Geometry (pure torch, no host: it is a property of the model)


GEOMETRY_PAIRS = {
    "related": ("red circle and blue square", "red circle"),
    "unrelated": ("blue square", "red circle"),
    "unrelated_other": ("green triangle", "yellow cross"),
    "overlap_red": ("red square", "red"),
    "overlap_circle": ("red square", "circle"),
}


@torch.no_grad()
def cosine_path(eps_fn_three, shape, steps: int, seed: int) -> list[float]:
    """Along ancestral DDPM sampling driven by CFG on the positive, the mean over samples of the per-sample
    cosine between (eps_pos - eps_u) and (eps_neg - eps_u) (= that of the D differences), per step."""
    from reference_model.sampling import ddpm_sample

    cos: list[float] = []

    def fn(x, t):
        e_p, e_u, e_n = eps_fn_three(x, t)
        a, b = (e_p - e_u).flatten(1), (e_n - e_u).flatten(1)
        cos.append(torch.nn.functional.cosine_similarity(a, b, dim=1).mean().item())
        return e_u + CFG * (e_p - e_u)

    ddpm_sample(fn, shape, steps, torch.Generator().manual_seed(seed))
    return cos  # from the first (noisiest) step to the last


def geometry(n: int = 200, steps: int = STEPS, seed: int = 0) -> dict:
    from reference_model import NULL_LABEL, load_denoiser, weights_path
    from reference_model.text_network import load_text_model

    net = load_text_model(weights_path("shapes16_unet"))
    res: dict[str, Any] = {"n": n, "steps": steps, "seed": seed, "sampler": "ancestral DDPM (respaced)",
                           "cfg": CFG, "shapes16": {}, "digits8": {}}
    for name, (pos, neg) in GEOMETRY_PAIRS.items():
        ctx = net.encoder.encode([pos, "", neg])

        def three(x, t, ctx=ctx):
            b = len(x)
            e = net.unet(x.repeat(3, 1, 1, 1), t.repeat(3), ctx.repeat_interleave(b, 0))
            return e.chunk(3)

        c = cosine_path(three, (n, 3, 16, 16), steps, seed)
        res["shapes16"][name] = {"positive": pos, "negative": neg, "cos_per_step": [round(v, 4) for v in c],
                                 "mean": round(float(np.mean(c)), 4)}
    dnet, _ = load_denoiser(weights_path("digits8_unet"))
    for name, (pos, neg) in {"unrelated": (7, 0), "unrelated_3_8": (3, 8)}.items():
        def three(x, t, pos=pos, neg=neg):
            b = len(x)
            lab = torch.tensor([pos] * b + [NULL_LABEL] * b + [neg] * b)
            return dnet(x.repeat(3, 1, 1, 1), t.repeat(3), lab).chunk(3)

        c = cosine_path(three, (n, 1, 8, 8), steps, seed)
        res["digits8"][name] = {"positive": pos, "negative": neg, "cos_per_step": [round(v, 4) for v in c],
                                "mean": round(float(np.mean(c)), 4)}
    # every ordered pair of distinct digits, the mean over the path
    allpairs = []
    for pos in range(10):
        for neg in range(10):
            if pos == neg:
                continue

            def three(x, t, pos=pos, neg=neg):
                b = len(x)
                lab = torch.tensor([pos] * b + [NULL_LABEL] * b + [neg] * b)
                return dnet(x.repeat(3, 1, 1, 1), t.repeat(3), lab).chunk(3)

            allpairs.append(float(np.mean(cosine_path(three, (50, 1, 8, 8), steps, seed))))
    res["digits8"]["all_distinct_pairs_mean"] = round(float(np.mean(allpairs)), 4)
    res["digits8"]["all_distinct_pairs_range"] = [round(min(allpairs), 4), round(max(allpairs), 4)]
    return res


# ------------------------------------------------------------------------------------------------------------
# Outputs


def _f(v: Any, d: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{d}g}"
    return str(v)


def write_markdown(path: Path, rows: Sequence[dict], vs: Sequence[dict], geo: dict | None, meta: dict) -> None:
    lines = [f"# Composition: remove a concept, keep the rest (shapes16, {meta.get('host')})", "",
             f"N {rows[0]['n'] if rows else '-'} per point, seed {meta.get('seed')}, {STEPS} steps, scheduler "
             f"{SCHEDULER}, KSampler cfg {CFG}; DNG at the node defaults (lambda0 swept), NP scales, SLD presets. "
             f"Command: `{meta.get('command')}`; wall time {meta.get('wall_seconds')} s.", "",
             "## Verdicts at DNG's default lambda0", "",
             "| sampler | DNG forbidden % | DNG kept % | NP kept % at DNG's safety | kept ratio (>= 1.5) | "
             "unrelated change / NP's (<= 0.10) |", "|---|---|---|---|---|---|"]
    for v in vs:
        lines.append(f"| {v['sampler']} | {_f(v['dng_forbidden_pct'])} +- {_f(v['dng_forbidden_se'], 2)} | "
                     f"{_f(v['dng_kept_pct'])} | {_f(v['np_kept_at_dng_safety'])} | {_f(v['kept_ratio'])} "
                     f"{'met' if v['kept_target_met'] else 'MISSED'} | {_f(v['unrelated_change_vs_np'])} "
                     f"{'met' if v['unrelated_target_met'] else 'MISSED'} |")
    lines += ["", "## Every point", "",
              "| sampler | case | method | strength | forbidden % | kept % | kind-mix TV vs plain | change vs plain | "
              "change / NP's | final p | max lambda |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["preset"] if r["method"] == "sld" else _f(r["strength"])
        lines.append(f"| {r['sampler']} | {r['case']} | {r['method']} | {s} | {_f(r['forbidden_pct'])} +- "
                     f"{_f(r['forbidden_se'], 2)} | {_f(r['kept_pct'])} +- {_f(r['kept_se'], 2)} | "
                     f"{_f(r.get('hist_tv_vs_plain'))} | {_f(r['change_vs_plain'])} | {_f(r.get('change_vs_np'))} | "
                     f"{_f(r.get('final_p_mean'))} | {_f(r.get('max_lambda_mean'))} |")
    if geo:
        lines += ["", "## Geometry: cos((D_pos - D_u), (D_neg - D_u)) along plain CFG sampling of the positive", "",
                  f"N {geo['n']}, {geo['steps']} steps of {geo['sampler']}, cfg {geo['cfg']}; mean over the path, "
                  "first / middle / last step.", "", "| model | pair | positive | negative | mean | first | middle | last |",
                  "|---|---|---|---|---|---|---|---|"]
        for model in ("shapes16", "digits8"):
            for name, g in geo[model].items():
                if not isinstance(g, dict):
                    continue
                c = g["cos_per_step"]
                lines.append(f"| {model} | {name} | {g['positive']} | {g['negative']} | {g['mean']} | {c[0]} | "
                             f"{c[len(c) // 2]} | {c[-1]} |")
        lines.append(f"\ndigits8, all 90 ordered pairs of distinct digits: mean {geo['digits8']['all_distinct_pairs_mean']}, "
                     f"range {geo['digits8']['all_distinct_pairs_range']}.")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, rows: Sequence[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = sorted({r["sampler"] for r in rows})
    fig, axes = plt.subplots(1, len(samplers), figsize=(5.5 * len(samplers), 4.2), squeeze=False)
    for ax, sampler in zip(axes[0], samplers):
        for method, colour in (("dng", "C0"), ("np", "C1"), ("sld", "C2")):
            s = _series(rows, sampler, "related", method)
            ax.plot([r["forbidden_pct"] for r in s], [r["kept_pct"] for r in s], "o-", color=colour, label=method)
        pl = _series(rows, sampler, "related", "plain")
        if pl:
            ax.plot([pl[0]["forbidden_pct"]], [pl[0]["kept_pct"]], "k*", ms=10, label="plain")
        ax.set_xlabel("red circle still shown (%)")
        ax.set_ylabel("blue square kept (%)")
        ax.set_title(f"{sampler}: 'red circle and blue square' minus 'red circle'", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS = RESULTS / "composition_parts"  # one JSON of rows per shard (--part), merged by --merge


def write_outputs(rows: list[dict], geo: dict | None, meta: dict, prefix: str) -> list[dict]:
    add_change_vs_np(rows)
    vs = verdicts(rows)
    (RESULTS / f"{prefix}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / f"{prefix}_summary.json").write_text(json.dumps({"meta": meta, "verdicts": vs}, indent=1) + "\n")
    write_markdown(RESULTS / f"{prefix}.md", rows, vs, geo, meta)
    plot(RESULTS / f"{prefix}_related.png", rows)
    return vs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--geometry-only", action="store_true", help="write composition_geometry.json and stop")
    ap.add_argument("--part", default=None, help="run the points and write them to composition_parts/<PART>.json "
                                                 "(e.g. one process per sampler); --merge writes the results")
    ap.add_argument("--merge", action="store_true", help="merge composition_parts/*.json into the results")
    ap.add_argument("--out-prefix", default="composition")
    args = ap.parse_args(argv)
    t0 = time.time()
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/composition.py " + " ".join(sys.argv[1:] if argv is None else argv)
    geo_path = RESULTS / f"{args.out_prefix}_geometry.json"
    if args.geometry_only:
        log("geometry ...")
        geo = geometry()
        geo["seconds"] = round(time.time() - t0)
        geo_path.write_text(json.dumps(geo, indent=1) + "\n")
        print(json.dumps({m: {k: v["mean"] if isinstance(v, dict) else v for k, v in geo[m].items()}
                          for m in ("shapes16", "digits8")}, indent=1))
        return 0
    if args.merge:
        parts = [json.loads(p.read_text()) for p in sorted(PARTS.glob("*.json"))]
        rows = [r for part in parts for r in part["rows"]]
        meta = {**parts[0]["meta"], "command": [p["meta"]["command"] for p in parts],
                "wall_seconds": sum(p["meta"]["wall_seconds"] for p in parts)}
    else:
        rows = run_grid(args.samplers, args.cases, args.n, args.seed)
        meta = {"command": command, "seed": args.seed, "wall_seconds": round(time.time() - t0), **environment(),
                "host": rows[0]["host"] if rows else None, "dng_defaults": dng_node_defaults()}
        if args.part:
            PARTS.mkdir(parents=True, exist_ok=True)
            (PARTS / f"{args.part}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
            return 0
    geo = json.loads(geo_path.read_text()) if geo_path.exists() else None
    vs = write_outputs(rows, geo, meta, args.out_prefix)
    print(json.dumps(vs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
