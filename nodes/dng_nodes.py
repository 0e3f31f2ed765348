"""Dynamic Negative Guidance nodes: the KSampler model patch, the one-node sampler and the guider."""

from __future__ import annotations

from typing import Any

import torch

import comfy.samplers
import node_helpers
import nodes as comfy_nodes
from comfy_api.latest import io

from ..dng_core import DNGConfig, DNGRun, Parametrisation, PruningPolicy, TraceHistory
from .inputs import (NegativeConcept, TraceHandle, concept_list, concepts_inputs, dng_config, dng_inputs,
                     empty_conditioning_input, evidence_inputs, pruning_policy, require_finite,
                     validate_posterior_bounds)
from .patch import StepEvents, aligned_predictions, current_slot, install_run_wrapper, patch_model
from .schema import CATEGORY, GUIDERS_CATEGORY, schema

# what people type when they look for a node like this one (hosts without search aliases ignore them)
SEARCH_ALIASES = ["dng", "negative prompt", "concept removal", "dynamic negative guidance"]


def dng_run_factory(config: DNGConfig, more: list[NegativeConcept] | None = None,
                    labels: list[str] | None = None, pruning: PruningPolicy | None = None):
    """The run maker of a DNG node: the negative prompt (concept 1) and ``more`` concepts, each with its own
    lambda0 (None: the node's)."""
    more = more or []
    lambda0s = [config.lambda0] + [config.lambda0 if c.lambda0 is None else c.lambda0 for c in more]
    multi = bool(more)

    def make_run(sigmas: torch.Tensor, parametrisation: Parametrisation, on_step,
                 stochastic_sampler: bool | None = None, data_scale: float = 1.0) -> DNGRun:
        return DNGRun(config, sigmas, concepts=len(lambda0s), parametrisation=parametrisation, on_step=on_step,
                      stochastic_sampler=stochastic_sampler, lambda0s=lambda0s if multi else None,
                      pruning=pruning, concept_labels=labels if multi else None, data_scale=data_scale)
    return make_run


def _concepts(negative_label: str, more_concepts: Any, prune_concepts: Any):
    more, labels = concept_list(negative_label, more_concepts)
    return more, labels, pruning_policy(prune_concepts)




def _prompt_inputs() -> list[io.Input]:
    """positive / negative / empty conditioning of the nodes that sample themselves (sampler, guider)."""
    return [io.Conditioning.Input("positive", tooltip="What the image should contain."),
            io.Conditioning.Input("negative", tooltip="The concept to remove (DNG's negative concept)."),
            empty_conditioning_input()]


def _trace_output(connect_with: str) -> io.Output:
    return TraceHandle.Output(display_name="trace", tooltip="The guidance record; connect to DNG Trace Plot "
                              f"together with {connect_with}.")


def _schema(**fields: Any) -> io.Schema:
    # The node id is baked into the patch (live events are drawn on it): never reuse the cached output of an
    # identical node elsewhere in the graph.
    return schema(hidden=[io.Hidden.unique_id], not_idempotent=True, search_aliases=SEARCH_ALIASES, **fields)


class _DNGNode(io.ComfyNode):
    """Shared validation of dng_inputs(): the posterior bounds' cross-field rule, taking only those three inputs
    so that the host keeps checking all the others."""

    @classmethod
    def validate_inputs(cls, prior, p_min, p_max) -> bool | str:
        return validate_posterior_bounds(prior, p_min, p_max)


class DynamicNegativeGuidance(_DNGNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="DynamicNegativeGuidance",
            display_name="Dynamic Negative Guidance",
            category=CATEGORY,
            description="Patches a model so that the KSampler's negative prompt is applied with Dynamic Negative "
                        "Guidance (Koulischer et al., ICLR 2025): the negative scale follows the tracked "
                        "probability that the image contains the negative concept, so it switches itself off "
                        "when the concept is absent. Connect the KSampler's negative to the concept to remove.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (left unchanged; a patched copy is output)."),
                empty_conditioning_input(),
                *dng_inputs(),
                *concepts_inputs(),
                *evidence_inputs(),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The patched model; use it in a KSampler whose "
                                "negative input is the concept to remove."),
                _trace_output("the sampler's LATENT (it picks this model's run that made it)"),
            ],
        )

    @classmethod
    def execute(cls, model, empty_conditioning, more_concepts=None, prune_concepts=True,
                **params) -> io.NodeOutput:
        config = dng_config(**params)
        more, labels, pruning = _concepts("negative prompt", more_concepts, prune_concepts)
        patched, history = patch_model(model, empty_conditioning, dng_run_factory(config, more, labels, pruning),
                                       cls.hidden.unique_id, "Dynamic Negative Guidance",
                                       tuple(c.conditioning for c in more))
        return io.NodeOutput(patched, history)


class DNGSampler(_DNGNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="DNGSampler",
            display_name="DNG Sampler",
            category=CATEGORY,
            description="KSampler with Dynamic Negative Guidance built in: the negative prompt is removed "
                        "dynamically instead of by a fixed negative scale. Same as Dynamic Negative Guidance "
                        "followed by a KSampler.",
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising the input latent."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                io.Int.Input("steps", default=20, min=1, max=10000,
                             tooltip="The number of steps used in the denoising process."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale towards the positive prompt. DNG "
                                       "still acts at 1.0."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler_ancestral",
                               tooltip="The sampling algorithm. The default DNG setting holds for ancestral, SDE "
                                       "and deterministic samplers; on deterministic ones DNG costs 2 more "
                                       "predictions per step (see posterior_variance)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal",
                               tooltip="How the noise levels are spaced over the steps."),
                *_prompt_inputs(),
                io.Latent.Input("latent_image", tooltip="The latent image to denoise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising applied; lower values keep more of the input latent."),
                *dng_inputs(),
                *concepts_inputs(),
                *evidence_inputs(),
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="The denoised latent."),
                _trace_output("this node's LATENT"),
            ],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, empty_conditioning,
                latent_image, denoise, more_concepts=None, prune_concepts=True, **params) -> io.NodeOutput:
        cfg = require_finite("cfg", cfg, 0.0, 100.0)
        # ComfyUI 0.3.75 does not check V3 combo values at validation (0.33 does) and would fall back to its
        # first sampler: refuse an unknown name here, naming the input.
        for name, value, options in (("sampler_name", sampler_name, comfy.samplers.SAMPLER_NAMES),
                                     ("scheduler", scheduler, comfy.samplers.SCHEDULER_NAMES)):
            if value not in options:
                raise ValueError(f"{name} {value!r} is not one of ComfyUI's: {', '.join(options)}")
        config = dng_config(**params)
        more, labels, pruning = _concepts("negative", more_concepts, prune_concepts)
        patched, history = patch_model(model, empty_conditioning, dng_run_factory(config, more, labels, pruning),
                                       cls.hidden.unique_id, "DNG Sampler", tuple(c.conditioning for c in more))
        (latent,) = comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive,
                                                negative, latent_image, denoise=denoise)
        return io.NodeOutput(latent, history)


class Guider_DNG(comfy.samplers.CFGGuider):
    """CFGGuider whose prediction is DNG's rule; runs and traces come from the same wrapper as the patch."""

    concept_keys = ["negative"]  # the conds of concepts 1..K (set_conds)

    def set_conds(self, positive, negative, empty, more: list | None = None) -> None:
        empty = node_helpers.conditioning_set_values(empty, {"prompt_type": "negative"})
        self.concept_keys = ["negative"] + [f"dng_concept_{k + 2}" for k in range(len(more or []))]
        extra = {key: node_helpers.conditioning_set_values(c, {"prompt_type": "negative"})
                 for key, c in zip(self.concept_keys[1:], more or [])}
        self.inner_set_conds({"positive": positive, "negative": negative, "empty_negative_prompt": empty, **extra})

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        slot = current_slot(model_options)
        if slot is None:
            raise RuntimeError("DNG guider: sampling started outside its run wrapper; report this as a bug.")
        positive, empty = self.conds.get("positive"), self.conds.get("empty_negative_prompt")
        concepts = [self.conds.get(k) for k in self.concept_keys]
        chosen = [k for k, wanted in enumerate(slot.run.concepts_to_predict()) if wanted]
        d_pos, d_empty, *d_chosen = comfy.samplers.calc_cond_batch(
            self.inner_model, [positive, empty, *(concepts[k] for k in chosen)], x, timestep, model_options)
        # sampling_function() is bypassed, so run the pre/post-CFG hooks other nodes registered (as PerpNegGuider),
        # with the host's conventions: the unconditional is the empty prompt's prediction (CFG++ samplers
        # re-noise from it), the concept's prediction travels beside it.
        conds = [positive, empty]
        out = [d_pos, d_empty]
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": timestep, "input": x,
                      "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        d_pos, d_empty = out

        def probe(x_probe: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
            # the path posterior estimator's divergence probe: unguided [empty, concepts] at x_probe, same sigma
            p_empty, *p_chosen = comfy.samplers.calc_cond_batch(
                self.inner_model, [empty, *(concepts[k] for k in chosen)], x_probe, timestep, model_options)
            return p_empty, aligned_predictions(len(concepts), chosen, p_chosen)
        result = slot.run.guide(x, timestep, d_empty, d_pos, aligned_predictions(len(concepts), chosen, d_chosen),
                                self.cfg, probe)
        for fn in model_options.get("sampler_post_cfg_function", []):
            result = fn({"denoised": result, "cond": positive, "uncond": empty, "cond_scale": self.cfg,
                         "model": self.inner_model, "uncond_denoised": d_empty, "cond_denoised": d_pos,
                         "sigma": timestep, "model_options": model_options, "input": x})
        return result


class DNGGuider(_DNGNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="DNGGuider",
            display_name="Dynamic Negative Guidance Guider",
            category=GUIDERS_CATEGORY,
            description="A GUIDER for SamplerCustomAdvanced that applies CFG towards the positive prompt and "
                        "Dynamic Negative Guidance away from the negative one, with the three predictions in "
                        "one batched model call.",
            inputs=[
                io.Model.Input("model", tooltip="The model to guide (left unchanged)."),
                *_prompt_inputs(),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale towards the positive prompt."),
                *dng_inputs(),
                *concepts_inputs(),
                *evidence_inputs(),
            ],
            outputs=[
                io.Guider.Output(display_name="GUIDER", tooltip="Connect to SamplerCustomAdvanced's guider."),
                _trace_output("the sampler's output LATENT"),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, empty_conditioning, cfg, more_concepts=None, prune_concepts=True,
                **params) -> io.NodeOutput:
        cfg = require_finite("cfg", cfg, 0.0, 100.0)
        config = dng_config(**params)
        more, labels, pruning = _concepts("negative", more_concepts, prune_concepts)
        patched = model.clone()
        history = TraceHistory()
        install_run_wrapper(patched, dng_run_factory(config, more, labels, pruning), history, None,
                            StepEvents(cls.hidden.unique_id, "DNG Guider"), "DNG Guider")
        guider = Guider_DNG(patched)
        guider.set_conds(positive, negative, empty_conditioning, [c.conditioning for c in more])
        guider.set_cfg(cfg)
        return io.NodeOutput(guider, history)
