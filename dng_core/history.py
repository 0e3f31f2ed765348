"""TraceHistory: the recent runs of one patched model, found again by the latent they produced.

ComfyUI caches node outputs across prompts, and two samplers may share one patched model, so a trace handle
sees many runs. A plot node receives the sampler's LATENT; the run whose output fingerprint matches it is the
run that produced that latent. A later pass that samples on from that latent (a split schedule) finds the run's
``RunContinuation`` the same way.

The history is bounded; it remembers the fingerprints of the runs it dropped, so "that run was dropped" can be
told apart from "no run made this latent".
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import torch

from .run import RunContinuation, tensor_fingerprint
from .trace import GuidanceTrace

__all__ = ["TraceHistory", "TraceLookup"]


@dataclass(frozen=True)
class TraceLookup:
    """The result of looking a latent up: the run that made it, or why there is none.

    ``status``: "found"; "evicted" (the run was recorded, then dropped: the history keeps ``max_runs``);
    "unknown" (no run of this history made exactly this latent: it was changed after sampling, or it comes
    from another sampler); "empty" (no run recorded yet)."""

    status: str
    trace: GuidanceTrace | None


class TraceHistory:
    """A bounded, thread-safe list of finished runs' traces (oldest dropped first)."""

    def __init__(self, max_runs: int = 32, max_evicted: int = 4096) -> None:
        if max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {max_runs}")
        self.max_runs = max_runs
        self._runs: deque[tuple[GuidanceTrace, RunContinuation | None]] = deque()
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._max_evicted = max_evicted
        self._lock = threading.Lock()

    def add(self, trace: GuidanceTrace, continuation: RunContinuation | None = None) -> None:
        with self._lock:
            self._runs.append((trace, continuation))
            while len(self._runs) > self.max_runs:
                old, _ = self._runs.popleft()
                if old.output_fingerprint:
                    self._evicted[old.output_fingerprint] = None
                    while len(self._evicted) > self._max_evicted:
                        self._evicted.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def latest(self) -> GuidanceTrace | None:
        with self._lock:
            return self._runs[-1][0] if self._runs else None

    def all(self) -> list[GuidanceTrace]:
        with self._lock:
            return [t for t, _ in self._runs]

    def find(self, latent: torch.Tensor) -> GuidanceTrace | None:
        """The newest run whose output is exactly ``latent``, or None."""
        return self.lookup(latent).trace

    def lookup(self, latent: torch.Tensor) -> TraceLookup:
        """The newest run whose output is exactly ``latent``, or why there is none (TraceLookup.status)."""
        key = tensor_fingerprint(latent)
        with self._lock:
            for trace, _ in reversed(self._runs):
                if trace.output_fingerprint == key:
                    return TraceLookup("found", trace)
            if key in self._evicted:
                return TraceLookup("evicted", None)
            return TraceLookup("unknown" if self._runs else "empty", None)

    def continuation_of(self, fingerprint: str) -> RunContinuation | None:
        """The continuation of the newest run whose output has this fingerprint (None if none or not kept)."""
        with self._lock:
            for trace, continuation in reversed(self._runs):
                if trace.output_fingerprint == fingerprint:
                    return continuation
        return None
