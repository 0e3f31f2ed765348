"""DNG Concept: one more concept to remove, chained into the DNG nodes' ``more_concepts`` input."""

from __future__ import annotations

from comfy_api.latest import io

from ..dng_core import LAMBDA0_MAX
from .inputs import ConceptsHandle, NegativeConcept, concept_list
from .schema import CATEGORY, schema

# lambda0 -1: the DNG node's own (a widget can't be empty)
USE_NODE_LAMBDA0 = -1.0


class DNGConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DNGConcept",
            display_name="DNG Concept",
            category=CATEGORY,
            search_aliases=["dng", "negative concept", "several negative prompts", "concept list"],
            description="Adds one concept to remove to a Dynamic Negative Guidance node (its more_concepts input), "
                        "besides the negative prompt. Chain several: each concept gets its own posterior per "
                        "image and its own lambda0, and is predicted in the same batched model call; one that is "
                        "absent from an image stops being predicted (prune_concepts).",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The concept, e.g. CLIPTextEncode \"watermark\". One "
                                      "concept per node: a comma list in one prompt is one concept."),
                io.Float.Input("lambda0", default=USE_NODE_LAMBDA0, min=USE_NODE_LAMBDA0, max=LAMBDA0_MAX, step=0.1,
                               round=0.001, tooltip="This concept's guidance strength (see the DNG node's lambda0); "
                               "-1 uses the DNG node's lambda0, 0 tracks the concept without guiding away from it."),
                io.String.Input("label", default="", tooltip="A name for the trace plot and the live curve "
                                "(default: concept 2, 3, ...)."),
                ConceptsHandle.Input("concepts", optional=True,
                                     tooltip="The concepts chained so far (another DNG Concept's output)."),
            ],
            outputs=[ConceptsHandle.Output(display_name="concepts", tooltip="The chain with this concept added: "
                                           "connect to a DNG node's more_concepts or to the next DNG Concept.")],
        )

    @classmethod
    def execute(cls, conditioning, lambda0, label, concepts=None) -> io.NodeOutput:
        if not (lambda0 == USE_NODE_LAMBDA0 or 0.0 <= lambda0 <= LAMBDA0_MAX):
            raise ValueError(f"lambda0 must be -1 (the DNG node's) or in [0, {LAMBDA0_MAX:g}], got {lambda0!r}")
        earlier, _ = concept_list("", concepts)
        concept = NegativeConcept(conditioning, None if lambda0 == USE_NODE_LAMBDA0 else float(lambda0),
                                  str(label).strip())
        return io.NodeOutput(tuple(earlier) + (concept,))
