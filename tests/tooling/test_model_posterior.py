"""benchmarks/model_posterior.py's two measures on cases with known answers (no host)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.model_posterior import auc, min_collateral


def test_auc_is_the_mann_whitney_statistic():
    assert auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auc(torch.tensor([1.0]), torch.tensor([2.0])) == 0.0
    # of the 4 pairs one is ordered and one tied: (1 + 0.5) / 4
    assert auc(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.375)


def test_collateral_of_a_perfect_and_of_an_interleaved_ranking():
    # 10 images, 2 zeros ranked on top: rejecting exactly them leaves 0 % 0s and touches no other image
    score = torch.arange(10, 0, -1).double()
    zero = torch.zeros(10, dtype=torch.bool)
    zero[:2] = True
    assert min_collateral(score, zero) == (0.0, 9.0)
    # the second 0 ranked 5th: reaching it rejects the 3 other images above it (3 of 8)
    zero = torch.zeros(10, dtype=torch.bool)
    zero[[0, 4]] = True
    share, line = min_collateral(score, zero)
    assert share == pytest.approx(100 * 3 / 8) and line == 6.0
    # a bar that the unguided images already meet: nothing to reject
    assert min_collateral(score, zero, bar=20.0)[0] == 0.0


def test_the_line_arm_pushes_down_to_the_last_0_a_remover_must_reach():
    # benchmarks/hindsight_posterior.py's model:K:line arm, on the interleaved ranking above: the line is the
    # 5th image's score, so the 4 images on top and an unrelated image level with it get p_max, the rest p_min
    import math

    from benchmarks.hindsight_posterior import over_the_line

    removal = torch.log(torch.linspace(0.9, 0.05, 10).double())
    zero = torch.zeros(10, dtype=torch.bool)
    zero[[0, 4]] = True
    unrelated = torch.cat([removal[[4]], removal[[5]], removal[[0]]])
    out = over_the_line(unrelated, removal, zero, 1e-6, 0.8)
    assert out.tolist() == pytest.approx([math.log(0.8), math.log(1e-6), math.log(0.8)])
    assert over_the_line(removal, removal, zero, 1e-6, 0.8).exp().gt(0.5).tolist() == [True] * 5 + [False] * 5
