"""Where the pack's nodes sit in the node library, and the schema options only newer hosts understand.

Categories follow ComfyUI's own tree since 0.33 (sampling nodes under ``model/sampling``, guiders under
``model/sampling/guiders``); the same strings are used on every host, so a workflow or a bookmark finds the
nodes in one place.

ComfyUI 0.33 added ``advanced=`` on inputs (the frontend folds those knobs into an "advanced" section) and
``search_aliases`` on schemas; the tested floor (0.3.75) rejects them as unknown keywords. Each option is detected
from the host's own V3 API by signature, never by version string, so a host that gains one gets it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from comfy_api.latest import io

CATEGORY = "model/sampling/dng"
BASELINES_CATEGORY = f"{CATEGORY}/baselines"
REFERENCE_CATEGORY = f"{CATEGORY}/reference model"
GUIDERS_CATEGORY = "model/sampling/guiders"

INPUT_TAKES_ADVANCED = "advanced" in inspect.signature(io.Float.Input.__init__).parameters
SCHEMA_FIELDS = frozenset(f.name for f in dataclasses.fields(io.Schema))
# schema fields the pack sets that a host may not have; dropped there (they only help people find the node)
_OPTIONAL_SCHEMA_FIELDS = frozenset({"search_aliases"})


def advanced() -> dict[str, Any]:
    """``**advanced()`` in an input's arguments marks it a secondary knob, where the host supports that."""
    return {"advanced": True} if INPUT_TAKES_ADVANCED else {}


def schema(**fields: Any) -> io.Schema:
    """``io.Schema(**fields)`` without the optional fields the running host does not know."""
    return io.Schema(**{k: v for k, v in fields.items()
                        if k not in _OPTIONAL_SCHEMA_FIELDS or k in SCHEMA_FIELDS})
