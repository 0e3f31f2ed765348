"""Smoke tests of the server rig: a real ComfyUI process over HTTP and websocket, built-in nodes only."""

from __future__ import annotations

import io
import time

import pytest

from devtools.host import CHECKPOINT_NAME, txt2img_prompt
from devtools.server import PromptRejected
from devtools.tiny_checkpoint import host_version


def test_server_starts_and_lists_builtin_nodes(comfy_server):
    stats = comfy_server.get("/system_stats")
    assert stats["system"]["comfyui_version"] == host_version()
    info = comfy_server.object_info()
    for node in ("KSampler", "SamplerCustomAdvanced", "CheckpointLoaderSimple", "SaveImage", "VAEDecode"):
        assert node in info, node
    ckpts = comfy_server.object_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
    assert CHECKPOINT_NAME in ckpts


def test_txt2img_over_http_writes_a_valid_png(comfy_server, rig_timings):
    from PIL import Image

    with comfy_server.websocket() as ws:
        t0 = time.perf_counter()
        pid = comfy_server.queue(txt2img_prompt(filename_prefix="rig_http"), client_id=ws.client_id)
        ws.wait_done(pid, timeout=120)
        entry = comfy_server.wait(pid, timeout=60)  # history can lag the websocket
        rig_timings.setdefault("HTTP txt2img prompt (queue -> history)", time.perf_counter() - t0)
        assert not ws.of("execution_error", pid)
        steps = [m["data"]["value"] for m in ws.of("progress", pid) if m["data"]["node"] == "5"]
        # 0.3.75 reports every step; 0.33's ProgressBar throttles the ones in between (first and last always sent)
        assert steps[0] == 1 and steps[-1] == 4 and steps == sorted(set(steps)), steps
        assert ws.of("executed", pid)[0]["data"]["node"] == "7"

    assert entry["status"]["status_str"] == "success"
    (image,) = entry["outputs"]["7"]["images"]
    raw = comfy_server.view(image)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(raw)) as im:
        im.verify()
    with Image.open(io.BytesIO(raw)) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
        lo, hi = im.convert("L").getextrema()
        assert 0 <= lo <= hi <= 255
    assert comfy_server.output_path(image).is_file()


def test_invalid_prompt_is_rejected_with_node_errors(comfy_server):
    p = txt2img_prompt()
    p["5"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(PromptRejected) as ei:
        comfy_server.queue(p)
    assert ei.value.body["error"]["type"] == "prompt_outputs_failed_validation"
    assert "5" in ei.value.body["node_errors"]


def test_the_pack_is_registered_in_the_server(server_pack_nodes):
    """Only that ComfyUI imported the pack from custom_nodes/ and serves its node definitions."""
    for node_id, info in server_pack_nodes.items():
        assert info["name"] == node_id
        assert "input" in info and "output" in info
