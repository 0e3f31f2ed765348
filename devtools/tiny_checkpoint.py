"""A tiny, download-free checkpoint that ComfyUI detects as Stable Diffusion 1.5.

Everything is built from the host's own classes (``comfy.supported_models.SD15``, its CLIP-L text
encoder ``SD1ClipModel`` and ``comfy.taesd.taesd.TAESD``) and filled with seeded random weights, then
written with the host's own key conventions (``process_*_state_dict_for_saving``):

* UNet: model_channels 320, context_dim 768, channel_mult [1], num_res_blocks [1], transformer_depth [1],
  no middle block (18.7 M parameters). ``model.diffusion_model.*``
* CLIP-L: the full, fixed 123 M-parameter text encoder. Every key the host loads is present (weights missing
  from a checkpoint are left as uninitialised memory by the host). ``cond_stage_model.transformer.text_model.*``
* VAE: TAESD (2.45 M parameters, encoder + decoder). ``first_stage_model.taesd_*`` plus
  ``first_stage_model.vae_scale`` = 0.18215 / ``vae_shift`` = 0, the values ComfyUI's VAELoader gives TAESD for
  SD1.x latents.

Cross-attention outputs are scaled by 0.3 so that conditioning perturbs the prediction (~10%) rather than
replacing it. The UNet's output conv and the TAESD decoder's last conv are calibrated with one forward pass each so that the
noise prediction has std ~1 and decoded pixels stay mostly inside [-1, 1]: outputs are finite and O(1).
Random weights test plumbing only; they say nothing about image quality or guidance effects.

CLI::

    python -m devtools.tiny_checkpoint OUT.safetensors [--seed N]
    python -m devtools.tiny_checkpoint --cached [--seed N]      # print (and build if needed) the cache path
    python -m devtools.tiny_checkpoint --sdxl --cached           # the tiny SDXL checkpoint (see below)

A tiny SDXL-detected checkpoint is built the same way (``get_tiny_sdxl_checkpoint``, for the shipped SDXL
workflow): ``comfy.supported_models.SDXL`` (its detection requires transformer_depth [0, 0, 2, 2, 10, 10] exactly;
channels stay 320 at every level, no middle block: 131.6 M UNet parameters), the host's ``SDXLClipModel`` (CLIP-L
+ CLIP-G, 818 M parameters of fixed configuration, so layer 0 of each encoder is drawn and repeated) and TAESD
with the SDXL latent scale: 1.8 GB fp16, ~60 s to build once, cached next to the SD1.5 one.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

# Bump when the builder's output changes (it is part of the cache key).
BUILDER_VERSION = 1

from .host import HOST_DIR, REPO_ROOT  # stdlib-only module; the host itself is imported lazily
CACHE_DIR = REPO_ROOT / ".cache" / "tiny_checkpoints"

# The UNet config ComfyUI's detector (comfy/model_detection.py) derives from the state dict we write.
TINY_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "channel_mult": [1],
    "transformer_depth_middle": -2,  # -2: no middle block
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

CROSS_ATTN_SCALE = 0.3
TAESD_SD1_SCALE = 0.18215  # what nodes.VAELoader.load_taesd sets for taesd (SD1.x)


def host_version(host_dir: Path = HOST_DIR) -> str:
    """ComfyUI version of the host tree, read without importing it."""
    text = (Path(host_dir) / "comfyui_version.py").read_text()
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    if not m:
        raise RuntimeError(f"no __version__ in {host_dir}/comfyui_version.py")
    return m.group(1)


def cache_path(seed: int = 0) -> Path:
    return CACHE_DIR / f"tiny_sd15-comfy{host_version()}-seed{seed}-b{BUILDER_VERSION}.safetensors"


# ----------------------------------------------------------------------------------------------------------
# Building


def _key_generator(seed: int, key: str):
    import torch

    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    return g


def _fill_module(module, seed: int, prefix: str = "", relu_gain: bool = False, skip=None) -> dict:
    """Seeded random fp32 tensors for every parameter/buffer of ``module`` (which may live on 'meta').

    Norm layers (any class named *Norm*) get weight (or scale) 1 / bias 0, embeddings N(0, 0.02) (position embeddings 0.01), linear and conv
    weights N(0, gain/sqrt(fan_in)) with zero bias; anything else N(0, 0.02). Each tensor has its own generator
    (seeded by ``prefix + key``); ``skip`` (a compiled regex) leaves out the submodules whose name it matches.
    """
    import torch

    out: dict[str, "torch.Tensor"] = {}
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d)
    for mod_name, mod in module.named_modules():
        if skip is not None and skip.search(mod_name):
            continue
        local = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
        for pname, p in local:
            key = f"{mod_name}.{pname}" if mod_name else pname
            if p is None:
                continue
            shape = tuple(p.shape)
            g = _key_generator(seed, prefix + key)
            # RMSNorm classes differ per host version and model (comfy.ops, comfy.rmsnorm, Flux's ``scale``)
            if isinstance(mod, norm_types) or "Norm" in type(mod).__name__:
                t = torch.ones(shape) if pname in ("weight", "scale") else torch.zeros(shape)
            elif isinstance(mod, torch.nn.Embedding):
                std = 0.01 if "position" in key else 0.02
                t = torch.randn(shape, generator=g) * std
            elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
                if pname == "weight":
                    fan_in = max(1, math.prod(shape[1:]))
                    gain = math.sqrt(2.0) if relu_gain else 1.0
                    t = torch.randn(shape, generator=g) * (gain / math.sqrt(fan_in))
                else:
                    t = torch.zeros(shape)
            else:
                t = torch.randn(shape, generator=g) * 0.02
            out[key] = t
    return out


def _calibrated_unet(model_config, seed: int, prefix: str, context_dim: int, y_dim: int | None = None,
                     label: str = "tiny_checkpoint", log=print) -> dict:
    """The host's own UNet for ``model_config`` (built on meta for the exact module tree), seeded random
    weights, cross-attention scaled down and the output layer calibrated so that eps has unit std."""
    import torch
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    unet_meta = UNetModel(**model_config.unet_config, device="meta", operations=ops)
    unet_sd = _fill_module(unet_meta, seed, prefix)
    # Conditioning as a perturbation, as in a trained model: two random contexts then change eps by ~10%
    # (about 35% at full scale), so cfg 7 does not dwarf the prediction itself.
    for k in unet_sd:
        if ".attn2.to_out.0.weight" in k:
            unet_sd[k] = unet_sd[k] * CROSS_ATTN_SCALE
    unet = UNetModel(**model_config.unet_config, device="cpu", operations=ops)
    unet.load_state_dict(unet_sd, strict=True, assign=True)
    unet.eval()
    g = _key_generator(seed, prefix + "calibration")
    x = torch.randn(2, 4, 8, 8, generator=g)
    ts = torch.tensor([999.0, 500.0])
    ctx = torch.randn(2, 77, context_dim, generator=g)
    extra = {"y": torch.randn(2, y_dim, generator=g)} if y_dim else {}
    std = float(unet(x, ts, context=ctx, **extra).float().std())
    if not math.isfinite(std) or std == 0:
        raise RuntimeError(f"{label}: UNet calibration failed (std={std})")
    unet_sd["out.2.weight"] = unet_sd["out.2.weight"] / std
    unet_sd["out.2.bias"] = torch.zeros_like(unet_sd["out.2.bias"])
    del unet
    log(f"{label}: UNet {sum(v.numel() for v in unet_sd.values())/1e6:.2f} M params, raw eps std {std:.3g} -> 1")
    return unet_sd


def _calibrated_taesd(seed: int, prefix: str, scale: float, label: str = "tiny_checkpoint", log=print) -> dict:
    """TAESD with seeded random weights, its last decoder layer calibrated to pixels ~ N(0.5, 0.2)."""
    import torch
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    vae_sd = _fill_module(taesd, seed, prefix, relu_gain=True)
    vae_sd["vae_scale"] = torch.tensor(scale)
    vae_sd["vae_shift"] = torch.tensor(0.0)
    taesd.load_state_dict(vae_sd, strict=True, assign=True)
    taesd.eval()
    gv = _key_generator(seed, prefix + "calibration")
    z = torch.randn(1, 4, 8, 8, generator=gv) / scale
    img = taesd.taesd_decoder(z * scale)
    last = max(k for k in vae_sd if k.startswith("taesd_decoder.") and k.endswith(".weight")
               and vae_sd[k].dim() == 4 and vae_sd[k].shape[0] == 3)
    # decode() returns (dec - 0.5) * 2; aim for pixels ~ N(0.5, 0.2) i.e. mostly inside [0, 1].
    dstd = float(img.float().std())
    if not math.isfinite(dstd) or dstd == 0:
        raise RuntimeError(f"{label}: TAESD calibration failed (std={dstd})")
    vae_sd[last] = vae_sd[last] * (0.2 / dstd)
    bias_key = last[: -len("weight")] + "bias"
    if bias_key in vae_sd:
        vae_sd[bias_key] = torch.full_like(vae_sd[bias_key], 0.5)
    del taesd
    log(f"{label}: TAESD {sum(v.numel() for v in vae_sd.values())/1e6:.2f} M params")
    return vae_sd


def _checkpoint_state_dict(model_config, clip_sd: dict, vae_sd: dict, unet_sd: dict) -> dict:
    """One checkpoint in the host's own key conventions for this model family, fp16."""
    import torch

    sd: dict = {}
    sd.update(model_config.process_clip_state_dict_for_saving(clip_sd))
    sd.update(model_config.process_vae_state_dict_for_saving(vae_sd))
    sd.update(model_config.process_unet_state_dict_for_saving(unet_sd))
    return {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}


def build_state_dict(seed: int = 0, log=print) -> dict:
    """The full checkpoint state dict (fp16 tensors, host key names). Needs the host importable."""
    from .host import import_host

    import_host(builtin_nodes=False)
    import torch
    import comfy.supported_models

    t0 = time.perf_counter()
    model_config = comfy.supported_models.SD15(dict(TINY_UNET_CONFIG))

    with torch.inference_mode(False), torch.no_grad():
        unet_sd = _calibrated_unet(model_config, seed, "unet.", context_dim=768, label="tiny_checkpoint", log=log)

        # --- CLIP-L: the host's own text encoder class for SD15 ---------------------------------------------
        clip_target = model_config.clip_target(state_dict={})
        clip_meta = clip_target.clip(device="meta", dtype=torch.float32)
        clip_sd = _fill_module(clip_meta, seed, "clip.")
        for k in list(clip_sd):
            if k.endswith("logit_scale"):
                clip_sd[k] = torch.tensor(4.6055)
            elif k.endswith("text_projection.weight"):
                clip_sd[k] = torch.eye(clip_sd[k].shape[0])
        log(f"tiny_checkpoint: CLIP {sum(v.numel() for v in clip_sd.values())/1e6:.2f} M params")

        vae_sd = _calibrated_taesd(seed, "vae.", TAESD_SD1_SCALE, label="tiny_checkpoint", log=log)

    sd = _checkpoint_state_dict(model_config, clip_sd, vae_sd, unet_sd)
    log(f"tiny_checkpoint: {len(sd)} tensors built in {time.perf_counter() - t0:.1f} s")
    return sd


def build_tiny_sd15_checkpoint(path, seed: int = 0, log=print) -> Path:
    """Write the tiny SD1.5 checkpoint to ``path`` (atomically) and return it."""
    path = Path(path)
    sd = build_state_dict(seed=seed, log=log)  # imports the host first
    import comfy.utils

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = {
        "dng.tiny_checkpoint": json.dumps({"seed": seed, "builder": BUILDER_VERSION, "host": host_version()}),
    }
    t0 = time.perf_counter()
    comfy.utils.save_torch_file(sd, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    log(f"tiny_checkpoint: wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    return path


@contextlib.contextmanager
def _file_lock(lock_path: Path):
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cached_build(path: Path, build, cli_flags: list[str], label: str, seed: int, in_process: bool | None,
                  log, module: str = "devtools.tiny_checkpoint") -> Path:
    """``path`` if it exists, else build it under a file lock: in this process if the host is already imported
    (or ``in_process``), otherwise in a subprocess (``python -m devtools.tiny_checkpoint``)."""
    if path.exists():
        return path
    with _file_lock(path.with_suffix(".lock")):
        if path.exists():
            return path
        if in_process is None:
            in_process = "comfy.model_management" in sys.modules
        if in_process:
            build(path, seed=seed, log=log)
        else:
            import subprocess

            env = dict(os.environ, OMP_NUM_THREADS="1")
            env.pop("PYTHONPATH", None)
            cmd = [sys.executable, "-m", module, *cli_flags, str(path), "--seed", str(seed)]
            r = subprocess.run(cmd, cwd=str(REPO_ROOT), env=env, capture_output=True, text=True)
            if r.returncode != 0 or not path.exists():
                raise RuntimeError(f"building the {label} failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-5000:]}")
            log(r.stdout.strip())
    return path


def get_tiny_checkpoint(seed: int = 0, *, in_process: bool | None = None, log=print) -> Path:
    """Path of the cached tiny checkpoint, building it first if needed (under a file lock).

    Cached under ``.cache/tiny_checkpoints/`` keyed by host version, seed and BUILDER_VERSION. If the host is
    not already imported in this process the build runs in a subprocess (``in_process=None``), so that a
    caller that only drives a server does not import torch/comfy itself.
    """
    return _cached_build(cache_path(seed), build_tiny_sd15_checkpoint, [], "tiny checkpoint", seed, in_process, log)


# ----------------------------------------------------------------------------------------------------------
# A tiny SDXL-detected checkpoint (for the shipped SDXL workflow)

SDXL_BUILDER_VERSION = 1

# comfy.supported_models.SDXL matches on model_channels 320, use_linear_in_transformer, context_dim 2048,
# adm_in_channels 2816, no temporal attention and transformer_depth == [0, 0, 2, 2, 10, 10] exactly (one entry
# per input block: 3 levels x 2 res blocks). channel_mult, transformer_depth_output and the middle block are not
# part of the match, so all levels stay at 320 channels, the output blocks have no transformers and there is
# no middle block: 131.6 M UNet parameters instead of 2.6 G.
TINY_SDXL_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 0, 0, 0, 0, 0, 0],
    "channel_mult": [1, 1, 1],
    "transformer_depth_middle": -2,  # -2: no middle block
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
TAESD_SDXL_SCALE = 0.13025  # what nodes.VAELoader.load_taesd sets for taesdxl


def sdxl_cache_path(seed: int = 0) -> Path:
    return CACHE_DIR / f"tiny_sdxl-comfy{host_version()}-seed{seed}-b{SDXL_BUILDER_VERSION}.safetensors"


def build_sdxl_state_dict(seed: int = 0, log=print) -> dict:
    """The tiny SDXL checkpoint's state dict (fp16 tensors, host key names). Needs the host importable.

    UNet: TINY_SDXL_UNET_CONFIG, seeded random weights, calibrated like the SD1.5 one. Text encoders: the host's
    own ``SDXLClipModel`` (CLIP-L + CLIP-G, fixed configs), random embeddings and layer 0 of each encoder repeated
    over its layers. VAE: TAESD with the SDXL latent scale.
    """
    from .host import import_host

    import_host(builtin_nodes=False)
    import torch
    import comfy.supported_models

    t0 = time.perf_counter()
    model_config = comfy.supported_models.SDXL(dict(TINY_SDXL_UNET_CONFIG))
    with torch.inference_mode(False), torch.no_grad():
        unet_sd = _calibrated_unet(model_config, seed, "sdxl.unet.", context_dim=2048, y_dim=2816,
                                   label="tiny_checkpoint[sdxl]", log=log)

        # The text encoders have fixed configs (CLIP-G alone: 32 layers, 695 M parameters) and the host leaves
        # weights missing from a checkpoint as uninitialised memory, so every key is written; drawing layer 0
        # of each encoder and repeating it over the other layers keeps the build to seconds.
        clip_meta = model_config.clip_target(state_dict={}).clip(device="meta", dtype=torch.float32)
        all_keys = set(clip_meta.state_dict(keep_vars=True))
        clip_sd = _fill_module(clip_meta, seed, "sdxl.clip.",
                               skip=re.compile(r"\.encoder\.layers\.[1-9]\d*(\.|$)"))
        clip_sd = {k: v.to(torch.float16) for k, v in clip_sd.items()}  # saved as fp16 anyway; halves the peak
        repeat = re.compile(r"^(.+\.encoder\.layers)\.[1-9]\d*\.(.+)$")
        for k in sorted(all_keys - set(clip_sd)):
            m = repeat.match(k)
            if m:
                clip_sd[k] = clip_sd[f"{m.group(1)}.0.{m.group(2)}"].clone()
        for k in list(clip_sd):
            if k.endswith("logit_scale"):
                clip_sd[k] = torch.tensor(4.6055)
            elif k.endswith("text_projection.weight"):
                clip_sd[k] = torch.eye(clip_sd[k].shape[0], dtype=torch.float16)
        missing = all_keys - set(clip_sd)
        if missing:
            raise RuntimeError(f"tiny SDXL text encoders: keys not filled: {sorted(missing)[:5]}")
        log(f"tiny_checkpoint[sdxl]: CLIP-L + CLIP-G {sum(v.numel() for v in clip_sd.values())/1e6:.0f} M params "
            f"({time.perf_counter() - t0:.1f} s)")

        vae_sd = _calibrated_taesd(seed, "sdxl.vae.", TAESD_SDXL_SCALE, label="tiny_checkpoint[sdxl]", log=log)

    sd = _checkpoint_state_dict(model_config, clip_sd, vae_sd, unet_sd)
    log(f"tiny_checkpoint[sdxl]: {len(sd)} tensors built in {time.perf_counter() - t0:.1f} s")
    return sd


def build_tiny_sdxl_checkpoint(path, seed: int = 0, log=print) -> Path:
    """Write the tiny SDXL checkpoint to ``path`` (atomically), check that the host detects and loads it as SDXL
    with finite text-encoder outputs, and return it."""
    path = Path(path)
    sd = build_sdxl_state_dict(seed=seed, log=log)
    metadata = {"dng.tiny_checkpoint": json.dumps({"seed": seed, "builder": SDXL_BUILDER_VERSION, "model": "sdxl",
                                                   "host": host_version()})}
    return write_checked(sd, path, metadata, _check_sdxl_checkpoint, "tiny_checkpoint[sdxl]", log)


def write_checked(sd: dict, path: Path, metadata: dict, check, label: str, log=print) -> Path:
    """Save ``sd`` to a temporary file next to ``path``, run ``check(tmp, log)`` on it (raising on a bad build)
    and only then move it to ``path``: a failed or interrupted build never leaves a cache entry behind."""
    import comfy.utils

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.safetensors")  # the loader goes by the extension
    t0 = time.perf_counter()
    comfy.utils.save_torch_file(sd, str(tmp), metadata=metadata)
    try:
        check(tmp, log)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    log(f"{label}: wrote {path.name} ({path.stat().st_size / 2**20:.1f} MiB) in "
        f"{time.perf_counter() - t0:.1f} s (incl. load check)")
    return path


def _check_sdxl_checkpoint(path: Path, log=print) -> None:
    import torch
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    kind = type(model.model.model_config).__name__
    if kind != "SDXL":
        raise RuntimeError(f"tiny SDXL checkpoint detected as {kind}, not SDXL")
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    c, pooled = cond[0][0], cond[0][1].get("pooled_output")
    if c.shape[-1] != 2048 or pooled is None or pooled.shape[-1] != 1280:
        raise RuntimeError(f"tiny SDXL text encoders: unexpected shapes {tuple(c.shape)}, "
                           f"{None if pooled is None else tuple(pooled.shape)}")
    if not (torch.isfinite(c).all() and torch.isfinite(pooled).all()):
        raise RuntimeError("tiny SDXL text encoders produce non-finite outputs")
    log(f"tiny_checkpoint[sdxl]: loads as {kind}; cond {tuple(c.shape)}, pooled {tuple(pooled.shape)}, finite")


def get_tiny_sdxl_checkpoint(seed: int = 0, *, in_process: bool | None = None, log=print) -> Path:
    """Like :func:`get_tiny_checkpoint`, for the tiny SDXL checkpoint (~1.8 GB, ~30 s to build; cached under
    ``.cache/tiny_checkpoints/``)."""
    return _cached_build(sdxl_cache_path(seed), build_tiny_sdxl_checkpoint, ["--sdxl"], "tiny SDXL checkpoint",
                         seed, in_process, log)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", help="where to write the .safetensors file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cached", action="store_true", help="build into the cache (if needed) and print its path")
    ap.add_argument("--sdxl", action="store_true", help="the tiny SDXL checkpoint instead of the SD1.5 one")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.cached:
        get = get_tiny_sdxl_checkpoint if a.sdxl else get_tiny_checkpoint
        print(get(a.seed, in_process=True))
        return 0
    if not a.out:
        ap.error("give OUT.safetensors or --cached")
    (build_tiny_sdxl_checkpoint if a.sdxl else build_tiny_sd15_checkpoint)(a.out, seed=a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
