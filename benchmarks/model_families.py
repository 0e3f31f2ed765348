"""Model families (issue 12): per-family plumbing figures, cost at cfg 1, and memory, on the real host.

Everything runs through ComfyUI's real executor (devtools/host.py PromptRunner) on the tiny random-weight
models of devtools/tiny_families.py (UNETLoader files the host detects as each family; CONDITIONING of the text
encoders' output shapes from a stand-in node). Random weights measure plumbing, cost and memory, never
guidance effects.

1. ``families``: per family, a fresh build (timed), then plain sampling with the empty negative, the DNG patch at
   lambda0 = 0 and at the node defaults, and the DNG guider (euler, 4 steps, batch 2, 64x64 pixels): posterior
   updates, the parametrisation the trace records against the model's model_sampling, max |lambda0=0 - plain|
   relative to max |latent|, and how the diffusion model was called (calls and rows per call, from a forward
   hook: whether the host split the batched [positive, negative, empty] call).
2. ``cost_cfg1``: distilled / few-step use at cfg 1 (LCM, Turbo-like euler_ancestral, Lightning-like euler, all
   sgm_uniform, 4 steps) on the tiny SD1.5 and Flux models at 256x256: DNG's predictions per step and its wall
   time against plain sampling at cfg 1 (one prediction per step), interleaved, mean +- standard error.
3. ``memory``: peak resident memory of one sampling step in a fresh process per configuration (tiny SDXL at
   1024x1024, batch 1: plain cfg, DNG kernel, DNG path), above the process's memory after loading; and the
   host's own activation estimate (``BaseModel.memory_required``, linear in batch rows), from which the
   full-size estimates are computed (see FULL_SIZE).

Usage::

    python benchmarks/model_families.py [--parts families,cost_cfg1,memory] [--repeats 5]

Writes benchmarks/results/model_families.json and .md (host version, seed, figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import log, mean_se  # noqa: E402
from devtools.tiny_families import ForwardRows  # noqa: E402  (stdlib-only at import)

RESULTS = ROOT / "benchmarks" / "results"
SEED = 3

# Full-size models: diffusion-model parameters (billions), the usual latent per image [C, (T,) H, W] and the
# host's memory_usage_factor for the family (comfy/supported_models.py; Wan's is dim / 2222 = 5120 / 2222).
# Weights at 2 bytes per parameter (bf16 / fp16; fp8 halves them). Text encoders are unloaded during sampling
# on a memory-short GPU and are not counted.
FULL_SIZE = {
    "sd15": {"params_b": 0.86, "latent": [4, 64, 64], "factor": 1.0, "what": "SD1.5, 512x512"},
    "sdxl": {"params_b": 2.57, "latent": [4, 128, 128], "factor": 0.8, "what": "SDXL, 1024x1024"},
    "sdxl_vpred": {"params_b": 2.57, "latent": [4, 128, 128], "factor": 0.8, "what": "v-pred SDXL, 1024x1024"},
    "sd3": {"params_b": 8.06, "latent": [16, 128, 128], "factor": 1.6, "what": "SD3.5 Large, 1024x1024"},
    "flux": {"params_b": 11.9, "latent": [16, 128, 128], "factor": 3.1, "what": "Flux.1 dev, 1024x1024"},
    "wan": {"params_b": 14.0, "latent": [16, 21, 60, 104], "factor": 5120 / 2222,
            "what": "Wan 2.1 14B, 832x480, 81 frames"},
    "qwen_image": {"params_b": 20.4, "latent": [16, 1, 166, 166], "factor": 1.8, "what": "Qwen-Image, 1328x1328"},
}


def _setup():
    from devtools import host as H
    from devtools import tiny_families as TF

    H.import_host()
    H.load_pack()
    TF.register_conditioning_node()
    return H, TF


def _trace(runner):
    latent = runner.output_of("5")[0][0]["samples"]
    return runner.output_of("10")[1][0].find(latent), latent


# ------------------------------------------------------------------------------------------------------------


def part_families(families: list[str]) -> list[dict]:
    H, TF = _setup()
    import comfy.model_sampling
    from devtools.dng_defaults import dng_node_defaults

    runner = H.PromptRunner()
    rows_out = []
    for fid in families:
        f = TF.FAMILIES[fid]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            TF.build_family_file(Path(tmp) / f.file_name, f, log=lambda *_: None)
            build_s = time.perf_counter() - t0
        name = TF.install_family(f)
        runner.run(TF.family_prompt(f, name, "plain", seed=SEED), check=True)
        plain = runner.output_of("5")[0][0]["samples"].clone()
        model = runner.output_of("1")[0][0]
        counter = ForwardRows(model.model.diffusion_model)
        runner.run(TF.family_prompt(f, name, "plain", seed=SEED), check=True)  # cached: no calls
        runner.run(TF.family_prompt(f, name, "plain", seed=SEED + 1), check=True)
        plain_rows = counter.take()
        dng = dng_node_defaults()
        runner.run(TF.family_prompt(f, name, "patch", seed=SEED, dng={**dng, "lambda0": 0.0}), check=True)
        trace0, zero = _trace(runner)
        counter.take()
        runner.run(TF.family_prompt(f, name, "patch", seed=SEED, dng=dng), check=True)
        trace, _ = _trace(runner)
        dng_rows = counter.take()
        runner.run(TF.family_prompt(f, name, "guider", seed=SEED, dng=dng), check=True)
        gtrace, _ = _trace(runner)
        guider_rows = counter.take()
        counter.close()
        const = isinstance(model.model.model_sampling, comfy.model_sampling.CONST)
        shape = list(plain.shape)
        est = {r: model.model.memory_required([r] + shape[1:]) / 2**20 for r in (2, 3)}
        row = {
            "family": fid, "detected_as": type(model.model.model_config).__name__,
            "model_type": model.model.model_type.name,
            "model_sampling": "CONST" if const else type(model.model.model_sampling).__name__,
            "parametrisation": trace.params["parametrisation"],
            "params_m": round(sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6, 2),
            "build_s": round(build_s, 2), "latent_shape": shape,
            "updates": trace.state_updates, "updates_guider": gtrace.state_updates, "steps": len(trace.steps),
            "lambda0_zero_max_rel_diff": float((zero - plain).abs().max() / plain.abs().max()),
            "lambda0_zero_updates": trace0.state_updates,
            "variance": trace.params["variance"], "model_calls": trace.model_calls, "probe_calls": trace.probe_calls,
            "forward_rows_plain": plain_rows, "forward_rows_dng_patch": dng_rows, "forward_rows_guider": guider_rows,
            # unsplit, each step's first call carries [positive, negative, empty] x batch rows
            "host_split_batched_call": max(dng_rows) < 3 * shape[0],
            "host_activation_estimate_mib": {"2_rows": round(est[2], 3), "3_rows": round(est[3], 3)},
        }
        rows_out.append(row)
        log(f"{fid}: {row['detected_as']}/{row['model_type']} {row['parametrisation']} build {build_s:.1f} s "
            f"updates {row['updates']} lambda0=0 rel diff {row['lambda0_zero_max_rel_diff']:.2e} "
            f"rows plain {plain_rows} dng {dng_rows}")
    return rows_out


def part_cost_cfg1(repeats: int) -> list[dict]:
    H, TF = _setup()
    from devtools.dng_defaults import dng_node_defaults

    runner = H.PromptRunner()
    out = []
    cases = [("lcm", "LCM"), ("euler_ancestral", "Turbo-like"), ("euler", "Lightning-like")]
    for fid in ("sd15", "flux"):
        f = TF.FAMILIES[fid]
        name = TF.install_family(f)
        for sampler, label in cases:
            def prompt(wiring, seed):
                p = TF.family_prompt(f, name, wiring, seed=seed, sampler=sampler, scheduler="sgm_uniform",
                                     cfg=1.0, batch_size=1, dng=dng_node_defaults() if wiring != "plain" else None)
                for nid in ("4",):
                    p[nid]["inputs"].update(width=256, height=256)
                return p

            times = {"plain": [], "patch": []}
            calls = None
            runner.run(prompt("plain", 0), check=True)  # warm-up: model load
            runner.run(prompt("patch", 0), check=True)
            model = runner.output_of("1")[0][0]
            counter = ForwardRows(model.model.diffusion_model)
            for i in range(repeats):
                for wiring in ("plain", "patch") if i % 2 == 0 else ("patch", "plain"):
                    counter.take()
                    t0 = time.perf_counter()
                    runner.run(prompt(wiring, 100 + i), check=True)
                    times[wiring].append(time.perf_counter() - t0)
                    rows = counter.take()
                    if wiring == "patch":
                        calls = rows
                        trace, _ = _trace(runner)
                    else:
                        plain_calls = rows
            counter.close()
            ratios = [a / b for a, b in zip(times["patch"], times["plain"])]
            m, se = mean_se(ratios)
            steps = len(trace.steps)
            row = {"family": fid, "sampler": sampler, "like": label, "scheduler": "sgm_uniform", "steps": steps,
                   "cfg": 1.0, "pixels": "256x256", "variance": trace.params["variance"],
                   "predictions_per_step_plain": sum(plain_calls) / steps,
                   "predictions_per_step_dng": sum(calls) / steps,
                   "prediction_ratio": sum(calls) / max(1, sum(plain_calls)),
                   "wall_ratio_mean": round(m, 3), "wall_ratio_se": round(se, 3), "repeats": repeats,
                   "plain_s_mean": round(statistics.fmean(times["plain"]), 3),
                   "dng_s_mean": round(statistics.fmean(times["patch"]), 3)}
            out.append(row)
            log(f"cfg1 {fid} {sampler}: predictions/step {row['predictions_per_step_plain']:.0f} -> "
                f"{row['predictions_per_step_dng']:.0f}, wall ratio {m:.2f} +- {se:.2f}")
    return out


_MEMORY_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from benchmarks.model_families import _setup
H, TF = _setup()
from devtools.dng_defaults import dng_node_defaults
mode = sys.argv[2]
f = TF.FAMILIES[sys.argv[3]]
name = TF.install_family(f)
runner = H.PromptRunner()
# load the model first (a 1-step plain run at a tiny size), then measure one step at the size given
p = TF.family_prompt(f, name, "plain", steps=1, batch_size=1)
runner.run(p, check=True)
import gc; gc.collect()
def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0])
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM (the peak) to the current RSS
    fh.write("5")
dng = dict(dng_node_defaults())
wiring = "plain" if mode == "plain" else "patch"
if mode != "plain":
    dng["posterior_variance"] = mode
p = TF.family_prompt(f, name, wiring, steps=1, batch_size=1, cfg=4.0, dng=None if mode == "plain" else dng)
p["4"]["inputs"].update(width=int(sys.argv[4]), height=int(sys.argv[4]))
runner.run(p, check=True)
peak = status("VmHWM")
print(json.dumps({"mode": mode, "base_mib": base / 1024, "peak_mib": peak / 1024}))
"""


# the tiny models whose activations stand out of RSS noise, at their families' usual sizes
MEMORY_FAMILIES = {"sdxl": 1024, "sd15": 512, "qwen_image": 512}


def part_memory(repeats: int, families=MEMORY_FAMILIES) -> dict:
    out = {"what": ("peak RSS of one sampling step (batch 1, cfg 4; pixels: " +
                    ", ".join(f"{k} {v}x{v}" for k, v in families.items()) +
                    f") minus RSS after loading, fresh process each, {repeats} repeats")}
    for fid, size in families.items():
        out[fid] = _memory_of(fid, repeats, size)
    # the headline (and the README's figure): the SDXL UNet
    out.update({k: v for k, v in out["sdxl"].items()} if "sdxl" in out else {})
    return out


def _memory_of(fid: str, repeats: int, size: int) -> dict:
    runs = {m: [] for m in ("plain", "kernel", "path")}
    for i in range(repeats):
        for mode in runs:
            env = dict(os.environ, OMP_NUM_THREADS="1")
            r = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(ROOT), mode, fid, str(size)], env=env, cwd=str(ROOT),
                               capture_output=True, text=True)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            if r.returncode != 0 or not line:
                raise RuntimeError(f"memory child {mode} failed:\n{r.stderr[-3000:]}")
            d = json.loads(line[-1])
            runs[mode].append(d["peak_mib"] - d["base_mib"])
            log(f"memory {fid} {mode}: +{runs[mode][-1]:.0f} MiB above the loaded model")
    summary = {m: dict(zip(("mean_mib", "se_mib"), (round(v, 1) for v in mean_se(xs)))) for m, xs in runs.items()}
    summary["dng_kernel_over_plain"] = round(summary["kernel"]["mean_mib"] / summary["plain"]["mean_mib"], 3)
    summary["dng_path_over_plain"] = round(summary["path"]["mean_mib"] / summary["plain"]["mean_mib"], 3)
    return summary


def full_size_estimates() -> list[dict]:
    """Peak sampling memory of DNG vs plain CFG at full size: weights + activations, with activations taken from
    the host's own estimate (memory_required: 0.01 MiB x dtype bytes x factor per latent element and row, the
    attention-optimised branch), 2 rows for plain CFG, 3 for DNG's batched call (the path estimator's probe is a
    separate 2-row call: no higher peak)."""
    out = []
    for fid, s in FULL_SIZE.items():
        elems = math.prod(s["latent"][1:])  # per row: everything after the channel dim
        act_row_gib = elems * 2 * 0.01 * s["factor"] / 1024
        weights_gib = s["params_b"] * 1e9 * 2 / 2**30
        plain = weights_gib + 2 * act_row_gib
        dng = weights_gib + 3 * act_row_gib
        out.append({"family": fid, "what": s["what"], "weights_gib": round(weights_gib, 1),
                    "activation_per_row_gib": round(act_row_gib, 2), "plain_cfg_peak_gib": round(plain, 1),
                    "dng_peak_gib": round(dng, 1), "ratio": round(dng / plain, 3)})
    return out


def write_markdown(res: dict, path: Path) -> None:
    L = [f"# Model families (issue 12), ComfyUI {res['host']}", "",
         f"Tiny random-weight models (devtools/tiny_families.py), seed {SEED}; `python benchmarks/model_families.py`.",
         "Random weights measure plumbing, cost and memory, not guidance effects.", ""]
    if res.get("families"):
        L += ["## Per family (euler, 4 steps, batch 2, node defaults; lambda0 = 0 vs plain with the empty negative)",
              "", "| family | detected as | model_sampling | parametrisation | params (M) | build (s) | updates "
              "(patch / guider) | lambda0=0 max rel. diff | estimator | rows per forward (plain / DNG) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["families"]:
            L.append(f"| {r['family']} | {r['detected_as']} ({r['model_type']}) | {r['model_sampling']} | "
                     f"{r['parametrisation']} | {r['params_m']} | {r['build_s']} | {r['updates']} / "
                     f"{r['updates_guider']} | {r['lambda0_zero_max_rel_diff']:.1e} | {r['variance']} "
                     f"({r['probe_calls']} probes) | {sorted(set(r['forward_rows_plain']))} / "
                     f"{sorted(set(r['forward_rows_dng_patch']))} |")
        L.append("")
    if res.get("cost_cfg1"):
        L += ["## Cost at cfg 1 (few-step / distilled use; sgm_uniform, 4 steps, 256x256, batch 1)", "",
              "| model | sampler | like | estimator | predictions / step (plain -> DNG) | wall time ratio (mean +- se) | "
              "plain / DNG run (s) |", "|---|---|---|---|---|---|---|"]
        for r in res["cost_cfg1"]:
            L.append(f"| tiny {r['family']} | {r['sampler']} | {r['like']} | {r['variance']} | "
                     f"{r['predictions_per_step_plain']:.3g} -> {r['predictions_per_step_dng']:.3g} | "
                     f"{r['wall_ratio_mean']:.2f} +- {r['wall_ratio_se']:.2f} (n={r['repeats']}) | "
                     f"{r['plain_s_mean']} / {r['dng_s_mean']} |")
        L += ["", "Flow models start at t = 1, where the path estimator does not probe: (3 x 4 + 2 x 3) / 4 = 4.5 "
              "predictions per step at 4 steps. The tiny Flux model (1.6 M parameters, ~8 ms a step) measures the "
              "pack's own per-step work (~6 ms a step: the posterior update, the trace), which a real model's "
              "seconds-long steps make negligible; the tiny SD1.5 UNet at 256x256 is compute-bound like a real one.",
              ""]
    if res.get("memory"):
        mem = res["memory"]
        L += ["## Memory", "", mem["what"] + ", tiny models:", "",
              "| model | plain CFG (MiB) | DNG kernel: one 3-row call (MiB) | DNG path: + a 2-row probe (MiB) |",
              "|---|---|---|---|"]
        for fid in [k for k in mem if isinstance(mem[k], dict) and "plain" in mem[k]]:
            m = mem[fid]
            L.append(f"| tiny {fid} | +{m['plain']['mean_mib']} +- {m['plain']['se_mib']} | "
                     f"+{m['kernel']['mean_mib']} +- {m['kernel']['se_mib']} ({m['dng_kernel_over_plain']}x) | "
                     f"+{m['path']['mean_mib']} +- {m['path']['se_mib']} ({m['dng_path_over_plain']}x) |")
        L.append("")
    L += ["## Full-size estimates (weights at 2 bytes per parameter + the host's activation estimate)", "",
          "| family | model, resolution | weights (GiB) | activations per row (GiB) | plain CFG peak (GiB) | "
          "DNG peak (GiB) | ratio |", "|---|---|---|---|---|---|---|"]
    for r in res["full_size"]:
        L.append(f"| {r['family']} | {r['what']} | {r['weights_gib']} | {r['activation_per_row_gib']} | "
                 f"{r['plain_cfg_peak_gib']} | {r['dng_peak_gib']} | {r['ratio']} |")
    L += ["", "When the 3-row call does not fit, the host splits it itself (comfy.samplers.calc_cond_batch runs as "
          "many conditionings per call as 1.5 x memory_required allows): DNG then costs an extra model call per step "
          "but no more memory than plain CFG's 2-row call.", ""]
    path.write_text("\n".join(L))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="families,cost_cfg1,memory")
    ap.add_argument("--families", default=None, help="comma-separated family ids (default: all)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "model_families"))
    a = ap.parse_args(argv)
    parts = a.parts.split(",")
    from devtools.tiny_checkpoint import host_version
    from devtools import tiny_families as TF

    res: dict = {"host": host_version(), "seed": SEED, "threads": os.environ.get("OMP_NUM_THREADS")}
    out = Path(a.out)
    if out.with_suffix(".json").exists():
        res = {**json.loads(out.with_suffix(".json").read_text()), **res}
    if "families" in parts:
        res["families"] = part_families(a.families.split(",") if a.families else list(TF.FAMILIES))
    if "cost_cfg1" in parts:
        res["cost_cfg1"] = part_cost_cfg1(a.repeats)
    if "memory" in parts:
        res["memory"] = part_memory(max(2, a.repeats // 2))
    res["full_size"] = full_size_estimates()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    write_markdown(res, out.with_suffix(".md"))
    log(f"wrote {out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
