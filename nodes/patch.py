"""Installs a guidance run (DNG, NP or SLD from dng_core.run) into a ComfyUI model's sampling hooks.

Data path of one sampling run:
  SAMPLER_SAMPLE wrapper  -> makes a fresh run (prior, empty trace) for this run's sigmas, stores it in this
                             run's own model_options (a per-run copy the host makes), finishes it at the end
  calc_cond_batch hook    -> adds the empty prompt to the host's batched forward pass [pos, neg] -> [pos, neg, empty]
  sampler_cfg_function    -> run.guide(x, sigma, D_empty, D_pos, [D_neg], cfg): the guided prediction
  (guider)                -> DNGGuider.predict_noise calls run.guide directly
  run.finish              -> trace into the node's TraceHistory, keyed by the output latent's fingerprint

State lives in the run, never on the patched model, so cached node outputs, several samplers sharing one
patched model, KSamplerAdvanced passes and interrupted runs all start from the prior.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import comfy.model_sampling
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers

from ..dng_core import GuidedRun, Parametrisation, StepRecord, TraceHistory, tensor_fingerprint

log = logging.getLogger("comfyui-dng")

RUN_KEY = "dng_guidance_run"
WRAPPER_KEY = "dng_guidance"

# make_run(sigmas, parametrisation, on_step, stochastic_sampler) -> the run of one sampling pass
RunFactory = Callable[[torch.Tensor, Parametrisation, Callable[[GuidedRun, StepRecord], None], "bool | None"],
                      GuidedRun]

# k-diffusion sampler functions whose steps inject fresh noise (ComfyUI's sample_<name>; by default eta = 1).
_STOCHASTIC_SAMPLER_MARKERS = ("ancestral", "sde", "ddpm", "lcm", "seeds", "sa_solver")


def parametrisation_of(model: Any) -> Parametrisation:
    """The state convention of a ComfyUI BaseModel: CONST (SD3, Flux) is rectified flow, the rest VE."""
    sampling = getattr(model, "model_sampling", None)
    if isinstance(sampling, comfy.model_sampling.CONST):
        return Parametrisation.RECTIFIED_FLOW
    return Parametrisation.VARIANCE_EXPLODING


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


@dataclass
class RunSlot:
    """One sampling run's state inside its model_options: the core run and the empty prompt's prediction."""

    run: GuidedRun
    empty_cond: list[dict] | None
    empty_encoded: list[dict] | None = None
    last_empty: tuple[int, torch.Tensor] | None = None  # (id of x, D_empty) from this call's batched pass
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def encoded_empty(self, model: Any, x: torch.Tensor) -> list[dict]:
        # Encoded once per run, the way PerpNeg does it (prompt_type "negative": an unconditional prompt).
        if self.empty_encoded is None:
            self.empty_encoded = comfy.samplers.encode_model_conds(model.extra_conds, self.empty_cond, x, x.device,
                                                                   "negative")
        return self.empty_encoded


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

    def run_start(self, run: GuidedRun, steps: int) -> None:
        self._send("dng.run_start", {"node": self.node_id, "method": run.method, "label": self.label,
                                     "total_steps": steps})

    def __call__(self, run: GuidedRun, record: StepRecord) -> None:
        trace = run.trace
        self._send("dng.step", {"node": self.node_id, "method": run.method, "label": self.label,
                                "total_steps": trace.total_steps if trace else None, **record.as_dict()})


def _warn(message: str) -> None:
    log.warning("[DNG] %s", message)
    server = StepEvents._server()
    if server is not None:
        try:
            server.send_sync("dng.warning", {"message": message}, getattr(server, "client_id", None))
        except Exception:
            pass


def has_guidance_patch(model: Any) -> bool:
    return WRAPPER_KEY in model.wrappers.get(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, {})


def install_run_wrapper(model: Any, make_run: RunFactory, history: TraceHistory, empty_cond: list[dict] | None,
                        events: StepEvents, label: str) -> None:
    """Adds the SAMPLER_SAMPLE wrapper that gives every sampling run of ``model`` a fresh run (in place)."""
    if has_guidance_patch(model):
        raise ValueError("This model already carries a DNG / negative prompting / SLD patch; apply only one of "
                         "them per model (chain the unpatched model instead).")

    def sampler_sample(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        run = make_run(sigmas, parametrisation_of(guider.inner_model), events,
                       sampler_is_stochastic(getattr(executor, "class_obj", None)))
        slot = RunSlot(run=run, empty_cond=empty_cond, label=label)
        extra_args["model_options"].setdefault("transformer_options", {})[RUN_KEY] = slot
        events.run_start(run, len(sigmas) - 1)
        samples = executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
        trace = run.finish(samples)
        if run.model_calls == 0:
            _warn(f"{label} did not run: the sampler never called its guidance hook. Another node replaced "
                  "the CFG function, or a custom guider bypassed it (use the DNG guider with "
                  "SamplerCustomAdvanced instead).")
        elif run.steps_confirmed == 0:
            _warn(f"{label}: no model call of this sampler landed on the schedule's sigmas, so the guidance "
                  "state never advanced (scale stayed at its initial value).")
        if trace is not None and not getattr(samples, "is_nested", False):
            # The LATENT the sampler node returns is process_latent_out of these samples (inner_sample).
            trace.output_fingerprint = tensor_fingerprint(
                guider.inner_model.process_latent_out(samples.to(torch.float32)))
            history.add(trace)
        return samples

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, sampler_sample)


def install_cfg_hooks(model: Any, label: str) -> None:
    """Makes the ordinary KSampler path feed the run: [pos, neg, empty] in one pass, the run's rule as CFG."""
    options = model.model_options
    previous_cfg = options.get("sampler_cfg_function")
    if previous_cfg is not None:
        _warn(f"{label} replaces a CFG function set by an earlier node on this model (only one can be active); "
              "post-CFG functions keep running.")
    previous_batch = options.get("sampler_calc_cond_batch_function")

    def calc_cond_batch(args: dict) -> list[torch.Tensor]:
        conds, x, base = args["conds"], args["input"], args["model"]
        model_options = args["model_options"]
        slot = current_slot(model_options)
        if slot is None or slot.empty_cond is None:
            return _batch(previous_batch, args, conds)
        out = _batch(previous_batch, args, list(conds) + [slot.encoded_empty(base, x)])
        slot.last_empty = (id(x), out[len(conds)])
        return out[: len(conds)]

    def cfg_function(args: dict) -> torch.Tensor:
        x = args["input"]
        slot = current_slot(args["model_options"])
        if slot is None:  # sampled outside our wrapper: behave as plain CFG
            cond, uncond = args["cond_denoised"], args["uncond_denoised"]
            return x - (uncond + (cond - uncond) * args["cond_scale"])
        if slot.last_empty is None or slot.last_empty[0] != id(x):
            raise RuntimeError(f"{label}: the empty prompt's prediction is missing for this step; another node "
                               "replaced the batched model call. Remove that node or use the DNG guider.")
        d_empty = slot.last_empty[1]
        slot.last_empty = None
        guided = slot.run.guide(x, args["sigma"], d_empty, args["cond_denoised"], [args["uncond_denoised"]],
                                float(args["cond_scale"]))
        return x - guided

    model.set_model_sampler_calc_cond_batch_function(calc_cond_batch)
    # disable_cfg1_optimization: at cfg 1.0 the host would otherwise skip the negative prediction.
    model.set_model_sampler_cfg_function(cfg_function, disable_cfg1_optimization=True)


def _batch(previous: Callable | None, args: dict, conds: list) -> list[torch.Tensor]:
    if previous is not None:
        return previous({**args, "conds": conds})
    return comfy.samplers.calc_cond_batch(args["model"], conds, args["input"], args["sigma"], args["model_options"])


def patch_model(model: Any, empty_conditioning: Any, make_run: RunFactory, node_id: str | None,
                label: str) -> tuple[Any, TraceHistory]:
    """A clone of ``model`` whose KSampler runs apply the run made by ``make_run``; the input model is untouched."""
    patched = model.clone()
    history = TraceHistory()
    empty = comfy.sampler_helpers.convert_cond(empty_conditioning)
    install_run_wrapper(patched, make_run, history, empty, StepEvents(node_id, label), label)
    install_cfg_hooks(patched, label)
    return patched, history
