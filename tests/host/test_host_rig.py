"""Smoke tests of the in-process rig, with ComfyUI's built-in nodes only (plus a throw-away probe pack)."""

from __future__ import annotations

import math
import textwrap
import time

import pytest

from devtools import host as H
from devtools.tiny_checkpoint import TINY_UNET_CONFIG


def test_tiny_checkpoint_is_detected_as_sd15(tiny_models):
    import torch

    import comfy.model_base
    import comfy.taesd.taesd

    model, clip, vae = tiny_models
    assert type(model.model.model_config).__name__ == "SD15"
    assert type(model.model) is comfy.model_base.BaseModel
    assert model.model.model_type.name == "EPS"
    cfg = model.model.model_config.unet_config
    for k in ("context_dim", "model_channels", "channel_mult", "num_res_blocks", "transformer_depth",
              "transformer_depth_middle", "use_linear_in_transformer"):
        assert cfg[k] == TINY_UNET_CONFIG[k], k
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    assert type(clip.cond_stage_model).__name__ == "SD1ClipModel"

    cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a cat"), return_pooled=True)
    assert cond.shape == (1, 77, 768) and torch.isfinite(cond).all()
    img = vae.decode(torch.randn(1, 4, 8, 8))
    assert img.shape == (1, 64, 64, 3) and torch.isfinite(img).all()


def test_tiny_checkpoint_has_every_clip_key(tiny_checkpoint, host):
    """The host leaves weights missing from a checkpoint as uninitialised memory: all must be present."""
    from safetensors import safe_open

    import comfy.sd
    import comfy.supported_models

    path = host.folder_paths.get_full_path_or_raise("checkpoints", tiny_checkpoint)
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    cfg = comfy.supported_models.SD15(dict(TINY_UNET_CONFIG))
    loaded = set(cfg.process_clip_state_dict({k: None for k in keys}))
    target = cfg.clip_target(state_dict={})
    expected = set(target.clip(device="meta").state_dict())
    # text_projection / logit_scale cannot come from an SD1.x checkpoint (the host renames/drops them)
    missing = {k for k in expected - loaded if not k.endswith(("text_projection.weight", "logit_scale"))}
    assert not missing
    assert any(k.startswith("first_stage_model.taesd_decoder.") for k in keys)
    assert any(k.startswith("model.diffusion_model.") for k in keys)


def test_builtin_txt2img_in_process(prompt_runner, rig_timings):
    import torch
    from PIL import Image

    t0 = time.perf_counter()
    res = prompt_runner.run(H.txt2img_prompt(filename_prefix="rig_inproc"), check=True)
    rig_timings.setdefault("in-process txt2img prompt (cold)", time.perf_counter() - t0)

    (png,) = res.images("7")
    assert png.is_file() and png.stat().st_size > 0
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size == (64, 64) and im.mode == "RGB"

    latent = prompt_runner.output_of("5")[0][0]["samples"]
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()
    image = prompt_runner.output_of("6")[0][0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()

    assert res.history["status"] == {"status_str": "success", "completed": True,
                                     "messages": res.history["status"]["messages"]}
    # 0.3.75 reports every step; 0.33's ProgressBar throttles the steps in between (first and last always sent)
    values = [e.data["value"] for e in res.events_of("progress") if e.data["node"] == "5"]
    assert values[0] == 1 and values[-1] == 4 and values == sorted(set(values)), values
    assert res.events[-1].event == "executing" and res.events[-1].data["node"] is None


def test_outputs_are_cached_across_prompts_like_the_server(new_prompt_runner, rig_timings):
    p = H.txt2img_prompt(filename_prefix="rig_cache")
    first = new_prompt_runner.run(p, check=True)
    assert set(first.executed_nodes) == set(p)
    t0 = time.perf_counter()
    again = new_prompt_runner.run(p, check=True)
    rig_timings.setdefault("in-process txt2img prompt (all cached)", time.perf_counter() - t0)
    assert sorted(again.cached_nodes) == sorted(p) and again.executed_nodes == []
    p["5"]["inputs"]["seed"] = 1
    t0 = time.perf_counter()
    changed = new_prompt_runner.run(p, check=True)
    rig_timings.setdefault("in-process txt2img prompt (new seed)", time.perf_counter() - t0)
    assert set(changed.executed_nodes) == {"5", "6", "7"}


def test_validation_errors_are_returned(prompt_runner):
    p = H.txt2img_prompt()
    p["5"]["inputs"]["sampler_name"] = "no_such_sampler"
    res = prompt_runner.run(p)
    assert not res.valid and not res.ok
    assert res.validation_error["type"] == "prompt_outputs_failed_validation"
    assert "5" in res.node_errors
    with pytest.raises(AssertionError, match="validation"):
        res.raise_for_status()


def test_execution_errors_are_returned(prompt_runner, host):
    (host.base_dir / "input" / "rig_broken.png").write_bytes(b"not an image")
    p = {"1": {"class_type": "LoadImage", "inputs": {"image": "rig_broken.png"}},
         "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    res = prompt_runner.run(p)
    assert res.valid and not res.success
    assert res.error["node_id"] == "1" and "UnidentifiedImageError" in res.error["exception_type"]
    assert res.history["status"]["status_str"] == "error"
    with pytest.raises(AssertionError, match="UnidentifiedImageError"):
        res.raise_for_status()


PROBE_INIT = '''
from .probe import ProbeNode

NODE_CLASS_MAPPINGS = {"DNGRigProbe": ProbeNode}
NODE_DISPLAY_NAME_MAPPINGS = {"DNGRigProbe": "DNG rig probe"}
WEB_DIRECTORY = "./web"
'''

PROBE_NODE = '''
import torch
from server import PromptServer

STATE = {"calls": 0}


class ProbeNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, samples, unique_id=None):
        STATE["calls"] += 1
        x = samples["samples"]
        PromptServer.instance.send_sync("dng.rig_probe", {"node": unique_id, "std": float(x.std()),
                                        "finite": bool(torch.isfinite(x).all())})
        return ({"samples": x * 0.5},)
'''


def test_load_pack_mechanism_with_a_probe_pack(prompt_runner, tmp_path_factory):
    """load_pack on a throw-away V1 pack: ComfyUI's import path, relative imports, PromptServer.instance
    messages recorded, the pack's module reachable by pack_module()."""
    pack = tmp_path_factory.mktemp("probe") / "probe_pack"
    (pack / "web").mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent(PROBE_INIT))
    (pack / "probe.py").write_text(textwrap.dedent(PROBE_NODE))
    (pack / "web" / "probe.js").write_text("// probe\n")
    registered = H.load_pack(pack, name="DNG-RigProbe")
    assert list(registered) == ["DNGRigProbe"]
    assert registered["DNGRigProbe"].RELATIVE_PYTHON_MODULE == "custom_nodes.DNG-RigProbe"
    assert H.pack_info("DNG-RigProbe")["web_dir"].endswith("web")

    p = H.txt2img_prompt(filename_prefix="rig_probe")
    p["8"] = {"class_type": "DNGRigProbe", "inputs": {"samples": ["5", 0]}}
    p["6"]["inputs"]["samples"] = ["8", 0]
    res = prompt_runner.run(p, check=True)
    (msg,) = res.events_of("dng.rig_probe")
    assert msg.data["node"] == "8" and msg.data["finite"] and math.isfinite(msg.data["std"])
    assert H.pack_module("probe", name="DNG-RigProbe").STATE["calls"] == 1


def test_the_pack_loads_like_comfyui_loads_it(pack_nodes):
    """Only that the pack at the repo root imports through ComfyUI and registers nodes (none are run here)."""
    import nodes

    assert pack_nodes, "the pack registered no nodes"
    for node_id, cls in pack_nodes.items():
        assert nodes.NODE_CLASS_MAPPINGS[node_id] is cls
        assert cls.RELATIVE_PYTHON_MODULE == f"custom_nodes.{H.PACK_NAME}"
