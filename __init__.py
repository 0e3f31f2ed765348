"""Dynamic Negative Guidance for ComfyUI (custom node pack entry point).

ComfyUI imports this package from custom_nodes/ and calls ``comfy_entrypoint``. Outside ComfyUI (pytest collects
the repository root as a package; packaging tools read it) there is no ``comfy_api`` and nothing to register, so
the nodes are only imported when the host is there; errors inside the pack still surface in ComfyUI.
"""

import importlib.util

WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes.registry import comfy_entrypoint  # noqa: F401
