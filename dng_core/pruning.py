"""Adaptive pruning of negative concepts: stop predicting a concept once its posterior has settled at the floor.

With K negative concepts DNG predicts [positive, empty, concept 1..K] at every step: K + 2 predictions against
plain CFG's 2, whether any concept is present or not. But a concept whose posterior has settled far below its
prior contributes lambda = lambda0 p / (1 - p) ~ lambda0 p, a vanishing fraction of its guidance, so predicting it
buys nothing. ``ConceptPruner`` decides, per concept and per image, when that is so.

Settled. An (image, concept) pair is settled when its posterior has stayed at or below ``settle_fraction`` x the
prior for ``settle_steps`` consecutive steps in which its evidence was observed. Both are read from the
posterior itself: at the defaults (fraction 0.1, prior 3e-4) a settled pair's lambda is below lambda0 x 3e-5
(0.002 at lambda0 75), against lambda0 x prior / (1 - prior) = 0.023 at the start; and two observed steps
rule out a single low step on the way up.

Pruned. A concept is predicted at a step while any image of the batch still wants it; a settled pair stops
wanting it. A pair whose concept is still predicted (another image wants it) keeps receiving evidence and its
guidance: pruning changes nothing for it, and if its posterior rises above the threshold again it wants the
concept again. A pair whose concept is no longer predicted has its posterior frozen and its guidance off (the
concept's prediction is not there to guide with).

Re-probing. Every ``reprobe_every`` steps after a pair was pruned (0: never) it wants its concept again; one
observed step still at or below the threshold prunes it again, a rise above it keeps it. The posterior's evidence for a
concept arrives where the image's content is decided, at high and middle noise; a concept that stayed at the
floor through that phase is not brought back by the fine-detail steps, and a re-probe costs at least two
steps of the concept's predictions (the kernel estimator's evidence needs the predictions at both ends of a
step). The default re-probes every 8 steps: twice in a 20-step run, while a run spends most of its steps below
the sigma where the posterior moves.

What pruning cannot buy. It saves only the steps after a concept settles, and the posterior cannot settle before
its evidence separates images that would show the concept from images that would not. Measured on the digits
model (benchmarks/pruning_horizon.py, 20 steps): a threshold that pruned 90 % of an absent concept's images at
step 3 would also prune 89 % of the images that would show it (euler_ancestral; AUC 0.55), and it prunes under
3 % of them only from step 12 (euler_ancestral) / 8 (euler). Four absent concepts therefore cost at least about
2.2x / 2.8x plain CFG with any threshold on the posterior, against 3x / 5.5x without pruning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PruningPolicy", "ConceptPruner"]


@dataclass(frozen=True)
class PruningPolicy:
    """When to stop predicting a negative concept for an image (see the module docstring)."""

    enabled: bool = True
    settle_fraction: float = 0.1
    settle_steps: int = 2
    reprobe_every: int = 8

    def __post_init__(self) -> None:
        if not (0.0 < self.settle_fraction < 1.0):
            raise ValueError(f"settle_fraction must be in (0, 1), got {self.settle_fraction!r}")
        if not (isinstance(self.settle_steps, int) and self.settle_steps >= 1):
            raise ValueError(f"settle_steps must be an integer >= 1, got {self.settle_steps!r}")
        if not (isinstance(self.reprobe_every, int) and self.reprobe_every >= 0):
            raise ValueError(f"reprobe_every must be an integer >= 0 (0: never), got {self.reprobe_every!r}")

    def as_dict(self) -> dict:
        return {"pruning": self.enabled, "settle_fraction": self.settle_fraction,
                "settle_steps": self.settle_steps, "reprobe_every": self.reprobe_every}


class ConceptPruner:
    """Per (concept, image) bookkeeping of ``PruningPolicy``; all state is [K, B]."""

    def __init__(self, policy: PruningPolicy, concepts: int, batch: int, prior: float,
                 device: torch.device | str = "cpu") -> None:
        self.policy = policy
        self.threshold = policy.settle_fraction * prior
        self.wants = torch.ones(concepts, batch, dtype=torch.bool, device=device)
        self._low_steps = torch.zeros(concepts, batch, dtype=torch.long, device=device)
        self._pruned_at = torch.full((concepts, batch), -1, dtype=torch.long, device=device)
        self.prunings = 0  # times a pair was pruned (re-prunings after a re-probe included)
        self._answered: torch.Tensor | None = None  # ``wants`` when ``predicted`` last answered

    def predicted(self) -> list[bool]:
        """Whether each concept is to be predicted at the next step: while any image wants it."""
        self._answered = self.wants.clone()
        if not self.policy.enabled:
            return [True] * self.wants.shape[0]
        return self.wants.any(dim=1).tolist()

    def settled_when_asked(self) -> torch.Tensor:
        """[K, B]: the pairs that did not want their concept when ``predicted`` last answered (``wants`` now if
        it has not answered since the last call): what decided that call's predictions, even where ``observe``
        has changed ``wants`` since. Each answer is read once."""
        wants = self._answered if self._answered is not None else self.wants
        self._answered = None
        return ~wants

    def observe(self, step: int, p: torch.Tensor, observed: torch.Tensor) -> None:
        """After step ``step``: p [K, B], the posterior it leaves; observed [K]: whether each concept's evidence
        was folded in (it was predicted at both ends of the transition)."""
        if not self.policy.enabled:
            return
        seen = observed.to(self.wants.device).reshape(-1, 1).expand_as(self.wants)
        low = p.to(self.wants.device) <= self.threshold
        self._low_steps = torch.where(seen & low, self._low_steps + 1, torch.where(seen, 0, self._low_steps))
        # a pair whose concept others kept predicting and whose posterior rose again wants it back
        self.wants |= seen & ~low
        settle = self.wants & (self._low_steps >= self.policy.settle_steps)
        self.prunings += int(settle.sum())
        self.wants &= ~settle
        self._pruned_at = torch.where(settle, step, self._pruned_at)
        if self.policy.reprobe_every:
            due = ~self.wants & (self._pruned_at >= 0) & (step - self._pruned_at >= self.policy.reprobe_every)
            self.wants |= due
            # one observed step still at the floor prunes it again (that takes the concept's predictions at two
            # consecutive steps); a rise keeps it
            self._low_steps = torch.where(due, self.policy.settle_steps - 1, self._low_steps)
