"""One guided sampling run: assigns model calls to sampler steps and applies DNG, NP or SLD step by step.

A host calls ``guide`` at every model evaluation with the state x, sigma and the three kinds of predictions,
and ``finish`` when the sampler returns. The run must advance its state (the posterior, SLD's momentum)
exactly once per sampler step, yet samplers call the model a different number of times per step: heun calls it
at (x_i, sigma_i) and again at (predictor, sigma_{i+1}); dpmpp_2s_ancestral at sigma_i and at a midpoint.

``StepAligner`` resolves this from the schedule alone. A call whose sigma is schedule[j] for a step j not yet
passed is a *candidate* first call of step j; a later call at the same sigma replaces the candidate (heun's
predictor call at sigma_{i+1} comes before step i+1's real first call at x_{i+1}); the candidate is confirmed
when a call for a later step arrives or the run finishes. Calls at sigmas off the schedule belong to the step in
progress and leave the state alone. The staggering of the paper follows: the scale used at step j comes from
the posterior after the transition x_{j-1} -> x_j, computed at step j's first call whose input is x_j.

A schedule split over several sampling passes (KSamplerAdvanced 0-5 then 5-10, or SplitSigmas) is one run in
several pieces: a pass whose input latent is the output of a finished run, on the continuation of that run's
schedule (its first sigma is the finished run's last, non-zero sigma), starts from the finished run's state
(``RunContinuation``) instead of the prior, numbers its steps after the finished run's, and its trace holds the
whole schedule so far. A pass on anything else (img2img, an upscaled latent, a schedule ending at 0) starts anew.
"""

from __future__ import annotations

import abc
import copy
import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from .baselines import SLDConfig, SLDState, sld_denoised
from .guidance import check_scale_args, combine_guidance
from .parametrisation import Parametrisation, reverse_kernel
from .path import (PathPoint, clamp_offset, divergence_difference, divergence_noise_bound, euler_coefficients,
                   offset_trust_radius, probe_direction, probe_offset)
from .posterior import EvidencePath, PosteriorConfig, PosteriorForm, PosteriorTracker, guidance_scale
from .pruning import ConceptPruner, PruningPolicy
from .trace import GuidanceTrace, StepRecord
from .transmission import (DETERMINISTIC_LATE_PUSH_GAIN, LATE_PUSH_GAIN, DeterministicPush, StochasticPush, bound_push,
                           check_data_scale, late_push_cut, ode_to_sde_gain_ratio)

__all__ = ["DNGConfig", "StepAligner", "GuidedRun", "DNGRun", "NegativePromptRun", "SLDRun", "RunContinuation",
           "tensor_fingerprint", "LAMBDA0_MAX"]

# The node inputs' largest lambda0 (and negative prompting's largest scale). The late push on stochastic samplers
# (stochastic_push 'late') needs about 4x the default's lambda0 on the 8x8 digit model and 1000+ on the 16x16 one
# (docs/step_invariance.md, Session 18), so 1000 (before session 18) left no room above it.
LAMBDA0_MAX = 3000.0

StepListener = Callable[["GuidedRun", StepRecord], None]
#: probe(x_probe) -> (D_u(x_probe), [D_neg_k(x_probe)]): the unguided predictions at another state, same sigma
Probe = Callable[[torch.Tensor], "tuple[torch.Tensor, Sequence[torch.Tensor]]"]


@dataclass(frozen=True)
class DNGConfig:
    """lambda0 (the guidance strength of eq. 7, lambda = lambda0 p / (1 - p)) and the posterior's settings."""

    lambda0: float = 75.0
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)
    #: the push's scaling on deterministic samplers (dng_core.transmission); only in the ``rate`` form
    deterministic_push: DeterministicPush = DeterministicPush.LATE
    #: where the push acts on stochastic samplers (dng_core.transmission); only in the ``rate`` form
    stochastic_push: StochasticPush = StochasticPush.LATE
    #: the late push's multiple of lambda0 (dng_core.transmission.LATE_PUSH_GAIN; not a node input)
    late_push_gain: float = LATE_PUSH_GAIN
    #: the same on deterministic samplers with deterministic_push 'late'
    #: (dng_core.transmission.DETERMINISTIC_LATE_PUSH_GAIN; not a node input)
    deterministic_late_gain: float = DETERMINISTIC_LATE_PUSH_GAIN

    def __post_init__(self) -> None:
        check_scale_args("lambda0", self.lambda0, LAMBDA0_MAX)
        object.__setattr__(self, "deterministic_push", DeterministicPush(self.deterministic_push))
        object.__setattr__(self, "stochastic_push", StochasticPush(self.stochastic_push))
        for name in ("late_push_gain", "deterministic_late_gain"):
            gain = getattr(self, name)
            if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {gain!r}")

    @property
    def max_scale(self) -> float:
        """The largest lambda the clamp allows: lambda0 p_max / (1 - p_max), before a deterministic sampler's push
        scaling T(sigma) (dng_core.transmission), which is at most 2, and the late push's gain on a stochastic
        one (``late_push_gain``, whose push is held within sigma)."""
        p = self.posterior.p_max
        return self.lambda0 * p / (1.0 - p)

    def as_dict(self) -> dict[str, Any]:
        return {"lambda0": self.lambda0, **self.posterior.as_dict(),
                "deterministic_push": self.deterministic_push.value, "stochastic_push": self.stochastic_push.value,
                "late_push_gain": self.late_push_gain, "deterministic_late_gain": self.deterministic_late_gain}

    def scales_push(self, stochastic_sampler: bool | None) -> bool:
        """Whether a run on this sampler scales its push by T(sigma): deterministic samplers in the rate form."""
        return (self.deterministic_push is not DeterministicPush.RAW and stochastic_sampler is False
                and self.posterior.form is PosteriorForm.RATE)

    def cuts_push(self, stochastic_sampler: bool | None) -> bool:
        """Whether a run on this sampler pushes only below 2 s, at a gain x lambda0 (the late push): stochastic
        samplers with stochastic_push 'late' (late_push_gain), deterministic ones with deterministic_push 'late'
        (deterministic_late_gain); rate form. Samplers that can't be told (None) never are."""
        if self.posterior.form is not PosteriorForm.RATE:
            return False
        if stochastic_sampler is True:
            return self.stochastic_push is StochasticPush.LATE
        return stochastic_sampler is False and self.deterministic_push is DeterministicPush.LATE


def tensor_fingerprint(t: torch.Tensor) -> str:
    """A content hash of a tensor (shape + float32 values), to find the run that produced a latent."""
    data = t.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha1(str(tuple(data.shape)).encode())
    h.update(data.numpy().tobytes())
    return h.hexdigest()


class StepAligner:
    """Maps a model call's sigma to a step index of the schedule (see module docstring).

    schedule: the sampler's sigmas, N + 1 values for N steps (the last is usually 0).
    """

    def __init__(self, schedule: Sequence[float] | torch.Tensor, rel_tol: float = 1e-5) -> None:
        values = schedule.detach().flatten().tolist() if isinstance(schedule, torch.Tensor) else list(schedule)
        if len(values) < 2:
            raise ValueError(f"a schedule needs at least 2 sigmas (1 step), got {len(values)}")
        self.sigmas = [float(v) for v in values]
        self.rel_tol = rel_tol

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def candidate_step(self, sigma: float, earliest: int) -> int | None:
        """The step j >= earliest whose start sigma equals ``sigma``, or None (an off-schedule, inner call)."""
        for j in range(max(earliest, 0), self.steps):
            if math.isclose(self.sigmas[j], sigma, rel_tol=self.rel_tol, abs_tol=1e-12):
                return j
        return None


@dataclass(frozen=True)
class RunContinuation:
    """What a later pass over the rest of the same schedule needs from a finished run.

    ``state``: the method's state after the run's last transition (DNG: log p, [K, B]; SLD: its momentum; NP:
    None). ``last_sigma``: the sigma the run ended at; only a pass starting there continues it."""

    method: str
    params: dict[str, Any]
    batch_size: int
    concepts: int
    last_sigma: float
    trace: GuidanceTrace
    state: Any

    def continued_by(self, method: str, params: dict[str, Any], schedule: Sequence[float] | torch.Tensor,
                     batch_size: int, concepts: int, rel_tol: float = 1e-5) -> bool:
        """Whether a pass with these settings, on ``schedule`` and a batch of ``batch_size``, continues this run:
        same method and settings (the estimator may differ: it follows each pass's sampler), same batch, and a
        schedule that starts where this run's ended (not at 0)."""
        first = float(schedule[0]) if len(schedule) else float("nan")
        return (method == self.method and _settings(params) == _settings(self.params)
                and batch_size == self.batch_size and concepts == self.concepts and self.last_sigma > 0.0
                and math.isclose(first, self.last_sigma, rel_tol=rel_tol, abs_tol=1e-12))


# Run parameters that follow from the pass's sampler rather than from the user's setting: a split schedule may
# change samplers between passes (ancestral, then deterministic) and is still one run.
_PER_SAMPLER_PARAMS = ("variance", "variance_requested", "stochastic_sampler", "push_data_scale",
                       "push_cut_sigma")


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in _PER_SAMPLER_PARAMS}


@dataclass
class _Candidate:
    step: int
    sigma: float
    state: Any
    scale: torch.Tensor
    p: torch.Tensor | None
    predicted: list[bool] | None = None  # DNG with pruning: per concept, predicted at this step
    settled: torch.Tensor | None = None  # [K, B]: images that no longer wanted the concept


class GuidedRun(abc.ABC):
    """The per-run driver shared by DNG and the baselines; subclasses supply the per-step rule."""

    method = "?"

    def __init__(self, schedule: Sequence[float] | torch.Tensor, params: dict[str, Any], concepts: int = 1,
                 parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING,
                 on_step: StepListener | None = None) -> None:
        if concepts < 1:
            raise ValueError(f"concepts must be >= 1, got {concepts}")
        self.aligner = StepAligner(schedule)
        self.continues: RunContinuation | None = None  # set by continue_from() before the first call
        self._step_offset = 0
        self.parametrisation = Parametrisation(parametrisation)
        # the trace says which state the kernels assumed, so a user (and the host tests) can check it against
        # the model's own model_sampling
        self.params = {**params, "parametrisation": self.parametrisation.value}
        self.concepts = concepts
        self.on_step = on_step
        self._prunes = False  # whether guide() may be given None for a concept (DNG with pruning)
        self.trace: GuidanceTrace | None = None
        self.model_calls = 0
        self.probe_calls = 0
        self.steps_confirmed = 0
        self._pending: _Candidate | None = None
        self._next_step = 0  # the earliest step a new candidate may claim
        self._probe: Probe | None = None  # set for the duration of a first call
        self.finished = False

    # ---- host-facing -------------------------------------------------------------------------------
    def continue_from(self, previous: RunContinuation | None, batch_size: int) -> bool:
        """Continue ``previous`` if this run is the rest of its schedule (see RunContinuation.continued_by):
        start from its state, number steps after its steps, keep its trace. Call before the first ``guide``.
        Returns whether it continues."""
        if self.trace is not None:
            raise RuntimeError("continue_from() must be called before the run's first model call")
        if previous is None or not previous.continued_by(self.method, self.params, self.aligner.sigmas,
                                                         batch_size, self.concepts):
            return False
        self.continues = previous
        self._step_offset = previous.trace.total_steps or len(previous.trace.steps)
        return True

    @property
    def total_steps(self) -> int:
        """Steps of the whole schedule so far: this pass's and, when it continues a run, the earlier passes'."""
        return self._step_offset + self.aligner.steps

    def continuation(self) -> RunContinuation | None:
        """The state a later pass over the rest of the schedule starts from (after ``finish``; None if the run
        made no model call)."""
        if not self.finished or self.trace is None or self.model_calls == 0:
            return None
        return RunContinuation(self.method, dict(self.params), self.trace.batch_size, self.concepts,
                               self.aligner.sigmas[-1], self.trace, self._final_state())

    @property
    def needs_probe(self) -> bool:
        """Whether ``guide`` needs a ``probe`` (the path estimator's divergence probe) at a step's first call."""
        return False

    def concepts_to_predict(self) -> list[bool]:
        """Per concept, whether the host should predict it for the next model call; ``guide`` takes None for
        the others. Every concept, unless the method prunes (DNG)."""
        return [True] * self.concepts

    def guide(self, x: torch.Tensor, sigma: torch.Tensor | float, denoised_uncond: torch.Tensor,
              denoised_pos: torch.Tensor | None, denoised_negs: Sequence[torch.Tensor],
              cfg_scale: float, probe: Probe | None = None) -> torch.Tensor:
        """The guided prediction for one model call. x and all predictions: [B, ...]; sigma: scalar or [B].

        ``denoised_negs``: one per concept, None for a concept ``concepts_to_predict`` left out. ``probe``:
        where ``needs_probe``, a function giving the unguided predictions at another state of the same sigma
        (None for the concepts left out); called at most once per call, only at the first call of a step."""
        if len(denoised_negs) != self.concepts:
            raise ValueError(f"expected {self.concepts} negative predictions, got {len(denoised_negs)}")
        if all(d is None for d in denoised_negs) and not self._prunes:
            raise ValueError("no negative prediction was given")
        # A Python float stays a Python float: torch.as_tensor would round it to float32.
        sig = float(sigma) if isinstance(sigma, (int, float)) else float(sigma.reshape(-1)[0])
        if self.trace is None:
            self._new_trace(int(x.shape[0]))
            self._begin(x)
        self.model_calls += 1
        earliest = self._pending.step if self._pending is not None else self._next_step
        step = self.aligner.candidate_step(sig, earliest)
        if step is None:
            return self._inner_call(x, sig, denoised_uncond, denoised_pos, denoised_negs, cfg_scale)
        if self._pending is not None and step > self._pending.step:
            self._confirm()
        self._probe = probe
        try:
            out, cand = self._first_call(step, x, sig, denoised_uncond, denoised_pos, denoised_negs, cfg_scale)
        finally:
            self._probe = None
        self._pending = cand
        return out

    def finish(self, x_final: torch.Tensor | None = None, fingerprint: bool = True) -> GuidanceTrace | None:
        """Confirm the last step, fold in its transition to ``x_final`` (if given), fingerprint the output
        (``fingerprint=False``: the host fingerprints the latent it returns instead)."""
        if self.finished:
            return self.trace
        self.finished = True
        if self._pending is not None:
            self._confirm()
        if self.trace is not None and x_final is not None:
            self._end(x_final, self.aligner.sigmas[-1])
            if fingerprint:
                self.trace.output_fingerprint = tensor_fingerprint(x_final)
        if self.trace is not None:
            earlier = self.continues.trace if self.continues is not None else None
            self.trace.model_calls = self.model_calls + (earlier.model_calls if earlier else 0)
            self.trace.probe_calls = self.probe_calls + (earlier.probe_calls if earlier else 0)
            self.trace.state_updates = self.state_updates + (earlier.state_updates if earlier else 0)
        return self.trace

    @property
    def state_updates(self) -> int:
        """Steps whose per-run state advanced (DNG overrides: posterior updates)."""
        return self.steps_confirmed

    def note(self, message: str, batch_size: int) -> GuidanceTrace:
        """Record something the user must know about this run in its trace (the plot shows it), e.g. that the
        sampler never called the guidance. Makes the (empty) trace of a run that saw no model call."""
        if self.trace is None:
            self._new_trace(batch_size)
        self.trace.notes.append(message)
        return self.trace

    # ---- internals ---------------------------------------------------------------------------------
    def _new_trace(self, batch_size: int) -> None:
        self.trace = GuidanceTrace(self.method, batch_size, self.concepts, dict(self.params),
                                   total_steps=self.total_steps)
        if self.continues is not None:
            earlier = self.continues.trace
            self.trace.steps = list(earlier.steps)
            self.trace.truncated = earlier.truncated
            self.trace.notes = list(earlier.notes)

    def _confirm(self) -> None:
        cand = self._pending
        assert cand is not None and self.trace is not None
        self._pending = None
        self._next_step = cand.step + 1
        self._commit(cand)
        self.steps_confirmed += 1
        rec = self.trace.record(self._step_offset + cand.step, cand.sigma, cand.scale, cand.p, cand.predicted,
                                cand.settled)
        if rec is not None and self.on_step is not None:
            self.on_step(self, rec)

    def _begin(self, x: torch.Tensor) -> None:
        """Set up per-run state once the batch is known (from ``self.continues.state`` when continuing)."""

    def _final_state(self) -> Any:
        """The state a continuation starts from (see RunContinuation.state)."""
        return None

    def _end(self, x_final: torch.Tensor, sigma_final: float) -> None:
        """The transition of the last step, if the method tracks one."""

    @abc.abstractmethod
    def _first_call(self, step: int, x: torch.Tensor, sigma: float, d_u: torch.Tensor, d_pos: torch.Tensor | None,
                    d_negs: Sequence[torch.Tensor], cfg_scale: float) -> tuple[torch.Tensor, _Candidate]: ...

    @abc.abstractmethod
    def _inner_call(self, x: torch.Tensor, sigma: float, d_u: torch.Tensor, d_pos: torch.Tensor | None,
                    d_negs: Sequence[torch.Tensor], cfg_scale: float) -> torch.Tensor: ...

    @abc.abstractmethod
    def _commit(self, cand: _Candidate) -> None: ...


@dataclass
class _StepInputs:
    """What the next step's posterior update needs from this step's first call (clones)."""

    x: torch.Tensor
    sigma: float
    d_u: torch.Tensor
    d_negs: list[torch.Tensor | None]  # None: the concept was not predicted (pruned)
    div_diffs: list[torch.Tensor | None] | None = None  # the path estimator's, per concept
    div_vars: list[torch.Tensor | None] | None = None  # bounds on their variance, per concept
    scale: torch.Tensor | None = None  # [K, B], the scales this step applied (0 for a concept not predicted)
    # the uncorrected evidence's path estimator: where the state would be without DNG's pushes so far, minus x,
    # per concept ([K, B, ...]: the one-sided evidence takes out a different shift per concept)
    offset: torch.Tensor | None = None
    # the unguided and one-sided evidence: (s - 1) (D_pos - D_u), CFG's extrapolation past the positive's own
    # prediction
    cfg_extra: torch.Tensor | None = None

    def path_point(self, k: int) -> PathPoint | None:
        if self.div_diffs is None or self.d_negs[k] is None or self.div_diffs[k] is None:
            return None
        x = self.x if self.offset is None else self.x + self.offset[k]
        div_var = None if self.div_vars is None else self.div_vars[k]
        return PathPoint(x, self.sigma, self.d_negs[k], self.d_u, self.div_diffs[k], div_var)


@dataclass(frozen=True)
class DNGState:
    """What a DNG pass hands to the pass that continues it: log p per concept and image, [K, B], and, for the
    uncorrected evidence's path estimator, where the state would be without DNG's pushes so far minus the final
    state, per concept, [K, B, ...] (None when there is none to carry)."""

    log_p: torch.Tensor
    path_offset: torch.Tensor | None = None


class DNGRun(GuidedRun):
    """Dynamic Negative Guidance over one sampling run; one posterior per concept and batch element."""

    method = "dng"
    _carried_offset: torch.Tensor | None = None
    _end_offset: torch.Tensor | None = None
    _push_cut_sigma: float | None = None

    def __init__(self, config: DNGConfig, schedule: Sequence[float] | torch.Tensor, concepts: int = 1,
                 parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING,
                 on_step: StepListener | None = None, stochastic_sampler: bool | None = None,
                 lambda0s: Sequence[float] | None = None, pruning: PruningPolicy | None = None,
                 concept_labels: Sequence[str] | None = None, data_scale: float = 1.0) -> None:
        """``lambda0s``: one lambda0 per concept (default: ``config.lambda0`` for all); ``pruning``: stop
        predicting concepts that settled at the floor (dng_core.pruning; None: never); ``concept_labels``: names
        for the trace and plots; ``data_scale``: the model's data scale s (ComfyUI's sigma_data), which sets
        the deterministic samplers' push scaling T(sigma) = 2 s / sqrt(s^2 + sigma^2) (dng_core.transmission)."""
        # posterior variance AUTO becomes the estimator for this run's sampler; the trace records both.
        requested = config.posterior.variance
        config = replace(config, posterior=config.posterior.resolved(stochastic_sampler))
        params = config.as_dict()
        if requested is not config.posterior.variance:
            params["variance_requested"] = requested.value
        params["stochastic_sampler"] = stochastic_sampler
        data_scale = check_data_scale(data_scale)
        self._push_scale_s = data_scale if config.scales_push(stochastic_sampler) else None
        if self._push_scale_s is not None:
            params["push_data_scale"] = self._push_scale_s
        self._push_cut_sigma = late_push_cut(data_scale) if config.cuts_push(stochastic_sampler) else None
        # the late push's multiple of lambda0 (1 without it: the same bits as no multiple)
        self._push_gain = 1.0 if self._push_cut_sigma is None else (
            config.late_push_gain if stochastic_sampler else config.deterministic_late_gain)
        if self._push_cut_sigma is not None:
            params["push_cut_sigma"] = self._push_cut_sigma
            # the same cut as the sampler's own sigma (the trace's steps carry it): where plots mark the cut
            params["push_cut_model_sigma"] = Parametrisation(parametrisation).sigma_from_ve(self._push_cut_sigma)
        lambda0s = [config.lambda0] * concepts if lambda0s is None else [float(v) for v in lambda0s]
        if len(lambda0s) != concepts:
            raise ValueError(f"lambda0s has {len(lambda0s)} values for {concepts} concepts")
        for k, v in enumerate(lambda0s):
            check_scale_args(f"lambda0 of concept {k + 1}", v, LAMBDA0_MAX)
        if any(v != config.lambda0 for v in lambda0s):
            params["lambda0s"] = lambda0s
        if pruning is not None:
            params.update(pruning.as_dict())
        if concept_labels is not None:
            params["concept_labels"] = [str(v) for v in concept_labels]
        super().__init__(schedule, params, concepts, parametrisation, on_step)
        self.config = config
        self.lambda0s = torch.tensor(lambda0s, dtype=torch.float64).reshape(-1, 1)
        self.pruning = pruning if pruning is not None and pruning.enabled else None
        self._prunes = self.pruning is not None
        self.pruner: ConceptPruner | None = None
        self.trackers: list[PosteriorTracker] = []
        self._confirmed_inputs: _StepInputs | None = None

    @property
    def needs_probe(self) -> bool:
        return self.config.posterior.variance.needs_probe

    @property
    def posterior_updates(self) -> int:
        """Steps whose transition has been folded into the posterior (== steps after ``finish(x_final)``)."""
        return self.trackers[0].updates if self.trackers else 0

    @property
    def state_updates(self) -> int:
        return self.posterior_updates

    def concepts_to_predict(self) -> list[bool]:
        if self.pruner is None:
            return [True] * self.concepts
        return self.pruner.predicted()

    def _begin(self, x: torch.Tensor) -> None:
        self.trackers = [PosteriorTracker(self.config.posterior, int(x.shape[0]), x.device, self.parametrisation)
                         for _ in range(self.concepts)]
        if self.pruning is not None:
            self.pruner = ConceptPruner(self.pruning, self.concepts, int(x.shape[0]), self.config.posterior.prior,
                                        x.device)
        self._carried_offset = None
        if self.continues is not None:  # the posterior where the earlier pass left it, not the prior
            state: DNGState = self.continues.state
            for tracker, log_p in zip(self.trackers, state.log_p):
                tracker.log_p = log_p.to(tracker.log_p)
            self._carried_offset = state.path_offset

    def _final_state(self) -> "DNGState | None":
        if not self.trackers:
            return None
        return DNGState(torch.stack([t.log_p.clone() for t in self.trackers]), self._end_offset)

    def _log_p_at(self, x: torch.Tensor, sigma: float,
                  here: _StepInputs | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """([K, B], [K]): the posterior after the transition from the last confirmed step's inputs to x (``here``:
        the path estimator's point at x; without it that estimator has no evidence for the transition), and
        per concept whether evidence was folded in (a concept not predicted at an end keeps its posterior)."""
        prev = self._confirmed_inputs
        push = self._own_push(prev)
        if self.needs_probe and here is not None and prev is not None and (push is not None or
                                                                          prev.offset is not None):
            # the path estimator reads the state, which keeps every earlier push: follow the state without them,
            # x + offset, whose offset an euler step carries as r * offset + c * push (exact for first-order
            # steps with predictions that do not depend on x; the predictions stay those at x)
            here.offset = self._carry_offset(prev, sigma, push)
        rows, observed = [], []
        for k, t in enumerate(self.trackers):
            new = None
            if prev is not None and prev.d_negs[k] is not None:
                if not self.needs_probe:
                    # the kernel's evidence depends on the state only through x' - coef_x x, so adding the
                    # step's own push to x' is the same as following the state without any of them
                    x_read = x if push is None else x + self._kernel_coefficient(prev, sigma, x) * push[k]
                    new = t.propose(prev.x, x_read, prev.d_negs[k], prev.d_u, prev.sigma, sigma)
                elif here is not None:
                    a, b = prev.path_point(k), here.path_point(k)
                    new = t.propose_path(a, b) if a is not None and b is not None else None
            rows.append(t.log_p if new is None else new)
            observed.append(new is not None)
        return torch.stack(rows), torch.tensor(observed)

    def _own_push(self, prev: _StepInputs | None) -> torch.Tensor | None:
        """The shift of the step from ``prev`` that the evidence takes back out, one per concept, [K, B, ...]
        (posterior.EvidencePath): sum_k lambda_k (D_neg_k - D_u), the shift DNG's own guidance made
        (``uncorrected``); also CFG's extrapolation, - (s - 1) (D_pos - D_u) (``unguided``); or that extrapolation
        only in the rows where it points towards concept k, <(s - 1) (D_pos - D_u), Delta_k> > 0 (``one_sided``).
        None for ``sampled`` or where nothing was pushed."""
        evidence = self.config.posterior.evidence
        if evidence is EvidencePath.SAMPLED or prev is None or prev.scale is None:
            return None
        base = None
        for k, d_neg in enumerate(prev.d_negs):
            if d_neg is None:
                continue
            lam = prev.scale[k].to(prev.d_u.dtype).reshape((-1,) + (1,) * (prev.d_u.dim() - 1))
            term = lam * (d_neg - prev.d_u)
            base = term if base is None else base + term
        extra = prev.cfg_extra
        if base is None and extra is None:
            return None
        if base is None:
            base = torch.zeros_like(prev.d_u)
        pushes = []
        for d_neg in prev.d_negs:
            push = base
            if extra is not None and evidence is EvidencePath.UNGUIDED:
                push = base - extra
            elif extra is not None and evidence is EvidencePath.ONE_SIDED and d_neg is not None:
                # per row: take the extrapolation out only where it would count as evidence *for* the concept
                towards = ((extra * (d_neg - prev.d_u)).flatten(1).sum(1) > 0).to(extra.dtype)
                push = base - towards.reshape((-1,) + (1,) * (extra.dim() - 1)) * extra
            pushes.append(push)
        return torch.stack(pushes)

    def _carry_offset(self, prev: _StepInputs, sigma: float, push: torch.Tensor | None) -> torch.Tensor | None:
        """The path estimator's offset (the state without DNG's pushes, minus the state) after the euler step from
        ``prev`` to ``sigma``: r * offset + c * push (path.euler_coefficients), scaled back to the trust radius at
        sigma (path.offset_trust_radius), beyond which the predictions at the pushed state cannot read it."""
        r, c = euler_coefficients(prev.sigma, sigma)
        offset = r * prev.offset if prev.offset is not None else None
        if push is not None:
            offset = c * push if offset is None else offset + c * push
        if offset is None:
            return None
        radius = offset_trust_radius(sigma, self.parametrisation, self.config.posterior.offset_trust)
        return clamp_offset(offset, radius)

    def _kernel_coefficient(self, prev: _StepInputs, sigma: float, x: torch.Tensor) -> torch.Tensor:
        """The reverse kernel's coefficient of the prediction for the step prev.sigma -> sigma, [B, 1, ...]."""
        kernel = reverse_kernel(torch.tensor([float(prev.sigma)], dtype=torch.float64),
                                torch.tensor([float(sigma)], dtype=torch.float64), self.parametrisation)
        return kernel.coef_d.to(device=x.device, dtype=x.dtype).reshape((1,) * x.dim())

    def _divergences(self, step: int, x: torch.Tensor, sigma: float, d_u: torch.Tensor, d_negs: Sequence[torch.Tensor]
                     ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]] | None:
        """div D_neg_k - div D_u at x per concept (one Hutchinson probe) and a bound on each sample's variance, or
        None where sigma carries none."""
        h = probe_offset(sigma, self.parametrisation)
        if not (h > 0 and math.isfinite(h)):
            return None
        if self._probe is None:
            raise ValueError("the path posterior estimator needs the host to pass a probe to guide(); this host "
                             "did not (use posterior_variance 'kernel')")
        eps = probe_direction(x.shape, self._step_offset + step).to(device=x.device, dtype=x.dtype)
        d_u_probe, d_negs_probe = self._probe(x + h * eps)
        self.probe_calls += 1
        if len(d_negs_probe) != len(d_negs):
            raise ValueError(f"the probe returned {len(d_negs_probe)} concept predictions, expected {len(d_negs)}")
        divs: list[torch.Tensor | None] = []
        noise: list[torch.Tensor | None] = []
        for k in range(len(d_negs)):
            if d_negs[k] is None or d_negs_probe[k] is None:
                divs.append(None)
                noise.append(None)
                continue
            args = (d_negs[k], d_u, d_negs_probe[k], d_u_probe, sigma, self.parametrisation)
            divs.append(divergence_difference(eps, h, *args))
            noise.append(divergence_noise_bound(h, *args) if self.config.posterior.debias_probe else None)
        return divs, noise

    def _scale(self, log_p: torch.Tensor, sigma: float) -> torch.Tensor:
        """lambda0 p / (1 - p) per concept and image, times T(sigma) on a deterministic sampler (matched push); with
        the late push (stochastic samplers' default, deterministic_push 'late') 0 above sigma 2 s (the posterior
        is still tracked there) and late_push_gain (deterministic: deterministic_late_gain) x that below (held
        within sigma by the caller, ``bound_push``)."""
        lambda0s = self.lambda0s.to(log_p)
        if self._push_scale_s is None and self._push_cut_sigma is None:
            return guidance_scale(log_p, lambda0s)
        sigma_ve = self.parametrisation.sigma_ve(sigma)
        if self._push_cut_sigma is not None and sigma_ve > self._push_cut_sigma:
            return torch.zeros_like(log_p)  # guidance_scale's shape and dtype: log_p's, [K, B]
        # the gain multiplies lambda0 before the division, so lambda0 75 at gain 6 is bit-identical to a gain-1 run
        # at lambda0 450 (the defaults grid's rows of both kinds compare exactly)
        scale = guidance_scale(log_p, lambda0s * self._push_gain)
        if self._push_scale_s is None:
            return scale
        return scale * ode_to_sde_gain_ratio(sigma_ve, self._push_scale_s)

    def _first_call(self, step, x, sigma, d_u, d_pos, d_negs, cfg_scale):
        probed = self._divergences(step, x, sigma, d_u, d_negs) if self.needs_probe else None
        inputs = _StepInputs(x.detach().clone(), sigma, d_u.detach().clone(),
                             [None if d is None else d.detach().clone() for d in d_negs],
                             None if probed is None else probed[0], None if probed is None else probed[1])
        if self._confirmed_inputs is None and self._carried_offset is not None:  # a continued pass's first step
            inputs.offset = self._carried_offset.to(x)
        log_p, observed = self._log_p_at(x, sigma, inputs)
        scale = self._scale(log_p, sigma)
        if self._push_cut_sigma is not None:  # the late push, held within sigma (dng_core.transmission.bound_push)
            scale = bound_push(scale, d_u, d_negs, float(self.parametrisation.sigma_ve(sigma)))
        out = _combine(d_u, d_pos, d_negs, scale, cfg_scale)
        predicted = [d is not None for d in d_negs]
        inputs.scale = _zero_unpredicted(scale, predicted).detach().clone()
        if (self.config.posterior.evidence in (EvidencePath.UNGUIDED, EvidencePath.ONE_SIDED) and d_pos is not None
                and float(cfg_scale) != 1.0):
            inputs.cfg_extra = ((cfg_scale - 1.0) * (d_pos - d_u)).detach().clone()
        # what decided this call's predictions, recorded as the step's ``settled`` (the step's own first call
        # folds in the previous step's evidence first, which may make a pair want its concept again, re-probed or
        # risen, from the next step on)
        settled = self.pruner.settled_when_asked() if self.pruner is not None else None
        return out, _Candidate(step, sigma, (log_p, inputs, observed), _zero_unpredicted(scale, predicted),
                               log_p.exp(), predicted if self.pruner is not None else None, settled)

    def _inner_call(self, x, sigma, d_u, d_pos, d_negs, cfg_scale):
        scale = self._pending.scale if self._pending is not None else self._scale(
            torch.stack([t.log_p for t in self.trackers]), sigma) if self.trackers else None
        if self._pending is None and scale is not None and self._push_cut_sigma is not None:
            scale = bound_push(scale, d_u, d_negs, float(self.parametrisation.sigma_ve(sigma)))
        return _combine(d_u, d_pos, d_negs, scale, cfg_scale)

    def _commit(self, cand: _Candidate) -> None:
        log_p, inputs, observed = cand.state
        if self._confirmed_inputs is not None:
            for k, tracker in enumerate(self.trackers):
                tracker.commit(log_p[k])
            if self.pruner is not None:
                self.pruner.observe(self._step_offset + cand.step, log_p.exp(), observed)
        self._confirmed_inputs = inputs

    def _end(self, x_final: torch.Tensor, sigma_final: float) -> None:
        # The last step's transition: no evidence when it ends at sigma = 0, but it is still a step passed. (The
        # path estimator has no predictions at x_final, so a pass ending above 0 gets none from it either.)
        if self._confirmed_inputs is not None and x_final.shape == self._confirmed_inputs.x.shape:
            prev = self._confirmed_inputs
            push = self._own_push(prev)
            if self.needs_probe and (push is not None or prev.offset is not None) and sigma_final > 0:
                # where the state would be without DNG's pushes, for a later pass that continues this one
                self._end_offset = self._carry_offset(prev, sigma_final, push)
            log_p, _ = self._log_p_at(x_final.to(self._confirmed_inputs.x), sigma_final)
            for k, tracker in enumerate(self.trackers):
                tracker.commit(log_p[k])
            self._confirmed_inputs = None

    def final_posterior(self) -> torch.Tensor | None:
        """p after the run, [K, B] (after ``finish``)."""
        return torch.stack([t.p for t in self.trackers]) if self.trackers else None


def _combine(d_u, d_pos, d_negs, scale, cfg_scale):
    """combine_guidance over the concepts that were predicted (a pruned concept's guidance is off)."""
    keep = [k for k, d in enumerate(d_negs) if d is not None]
    rows = scale[keep] if scale is not None and keep else scale
    return combine_guidance(d_u, d_pos, [d_negs[k] for k in keep], rows if keep else [], cfg_scale)


def _zero_unpredicted(scale: torch.Tensor, predicted: list[bool]) -> torch.Tensor:
    if all(predicted):
        return scale
    mask = torch.tensor(predicted, device=scale.device).reshape(-1, 1)
    return torch.where(mask, scale, torch.zeros_like(scale))


class NegativePromptRun(GuidedRun):
    """Negative prompting in the paper's form: a constant scale per concept."""

    method = "np"

    def __init__(self, scale: float, schedule: Sequence[float] | torch.Tensor, concepts: int = 1,
                 parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING,
                 on_step: StepListener | None = None) -> None:
        check_scale_args("scale", scale, LAMBDA0_MAX)
        super().__init__(schedule, {"scale": scale}, concepts, parametrisation, on_step)
        self.scale = float(scale)

    def _scales(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((self.concepts, batch), self.scale, dtype=torch.float64, device=device)

    def _first_call(self, step, x, sigma, d_u, d_pos, d_negs, cfg_scale):
        scale = self._scales(x.shape[0], x.device)
        return combine_guidance(d_u, d_pos, d_negs, scale, cfg_scale), _Candidate(step, sigma, None, scale, None)

    def _inner_call(self, x, sigma, d_u, d_pos, d_negs, cfg_scale):
        return combine_guidance(d_u, d_pos, d_negs, self._scales(x.shape[0], x.device), cfg_scale)

    def _commit(self, cand: _Candidate) -> None:
        pass


class SLDRun(GuidedRun):
    """Safe Latent Diffusion; one safety concept (the first negative), momentum advanced once per step."""

    method = "sld"

    def __init__(self, config: SLDConfig, schedule: Sequence[float] | torch.Tensor,
                 parametrisation: Parametrisation = Parametrisation.VARIANCE_EXPLODING,
                 on_step: StepListener | None = None) -> None:
        super().__init__(schedule, config.as_dict(), 1, parametrisation, on_step)
        self.config = config
        self.state = SLDState()

    def _begin(self, x: torch.Tensor) -> None:
        if self.continues is not None:
            self.state = copy.copy(self.continues.state)

    def _final_state(self) -> SLDState:
        return copy.copy(self.state)

    def _apply(self, state: SLDState, x, sigma, d_u, d_pos, d_negs, cfg_scale):
        return sld_denoised(x, sigma, d_u, d_pos, d_negs[0], cfg_scale, self.config, state, self.parametrisation)

    def _first_call(self, step, x, sigma, d_u, d_pos, d_negs, cfg_scale):
        state = copy.copy(self.state)
        out, effective = self._apply(state, x, sigma, d_u, d_pos, d_negs, cfg_scale)
        return out, _Candidate(step, sigma, state, effective.reshape(1, -1), None)

    def _inner_call(self, x, sigma, d_u, d_pos, d_negs, cfg_scale):
        out, _ = self._apply(copy.copy(self.state), x, sigma, d_u, d_pos, d_negs, cfg_scale)
        return out

    def _commit(self, cand: _Candidate) -> None:
        self.state = cand.state
