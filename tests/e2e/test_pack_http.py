"""The pack in a real ComfyUI server over HTTP: node listing with tooltips, a DNG prompt end to end."""

from __future__ import annotations

import io
import json

import pytest

from tests.support.prompts import dng_prompt
from devtools.server import PromptRejected

PACK_NODES = ["DynamicNegativeGuidance", "DNGSampler", "DNGGuider", "DNGConcept", "DNGTracePlot",
              "DNGNegativePrompting", "DNGSafeLatentDiffusion", "DNGReferenceModelLoader", "DNGDigitConditioning",
              "DNGEmptyDigitLatent", "DNGDigitsToImage", "DNGShapesModelLoader", "DNGShapesTextEncode",
              "DNGEmptyShapesLatent", "DNGShapesToImage"]


def _valid_png(raw: bytes) -> tuple[int, int]:
    from PIL import Image

    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(raw)) as im:
        im.verify()
    with Image.open(io.BytesIO(raw)) as im:
        return im.size


# Where the nodes sit in the node library: ComfyUI's own sampling tree since 0.33 (nodes/schema.py)
CATEGORIES = {
    "DynamicNegativeGuidance": "model/sampling/dng", "DNGSampler": "model/sampling/dng",
    "DNGTracePlot": "model/sampling/dng", "DNGConcept": "model/sampling/dng",
    "DNGGuider": "model/sampling/guiders",
    "DNGNegativePrompting": "model/sampling/dng/baselines", "DNGSafeLatentDiffusion": "model/sampling/dng/baselines",
    **{n: "model/sampling/dng/reference model" for n in ("DNGReferenceModelLoader", "DNGDigitConditioning",
                                                           "DNGEmptyDigitLatent", "DNGDigitsToImage",
                                                           "DNGShapesModelLoader", "DNGShapesTextEncode",
                                                           "DNGEmptyShapesLatent", "DNGShapesToImage")},
}
# The secondary knobs, folded away where the host supports advanced inputs
_DNG_ADVANCED = {"offset", "p_min", "p_max", "posterior_variance", "posterior_form", "prune_concepts", "evidence",
                 "deterministic_push", "stochastic_push"}
ADVANCED = {"DynamicNegativeGuidance": _DNG_ADVANCED, "DNGSampler": _DNG_ADVANCED, "DNGGuider": _DNG_ADVANCED,
            "DNGSafeLatentDiffusion": {"warmup", "safety_scale", "threshold", "momentum_scale", "momentum_beta"}}


def test_object_info_lists_every_node_with_tooltips(server_pack_nodes):
    assert sorted(server_pack_nodes) == sorted(PACK_NODES)
    for name, info in server_pack_nodes.items():
        assert info["description"], name
        assert info["category"] == CATEGORIES[name], name
        for section in ("required", "optional"):
            for inp, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{inp} has no tooltip"
        assert all(info["output_tooltips"]), name


def test_newer_schema_options_where_the_host_has_them(comfy_server, server_pack_nodes):
    """advanced= inputs and search aliases, where the host has them (0.33 has both, 0.3.75 neither). The host
    publishes a "search_aliases" key for every node once it supports them, and advanced inputs came with the
    same API revision; on a host without them the pack still loads and lists no flags."""
    info = comfy_server.object_info()
    newer_api = any("search_aliases" in v for k, v in info.items() if k not in server_pack_nodes)
    for name, info_ in server_pack_nodes.items():
        inputs = {k: spec for section in ("required", "optional") for k, spec in info_["input"].get(section, {}).items()}
        flagged = {k for k, spec in inputs.items() if len(spec) > 1 and spec[1].get("advanced")}
        assert flagged == (ADVANCED.get(name, set()) if newer_api else set()), name
    aliases = server_pack_nodes["DynamicNegativeGuidance"].get("search_aliases") or []
    if newer_api:
        assert {"dng", "negative prompt", "concept removal"} <= set(aliases)
    else:
        assert not aliases


def test_dng_prompt_over_http_saves_image_and_plot(comfy_server, server_pack_nodes):
    prompt = dng_prompt(sampler="euler_ancestral", steps=5, seed=7, batch_size=2, filename_prefix="dng_http")
    prompt["11"]["inputs"]["save_json"] = True
    with comfy_server.websocket() as ws:
        pid = comfy_server.queue(prompt, client_id=ws.client_id)
        ws.wait_done(pid, timeout=180)
        entry = comfy_server.wait(pid, timeout=60)
        steps = [m["data"] for m in ws.of("dng.step")]
        starts = ws.of("dng.run_start")
    assert entry["status"]["status_str"] == "success"
    saved = entry["outputs"]["7"]["images"]
    assert len(saved) == 2 and all(_valid_png(comfy_server.view(img)) == (64, 64) for img in saved)
    (plot,) = entry["outputs"]["11"]["images"]
    assert _valid_png(comfy_server.view(plot)) == (256, 256)
    # the live events went to this client: one run start, one event per step, two samples each
    assert len(starts) == 1 and starts[0]["data"]["node"] == "10"
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4]
    assert all(len(s["scale"][0]) == 2 and len(s["p"][0]) == 2 for s in steps)
    traces = sorted((comfy_server.base_dir / "output").glob("dng_trace_*.json"))
    assert traces and len(json.loads(traces[-1].read_text())["steps"]) == 5


def test_bad_input_over_http_is_rejected_with_the_input_named(comfy_server, server_pack_nodes):
    with pytest.raises(PromptRejected) as err:
        comfy_server.queue(dng_prompt(p_min=0.6, p_max=0.55))
    text = json.dumps(err.value.body)
    assert "p_min" in text and "Traceback" not in text


def test_every_node_has_a_help_page(comfy_server, server_pack_nodes):
    """The node library's help panel reads /extensions/<pack>/docs/<NodeId>.md (web/docs/)."""
    from devtools.host import PACK_NAME

    for name in server_pack_nodes:
        status, raw = comfy_server.request("GET", f"/extensions/{PACK_NAME}/docs/{name}.md")
        assert status == 200, name
        text = raw.decode()
        assert text.startswith("# ") and len(text) > 150, name
