"""The kernel estimator's over-reading of coarse ancestral steps (benchmarks/kernel_discretisation.py).

Known answers: kappa(r) = 2 r^2 ln(1/r) / (1 - r^2) is the ratio of the reverse SDE's information over a step
of ratio r to the expected kernel likelihood ratio of that step; on the exact 1-D toy the paper's kernel reads
the log-odds change ~2x its true size at 20 steps and ~1.3x at 50, and kernel x kappa reads it within 10 % at
both (measured: 1.96 / 1.27 and 1.06 / 1.02).
"""

from __future__ import annotations

import math

import pytest

from benchmarks.kernel_discretisation import kappa, run
from devtools.toy_mixture import TOY_1D


def test_kappa_known_values():
    r = 0.5
    assert kappa(r) == pytest.approx(2 * 0.25 * math.log(2) / 0.75)
    assert kappa(1 - 1e-6) == pytest.approx(1.0, abs=1e-5)  # a vanishing step reads what the process does
    assert kappa(0.72) < kappa(0.88) < 1.0  # the coarser the step, the more the kernel over-reads
    with pytest.raises(ValueError):
        kappa(1.0)


def test_kappa_takes_the_step_count_out_of_the_kernels_log_odds():
    r20, r50 = run(TOY_1D, 20), run(TOY_1D, 50)
    assert r20["kernel"]["slope"] > 1.6 and r50["kernel"]["slope"] > 1.15
    for r in (r20, r50):
        assert abs(r["kernel_kappa"]["slope"] - 1.0) < 0.1
        assert abs(r["path_exact_div"]["slope"] - 1.0) < 0.1
