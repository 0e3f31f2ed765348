"""GuidanceTrace: what a guided sampling run did, per step and per sample, for plots, JSON and web events.

One record per sampler step: the step index, sigma, the posterior p used at that step (DNG only) and the
guidance scale used (DNG: lambda; negative prompting: its constant; SLD: its effective scale), each as a
[concepts][batch] list of floats. Bounded: at most ``max_steps`` records and ``max_batch`` samples are kept,
and ``truncated`` says when something was left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["StepRecord", "GuidanceTrace", "TRACE_FORMAT_VERSION"]

TRACE_FORMAT_VERSION = 1


def _rows(values: torch.Tensor | None, max_batch: int) -> list[list[float]] | None:
    if values is None:
        return None
    v = values.detach().to("cpu", torch.float64)
    v = v.reshape(1, -1) if v.dim() < 2 else v
    return [[_finite(x) for x in row[:max_batch].tolist()] for row in v]


def _finite(x: float) -> float:
    # JSON has no inf/NaN; the core never produces them, but a trace must stay loadable regardless.
    return x if math.isfinite(x) else (1e308 if x > 0 else (-1e308 if x < 0 else 0.0))


@dataclass(frozen=True)
class StepRecord:
    """One step. ``predicted`` (DNG with pruning): per concept, whether it was predicted at this step (a pruned
    concept was not: its p is frozen and its scale 0); ``settled``: [concepts][batch], the images that no longer
    wanted the concept (see dng_core.pruning)."""

    step: int
    sigma: float
    scale: list[list[float]]
    p: list[list[float]] | None = None
    predicted: list[bool] | None = None
    settled: list[list[bool]] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "sigma": self.sigma, "scale": self.scale}
        if self.p is not None:
            out["p"] = self.p
        if self.predicted is not None:
            out["predicted"] = self.predicted
        if self.settled is not None:
            out["settled"] = self.settled
        return out


@dataclass
class GuidanceTrace:
    """The record of one sampling run. ``method``: "dng", "np" or "sld".

    ``model_calls``: guided model evaluations; ``probe_calls``: the path estimator's extra evaluations (each
    predicts the empty prompt and every concept at a probe state); ``state_updates``: steps whose state (DNG: the
    posterior) advanced, equal to the number of steps for a run that finished."""

    method: str
    batch_size: int
    concepts: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    total_steps: int | None = None
    output_fingerprint: str | None = None
    model_calls: int = 0
    probe_calls: int = 0
    state_updates: int = 0
    max_steps: int = 4096
    max_batch: int = 64
    truncated: bool = False
    notes: list[str] = field(default_factory=list)  # what the user must know about the run (shown on the plot)

    def record(self, step: int, sigma: float, scale: torch.Tensor, p: torch.Tensor | None = None,
               predicted: list[bool] | None = None, settled: torch.Tensor | None = None) -> StepRecord | None:
        """Append one step. scale, p: [K, B] or [B]; predicted: [K]; settled: [K, B] bool. Returns the record, or
        None when the bound was hit."""
        if len(self.steps) >= self.max_steps:
            self.truncated = True
            return None
        if self.batch_size > self.max_batch:
            self.truncated = True
        settled_rows = None if settled is None else [[bool(v) for v in row[:self.max_batch]]
                                                     for row in settled.reshape(len(settled), -1).tolist()]
        rec = StepRecord(int(step), _finite(float(sigma)), _rows(scale, self.max_batch) or [],
                         _rows(p, self.max_batch), None if predicted is None else [bool(v) for v in predicted],
                         settled_rows)
        self.steps.append(rec)
        return rec

    def series(self, key: str) -> torch.Tensor:
        """``"scale"`` or ``"p"`` as a tensor [steps, concepts, batch] (empty if nothing was recorded)."""
        if key not in ("scale", "p"):
            raise ValueError(f"key must be 'scale' or 'p', got {key!r}")
        rows = [getattr(r, key) for r in self.steps if getattr(r, key) is not None]
        return torch.tensor(rows, dtype=torch.float64) if rows else torch.zeros(0, self.concepts, 0)

    def step_indices(self) -> list[int]:
        return [r.step for r in self.steps]

    def predicted_series(self) -> torch.Tensor:
        """[steps, concepts] bool: which concepts were predicted at each step (all, without pruning)."""
        rows = [r.predicted if r.predicted is not None else [True] * self.concepts for r in self.steps]
        return torch.tensor(rows, dtype=torch.bool) if rows else torch.zeros(0, self.concepts, dtype=torch.bool)

    def concept_labels(self) -> list[str]:
        """A name per concept: the run's ``concept_labels`` parameter, else "concept k" (k from 1)."""
        labels = list(self.params.get("concept_labels") or [])
        return [labels[k] if k < len(labels) and labels[k] else f"concept {k + 1}" for k in range(self.concepts)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "dng-trace",
            "version": TRACE_FORMAT_VERSION,
            "method": self.method,
            "batch_size": self.batch_size,
            "concepts": self.concepts,
            "params": self.params,
            "total_steps": self.total_steps,
            "output_fingerprint": self.output_fingerprint,
            "model_calls": self.model_calls,
            "probe_calls": self.probe_calls,
            "state_updates": self.state_updates,
            "truncated": self.truncated,
            "notes": list(self.notes),
            "steps": [r.as_dict() for r in self.steps],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GuidanceTrace":
        if data.get("format") != "dng-trace" or data.get("version") != TRACE_FORMAT_VERSION:
            raise ValueError("not a dng-trace of version %d" % TRACE_FORMAT_VERSION)
        trace = cls(method=data["method"], batch_size=int(data["batch_size"]), concepts=int(data["concepts"]),
                    params=dict(data.get("params", {})), total_steps=data.get("total_steps"),
                    output_fingerprint=data.get("output_fingerprint"), truncated=bool(data.get("truncated")),
                    model_calls=int(data.get("model_calls", 0)), probe_calls=int(data.get("probe_calls", 0)),
                    state_updates=int(data.get("state_updates", 0)),
                    notes=[str(n) for n in data.get("notes", [])])
        trace.steps = [StepRecord(int(s["step"]), float(s["sigma"]), s["scale"], s.get("p"), s.get("predicted"),
                                  s.get("settled")) for s in data["steps"]]
        return trace

    @classmethod
    def from_json(cls, text: str) -> "GuidanceTrace":
        return cls.from_dict(json.loads(text))
