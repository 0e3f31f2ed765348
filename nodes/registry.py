"""The pack's node list, as ComfyUI's V3 extension entry point."""

from __future__ import annotations

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .baseline_nodes import NegativePromptingGuidance, SafeLatentDiffusionGuidance
from .concept_nodes import DNGConcept
from .dng_nodes import DNGGuider, DNGSampler, DynamicNegativeGuidance
from .reference_nodes import REFERENCE_NODES
from .trace_nodes import DNGTracePlot

NODES: list[type[io.ComfyNode]] = [DynamicNegativeGuidance, DNGSampler, DNGGuider, DNGConcept, DNGTracePlot,
                                   NegativePromptingGuidance, SafeLatentDiffusionGuidance, *REFERENCE_NODES]


class DNGExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DNGExtension:
    return DNGExtension()
