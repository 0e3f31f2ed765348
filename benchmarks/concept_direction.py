"""How large DNG's push direction is on each reference model: RMS per pixel of D_neg - D_u along the sampler's path.

DNG (and negative prompting) push the prediction along D_neg - D_u. The same lambda0 moves an image in proportion to
that direction's size, so a model on which it is smaller needs a larger lambda0 for the same removal. Issue 11's
two models need lambda0 some 3-4x apart (docs/step_invariance.md, Sessions 14-17); this measures how much of that
the direction's own size explains, for the images that end as the concept (the ones the removal must move) and
for the others.

Pure torch on the shipped weights (``reference_model.sampling``'s respaced DDPM step, which is ComfyUI's
euler_ancestral at eta 1 written in VP coordinates, at the same 20 sigmas as the grid's cells, 157 ... 0.01): no
ComfyUI host is involved, so the figures do not depend on the host's noise.
Unconditional sampling (as the grid's removal case), concept = digit 0, the image's class read by the reference
classifier at the end. D_neg - D_u = -sigma (eps_0 - eps_null) in data units (sigma: the variance-exploding one).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.concept_direction [--n 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from benchmarks.common import ensure_results_dir, log, mean_se
from reference_model import NULL_LABEL, load_classifier, load_denoiser, weights_path
from reference_model.sampling import respaced_timesteps
from reference_model.schedule import alphas_cumprod

MODELS = ("digits8", "mnist16")
CONCEPT = 0
STEPS = 20


@torch.no_grad()
def direction_sizes(model: str, n: int, seed: int, batch: int = 500) -> dict:
    """Per step: sigma, and the per-image RMS of D_0 - D_u for the images that end as a 0 and for the others."""
    net, cfg = load_denoiser(weights_path(f"{model}_unet"))
    clf, _ = load_classifier(weights_path(f"{model}_classifier"))
    net.eval()
    clf.eval()
    ac, ts = alphas_cumprod(), respaced_timesteps(STEPS)
    g = torch.Generator().manual_seed(seed)
    sigmas: list[float] = []
    sizes: list[list[torch.Tensor]] = []  # [batch][step] -> [b]
    labels = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        shape = (b, cfg.in_channels, cfg.image_size, cfg.image_size)
        x = torch.randn(shape, generator=g)
        per_step = []
        sigmas = []
        for i in range(len(ts) - 1, -1, -1):
            ab = float(ac[ts[i]])
            ab_prev = float(ac[ts[i - 1]]) if i > 0 else 1.0
            t = torch.full((b,), float(ts[i]))
            eps = net(torch.cat([x, x]), torch.cat([t, t]),
                      torch.cat([torch.full((b,), NULL_LABEL), torch.full((b,), CONCEPT)]))
            e_u, e_c = eps.chunk(2)
            sigma = math.sqrt((1 - ab) / ab)
            sigmas.append(sigma)
            per_step.append((-sigma * (e_c - e_u)).flatten(1).pow(2).mean(1).sqrt())
            x0 = (x - math.sqrt(1 - ab) * e_u) / math.sqrt(ab)
            if i == 0:
                x = x0
                break
            alpha = ab / ab_prev
            beta = 1 - alpha
            mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (math.sqrt(alpha) * (1 - ab_prev) / (1 - ab)) * x
            x = mean + math.sqrt(beta * (1 - ab_prev) / (1 - ab)) * torch.randn(shape, generator=g)
        labels.append(clf(x.clamp(-1, 1)).argmax(1))
        sizes.append(per_step)
    is_concept = torch.cat(labels) == CONCEPT
    rows = []
    for j, sigma in enumerate(sigmas):
        size = torch.cat([s[j] for s in sizes])
        concept = mean_se(size[is_concept].tolist())
        others = mean_se(size[~is_concept].tolist())
        rows.append({"sigma": sigma, "concept": concept, "others": others})
    return {"n": n, "concept_images": int(is_concept.sum()), "rows": rows}


def markdown(data: dict) -> str:
    a, b = (data["models"][m] for m in MODELS)
    lines = ["# The size of DNG's push direction, RMS per pixel of D_0 - D_u (mean +- SE over images)",
             "",
             f"`benchmarks/concept_direction.py`; pure torch on the shipped weights (euler_ancestral, {STEPS} steps, "
             f"unconditional, seed {data['seed']}; no ComfyUI host). Images classed as the concept (0) at the end: "
             f"digits8 {a['concept_images']} of {a['n']}, mnist16 {b['concept_images']} of {b['n']}.",
             "",
             "| sigma | digits8, ends as 0 | mnist16, ends as 0 | ratio | digits8, others | mnist16, others | ratio |",
             "|---:|---|---|---:|---|---|---:|"]
    for ra, rb in zip(a["rows"], b["rows"]):
        (ca, sa), (cb, sb) = ra["concept"], rb["concept"]
        (oa, soa), (ob, sob) = ra["others"], rb["others"]
        lines.append(f"| {ra['sigma']:.3g} | {ca:.4f} +- {sa:.4f} | {cb:.4f} +- {sb:.4f} | {ca / cb:.2f} | "
                     f"{oa:.4f} +- {soa:.4f} | {ob:.4f} +- {sob:.4f} | {oa / ob:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    models = {}
    for model in MODELS:
        log(f"{model}: {args.n} images")
        models[model] = direction_sizes(model, args.n, args.seed)
    data = {"seed": args.seed, "steps": STEPS, "torch": torch.__version__, "models": models}
    out = ensure_results_dir() / f"concept_direction_seed{args.seed}"
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
