"""The DNG nodes' input defaults as node-input values: one place for the workflows, the benchmarks and the demo.

They are dng_core's DNGConfig() (the setting the defaults grid chose), under the nodes' input names.
"""

from __future__ import annotations

import sys
from typing import Any

from .host import REPO_ROOT


def dng_node_defaults() -> dict[str, Any]:
    """Every DNG node input at its default: lambda0, prior, temperature, offset, p_min, p_max, posterior_variance,
    posterior_form, prune_concepts (nodes/inputs.py: on)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from dng_core import DNGConfig

    c = DNGConfig()
    p = c.posterior
    return {"lambda0": c.lambda0, "prior": p.prior, "temperature": p.temperature, "offset": p.offset,
            "p_min": p.p_min, "p_max": p.p_max, "posterior_variance": p.variance.value,
            "posterior_form": p.form.value, "prune_concepts": True}
