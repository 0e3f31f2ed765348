"""Baselines with DNG's wiring: negative prompting (paper form) and Safe Latent Diffusion, as model patches."""

from __future__ import annotations

from comfy_api.latest import io

from ..dng_core import LAMBDA0_MAX, SLD_PRESETS, NegativePromptRun, SLDConfig, SLDRun
from .inputs import TraceHandle, empty_conditioning_input
from .patch import patch_model
from .schema import BASELINES_CATEGORY, advanced, schema
_CUSTOM = "custom"

_MODEL_OUT = io.Model.Output(display_name="MODEL", tooltip="The patched model; use it in a KSampler whose "
                             "negative input is the concept to remove.")
_TRACE_OUT = TraceHandle.Output(display_name="trace", tooltip="Per-step record of the applied scale; connect to "
                                "DNG Trace Plot with the sampler's LATENT.")


class NegativePromptingGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DNGNegativePrompting",
            display_name="Negative Prompting (paper form)",
            category=BASELINES_CATEGORY,
            search_aliases=["negative prompt", "np", "baseline"],
            description="Baseline for comparison with DNG: D = D_empty + cfg (D_pos - D_empty) - scale (D_neg - "
                        "D_empty) with a constant scale, the negative prompting analysed in the DNG paper. "
                        "(ComfyUI's ordinary negative prompt instead replaces the unconditional prediction.)",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (left unchanged)."),
                empty_conditioning_input(),
                io.Float.Input("scale", default=0.5, min=0.0, max=LAMBDA0_MAX, step=0.01, round=0.001,
                               tooltip="Constant negative scale applied at every step to every sample. The "
                                       "paper's comparable values are about a tenth of DNG's lambda0."),
            ],
            outputs=[_MODEL_OUT, _TRACE_OUT],
            hidden=[io.Hidden.unique_id],
            # The node id is baked into the patch (live events are drawn on it): never reuse the cached
            # output of an identical node elsewhere in the graph.
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, empty_conditioning, scale) -> io.NodeOutput:
        NegativePromptRun(scale, [1.0, 0.0])  # validates scale now, not at the first sampler step

        def make_run(sigmas, parametrisation, on_step, stochastic_sampler=None, data_scale=1.0):
            return NegativePromptRun(scale, sigmas, parametrisation=parametrisation, on_step=on_step)

        patched, history = patch_model(model, empty_conditioning, make_run, cls.hidden.unique_id,
                                       "Negative Prompting")
        return io.NodeOutput(patched, history)


class SafeLatentDiffusionGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        medium = SLD_PRESETS["medium"]
        return schema(
            node_id="DNGSafeLatentDiffusion",
            display_name="Safe Latent Diffusion (baseline)",
            category=BASELINES_CATEGORY,
            search_aliases=["sld", "safe latent diffusion", "concept removal", "baseline"],
            description="Baseline for comparison with DNG: Safe Latent Diffusion (Schramowski et al. 2023) in "
                        "diffusers' form, with the KSampler's negative as the safety concept.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (left unchanged)."),
                empty_conditioning_input(),
                io.Combo.Input("preset", options=[*SLD_PRESETS.keys(), _CUSTOM], default="medium",
                               tooltip="SLD presets: weak / medium (diffusers default) / strong / max from the "
                                       "SLD paper; paper_class_removal: the DNG paper's tuned setting; custom: "
                                       "use the values below."),
                io.Int.Input("warmup", default=medium.warmup, min=0, max=10000, **advanced(),
                             tooltip="custom only: steps before the safety guidance is applied."),
                io.Float.Input("safety_scale", default=medium.guidance_scale, min=0.0, max=100000.0, step=1.0,
                               **advanced(),
                               tooltip="custom only: s_S, element-wise safety guidance scale."),
                io.Float.Input("threshold", default=medium.threshold, min=-10.0, max=10.0, step=0.001,
                               round=1e-5, **advanced(),
                               tooltip="custom only: elements where eps_pos - eps_safety >= threshold get no "
                                       "safety guidance."),
                io.Float.Input("momentum_scale", default=medium.momentum_scale, min=0.0, max=100.0, step=0.01,
                               **advanced(),
                               tooltip="custom only: s_m, weight of the safety momentum."),
                io.Float.Input("momentum_beta", default=medium.momentum_beta, min=0.0, max=0.999, step=0.01,
                               **advanced(),
                               tooltip="custom only: beta_m, momentum decay in [0, 1)."),
            ],
            outputs=[_MODEL_OUT, _TRACE_OUT],
            hidden=[io.Hidden.unique_id],
            # The node id is baked into the patch (live events are drawn on it): never reuse the cached
            # output of an identical node elsewhere in the graph.
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, empty_conditioning, preset, warmup, safety_scale, threshold, momentum_scale,
                momentum_beta) -> io.NodeOutput:
        if preset == _CUSTOM:
            config = SLDConfig(int(warmup), float(safety_scale), float(threshold), float(momentum_scale),
                               float(momentum_beta))
        elif preset in SLD_PRESETS:
            config = SLD_PRESETS[preset]
        else:
            raise ValueError(f"preset must be one of {[*SLD_PRESETS, _CUSTOM]}, got {preset!r}")

        def make_run(sigmas, parametrisation, on_step, stochastic_sampler=None, data_scale=1.0):
            return SLDRun(config, sigmas, parametrisation=parametrisation, on_step=on_step)

        patched, history = patch_model(model, empty_conditioning, make_run, cls.hidden.unique_id,
                                       "Safe Latent Diffusion")
        return io.NodeOutput(patched, history)
