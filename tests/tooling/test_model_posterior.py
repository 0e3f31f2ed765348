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
