"""DNG Trace Plot: the recorded guidance of the run that produced a LATENT, as an IMAGE (and JSON)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

import folder_paths
from comfy_api.latest import io, ui

from ..dng_core import GuidanceTrace, PlottingUnavailable, TraceHistory, plot_message, plot_trace
from .inputs import TraceHandle
from .patch import send_warning
from .schema import CATEGORY

log = logging.getLogger("comfyui-dng")


def find_trace(history: TraceHistory, samples: torch.Tensor) -> tuple[GuidanceTrace | None, str | None]:
    """(the trace to plot, a notice for the user): the run that produced ``samples``, or, when that run is not
    known, the newest run with a notice saying so (or no trace at all, when nothing was recorded yet)."""
    found = history.lookup(samples)
    if found.status == "found":
        return found.trace, None
    if found.status == "empty":
        return None, ("DNG Trace Plot: no sampling run has used this node's model or guider yet, so there is "
                      "nothing to plot. Connect the LATENT output of the sampler that used it.")
    if found.status == "evicted":
        notice = (f"The run that made this LATENT is no longer kept (each guidance node keeps its last "
                  f"{history.max_runs} runs); showing the most recent run instead.")
    else:
        notice = ("This LATENT does not match any run of this guidance node exactly (was it changed after "
                  "sampling, or made by another sampler?); showing the most recent run instead.")
    return history.latest(), notice


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
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, trace, latent, log_scale, save_json, filename_prefix, width, height) -> io.NodeOutput:
        if not isinstance(trace, TraceHistory):
            raise ValueError(f"trace must come from a DNG / Negative Prompting / SLD node, got {type(trace).__name__}")
        # A side node: whatever happened to the run, it plots what it can and says why; it never fails the prompt
        # (the sampler's image is saved either way).
        run, notice = find_trace(trace, latent["samples"])
        if notice:
            send_warning(notice, cls.hidden.unique_id)
        try:
            pixels = (plot_message(notice, width=width, height=height) if run is None else
                      plot_trace(run, log_scale=log_scale, width=width, height=height, notice=notice))
        except PlottingUnavailable as err:  # the trace JSON and the sampler's image are still produced
            send_warning(str(err), cls.hidden.unique_id)
            pixels = np.full((height, width, 3), 96, dtype=np.uint8)
        if run is None:
            text = json.dumps({"format": "dng-trace-status", "notice": notice})
        else:
            data = run.to_dict()
            if notice:
                data["notice"] = notice
            text = json.dumps(data)
            if save_json:
                folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                              folder_paths.get_output_directory())
                path = os.path.join(folder, f"{name}_{counter:05}_.json")
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=1)
                log.info("[DNG] trace saved to %s", path)
        image = torch.from_numpy(pixels).float().div(255.0).unsqueeze(0)  # [1, H, W, 3]
        return io.NodeOutput(image, text, ui=ui.PreviewImage(image, cls=cls))
