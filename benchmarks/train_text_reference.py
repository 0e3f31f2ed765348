#!/usr/bin/env python
"""Train the pack's text-conditioned reference model (shapes16: prompt encoder + cross-attention UNet) and its
evaluator (which of the 16 coloured shapes a scene shows), and score them.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_text_reference.py --threads 2      # ~40 min on 2 cores
    .venv/bin/python benchmarks/train_text_reference.py --eval-only                        # re-score shipped weights

Writes reference_model/weights/shapes16_{unet,evaluator}.safetensors, benchmarks/results/reference_shapes16.json
and reference_shapes16_samples.png. Data come from ``reference_model.shapes`` (generated in code, nothing
downloaded); the pairs in ``shapes.HELDOUT_PAIRS`` never appear together in a training scene.

Denoiser: the noise and loss of ``train_reference.py`` (t ~ U[0, 999] continuous on ComfyUI's DDPM linear
schedule, eps-MSE, AdamW + warm-up/cosine, EMA shipped), captions built per batch from each scene's objects in a
random order, an object named by its colour or shape alone with ``--p-partial``, objects after the first left out
with ``--p-omit``, the caption dropped to the empty
prompt with ``--p-uncond``. Evaluator: ``reference_model.classifier.DigitClassifier`` with 16 sigmoid outputs
(binary cross-entropy on the exact labels), trained on fresh scenes of every kind (held-out pairs included) with
noise, blur and colour jitter so it also reads imperfect samples.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.train_reference import lr_at, noisy_batch, optimiser_step  # noqa: E402
from reference_model import shapes  # noqa: E402
from reference_model.classifier import ClassifierConfig, DigitClassifier, load_classifier, save_classifier  # noqa: E402
from reference_model.network import count_params, read_metadata  # noqa: E402
from reference_model.sampling import ddpm_sample  # noqa: E402
from reference_model.schedule import SAMPLING_SETTINGS  # noqa: E402
from reference_model.text_network import TextDenoiser, TextUNetConfig, load_text_model, save_text_model  # noqa: E402

WEIGHTS = ROOT / "reference_model" / "weights"
RESULTS = ROOT / "benchmarks" / "results"
NAME = "shapes16"
LICENSE = "generated in code by reference_model/shapes.py (GPL-3.0, this pack)"

#: prompts scored after training: single objects, pairs seen in training, the held-out pairs, single words
EVAL_PROMPTS = ("red circle", "blue square", "green triangle", "yellow cross", "red circle and blue square",
                "red square", "green circle and yellow triangle and blue cross") + tuple(
    f"{a} and {b}" for a, b in shapes.HELDOUT_PAIRS)


def caption_batch(objects: list[list[int]], rng: np.random.Generator, p_partial: float, p_omit: float,
                  p_uncond: float) -> list[str]:
    out = []
    for kinds in objects:
        if rng.random() < p_uncond:
            out.append("")
        else:
            out.append(shapes.caption_for([kinds[j] for j in rng.permutation(len(kinds))], rng, p_partial, p_omit))
    return out


def train_denoiser(cfg: TextUNetConfig, pool: shapes.Scenes, steps: int, batch_size: int, lr: float,
                   p_uncond: float, p_partial: float, p_omit: float, seed: int,
                   ema_decay: float) -> tuple[TextDenoiser, dict]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 2)
    net = TextDenoiser(cfg)
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    n = len(pool.images)
    print(f"denoiser: {count_params(net):,} params, pool of {n} scenes, {steps} steps x batch {batch_size}", flush=True)
    t0, losses = time.time(), []
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x0 = pool.images[idx]
        if torch.rand((), generator=g) < 0.5:  # horizontal flips keep every shape (all are symmetric) and label
            x0 = x0.flip(-1)
        tokens = shapes.tokenize_batch(caption_batch([pool.objects[i] for i in idx.tolist()], rng, p_partial, p_omit,
                                                     p_uncond))
        xt, t, eps = noisy_batch(x0, g)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, steps, lr, warmup=min(300, steps // 10))
        loss = F.mse_loss(net(xt, t, tokens), eps)
        optimiser_step(net, ema, opt, loss, step, ema_decay)
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 20) == 0:
            print(f"  step {step + 1:6d}  loss(avg last 200) {np.mean(losses[-200:]):.4f}  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  {time.time() - t0:.0f}s", flush=True)
    return ema.eval(), {"train_seconds": round(time.time() - t0, 1), "steps": steps, "batch_size": batch_size,
                        "lr": lr, "p_uncond": p_uncond, "p_partial": p_partial, "p_omit": p_omit, "ema_decay": ema_decay,
                        "pool_scenes": n, "final_loss_avg200": float(np.mean(losses[-200:])),
                        "params": count_params(ema)}


def degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Evaluator augmentation: per-image noise, a light blur and brightness jitter (samples are not renders)."""
    n = len(x)
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    xb = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), blur.expand(3, 1, 3, 3), groups=3)
    mix = (torch.rand(n, 1, 1, 1, generator=g) * 0.6)
    x = x * (1 - mix) + xb * mix
    x = x * (1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)) + 0.1 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    x = x + 0.12 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1)


def train_evaluator(cfg: ClassifierConfig, steps: int, batch_size: int, seed: int) -> tuple[DigitClassifier, dict]:
    torch.manual_seed(seed + 100)
    g = torch.Generator().manual_seed(seed + 101)
    pool = shapes.generate_scenes(30000, seed + 1000, exclude_heldout=False)
    net = DigitClassifier(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    print(f"evaluator: {count_params(net):,} params, {steps} steps x batch {batch_size}", flush=True)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(pool.images), (batch_size,), generator=g)
        x = degrade(pool.images[idx], g)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, steps, 2e-3, warmup=100)
        loss = F.binary_cross_entropy_with_logits(net(x), pool.present[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, steps // 5) == 0:
            print(f"  step {step + 1:5d}  loss {loss.item():.4f}  {time.time() - t0:.0f}s", flush=True)
    net.eval()
    return net, {"train_seconds": round(time.time() - t0, 1), "steps": steps, "batch_size": batch_size,
                 "params": count_params(net), "pool_scenes": len(pool.images)}


@torch.no_grad()
def presence(clf: DigitClassifier, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``[N, 16]`` bool: the evaluator's verdict (sigmoid > 0.5) per kind."""
    clf.eval()
    return torch.cat([clf(x[i:i + batch_size]) > 0 for i in range(0, len(x), batch_size)])


def evaluator_accuracy(clf: DigitClassifier, seed: int, n: int = 2000) -> dict:
    """Exact-set and per-label accuracy on fresh scenes (clean and degraded) and on held-out-pair scenes."""
    out = {}
    g = torch.Generator().manual_seed(seed)
    for name, kw in (("all", {"exclude_heldout": False}), ("heldout_pairs", {"exclude_heldout": False,
                                                                                "only_heldout": True})):
        sc = shapes.generate_scenes(n, seed + (1 if name == "all" else 2), **kw)
        for variant, x in (("clean", sc.images), ("degraded", degrade(sc.images, g))):
            pred = presence(clf, x).float()
            out[f"{name}_{variant}"] = {"n": n, "exact_set": round((pred == sc.present).all(1).float().mean().item(), 4),
                                        "per_label": round((pred == sc.present).float().mean().item(), 5)}
    return out


def prompt_sampler(net: TextDenoiser, prompts: list[str], cfg_scale: float):
    """eps function for ``ddpm_sample``: CFG between each row's prompt and the empty prompt."""
    ctx = net.encoder.encode(prompts)
    ctx_u = net.encoder.encode([""]).expand_as(ctx)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if cfg_scale == 1.0:
            return net.unet(x, t, ctx)
        e_c, e_u = net.unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, ctx_u])).chunk(2)
        return e_u + cfg_scale * (e_c - e_u)

    return fn


@torch.no_grad()
def evaluate(net: TextDenoiser, clf: DigitClassifier, n_per_prompt: int, steps: int, cfg_scale: float,
             seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    res, grids = {}, {}
    for scale in sorted({1.0, cfg_scale}):
        per = {}
        for prompt in EVAL_PROMPTS:
            x = ddpm_sample(prompt_sampler(net, [prompt] * n_per_prompt, scale), (n_per_prompt, 3, 16, 16), steps, g)
            pred = presence(clf, x.clamp(-1, 1))
            want = torch.zeros(shapes.NUM_KINDS, dtype=torch.bool)
            want[shapes.scene_kinds(prompt)] = True
            per[prompt] = {"all_named_present": round(pred[:, want].all(1).float().mean().item(), 4),
                           "exactly_named": round((pred == want).all(1).float().mean().item(), 4),
                           "heldout_pair": any(prompt == f"{a} and {b}" for a, b in shapes.HELDOUT_PAIRS)}
            grids[(scale, prompt)] = x[:8]
        res[f"cfg_{scale:g}"] = per
    x = ddpm_sample(prompt_sampler(net, [""] * 500, 1.0), (500, 3, 16, 16), steps, g)
    pred = presence(clf, x.clamp(-1, 1)).float()
    ref = shapes.generate_scenes(2000, seed + 5, exclude_heldout=True).present
    res["unconditional"] = {"n": 500, "objects_per_scene": round(pred.sum(1).mean().item(), 3),
                            "objects_per_scene_training": round(ref.sum(1).mean().item(), 3),
                            "kind_frequency": [round(v, 4) for v in pred.mean(0).tolist()],
                            "kind_frequency_training": [round(v, 4) for v in ref.mean(0).tolist()]}
    grids[(1.0, "")] = x[:8]
    return res, grids


def save_grid(grids: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(grids, key=lambda k: (k[0], k[1]))
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 0.9 * len(keys) + 0.6))
    for ax, key in zip(axes, keys):
        x = (grids[key].clamp(-1, 1) + 1) / 2
        x = F.pad(x, (1, 1, 1, 1), value=1.0)
        ax.imshow(x.permute(2, 0, 3, 1).reshape(x.shape[2], -1, 3).numpy(), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"cfg {key[0]:g}: {key[1] or '(empty prompt)'}", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--p-uncond", type=float, default=0.15)
    ap.add_argument("--p-partial", type=float, default=0.15)
    ap.add_argument("--p-omit", type=float, default=0.25)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--pool", type=int, default=60000, help="training scenes rendered up front")
    ap.add_argument("--evaluator-steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--n-per-prompt", type=int, default=100)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--skip-evaluator", action="store_true", help="reuse the shipped evaluator")
    ap.add_argument("--skip-denoiser", action="store_true", help="reuse the shipped denoiser")
    ap.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    unet_path = args.weights_dir / f"{NAME}_unet.safetensors"
    clf_path = args.weights_dir / f"{NAME}_evaluator.safetensors"
    result = {"dataset": NAME, "data": LICENSE, "heldout_pairs": [list(p) for p in shapes.HELDOUT_PAIRS],
              "seed": args.seed, "command": "python benchmarks/train_text_reference.py " + " ".join(
                  sys.argv[1:] if argv is None else argv), "torch": torch.__version__, "threads": args.threads,
              "platform": platform.platform(), "sampling_settings": SAMPLING_SETTINGS}
    t_all = time.time()

    if args.eval_only or args.skip_evaluator:
        clf, ccfg = load_classifier(clf_path)
        result["evaluator"] = json.loads(read_metadata(clf_path).get("train", "{}"))
    else:
        ccfg = ClassifierConfig(image_size=16, in_channels=3, channels=(32, 64), feat_dim=128,
                                num_classes=shapes.NUM_KINDS, dropout=0.1, dataset=NAME)
        clf, result["evaluator"] = train_evaluator(ccfg, args.evaluator_steps, 128, args.seed)
    result["evaluator"]["accuracy"] = evaluator_accuracy(clf, args.seed + 500)
    print("evaluator:", json.dumps(result["evaluator"]["accuracy"]), flush=True)
    if not (args.eval_only or args.skip_evaluator):
        save_classifier(clf, ccfg, clf_path, dtype=torch.float16, extra_metadata={"train": result["evaluator"], "license": LICENSE,
                                                             "labels": list(shapes.KINDS), "multilabel": True})

    if args.eval_only or args.skip_denoiser:
        net = load_text_model(unet_path)
        result["denoiser"] = json.loads(read_metadata(unet_path).get("train", "{}"))
    else:
        t0 = time.time()
        pool = shapes.generate_scenes(args.pool, args.seed, exclude_heldout=True)
        print(f"rendered {args.pool} scenes in {time.time() - t0:.0f}s", flush=True)
        cfg = TextUNetConfig(base_channels=args.base_channels)
        net, result["denoiser"] = train_denoiser(cfg, pool, args.steps, args.batch_size, args.lr, args.p_uncond,
                                                 args.p_partial, args.p_omit, args.seed, args.ema_decay)
        result["denoiser"]["render_seconds"] = round(time.time() - t0 - result["denoiser"]["train_seconds"], 1)
        save_text_model(net, unet_path, extra_metadata={"train": result["denoiser"], "license": LICENSE})
        net = load_text_model(unet_path)  # score what ships (fp16 weights)
    result["denoiser"]["config"] = json.loads(net.config.to_json())
    res, grids = evaluate(net, clf, args.n_per_prompt, args.sample_steps, args.cfg_scale, args.seed + 7)
    result["evaluation"] = res
    result["weights_bytes"] = {p.name: p.stat().st_size for p in (unet_path, clf_path)}
    result["total_seconds"] = round(time.time() - t_all, 1)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"reference_{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    save_grid(grids, args.results_dir / f"reference_{NAME}_samples.png",
              f"{NAME}: {result['denoiser'].get('params', 0):,} params, {args.sample_steps}-step ancestral DDPM")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
