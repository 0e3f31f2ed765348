"""The shipped workflows use the DNG node defaults, exactly as the frontend saved them.

The frontend snaps a widget's value to a multiple of its step, so a default that is not one (the prior 3e-4 at a
step of 0.001 became the minimum, 1e-6) would silently ship another setting than the one the grid chose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dng_core import DNGConfig

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
DNG_NODES = {"DynamicNegativeGuidance", "DNGSampler", "DNGGuider"}


def _defaults() -> list:
    c = DNGConfig()
    p = c.posterior
    # the DNG inputs, then prune_concepts (on by default; more_concepts is a link, not a widget), then evidence,
    # deterministic_push and stochastic_push
    return [c.lambda0, p.prior, p.temperature, p.offset, p.p_min, p.p_max, p.variance.value, p.form.value, True,
            p.evidence.value, c.deterministic_push.value, c.stochastic_push.value]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflows_carry_the_node_defaults(path):
    nodes = [n for n in json.loads(path.read_text())["nodes"] if n["type"] in DNG_NODES]
    expected = _defaults()
    for node in nodes:
        values = node["widgets_values"]
        tail = values[-len(expected):]
        assert [pytest.approx(v) if isinstance(v, float) else v for v in expected] == tail, (
            f"{path.name} node {node['id']} ({node['type']}): DNG inputs {tail}, node defaults {expected}")


def test_the_workflows_have_dng_nodes_to_check():
    assert sum(n["type"] in DNG_NODES for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]) >= 5
