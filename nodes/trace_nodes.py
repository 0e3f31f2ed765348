"""DNG Trace Plot: the recorded guidance of the run that produced a LATENT, as an IMAGE (and JSON)."""

from __future__ import annotations

import json
import logging
import os

import torch

import folder_paths
from comfy_api.latest import io, ui

from ..dng_core import GuidanceTrace, TraceHistory, plot_trace
from .inputs import TraceHandle
from .schema import CATEGORY

log = logging.getLogger("comfyui-dng")


def find_trace(history: TraceHistory, samples: torch.Tensor) -> GuidanceTrace:
    """The run that produced ``samples``; the newest run (with a warning) when the latent was changed since."""
    trace = history.find(samples)
    if trace is not None:
        return trace
    latest = history.latest()
    if latest is None:
        raise ValueError("DNG Trace Plot: no sampling run has been recorded for this trace yet. Connect the "
                         "LATENT output of the sampler that used the patched model (or guider), so the plot "
                         "runs after sampling.")
    log.warning("[DNG] Trace Plot: the LATENT does not match any recorded run exactly (was it modified after "
                "sampling?); plotting the most recent run instead.")
    return latest


class DNGTracePlot(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DNGTracePlot",
            display_name="DNG Trace Plot",
            category=CATEGORY,
            description="Plots the guidance scale (lambda_t) and, for DNG, the posterior p_t against sampler "
                        "step, one curve per image in the batch, for the run that produced the given LATENT.",
            inputs=[
                TraceHandle.Input("trace", tooltip="The trace output of a DNG, Negative Prompting or SLD node."),
                io.Latent.Input("latent", tooltip="The LATENT produced by the sampler; selects its run and makes "
                                "this node run after sampling."),
                io.Boolean.Input("log_scale", default=False,
                                 tooltip="Logarithmic y axes (useful when lambda spans orders of magnitude)."),
                io.Boolean.Input("save_json", default=False,
                                 tooltip="Also save the trace as JSON in the output folder."),
                io.String.Input("filename_prefix", default="dng_trace",
                                tooltip="Prefix of the saved JSON file (with save_json)."),
                io.Int.Input("width", default=768, min=256, max=4096, step=8, tooltip="Plot width in pixels."),
                io.Int.Input("height", default=512, min=256, max=4096, step=8, tooltip="Plot height in pixels."),
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="The plot as an image."),
                io.String.Output(display_name="trace_json", tooltip="The trace as JSON text."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, trace, latent, log_scale, save_json, filename_prefix, width, height) -> io.NodeOutput:
        if not isinstance(trace, TraceHistory):
            raise ValueError(f"trace must come from a DNG / Negative Prompting / SLD node, got {type(trace).__name__}")
        run = find_trace(trace, latent["samples"])
        pixels = plot_trace(run, log_scale=log_scale, width=width, height=height)
        image = torch.from_numpy(pixels).float().div(255.0).unsqueeze(0)  # [1, H, W, 3]
        text = run.to_json()
        if save_json:
            folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                          folder_paths.get_output_directory())
            path = os.path.join(folder, f"{name}_{counter:05}_.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(run.to_dict(), f, indent=1)
            log.info("[DNG] trace saved to %s", path)
        return io.NodeOutput(image, text, ui=ui.PreviewImage(image, cls=cls))
