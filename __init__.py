"""Dynamic Negative Guidance for ComfyUI (custom node pack entry point)."""

from __future__ import annotations

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .nodes.baseline_nodes import NegativePromptingGuidance, SafeLatentDiffusionGuidance
from .nodes.dng_nodes import DNGGuider, DNGSampler, DynamicNegativeGuidance
from .nodes.trace_nodes import DNGTracePlot

WEB_DIRECTORY = "./web"


class DNGExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [DynamicNegativeGuidance, DNGSampler, DNGGuider, DNGTracePlot, NegativePromptingGuidance,
                SafeLatentDiffusionGuidance]


async def comfy_entrypoint() -> DNGExtension:
    return DNGExtension()
