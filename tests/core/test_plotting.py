"""dng_core.plotting: the trace as an image, the notices written on it, and a clear error without matplotlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dng_core import GuidanceTrace, PlottingUnavailable, plot_message, plot_trace


def _trace() -> GuidanceTrace:
    t = GuidanceTrace("dng", 2, total_steps=3)
    for i in range(3):
        t.record(i, 10.0 - i, torch.tensor([[0.1 * i, 0.2]]), torch.tensor([[0.01 * i, 0.02]]))
    return t


def _red(px: np.ndarray) -> int:
    return int(((px[..., 0] > 120) & (px[..., 1] < 60) & (px[..., 2] < 60)).sum())


def test_notices_are_written_in_red_on_the_plot():
    plain = plot_trace(_trace(), width=400, height=300)
    assert plain.shape == (300, 400, 3) and plain.dtype == np.uint8 and _red(plain) == 0
    noticed = plot_trace(_trace(), width=400, height=300, notice="showing the most recent run instead")
    assert _red(noticed) > 50
    trace = _trace()
    trace.notes.append("the guidance never ran")
    assert _red(plot_trace(trace, width=400, height=300)) > 50
    assert _red(plot_message("nothing to plot", 400, 300)) > 20


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # `import matplotlib.figure` now fails
    with pytest.raises(PlottingUnavailable, match="requirements.txt"):
        plot_trace(_trace())


def test_the_steps_above_the_late_push_cut_are_shaded():
    """A trace with the late push's cut (params push_cut_model_sigma) shades the scale panel's steps above it
    (sigma 10 and 9 of 10, 9, 8, with the cut at 8.5); without the cut, or with every step below it, nothing is."""
    from dng_core.plotting import PUSH_CUT_SHADE

    rgb = np.array([int(PUSH_CUT_SHADE[i:i + 2], 16) for i in (1, 3, 5)])

    def shaded(trace) -> int:
        px = plot_trace(trace, width=400, height=300).astype(int)
        return int((np.abs(px - rgb).sum(-1) <= 6).sum())

    assert shaded(_trace()) < 50  # a few anti-aliased pixels of other colours come close
    cut = _trace()
    cut.params["push_cut_model_sigma"] = 8.5
    assert shaded(cut) > 2000
    below = _trace()
    below.params["push_cut_model_sigma"] = 20.0
    assert shaded(below) < 50
