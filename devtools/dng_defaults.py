"""The DNG nodes' input defaults as node-input values: one place for the workflows, the benchmarks and the demo.

They are dng_core's DNGConfig() (the setting the defaults grid chose), under the nodes' input names.
"""

from __future__ import annotations

import sys
from typing import Any

from .host import REPO_ROOT


def dng_node_defaults() -> dict[str, Any]:
    """Every DNG node input at its default: lambda0, prior, temperature, offset, p_min, p_max, posterior_variance,
    posterior_form, prune_concepts (nodes/inputs.py: on), evidence, deterministic_push, stochastic_push."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from dng_core import DNGConfig

    c = DNGConfig()
    p = c.posterior
    return {"lambda0": c.lambda0, "prior": p.prior, "temperature": p.temperature, "offset": p.offset,
            "p_min": p.p_min, "p_max": p.p_max, "posterior_variance": p.variance.value,
            "posterior_form": p.form.value, "prune_concepts": True, "evidence": p.evidence.value,
            "deterministic_push": c.deterministic_push.value, "stochastic_push": c.stochastic_push.value}


def chain_concepts(prompt: dict, conditionings: list[dict], labels: list[str], lambda0s: list[float] | None = None,
                   node: str = "10") -> dict:
    """Add a DNG Concept node per conditioning node (ids "40", "41", ... for the conditionings, "30", "31", ... for
    the concepts), chained into ``node``'s more_concepts. lambda0 -1 (default): the DNG node's."""
    lambda0s = lambda0s or [-1.0] * len(conditionings)
    previous = None
    for i, (cond, label, lam) in enumerate(zip(conditionings, labels, lambda0s)):
        prompt[str(40 + i)] = cond
        inputs = {"conditioning": [str(40 + i), 0], "lambda0": lam, "label": label}
        if previous is not None:
            inputs["concepts"] = [previous, 0]
        prompt[str(30 + i)] = {"class_type": "DNGConcept", "inputs": inputs}
        previous = str(30 + i)
    if previous is not None:
        prompt[node]["inputs"]["more_concepts"] = [previous, 0]
    return prompt
