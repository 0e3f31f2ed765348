"""TraceHistory: the recent runs of one patched model, found again by the latent they produced.

ComfyUI caches node outputs across prompts, and two samplers may share one patched model, so a trace handle
sees many runs. A plot node receives the sampler's LATENT; the run whose output fingerprint matches it is the
run that produced that latent.
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from .run import tensor_fingerprint
from .trace import GuidanceTrace

__all__ = ["TraceHistory"]


class TraceHistory:
    """A bounded, thread-safe list of finished runs' traces (oldest dropped first)."""

    def __init__(self, max_runs: int = 32) -> None:
        if max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {max_runs}")
        self._runs: deque[GuidanceTrace] = deque(maxlen=max_runs)
        self._lock = threading.Lock()

    def add(self, trace: GuidanceTrace) -> None:
        with self._lock:
            self._runs.append(trace)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def latest(self) -> GuidanceTrace | None:
        with self._lock:
            return self._runs[-1] if self._runs else None

    def all(self) -> list[GuidanceTrace]:
        with self._lock:
            return list(self._runs)

    def find(self, latent: torch.Tensor) -> GuidanceTrace | None:
        """The newest run whose output is exactly ``latent``, or None."""
        key = tensor_fingerprint(latent)
        with self._lock:
            for trace in reversed(self._runs):
                if trace.output_fingerprint == key:
                    return trace
        return None
