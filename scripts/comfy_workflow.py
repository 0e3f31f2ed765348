"""UI-format ComfyUI workflows (what the frontend saves and the template browser loads) -> API-format prompts.

The frontend does this conversion in the browser (app.graphToPrompt); the demo needs it without a browser. It
uses the server's /object_info to know which of a node's inputs are widgets, in which order their values sit in
``widgets_values``. Frontend-only nodes (notes) are dropped; muted or bypassed nodes are refused rather than
silently rewired.
"""

from __future__ import annotations

from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def widget_names(info: dict) -> list[str]:
    """The order of ``widgets_values`` for a node from its /object_info entry: required then optional widget
    inputs, with the frontend's extra ``control_after_generate`` value after a seed."""
    out = []
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput"):
                out.append(name)
                if opts.get("control_after_generate") or (typ == "INT" and name in ("seed", "noise_seed")):
                    out.append("control_after_generate")
    return out


def workflow_to_prompt(workflow: dict, object_info: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The API prompt ({node_id: {"class_type", "inputs"}}) of a UI-format workflow."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, dict[str, Any]] = {}
    for node in workflow.get("nodes", []):
        class_type = node["type"]
        if class_type in FRONTEND_ONLY:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} ({class_type}) is muted or bypassed; enable or remove it")
        if class_type not in object_info:
            raise ValueError(f"node {node['id']}: the server has no node type {class_type!r} (pack not installed?)")
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values") or []
        if isinstance(values, dict):
            inputs.update({k: v for k, v in values.items() if k != "control_after_generate"})
        else:
            for name, value in zip(widget_names(object_info[class_type]), values):
                if name != "control_after_generate":
                    inputs[name] = value
        for slot in node.get("inputs", []) or []:
            link_id = slot.get("link")
            if link_id is not None:
                _, origin, origin_slot, *_ = links[link_id]
                inputs[slot["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": class_type, "inputs": inputs}
    return prompt
