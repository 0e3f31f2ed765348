"""Installs a guidance run (DNG, NP or SLD from dng_core.run) into a ComfyUI model's sampling hooks.

Data path of one sampling run:
  OUTER_SAMPLE wrapper    -> refuses samplers whose steps the guidance cannot follow; looks the input latent up
                             in the node's TraceHistory (a split schedule's next pass continues that run); at the
                             end, records the trace keyed by the fingerprint of the LATENT the sampler returns
  SAMPLER_SAMPLE wrapper  -> makes the run (prior and empty trace, or the continued run's state) for this pass's
                             sigmas, stores it in this pass's own model_options (a per-run copy the host makes),
                             finishes it at the end
  calc_cond_batch hook    -> one batched forward pass [pos, empty, neg, concept 2..K] for the host's [pos, neg]
                             (the concepts the run still predicts: see dng_core.pruning); the host gets
                             [D_pos, D_empty] back, so its "unconditional" is the empty prompt's prediction
                             everywhere (CFG++ samplers re-noise from it, post-CFG hooks read it); the concepts'
                             predictions travel beside it in the run's slot
  sampler_cfg_function    -> run.guide(x, sigma, D_empty, D_pos, [D_neg], cfg, probe): the guided prediction;
                             the path posterior estimator calls probe(x + h eps) once per step: a second
                             batched pass over [empty, neg] at the probe state (its divergence estimate)
  (guider)                -> DNGGuider.predict_noise calls run.guide directly, with the same conventions
  run.finish              -> the trace and the state a continuation needs, into the node's TraceHistory

State lives in the run, never on the patched model, so cached node outputs, several samplers sharing one
patched model and interrupted runs all start from the prior; only a pass that samples on from a latent this
patch returned, on the rest of that run's schedule, starts where that run stopped.
"""

from __future__ import annotations

import contextvars
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

import comfy.model_sampling
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers

from ..dng_core import GuidedRun, Parametrisation, RunContinuation, StepRecord, TraceHistory, tensor_fingerprint

log = logging.getLogger("comfyui-dng")

RUN_KEY = "dng_guidance_run"
WRAPPER_KEY = "dng_guidance"

# make_run(sigmas, parametrisation, on_step, stochastic_sampler, data_scale) -> the run of one sampling pass
RunFactory = Callable[[torch.Tensor, Parametrisation, Callable[[GuidedRun, StepRecord], None], "bool | None", float],
                      GuidedRun]

# k-diffusion sampler functions whose steps inject fresh noise (ComfyUI's sample_<name>; by default eta = 1).
_STOCHASTIC_SAMPLER_MARKERS = ("ancestral", "sde", "ddpm", "lcm", "seeds", "sa_solver")
# KSAMPLER functions that ignore the schedule's sigmas and evaluate the model at noise levels of their own
# (comfy.samplers.ksampler wraps k-diffusion's DPM-Solver fast / adaptive in these): a step of theirs never lands
# on the schedule, so the posterior could not advance. They are refused before sampling.
_OWN_SIGMA_SAMPLERS = {"dpm_fast_function": "dpm_fast", "dpm_adaptive_function": "dpm_adaptive"}


def parametrisation_of(model: Any) -> Parametrisation:
    """The state convention of a ComfyUI BaseModel: CONST (SD3, Flux) is rectified flow, the rest VE."""
    sampling = getattr(model, "model_sampling", None)
    if isinstance(sampling, comfy.model_sampling.CONST):
        return Parametrisation.RECTIFIED_FLOW
    return Parametrisation.VARIANCE_EXPLODING


def data_scale_of(model: Any) -> float:
    """The model's data scale s (ComfyUI's model_sampling.sigma_data: 1.0 for SD1.x / SDXL / flow latents and
    discrete-schedule models, 0.5 for EDM-style ones), used by DNG's deterministic push scaling; 1.0 where the
    model has none."""
    value = getattr(getattr(model, "model_sampling", None), "sigma_data", 1.0)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 1.0
    return value if math.isfinite(value) and value > 0 else 1.0


def sampler_is_stochastic(sampler: Any) -> bool | None:
    """Whether a ComfyUI KSAMPLER's steps inject noise (DNG's 'auto' posterior variance: kernel if so, else
    step); None where it can't be told (not a KSAMPLER), which 'auto' treats as stochastic (the paper's kernel)."""
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", None)
    if not isinstance(name, str):
        return None
    options = getattr(sampler, "extra_options", None) or {}
    try:  # SamplerEulerAncestral & co. with eta = 0 or s_noise = 0 are deterministic
        if float(options.get("eta", 1.0)) == 0.0 or float(options.get("s_noise", 1.0)) == 0.0:
            return False
    except (TypeError, ValueError):
        pass
    return any(marker in name for marker in _STOCHASTIC_SAMPLER_MARKERS)


def refuse_unfollowable_sampler(sampler: Any, label: str) -> None:
    """ValueError before sampling when ``sampler`` evaluates the model off the schedule (dpm_fast, dpm_adaptive):
    the guidance would silently never advance."""
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", None)
    if name in _OWN_SIGMA_SAMPLERS:
        raise ValueError(
            f"{label} cannot follow the {_OWN_SIGMA_SAMPLERS[name]} sampler: it evaluates the model at noise "
            "levels of its own instead of the scheduler's steps, so the guidance could never advance. Choose "
            "another sampler_name (e.g. dpmpp_2m, euler or euler_ancestral).")


@dataclass
class RunSlot:
    """One sampling run's state inside its model_options: the core run and the concepts' predictions of the
    current model call (the host sees only [D_pos, D_empty])."""

    run: GuidedRun
    empty_cond: list[dict] | None
    extra_conds: tuple[list[dict], ...] = ()  # concepts 2..K (DNG Concept nodes)
    empty_encoded: list[dict] | None = None
    extra_encoded: list[list[dict]] | None = None
    # (id of x, [D_neg_k or None per concept]) from this call's pass
    last_concepts: tuple[int, list[torch.Tensor | None]] | None = None
    probe: Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor | None]]] | None = None  # for this call

    def encoded_empty(self, model: Any, x: torch.Tensor) -> list[dict]:
        # Encoded once per run, the way PerpNeg does it (prompt_type "negative": an unconditional prompt).
        if self.empty_encoded is None:
            self.empty_encoded = comfy.samplers.encode_model_conds(model.extra_conds, self.empty_cond, x, x.device,
                                                                   "negative")
        return self.empty_encoded

    def encoded_extra(self, model: Any, x: torch.Tensor) -> list[list[dict]]:
        if self.extra_encoded is None:
            self.extra_encoded = [comfy.samplers.encode_model_conds(model.extra_conds, c, x, x.device, "negative")
                                  for c in self.extra_conds]
        return self.extra_encoded


def current_slot(model_options: dict) -> RunSlot | None:
    return model_options.get("transformer_options", {}).get(RUN_KEY)


class StepEvents:
    """Sends one ``dng.step`` event per sampler step (and ``dng.run_start``) to the submitting browser client."""

    def __init__(self, node_id: str | None, label: str) -> None:
        self.node_id = node_id
        self.label = label

    @staticmethod
    def _server() -> Any:
        try:
            from server import PromptServer
        except ImportError:  # not running under the ComfyUI server (e.g. scripts)
            return None
        return getattr(PromptServer, "instance", None)

    def _send(self, event: str, data: dict) -> None:
        server = self._server()
        if server is None:
            return
        try:
            server.send_sync(event, data, getattr(server, "client_id", None))
        except Exception:  # a lost browser must never break sampling
            log.debug("DNG: could not send %s", event, exc_info=True)

    def run_start(self, run: GuidedRun) -> None:
        """A pass begins. A pass that continues an earlier run sends that run's steps, so the curve goes on."""
        earlier = [r.as_dict() for r in run.continues.trace.steps] if run.continues is not None else []
        self._send("dng.run_start", {"node": self.node_id, "method": run.method, "label": self.label,
                                     "concepts": run.concepts,
                                     "concept_labels": run.params.get("concept_labels"),
                                     "total_steps": run.total_steps, "continues": run.continues is not None,
                                     "push_cut_model_sigma": run.params.get("push_cut_model_sigma"),
                                     "steps": earlier})

    def __call__(self, run: GuidedRun, record: StepRecord) -> None:
        trace = run.trace
        self._send("dng.step", {"node": self.node_id, "method": run.method, "label": self.label,
                                "total_steps": trace.total_steps if trace else None, **record.as_dict()})


def send_warning(message: str, node_id: str | None = None) -> None:
    """Log ``message`` and show it in the browser that queued the prompt (a ``dng.warning`` event: a toast)."""
    log.warning("[DNG] %s", message)
    server = StepEvents._server()
    if server is not None:
        try:
            server.send_sync("dng.warning", {"message": message, "node": node_id},
                             getattr(server, "client_id", None))
        except Exception:  # a lost browser must never break sampling
            log.debug("DNG: could not send a warning", exc_info=True)


def has_guidance_patch(model: Any) -> bool:
    return WRAPPER_KEY in model.wrappers.get(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, {})


@dataclass
class _SamplingPass:
    """One call of the host's sampling entry point on a patched model: set by the OUTER_SAMPLE wrapper, filled by
    the SAMPLER_SAMPLE wrapper inside it."""

    history: TraceHistory
    previous: RunContinuation | None  # the run whose output latent this pass samples on from
    run: GuidedRun | None = None


_CURRENT_PASS: contextvars.ContextVar[_SamplingPass | None] = contextvars.ContextVar("dng_sampling_pass",
                                                                                      default=None)


def install_run_wrapper(model: Any, make_run: RunFactory, history: TraceHistory, empty_cond: list[dict] | None,
                        events: StepEvents, label: str, extra_conds: tuple[list[dict], ...] = ()) -> None:
    """Adds the OUTER_SAMPLE and SAMPLER_SAMPLE wrappers that give every sampling pass of ``model`` its run (in
    place)."""
    if has_guidance_patch(model):
        raise ValueError("This model already carries a DNG / negative prompting / SLD patch; apply only one of "
                         "them per model (chain the unpatched model instead).")

    def outer_sample(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        refuse_unfollowable_sampler(sampler, label)
        nested = getattr(latent_image, "is_nested", False)
        previous = None if nested else history.continuation_of(tensor_fingerprint(latent_image))
        sampling_pass = _SamplingPass(history, previous)
        token = _CURRENT_PASS.set(sampling_pass)
        try:
            output = executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            _CURRENT_PASS.reset(token)
        run = sampling_pass.run
        if run is not None and run.trace is not None:
            if not (nested or getattr(output, "is_nested", False)):
                # what the sampler node returns as its LATENT: the plot and a continuing pass find the run by it
                run.trace.output_fingerprint = tensor_fingerprint(output)
            history.add(run.trace, run.continuation())
        return output

    def sampler_sample(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        run = make_run(sigmas, parametrisation_of(guider.inner_model), events,
                       sampler_is_stochastic(getattr(executor, "class_obj", None)), data_scale_of(guider.inner_model))
        sampling_pass = _CURRENT_PASS.get()
        if sampling_pass is not None and sampling_pass.history is history:
            run.continue_from(sampling_pass.previous, int(noise.shape[0]))
            sampling_pass.run = run
        slot = RunSlot(run=run, empty_cond=empty_cond, extra_conds=tuple(extra_conds))
        extra_args["model_options"].setdefault("transformer_options", {})[RUN_KEY] = slot
        events.run_start(run)
        samples = executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
        run.finish(samples, fingerprint=False)
        if run.model_calls == 0:
            message = (f"{label} did not run: the sampler never called its guidance hook. Another node replaced "
                       "the CFG function, or a custom guider bypassed it (use the DNG guider with "
                       "SamplerCustomAdvanced instead).")
            run.note(message, int(noise.shape[0]))
            send_warning(message, events.node_id)
        elif run.steps_confirmed == 0:
            message = (f"{label}: no model call of this sampler landed on the schedule's sigmas, so the guidance "
                       "state never advanced (scale stayed at its initial value).")
            run.note(message, int(noise.shape[0]))
            send_warning(message, events.node_id)
        if sampling_pass is None or sampling_pass.history is not history:
            # sampled without the host's outer sampling step (a guider that bypasses it): record the run here, by
            # the LATENT the sampler returns (process_latent_out of these samples)
            if run.trace is not None and not getattr(samples, "is_nested", False):
                run.trace.output_fingerprint = tensor_fingerprint(
                    guider.inner_model.process_latent_out(samples.to(torch.float32)))
                history.add(run.trace, run.continuation())
        return samples

    wrappers = comfy.patcher_extension.WrappersMP
    model.add_wrapper_with_key(wrappers.OUTER_SAMPLE, WRAPPER_KEY, outer_sample)
    model.add_wrapper_with_key(wrappers.SAMPLER_SAMPLE, WRAPPER_KEY, sampler_sample)


def install_cfg_hooks(model: Any, label: str) -> None:
    """Makes the ordinary KSampler path feed the run: [pos, empty, neg] in one pass, the run's rule as CFG."""
    options = model.model_options
    previous_cfg = options.get("sampler_cfg_function")
    if previous_cfg is not None:
        send_warning(f"{label} replaces a CFG function set by an earlier node on this model (only one can be "
                     "active); post-CFG functions keep running.")
    previous_batch = options.get("sampler_calc_cond_batch_function")

    def calc_cond_batch(args: dict) -> list[torch.Tensor]:
        conds, x, base = args["conds"], args["input"], args["model"]
        slot = current_slot(args["model_options"])
        if slot is None or slot.empty_cond is None or len(conds) < 2 or conds[1] is None:
            return _batch(previous_batch, args, conds)
        # [pos, neg, ...] -> one pass over [pos, empty, (neg), (concept 2..K), ...] with the concepts the run still
        # predicts; the host gets [D_pos, D_empty, ...]
        empty = slot.encoded_empty(base, x)
        concepts = [conds[1], *slot.encoded_extra(base, x)]
        chosen = [k for k, wanted in enumerate(slot.run.concepts_to_predict()) if wanted]
        out = _batch(previous_batch, args, [conds[0], empty, *(concepts[k] for k in chosen), *conds[2:]])
        slot.last_concepts = (id(x), aligned_predictions(len(concepts), chosen, out[2:2 + len(chosen)]))

        def probe(x_probe: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
            # the unguided [empty, concepts] predictions at another state of the same sigma (path estimator)
            p = _batch(previous_batch, {**args, "input": x_probe}, [empty, *(concepts[k] for k in chosen)])
            return p[0], aligned_predictions(len(concepts), chosen, p[1:1 + len(chosen)])
        slot.probe = probe
        return [out[0], out[1], *out[2 + len(chosen):]]

    def cfg_function(args: dict) -> torch.Tensor:
        x = args["input"]
        slot = current_slot(args["model_options"])
        cond, uncond = args["cond_denoised"], args["uncond_denoised"]
        if slot is None:  # sampled outside our wrapper: behave as plain CFG
            return x - (uncond + (cond - uncond) * args["cond_scale"])
        if slot.last_concepts is None or slot.last_concepts[0] != id(x):
            raise RuntimeError(f"{label}: the negative concept's prediction is missing for this step; another "
                               "node replaced the batched model call. Remove that node or use the DNG guider.")
        concepts, probe = slot.last_concepts[1], slot.probe
        slot.last_concepts, slot.probe = None, None
        # uncond is the empty prompt's prediction here: calc_cond_batch above put it in the host's uncond slot
        return x - slot.run.guide(x, args["sigma"], uncond, cond, concepts, float(args["cond_scale"]), probe)

    model.set_model_sampler_calc_cond_batch_function(calc_cond_batch)
    # disable_cfg1_optimization: at cfg 1.0 the host would otherwise skip the negative prediction.
    model.set_model_sampler_cfg_function(cfg_function, disable_cfg1_optimization=True)


def aligned_predictions(concepts: int, chosen: list[int], predictions: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """One entry per concept: its prediction where it was chosen, None where it was pruned."""
    out: list[torch.Tensor | None] = [None] * concepts
    for k, d in zip(chosen, predictions):
        out[k] = d
    return out


def _batch(previous: Callable | None, args: dict, conds: list) -> list[torch.Tensor]:
    if previous is not None:
        return previous({**args, "conds": conds})
    return comfy.samplers.calc_cond_batch(args["model"], conds, args["input"], args["sigma"], args["model_options"])


def patch_model(model: Any, empty_conditioning: Any, make_run: RunFactory, node_id: str | None,
                label: str, extra_concepts: tuple[Any, ...] = ()) -> tuple[Any, TraceHistory]:
    """A clone of ``model`` whose KSampler runs apply the run made by ``make_run``; the input model is untouched.
    ``extra_concepts``: CONDITIONING of the concepts after the KSampler's negative (concept 1)."""
    patched = model.clone()
    history = TraceHistory()
    empty = comfy.sampler_helpers.convert_cond(empty_conditioning)
    extra = tuple(comfy.sampler_helpers.convert_cond(c) for c in extra_concepts)
    install_run_wrapper(patched, make_run, history, empty, StepEvents(node_id, label), label, extra)
    install_cfg_hooks(patched, label)
    return patched, history
