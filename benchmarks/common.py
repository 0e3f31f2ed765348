"""Shared helpers of the class-removal and deactivation benchmarks on the pack's reference digit model.

Everything runs THROUGH THE REAL HOST: API prompts with the pack's nodes (DNGReferenceModelLoader,
DNGDigitConditioning, DNGEmptyDigitLatent, DynamicNegativeGuidance / DNGNegativePrompting /
DNGSafeLatentDiffusion, ComfyUI's own KSampler) are executed in-process by ComfyUI's real executor
(devtools/host.py: PromptRunner). Nothing here calls dng_core directly.

* :func:`digit_prompt` builds the prompt (the structure of tests/support/reference_prompts.reference_prompt, plus
  an optional positive digit for the deactivation benchmark).
* :class:`Bench` owns one PromptRunner (one executor, so the loader's output stays cached) and returns the
  sampler's latent and the guidance trace of that run.
* :class:`Scorer` scores a sample set with the reference classifier: forbidden %, class histogram, KL(uniform over
  the kept classes || histogram), FD_clf and KID_clf in the classifier's penultimate features against the
  training data without the removed class. Inception weights cannot be had offline, so FD / KID here are
  *classifier* feature distances (FD_clf, KID_clf), not FID / KID in the usual Inception sense.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

EMPTY_LABEL = "empty (unconditional)"
FEATURE_NOTE = ("FD_clf / KID_clf: Frechet distance / kernel inception distance (cubic polynomial kernel) computed "
                "in the penultimate (128-d) features of the pack's digits8 classifier, against the digits8 training "
                "split without class 0. Inception weights cannot be had offline, so these are NOT FID / KID in the "
                "usual Inception sense; they compare methods with each other on this model only.")

# The paper's class-removal SLD (docs/algorithm.md section 6): warmup 0, s_S 100, threshold 0.04, s_m 0.1,
# beta_m 0.2; its strength s_g is the KSampler cfg (the prompt term is zero with positive = empty).
SLD_PAPER = {"preset": "paper_class_removal", "warmup": 0, "safety_scale": 100.0, "threshold": 0.04,
             "momentum_scale": 0.1, "momentum_beta": 0.2}
DNG_FIXED = {"p_min": 1e-6}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mean_se(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (nan for a single value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


# ------------------------------------------------------------------------------------------------------------
# Prompts


def digit_prompt(*, method: str = "dng", batch_size: int = 64, seed: int = 0, steps: int = 30,
                 sampler: str = "euler_ancestral", scheduler: str = "normal", negative_digit: str = "0",
                 positive_digit: str | None = None, cfg: float = 1.0, model_name: str = "digits8",
                 **params: Any) -> dict:
    """API prompt for the reference digits model; ``method`` in plain / dng / np / sld removes ``negative_digit``.

    The structure of tests/support/reference_prompts.reference_prompt, with ``positive_digit``: None (default)
    is unconditional generation (positive = empty label); a digit makes the KSampler's positive that digit, so
    with cfg > 1 the model is steered towards it by ordinary CFG (the deactivation benchmark). For ``plain``
    the KSampler's negative is the empty label (ordinary CFG towards the positive, no guidance away from
    anything). Ids: "1" loader, "2" empty label, "3" negative digit, "4" empty latent, "5" KSampler,
    "6" image grid, "7" preview, "8" positive digit (if any), "10" the patch (absent for plain).
    ``params`` go to the patch node (DNG: lambda0, prior, temperature, offset, p_min, p_max, posterior_variance;
    NP: scale; SLD: preset, warmup, safety_scale, threshold, momentum_scale, momentum_beta).
    """
    positive = ["2", 0]
    p: dict[str, Any] = {
        "1": {"class_type": "DNGReferenceModelLoader", "inputs": {"model_name": model_name}},
        "2": {"class_type": "DNGDigitConditioning", "inputs": {"digit": EMPTY_LABEL}},
        "3": {"class_type": "DNGDigitConditioning", "inputs": {"digit": str(negative_digit)}},
        "4": {"class_type": "DNGEmptyDigitLatent", "inputs": {"model": ["1", 0], "batch_size": int(batch_size)}},
    }
    if positive_digit is not None:
        p["8"] = {"class_type": "DNGDigitConditioning", "inputs": {"digit": str(positive_digit)}}
        positive = ["8", 0]
    p["5"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": int(seed), "steps": int(steps), "cfg": float(cfg), "sampler_name": sampler,
        "scheduler": scheduler, "positive": positive, "negative": ["3", 0], "latent_image": ["4", 0],
        "denoise": 1.0}}
    # A small preview grid is the output node that makes the executor run the KSampler.
    p["6"] = {"class_type": "DNGDigitsToImage", "inputs": {"samples": ["5", 0], "columns": 64, "scale": 1}}
    p["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    if method == "plain":
        p["5"]["inputs"]["negative"] = ["2", 0]
        return p
    if method == "dng":
        node, inputs = "DynamicNegativeGuidance", {**DNG_FIXED, **params}
    elif method == "np":
        node, inputs = "DNGNegativePrompting", {"scale": 0.5, **params}
    elif method == "sld":
        node, inputs = "DNGSafeLatentDiffusion", {**SLD_PAPER, **params}
    else:
        raise ValueError(f"unknown method {method!r}")
    p["10"] = {"class_type": node, "inputs": {"model": ["1", 0], "empty_conditioning": ["2", 0], **inputs}}
    p["5"]["inputs"]["model"] = ["10", 0]
    return p


def split_at_step(p: dict, *, k: int, models: tuple[list, list], negatives: tuple[list, list], positive: list,
                  latent: list, seed: int, steps: int, cfg: float, sampler: str, scheduler: str = "normal") -> dict:
    """Replace a prompt's KSampler "5" with two KSamplerAdvanced segments, steps [0, k) ("11") then [k, steps)
    ("5", the final latent), each with its own model and negative (``split_at_steps`` with one split)."""
    return split_at_steps(p, ks=[k], models=list(models), negatives=list(negatives), positive=positive,
                          latent=latent, seed=seed, steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler)


def split_at_steps(p: dict, *, ks: list[int], models: list[list], negatives: list[list], positive: list,
                   latent: list, seed: int, steps: int, cfg: float, sampler: str, scheduler: str = "normal") -> dict:
    """Replace a prompt's KSampler "5" with len(ks) + 1 KSamplerAdvanced segments split at the steps ``ks``
    (increasing), each with its own model and negative. Ids: "11" the first segment, "14", "15", ... the middle
    ones, "5" the last (the final latent). Each segment but the last returns its leftover noise and the next
    continues it; segment i > 0 seeds its ancestral noise with seed + 1000 i (ComfyUI seeds the ancestral noise
    with the latent's seed, so reusing it would inject the initial noise a second time)."""
    if len(models) != len(ks) + 1 or len(negatives) != len(ks) + 1 or list(ks) != sorted(set(ks)):
        raise ValueError("split_at_steps needs increasing split steps and one model and negative per segment")
    common = {"steps": int(steps), "cfg": float(cfg), "sampler_name": sampler, "scheduler": scheduler,
              "positive": positive}
    bounds = [0, *[int(k) for k in ks], 10000]
    ids = ["11", *[str(14 + i) for i in range(len(ks) - 1)], "5"]
    for i, node_id in enumerate(ids):
        last = i == len(ids) - 1
        p[node_id] = {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "model": models[i], "add_noise": "enable" if i == 0 else "disable",
            "noise_seed": int(seed) + 1000 * i, "negative": negatives[i],
            "latent_image": latent if i == 0 else [ids[i - 1], 0], "start_at_step": bounds[i],
            "end_at_step": bounds[i + 1], "return_with_leftover_noise": "disable" if last else "enable"}}
    return p


# ------------------------------------------------------------------------------------------------------------
# Host


def pack_copies(module: str) -> list[Any]:
    """The pack's own copies of a dng_core module (e.g. "dng_core.path"): ComfyUI imports the pack under its folder
    name, so what the nodes call lives in "<pack>.dng_core.path", not in the top-level module a benchmark imports.
    For benchmarks that patch what the nodes call; a RuntimeError when the pack is not loaded yet."""
    copies = [m for name, m in list(sys.modules.items()) if name.endswith("." + module) and m is not None]
    if not copies:
        raise RuntimeError(f"the pack's copy of {module} was not found (load the pack first: Bench())")
    return copies


#: An image whose RMS value exceeds this is out of the data range ([-1, 1]: RMS <= 1) by half: destroyed, not
#: sampled (benchmarks/removal_tail.py found DNG destroying images that the classifier counted as removed)
DESTROYED_RMS = 1.5


def destroyed_images(samples: torch.Tensor) -> torch.Tensor:
    """One bool per image: its RMS value exceeds DESTROYED_RMS."""
    return samples.float().flatten(1).pow(2).mean(1).sqrt() > DESTROYED_RMS


def per_image_change(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean absolute change per pixel of each image against the same-seed reference, [N]."""
    return (samples.float() - reference.float()).abs().flatten(1).mean(1)


def wrap_pack_method(module: str, cls_name: str, name: str, wrap: Callable[[Callable], Callable]) -> None:
    """Replace method ``name`` of ``cls_name`` in each of the pack's copies of ``module`` (e.g. "dng_core.run") by
    ``wrap(original)``, for benchmarks that record or change what the nodes call. The original stays on the class
    (``_unwrapped_<name>``), so a later call wraps the original again, not the earlier wrapper."""
    for m in pack_copies(module):
        cls = getattr(m, cls_name)
        key = f"_unwrapped_{name}"
        original = cls.__dict__[key] if key in cls.__dict__ else getattr(cls, name)
        setattr(cls, key, original)
        setattr(cls, name, wrap(original))


def set_posterior_fields(**fields: Any) -> None:
    """Make every DNGRun the pack's copy builds use these PosteriorConfig fields: the settings that are not node
    inputs (``offset_trust``, ``debias_probe``); its trackers are built from the run's config, so they follow.
    A later call replaces the earlier fields."""
    from dataclasses import replace

    def wrap(original: Callable) -> Callable:
        def init(self, config, *args, **kwargs):
            original(self, replace(config, posterior=replace(config.posterior, **fields)), *args, **kwargs)
        return init

    wrap_pack_method("dng_core.run", "DNGRun", "__init__", wrap)


def point_study_args(description: str, default_cell: str = "mnist16/euler/20", default_seed: int = 1
                     ) -> tuple[str, int, float, dict[str, Any], str]:
    """The command line of the one-point studies (unrelated_tail, removal_tail): ``--cell``, ``--seed``,
    ``--lambda0`` (default: the node default), ``--offset-trust`` (default: dng_core's; not a node input) and
    ``--dng KEY=VALUE`` for the node's combo inputs (e.g. ``stochastic_push=full``). Returns (cell, seed, lambda0,
    the DNG overrides for ``defaults_grid._Runner`` (``offset_trust`` always, the rest as given), the results
    file's tag: "" at the defaults, else e.g. "_lambda150_trust0_stochastic_push-full"; the files tagged
    "_stochastic_push-late" are from sessions 18-19, when the late push ran at gain 1, lambda0 as given)."""
    import argparse

    from dng_core import DNGConfig, PosteriorConfig

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--cell", default=default_cell, metavar="MODEL/SAMPLER/STEPS")
    ap.add_argument("--seed", type=int, default=default_seed)
    ap.add_argument("--lambda0", type=float, default=None, help="default: the node default")
    ap.add_argument("--offset-trust", type=float, default=None,
                    help="PosteriorConfig.offset_trust (not a node input; default: dng_core's); 0: no bound")
    ap.add_argument("--dng", nargs="+", default=[], metavar="KEY=VALUE",
                    help="a node combo input other than its default, e.g. stochastic_push=full")
    args = ap.parse_args()
    lambda0 = DNGConfig().lambda0 if args.lambda0 is None else args.lambda0
    default_trust = PosteriorConfig().offset_trust
    trust = default_trust if args.offset_trust is None else args.offset_trust
    tag = "" if args.lambda0 is None else f"_lambda{lambda0:g}"
    tag += "" if trust == default_trust else f"_trust{trust:g}"
    overrides: dict[str, Any] = {"offset_trust": trust}
    from devtools.dng_defaults import dng_node_defaults

    defaults = dng_node_defaults()
    for item in args.dng:
        key, value = item.split("=", 1)
        overrides[key] = value
        if str(defaults.get(key)) != value:  # the tag names what differs from today's node defaults
            tag += f"_{key}-{value}"
    return args.cell, args.seed, lambda0, overrides, tag


def write_point_study(prefix: str, cell: str, seed: int, tag: str, lines: list[str]) -> None:
    """Print a point study's lines and write them to benchmarks/results/<prefix>_<cell>_seed<S><tag>.md."""
    (RESULTS / f"{prefix}_{cell.replace('/', '_')}_seed{seed}{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


@dataclass
class RunOutput:
    samples: torch.Tensor           # [N, 1, 8, 8], the KSampler's LATENT (the image, in [-1, 1] roughly)
    trace: Any | None               # dng_core GuidanceTrace of this run (None for plain)
    seconds: float


class Bench:
    """One in-process ComfyUI host with the pack loaded and one PromptRunner (its cache keeps the loader)."""

    def __init__(self, runner: Any | None = None) -> None:
        from devtools import host as H

        t0 = time.perf_counter()
        H.import_host()
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        nodes = H.load_pack()
        needed = {"DNGReferenceModelLoader", "DNGDigitConditioning", "DNGEmptyDigitLatent", "DynamicNegativeGuidance",
                  "DNGNegativePrompting", "DNGSafeLatentDiffusion"}
        missing = needed - set(nodes)
        if missing:
            raise RuntimeError(f"the pack did not register {sorted(missing)}")
        self.H = H
        self.runner = runner if runner is not None else H.PromptRunner()
        self.setup_seconds = time.perf_counter() - t0

    def run(self, prompt: dict) -> RunOutput:
        t0 = time.perf_counter()
        self.runner.run(prompt, check=True)
        samples = self.runner.output_of("5")[0][0]["samples"].detach().clone().float()
        trace = None
        if "10" in prompt:
            history = self.runner.output_of("10")[1][0]
            trace = history.find(self.runner.output_of("5")[0][0]["samples"])
            if trace is None:
                raise RuntimeError("no recorded guidance run matches the sampler's latent")
        return RunOutput(samples, trace, time.perf_counter() - t0)


def trace_summary(trace: Any) -> dict:
    """Per-step mean lambda (and p for DNG) over the samples the trace keeps (it keeps the first 64)."""
    if trace is None:
        return {}
    lam = trace.series("scale")  # [steps, concepts, batch_kept]
    out = {"trace_samples": int(lam.shape[-1]) if lam.numel() else 0,
           "lambda_mean_per_step": [float(v) for v in lam[:, 0, :].mean(-1)] if lam.numel() else [],
           "final_lambda_mean": float(lam[-1, 0, :].mean()) if lam.numel() else 0.0,
           "max_lambda_mean": float(lam[:, 0, :].max(0).values.mean()) if lam.numel() else 0.0}
    p = trace.series("p")
    if p.numel():
        out["p_mean_per_step"] = [float(v) for v in p[:, 0, :].mean(-1)]
        out["final_p_mean"] = float(p[-1, 0, :].mean())
    return out


# ------------------------------------------------------------------------------------------------------------
# Metrics


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018), d = feature dimension."""
    d = a.shape[1]
    return (a @ b.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 between the sets x [m, d] and y [n, d] with the cubic polynomial kernel."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(feats_gen, feats_ref, subsets: int = 0, subset_size: int = 500,
                              seed: int = 0) -> tuple[float, float]:
    """KID in any feature space: (estimate, standard deviation over subsets).

    subsets = 0: one unbiased MMD^2 estimate on all samples (std = nan). subsets > 0: the usual KID protocol,
    the mean and std of the unbiased estimate over ``subsets`` random subsets of ``subset_size`` from each set.
    """
    x = np.asarray(feats_gen, np.float64)
    y = np.asarray(feats_ref, np.float64)
    if subsets <= 0:
        return mmd2_unbiased(x, y), float("nan")
    rng = np.random.default_rng(seed)
    k = min(subset_size, len(x), len(y))
    vals = [mmd2_unbiased(x[rng.choice(len(x), k, replace=False)], y[rng.choice(len(y), k, replace=False)])
            for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


class Scorer:
    """The reference classifier and the reference feature set (training split without the removed class)."""

    def __init__(self, removed: int = 0, model_name: str = "digits8") -> None:
        from reference_model import load_classifier, weights_path
        from reference_model.data import load_dataset

        self.removed = removed
        self.kept = [k for k in range(10) if k != removed]
        self.clf, _ = load_classifier(weights_path(f"{model_name}_classifier"))
        data = load_dataset(model_name)
        keep = data.y_train != removed
        self.ref_feats = self.clf.embed(data.x_train[keep]).double().numpy()
        self.n_ref = int(keep.sum())
        held = data.y_heldout != removed
        self.heldout_feats = self.clf.embed(data.x_heldout[held]).double().numpy()

    @staticmethod
    def prepare(samples: torch.Tensor) -> torch.Tensor:
        # The data lie in [-1, 1]; the image nodes clamp the same way.
        return samples.float().clamp(-1.0, 1.0)

    def predict(self, samples: torch.Tensor) -> np.ndarray:
        return self.clf.predict(self.prepare(samples)).numpy()

    def score(self, samples: torch.Tensor, bootstrap: int = 200, seed: int = 0, fd_bootstrap: int = 0) -> dict:
        """Forbidden %, KL and FD_clf of ``samples`` with their standard errors: binomial for the forbidden
        share, bootstrap over images (``bootstrap`` resamples) for the KL and, on the first ``fd_bootstrap`` of
        the same resamples (a square root of a 128 x 128 matrix each, so opt-in), for FD_clf."""
        from reference_model.metrics import (class_histogram, frechet_distance, frechet_distance_feats,
                                             gaussian_stats, kl_uniform)

        x = self.prepare(samples)
        pred = self.clf.predict(x).numpy()
        feats = self.clf.embed(x).double().numpy()
        hist = class_histogram(pred)
        n = len(pred)
        forb = float((pred == self.removed).mean())
        kl = kl_uniform(hist, self.kept)
        # One set of resamples serves both errors (the KL's draws are the ones rows before session 24 used).
        rng = np.random.default_rng(seed)
        resamples = [rng.integers(0, n, n) for _ in range(bootstrap)]
        kls = [kl_uniform(class_histogram(pred[i]), self.kept) for i in resamples]
        fds = []
        if fd_bootstrap:
            ref_stats = gaussian_stats(self.ref_feats)
            fds = [frechet_distance(*gaussian_stats(feats[i]), *ref_stats) for i in resamples[:fd_bootstrap]]
        kid, _ = kernel_inception_distance(feats, self.ref_feats)
        return {
            "n": n,
            # images out of the data range: the classifier still gives them a digit, so they pass for removed
            "destroyed_pct": 100.0 * float(destroyed_images(samples).double().mean()),
            "forbidden_pct": 100.0 * forb,
            "forbidden_se_pct": 100.0 * math.sqrt(max(forb * (1 - forb), 1.0 / n) / n),
            "kl": kl,
            "kl_se": float(np.std(kls)) if bootstrap else float("nan"),
            "fd_clf": frechet_distance_feats(feats, self.ref_feats),
            # the generated set's sampling error only (the reference set is fixed)
            "fd_clf_se": float(np.std(fds)) if fds else float("nan"),
            "kid_clf": kid,
            "hist": [round(float(h), 4) for h in hist],
        }

    def floor(self) -> dict:
        """Distances of the held-out split (without the removed class) to the reference: the data's own floor."""
        from reference_model.metrics import frechet_distance_feats

        return {"n_ref": self.n_ref, "n_heldout": len(self.heldout_feats),
                "fd_clf_heldout": frechet_distance_feats(self.heldout_feats, self.ref_feats),
                "kid_clf_heldout": kernel_inception_distance(self.heldout_feats, self.ref_feats)[0]}


# ------------------------------------------------------------------------------------------------------------
# Matching at equal safety


def sweep_key(row: dict) -> float:
    return float(row["scale"])


def weakest_safe(rows: Sequence[dict], max_forbidden: float = 1.0) -> tuple[dict | None, bool]:
    """The weakest point (smallest scale) with forbidden_pct <= max_forbidden, else the point with the lowest
    forbidden % (ties: the weakest). Returns (row, met)."""
    rows = sorted(rows, key=sweep_key)
    if not rows:
        return None, False
    safe = [r for r in rows if r["forbidden_pct"] <= max_forbidden]
    if safe:
        return safe[0], True
    best = min(r["forbidden_pct"] for r in rows)
    return [r for r in rows if r["forbidden_pct"] == best][0], False


def crossing(rows: Sequence[dict], target: float) -> tuple[dict, dict, float] | None:
    """The two points of a sweep (by scale) between which forbidden % crosses ``target``, the last above it and
    the first at or below it, and the weight w of the second: the linear interpolation at the target is
    (1 - w) a + w b. None if the sweep never crosses the target."""
    rows = sorted(rows, key=sweep_key)
    for a, b in zip(rows, rows[1:]):
        fa, fb = a["forbidden_pct"], b["forbidden_pct"]
        if fa > target >= fb:
            return a, b, (fa - target) / (fa - fb)
    return None


def interpolate_at(rows: Sequence[dict], target: float, key: str) -> float | None:
    """``key`` linearly interpolated in forbidden % at forbidden = target, along the sweep (by scale): between
    the last point above the target and the first at or below it. None if the sweep never crosses the target."""
    hit = crossing(rows, target)
    if hit is None:
        return None
    a, b, w = hit
    return float(a[key] + w * (b[key] - a[key]))


def interpolate_se_at(rows: Sequence[dict], target: float, key: str, se_key: str,
                      target_se: float = 0.0) -> float | None:
    """The standard error of ``interpolate_at(rows, target, key)``, first order, every input an independent
    sample. With a, b the two points' values, fa, fb their forbidden %, w = (fa - target) / (fa - fb) and
    g = (b - a) / (fa - fb), the value is a + w (b - a), and

        Var = (1 - w)^2 se_a^2 + w^2 se_b^2 + g^2 (target_se^2 + (1 - w)^2 se_fa^2 + w^2 se_fb^2):

    the two points' own errors, and the error of where along the sweep the comparison falls (the target's, e.g.
    DNG's forbidden %, and the points' forbidden %, their ``forbidden_se``). The covariance of a point's value
    with its own forbidden % (the same images) is left out. None where the sweep never crosses the target or
    either point lacks ``se_key``."""
    hit = crossing(rows, target)
    if hit is None:
        return None
    a, b, w = hit
    if a.get(se_key) is None or b.get(se_key) is None:
        return None
    g = (b[key] - a[key]) / (a["forbidden_pct"] - b["forbidden_pct"])
    var = ((1 - w) * a[se_key]) ** 2 + (w * b[se_key]) ** 2
    var += g * g * (target_se ** 2 + ((1 - w) * a.get("forbidden_se", 0.0)) ** 2
                    + (w * b.get("forbidden_se", 0.0)) ** 2)
    return float(math.sqrt(var))


def ensure_results_dir() -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS


def environment() -> dict:
    """What a published figure was made on: the ComfyUI host (its version; DNG_HOST picks main or floor), torch,
    threads, platform. Seeds do not carry between hosts (0.33 seeds CPU noise differently from 0.3.75)."""
    import platform

    from devtools.host import HOST

    return {"comfyui": HOST.version, "host_role": HOST.role, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "platform": platform.platform(), "python": sys.version.split()[0]}


def progress(iterable: Iterable, **kwargs: Any):
    from tqdm import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kwargs)
