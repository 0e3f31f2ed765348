"""Tiny, download-free diffusion models that ComfyUI detects as each model family people sample with.

One :class:`TinyFamily` per family: SD1.5 and SDXL (eps), SDXL v-prediction (the ``v_pred`` marker key), SD3
(MMDiT, flow), Flux (flow, guidance embedding), Wan 2.1 text-to-video (flow, 5-D latents) and Qwen-Image (flow).
Each is built the way :mod:`devtools.tiny_checkpoint` builds the SD1.5 checkpoint: the host's own
``supported_models`` config and diffusion-model class with a shrunk config, seeded random weights
(``_fill_module``; norms 1/0), the output layer calibrated with one forward pass through the host's
``apply_model`` so the raw prediction has unit std. Only the diffusion model is written (a UNETLoader file,
``diffusion_models/``): the text encoders of the flow families are billions of parameters, so tests build
CONDITIONING tensors of the encoders' output shapes directly (:func:`family_conditioning`).

Every build is checked by loading the file back with ``comfy.sd.load_diffusion_model`` (what UNETLoader calls):
the host must detect the named ``supported_models`` class and model type, and every tensor must load.

Why Qwen-Image as the extra flow family: it is a current text-to-image family that is sampled with true CFG and
a negative prompt by default (unlike guidance-distilled Flux or cfg-1 Z-Image Turbo), and its detection reads
only the layer count, so one transformer layer is a valid model (380 M parameters: the block width 3072 is
fixed by the host). Lumina 2 / Z-Image fix the width at 2304 / 3840 with two refiner stacks (~0.9 G parameters
at one layer) and Chroma fixes a 5-layer 5120-wide guidance approximator (~0.6 G): all larger.

Random weights test plumbing only (shapes, parametrisation, batching, step counts), never guidance effects.

CLI::

    python -m devtools.tiny_families --cached FAMILY [--seed N]    # build into the cache if needed, print the path
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .tiny_checkpoint import (CACHE_DIR, TINY_SDXL_UNET_CONFIG, TINY_UNET_CONFIG, _cached_build, _fill_module,
                              _key_generator, host_version, write_checked)

# Bump when a family's builder output changes (part of the cache key).
FAMILY_BUILDER_VERSION = 1


@dataclass(frozen=True)
class TinyFamily:
    """A model family as the host detects it, and what a sampling graph for it needs."""

    id: str
    config_class: str           # comfy.supported_models class the host must detect
    model_type: str             # comfy.model_base.ModelType name the host must pick (FLUX: flow with a shift)
    unet_config: dict           # the shrunk config the module tree is first built from (see _host_config)
    final_layer: str            # the output layer (module name) scaled for unit-std predictions
    context: tuple[int, int]    # (tokens, width) of the text encoder's output the model attends to
    pooled: int | None = None   # width of pooled_output, where the family uses one
    cond_extras: dict = field(default_factory=dict)   # other conditioning entries (Flux: guidance)
    markers: tuple[str, ...] = ()                     # marker keys of the checkpoint format (SDXL v-pred: v_pred)
    latent: tuple[str, dict] = ("EmptyLatentImage", {})  # the host's empty-latent node and its extra inputs
    stands_for: str = ""
    # where a host version cannot build the shrunk config (0.3.75 fixes Flux at 24 heads of 128 channels and
    # knows no txt_ids_dims), the smallest config it accepts instead
    fallback_config: dict | None = None

    @property
    def file_name(self) -> str:
        return f"dng_tiny_{self.id}.safetensors"

    @property
    def flow(self) -> bool:
        return self.model_type in ("FLOW", "FLUX")


_SD3_WIDTH = 128  # MMDiT width = 64 x depth
FAMILIES: dict[str, TinyFamily] = {f.id: f for f in [
    TinyFamily("sd15", "SD15", "EPS", dict(TINY_UNET_CONFIG), "out.2", (77, 768),
               stands_for="Stable Diffusion 1.x and its fine-tunes"),
    TinyFamily("sdxl", "SDXL", "EPS", dict(TINY_SDXL_UNET_CONFIG), "out.2", (77, 2048), pooled=1280,
               stands_for="SDXL, Pony, Illustrious (eps)"),
    TinyFamily("sdxl_vpred", "SDXL", "V_PREDICTION", dict(TINY_SDXL_UNET_CONFIG), "out.2", (77, 2048), pooled=1280,
               markers=("v_pred",), stands_for="v-prediction SDXL (NoobAI-XL v-pred and others)"),
    TinyFamily("sd3", "SD3", "FLOW", {
        "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": _SD3_WIDTH // 64, "input_size": None,
        "adm_in_channels": 2048,
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": 4096, "out_features": _SD3_WIDTH}},
        "num_patches": 256, "pos_embed_max_size": 16, "qk_norm": "rms", "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": []},
        "final_layer.linear", (32, 4096), pooled=2048, latent=("EmptySD3LatentImage", {}),
        stands_for="SD3 / SD3.5 (MMDiT)"),
    TinyFamily("flux", "Flux", "FLUX", {
        "image_model": "flux", "guidance_embed": True, "axes_dim": [16, 56, 56], "num_heads": 1, "mlp_ratio": 4.0,
        "theta": 10000, "out_channels": 16, "qkv_bias": True, "txt_ids_dims": [], "in_channels": 16,
        "hidden_size": 128, "context_in_dim": 4096, "patch_size": 2, "vec_in_dim": 768, "depth": 1,
        "depth_single_blocks": 1},
        "final_layer.linear", (32, 4096), pooled=768, cond_extras={"guidance": 3.5},
        latent=("EmptySD3LatentImage", {}), stands_for="Flux.1 dev/schnell and fine-tunes, with real CFG",
        fallback_config={
            "image_model": "flux", "guidance_embed": True, "axes_dim": [16, 56, 56], "num_heads": 24,
            "mlp_ratio": 4.0, "theta": 10000, "out_channels": 16, "qkv_bias": True, "in_channels": 16,
            "hidden_size": 3072, "context_in_dim": 4096, "patch_size": 2, "vec_in_dim": 768, "depth": 1,
            "depth_single_blocks": 0}),
    TinyFamily("wan", "WAN21_T2V", "FLOW", {
        "image_model": "wan2.1", "model_type": "t2v", "dim": 128, "out_dim": 16, "num_heads": 1, "ffn_dim": 256,
        "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16},
        "head.head", (32, 4096), latent=("EmptyHunyuanLatentVideo", {"length": 9}),
        stands_for="Wan 2.1 / 2.2 14B text-to-video (16-channel latents)"),
    TinyFamily("qwen_image", "QwenImage", "FLUX", {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1},
               "proj_out", (16, 3584), latent=("EmptySD3LatentImage", {}),
               stands_for="Qwen-Image (true CFG with a negative prompt)"),
]}


def family_cache_path(family: TinyFamily | str, seed: int = 0) -> Path:
    f = FAMILIES[family] if isinstance(family, str) else family
    return CACHE_DIR / f"tiny_{f.id}-comfy{host_version()}-seed{seed}-f{FAMILY_BUILDER_VERSION}.safetensors"


# How far one prompt's encoding sits from another's: every prompt shares a component (as real encoders'
# outputs do), plus this much of its own. It keeps the random models' conditional predictions a perturbation of
# the unconditional one (sd15: |D_c - D_u| / |D_u| ~ 0.04-0.17 over the schedule) instead of unrelated to it.
PROMPT_SPREAD = 0.3


def family_conditioning(family: TinyFamily | str, role: str, seed: int = 0) -> list:
    """CONDITIONING of the shapes the family's text encoder produces for the prompt ``role`` (any string, e.g.
    "positive", "negative", "empty"): ``[[cross_attn [1, tokens, width], {pooled_output, ...}]]``, a shared
    component plus PROMPT_SPREAD x one seeded by the role. Comma-separated roles give one prompt per image of a
    batch (``"empty,negative"``: batch element 0 gets the empty prompt, element 1 the negative)."""
    import torch

    f = FAMILIES[family] if isinstance(family, str) else family
    tokens, width = f.context

    def draw(name: str):
        g = _key_generator(seed, f"{f.id}.conditioning.{name}")
        return torch.randn(1, tokens, width, generator=g), (
            torch.randn(1, f.pooled, generator=g) if f.pooled else None)

    shared, shared_pooled = draw("shared")
    owns = [draw(r.strip()) for r in role.split(",")]
    extras: dict = dict(f.cond_extras)
    if f.pooled:
        extras["pooled_output"] = shared_pooled + PROMPT_SPREAD * torch.cat([o[1] for o in owns])
    return [[shared + PROMPT_SPREAD * torch.cat([o[0] for o in owns]), extras]]


def _host_config(f: TinyFamily, markers: dict):
    """The host's own model config for the family at the shrunk size: the module tree is built on 'meta' from
    ``f.unet_config`` and the host's detector re-derives the full config from its key names and shapes, so the
    build follows each host version's detection (new config keys, defaults) rather than a copy of it. Where the
    detected config cannot be built (a width the host fixes), ``f.fallback_config`` is tried."""
    import torch
    import comfy.model_detection
    import comfy.supported_models

    errors = []
    for unet_config in (f.unet_config, f.fallback_config):
        if unet_config is None:
            continue
        guess = getattr(comfy.supported_models, f.config_class)(dict(unet_config))
        try:  # config keys differ between host versions (0.33's Flux requires txt_ids_dims, 0.3.75's rejects it)
            meta_sd = dict(guess.get_model(markers, "", device="meta").diffusion_model.state_dict())
        except (ValueError, TypeError, AssertionError) as e:
            errors.append(f"{e}")
            continue
        meta_sd.update({k: torch.empty(0, device="meta") for k in markers})
        config = comfy.model_detection.model_config_from_unet(meta_sd, "")
        if config is None or type(config).__name__ != f.config_class:
            raise RuntimeError(f"tiny {f.id}: the host detects {type(config).__name__ if config else None}, "
                               f"not {f.config_class}")
        try:
            _build_model(config, "meta", markers)
        except (ValueError, TypeError, AssertionError) as e:
            errors.append(f"{e}")
            continue
        return config
    raise RuntimeError(f"tiny {f.id}: the host cannot build the detected config: {'; '.join(errors)}")


def _build_model(config, device: str, markers: dict):
    return config.get_model(markers, "", device=device)


def _calibration_scale(model, f: TinyFamily, seed: int) -> float:
    """Std of the raw network output for one noisy latent at a mid noise level, through the host's own
    ``extra_conds`` and ``apply_model`` (so conditioning is fed exactly as in sampling)."""
    import torch

    g = _key_generator(seed, f.id + ".calibration")
    channels = model.latent_format.latent_channels
    # video-latent families (Wan, and Qwen-Image, which 0.33 samples as one frame) take [B, C, T, H, W]; one frame
    # also suits the floor host's Qwen-Image, which squeezes it
    shape = (1, channels, 1, 8, 8) if getattr(model.latent_format, "latent_dimensions", 2) == 3 else (1, channels, 8, 8)
    x = torch.randn(*shape, generator=g)
    sigma = torch.tensor([0.5 if f.flow else 5.0])
    cond = family_conditioning(f, "calibration", seed)[0]
    conds = model.extra_conds(cross_attn=cond[0], device=torch.device("cpu"), noise=x, **cond[1])
    captured = {}
    hook = model.diffusion_model.register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    try:
        model.apply_model(x, sigma, **{k: v.cond for k, v in conds.items()})
    finally:
        hook.remove()
    return float(captured["out"].float().std())


def build_family_state_dict(family: TinyFamily | str, seed: int = 0, log=print) -> dict:
    """The family's diffusion-model state dict (fp16 tensors, host key names, plus its marker keys)."""
    from .host import import_host

    import_host(builtin_nodes=False)
    import torch

    f = FAMILIES[family] if isinstance(family, str) else family
    t0 = time.perf_counter()
    markers = {k: torch.tensor([]) for k in f.markers}
    with torch.inference_mode(False), torch.no_grad():
        config = _host_config(f, markers)
        meta = _build_model(config, "meta", markers)
        sd = _fill_module(meta.diffusion_model, seed, f"{f.id}.")
        del meta
        model = _build_model(config, "cpu", markers)
        model.diffusion_model.load_state_dict(sd, strict=True, assign=True)
        model.diffusion_model.eval()
        std = _calibration_scale(model, f, seed)
        if not math.isfinite(std) or std == 0:
            raise RuntimeError(f"tiny {f.id}: calibration failed (output std {std})")
        w, b = f"{f.final_layer}.weight", f"{f.final_layer}.bias"
        sd[w] = sd[w] / std
        if b in sd:
            sd[b] = torch.zeros_like(sd[b])
        del model
    out = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    out.update(markers)
    log(f"tiny_families[{f.id}]: {sum(v.numel() for v in sd.values()) / 1e6:.1f} M params, raw output std "
        f"{std:.3g} -> 1 ({time.perf_counter() - t0:.1f} s)")
    return out


def check_family_file(path, family: TinyFamily | str, log=print):
    """Load ``path`` the way UNETLoader does and check the detected family, model type and that every tensor
    loaded; returns the ModelPatcher."""
    import torch
    import comfy.sd
    import comfy.utils

    f = FAMILIES[family] if isinstance(family, str) else family
    patcher = comfy.sd.load_diffusion_model(str(path))
    if patcher is None:
        raise RuntimeError(f"tiny {f.id}: the host does not recognise {path}")
    kind = type(patcher.model.model_config).__name__
    mtype = patcher.model.model_type.name
    if (kind, mtype) != (f.config_class, f.model_type):
        raise RuntimeError(f"tiny {f.id}: detected as {kind}/{mtype}, not {f.config_class}/{f.model_type}")
    saved = comfy.utils.load_torch_file(str(path))
    loaded = patcher.model.diffusion_model.state_dict()
    missing = [k for k in loaded if k not in saved]
    if missing:
        raise RuntimeError(f"tiny {f.id}: {len(missing)} weights not in the file, e.g. {missing[:3]}")
    bad = [k for k in loaded if not torch.equal(loaded[k].float(), saved[k].float())]
    if bad:
        raise RuntimeError(f"tiny {f.id}: {len(bad)} weights differ after loading, e.g. {bad[:3]}")
    log(f"tiny_families[{f.id}]: loads as {kind} ({mtype}), {len(loaded)} tensors intact")
    return patcher


def build_family_file(path, family: TinyFamily | str, seed: int = 0, log=print) -> Path:
    """Write the family's diffusion model to ``path`` (atomically) after checking that it loads back."""
    f = FAMILIES[family] if isinstance(family, str) else family
    path = Path(path)
    sd = build_family_state_dict(f, seed, log)  # imports the host
    meta = {"dng.tiny_family": json.dumps({"family": f.id, "seed": seed, "builder": FAMILY_BUILDER_VERSION,
                                           "host": host_version()})}
    return write_checked(sd, path, meta, lambda tmp, log: check_family_file(tmp, f, log), f"tiny_families[{f.id}]",
                         log)


def get_family_file(family: TinyFamily | str, seed: int = 0, *, in_process: bool | None = None, log=print) -> Path:
    """The cached file of the family's tiny diffusion model, built first if needed (under a file lock)."""
    f = FAMILIES[family] if isinstance(family, str) else family

    def build(path, seed=0, log=print):
        return build_family_file(path, f, seed, log)

    return _cached_build(family_cache_path(f, seed), build, [f.id], f"tiny {f.id} model", seed, in_process, log,
                         module="devtools.tiny_families")


def install_family(family: TinyFamily | str, seed: int = 0) -> str:
    """Symlink the family's tiny model into the in-process host's ``models/diffusion_models``; returns the
    name UNETLoader takes."""
    from .host import import_host

    h = import_host()
    f = FAMILIES[family] if isinstance(family, str) else family
    src = get_family_file(f, seed).resolve()
    dst = h.base_dir / "models" / "diffusion_models" / f.file_name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src:
            return f.file_name
        dst.unlink()
    dst.symlink_to(src)
    return f.file_name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=sorted(FAMILIES))
    ap.add_argument("out", nargs="?", help="where to write the .safetensors file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cached", action="store_true", help="build into the cache (if needed) and print its path")
    a = ap.parse_args(argv)
    if a.cached:
        print(get_family_file(a.family, a.seed, in_process=True))
    elif a.out:
        build_family_file(a.out, a.family, a.seed)
    else:
        ap.error("give OUT or --cached")
    return 0


if __name__ == "__main__":
    sys.exit(main())


class ForwardRows:
    """Records the batch rows of every call of a diffusion model (a forward pre-hook): a patched clone and the
    guider share the loaded model's module, so this sees what the host sends through it, split or not."""

    def __init__(self, module):
        self.rows: list[int] = []
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.rows.append(int(args[0].shape[0]))

    def take(self) -> list[int]:
        rows, self.rows = self.rows, []
        return rows

    def close(self) -> None:
        self._handle.remove()


# ----------------------------------------------------------------------------------------------------------
# Sampling graphs for the tiny families (in-process host tests and benchmarks/model_families.py)

CONDITIONING_NODE = "DNGTinyFamilyConditioning"


class TinyFamilyConditioning:
    """A stand-in for the family's text encoder (a classic node registered only in test and benchmark
    processes): CONDITIONING of the encoder's output shapes, seeded by role."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (sorted(FAMILIES),), "role": ("STRING", {"default": "positive"}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, family, role, seed):
        return (family_conditioning(family, role, seed),)


def register_conditioning_node() -> None:
    """Make the stand-in encoder available to the in-process executor (idempotent)."""
    import nodes

    nodes.NODE_CLASS_MAPPINGS.setdefault(CONDITIONING_NODE, TinyFamilyConditioning)


def family_prompt(family: TinyFamily | str, unet_name: str, wiring: str, *, dng: dict | None = None,
                  sampler: str = "euler", scheduler: str = "normal", steps: int = 4, cfg: float = 4.0,
                  seed: int = 0, batch_size: int = 2, negative: str = "negative") -> dict:
    """An API-format prompt on the family's tiny model.

    ``wiring``: "plain" (KSampler with the *empty* prompt as its negative), "patch" (the DNG model patch with a
    KSampler whose negative is the concept) or "guider" (DNGGuider with SamplerCustomAdvanced). Node ids: "1"
    UNETLoader, "2"/"3"/"8" positive/negative/empty conditioning, "4" empty latent, "5" the sampler, "7"
    SaveLatent, "10" the DNG node, "11" its DNG Trace Plot. ``negative``: the concept's role(s) (see
    :func:`family_conditioning`).
    """
    f = FAMILIES[family] if isinstance(family, str) else family
    latent_node, latent_extra = f.latent
    p: dict = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
        **{nid: {"class_type": CONDITIONING_NODE, "inputs": {"family": f.id, "role": role, "seed": 0}}
           for nid, role in (("2", "positive"), ("3", negative), ("8", "empty"))},
        "4": {"class_type": latent_node, "inputs": {"width": 64, "height": 64, "batch_size": batch_size,
                                                    **latent_extra}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"dng_{f.id}"}},
    }
    ksampler = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
        "positive": ["2", 0], "negative": ["8", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    if wiring == "plain":
        p["5"] = ksampler
        return p
    if wiring == "patch":
        p["10"] = {"class_type": "DynamicNegativeGuidance",
                   "inputs": {"model": ["1", 0], "empty_conditioning": ["8", 0], **(dng or {})}}
        p["5"] = ksampler
        p["5"]["inputs"].update(model=["10", 0], negative=["3", 0])
    elif wiring == "guider":
        p["10"] = {"class_type": "DNGGuider", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "empty_conditioning": ["8", 0],
            "cfg": cfg, **(dng or {})}}
        p["12"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
        p["13"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": scheduler,
                                                              "steps": steps, "denoise": 1.0}}
        p["14"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
        p["5"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["14", 0], "guider": ["10", 0], "sampler": ["12", 0], "sigmas": ["13", 0],
            "latent_image": ["4", 0]}}
    else:
        raise ValueError(f"wiring must be plain, patch or guider, got {wiring!r}")
    p["11"] = {"class_type": "DNGTracePlot", "inputs": {
        "trace": ["10", 1], "latent": ["5", 0], "log_scale": False, "save_json": False,
        "filename_prefix": f"dng_{f.id}_trace", "width": 256, "height": 256}}
    return p
