"""The path identity behind docs/step_invariance.md, on the exact 1-D toy (benchmarks/path_estimator_toy.py).

Integrating d log p(c- | x, sigma) along a deterministic euler path, with the toy's exact divergences, follows the
exact posterior (an identity up to the trapezoid rule's error, ~1/N); the paper's kernel estimator does not on
that path (it never moves most samples of the removed mode off the prior's side).
"""

from __future__ import annotations

from benchmarks.path_estimator_toy import run
from devtools.toy_mixture import TOY_1D


def test_the_path_identity_follows_the_exact_posterior_on_a_deterministic_path():
    r20, r80 = run(TOY_1D, "euler", 20), run(TOY_1D, "euler", 80)
    assert r20["path_exact_div"]["mean_abs_err"] < 1e-3
    assert r80["path_exact_div"]["mean_abs_err"] < r20["path_exact_div"]["mean_abs_err"] / 4  # ~1/N
    assert r20["path_exact_div"]["side_agreement"] > 0.999
    # what deterministic samplers get today: the kernel estimator misses the removed mode
    assert r20["kernel"]["side_agreement"] < 0.7 and r20["kernel"]["mean_p"] < 0.5 * r20["exact_mean_p"]
