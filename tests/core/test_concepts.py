"""Several negative concepts in one DNG run: per-concept lambda0 and posteriors, and adaptive pruning
(dng_core.pruning) with its bookkeeping, on a deterministic toy model."""

from __future__ import annotations

import json

import pytest
import torch

from dng_core import (ConceptPruner, DNGConfig, DNGRun, GuidanceTrace, PosteriorConfig, PosteriorVariance,
                      PruningPolicy)

SCHEDULE = [14.6, 9.0, 6.0, 4.0, 2.6, 1.7, 1.1, 0.7, 0.45, 0.28, 0.17, 0.1, 0.0]
BATCH = 3
SHAPE = (BATCH, 2, 6, 6)


def config(variance=PosteriorVariance.KERNEL, lambda0=4.0) -> DNGConfig:
    # The sampled evidence: this toy's D_u only shrinks x and knows none of the targets, so the unguided cfg-3 step
    # towards the positive reads as evidence for any concept whose random target leans towards the positive's
    # (concept 3 in image 1 rises to p_max with the uncorrected evidence); the bookkeeping is what is tested here.
    return DNGConfig(lambda0=lambda0, posterior=PosteriorConfig(prior=0.01, temperature=0.9, offset=0.7, p_min=1e-6,
                                                                p_max=0.8, variance=variance, evidence="sampled"))


class Toy:
    """D_u shrinks x towards 0; the positive prompt and concept k pull it towards their own targets. Concept 0
    shares the positive's target for image 1 only (present there), the others are unrelated everywhere."""

    def __init__(self, concepts: int):
        g = torch.Generator().manual_seed(3)
        self.pos = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        self.targets = [torch.randn(SHAPE, generator=g, dtype=torch.float64) * 2 for _ in range(concepts)]
        self.targets[0][1] = self.pos[1]

    def predict(self, x: torch.Tensor, sigma: float):
        k = 1.0 / (1.0 + sigma ** 2)
        return k * x, k * x + (1 - k) * self.pos, [k * x + (1 - k) * t for t in self.targets]


def sample(run: DNGRun, toy: Toy, which: list[int] | None = None, cfg: float = 3.0, seed: int = 0):
    """Euler over SCHEDULE; predicts only the concepts the run asks for (``which``: the toy's concepts the run's
    concepts are, in order). Returns the final x and the number of concept predictions made."""
    which = list(range(len(toy.targets))) if which is None else which
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * SCHEDULE[0]
    made = 0
    for i in range(len(SCHEDULE) - 1):
        s = SCHEDULE[i]
        wanted = run.concepts_to_predict()
        d_u, d_pos, d_all = toy.predict(x, s)
        d_negs = [d_all[c] if w else None for c, w in zip(which, wanted)]
        made += sum(wanted)

        def probe(xp, wanted=wanted):
            pu, _, pn = toy.predict(xp, s)
            return pu, [pn[c] if w else None for c, w in zip(which, wanted)]
        den = run.guide(x, torch.full((BATCH,), s, dtype=torch.float64), d_u, d_pos, d_negs, cfg, probe)
        x = x + (x - den) / s * (SCHEDULE[i + 1] - s)
    run.finish(x)
    return x, made


# ---- the policy and its bookkeeping ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"settle_fraction": 0.0}, {"settle_fraction": 1.0}, {"settle_steps": 0},
                                    {"reprobe_every": -1}, {"settle_steps": 1.5}])
def test_policy_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        PruningPolicy(**kwargs)


def test_pruner_bookkeeping_per_concept_and_image():
    pr = ConceptPruner(PruningPolicy(settle_fraction=0.1, settle_steps=2, reprobe_every=3), concepts=2, batch=2,
                       prior=0.01)
    low, high = 1e-4, 0.2  # below / above the threshold 0.1 x 0.01
    seen = torch.tensor([True, True])
    pr.observe(1, torch.tensor([[low, high], [low, low]]), seen)
    assert pr.predicted() == [True, True] and pr.wants.all()  # one low step is not settled
    pr.observe(2, torch.tensor([[low, high], [low, low]]), seen)
    # concept 0: image 0 settled, image 1 (present) keeps it, so it is still predicted; concept 1: both settled
    assert pr.wants.tolist() == [[False, True], [False, False]]
    assert pr.predicted() == [True, False] and pr.prunings == 3
    # concept 0 is still predicted for image 1, so image 0 still sees its evidence: a rise brings it back
    pr.observe(3, torch.tensor([[high, high], [low, low]]), torch.tensor([True, False]))
    assert pr.wants.tolist() == [[True, True], [False, False]]
    # concept 1 was not predicted: nothing observed, it stays pruned until its re-probe (3 steps after step 2)
    pr.observe(4, torch.tensor([[high, high], [low, low]]), torch.tensor([True, False]))
    assert pr.predicted() == [True, False]
    pr.observe(5, torch.tensor([[high, high], [low, low]]), torch.tensor([True, False]))
    assert pr.predicted() == [True, True], "re-probed 3 steps after it was pruned"
    pr.observe(6, torch.tensor([[high, high], [low, high]]), torch.tensor([True, False]))  # not yet observed
    assert pr.predicted() == [True, True]
    pr.observe(7, torch.tensor([[high, high], [low, high]]), torch.tensor([True, True]))
    # one observed step decides a re-probe: image 0 still low -> pruned again; image 1 rose -> keeps it
    assert pr.wants[1].tolist() == [False, True] and pr.predicted() == [True, True]


def test_settled_when_asked_is_what_decided_the_last_answer():
    # the trace's ``settled`` must be what the predictions were decided on, not ``wants`` after the step's own
    # first call has folded in more evidence (a re-probe or a rise changes it in between)
    pr = ConceptPruner(PruningPolicy(settle_fraction=0.1, settle_steps=1, reprobe_every=0), concepts=1, batch=2,
                       prior=0.01)
    pr.observe(1, torch.tensor([[1e-4, 0.2]]), torch.tensor([True]))
    assert pr.predicted() == [True] and pr.wants.tolist() == [[False, True]]
    pr.observe(2, torch.tensor([[0.2, 0.2]]), torch.tensor([True]))  # image 0 rose: it wants the concept again
    assert pr.wants.tolist() == [[True, True]]
    assert pr.settled_when_asked().tolist() == [[True, False]], "the answer was decided with image 0 settled"
    assert pr.settled_when_asked().tolist() == [[False, False]], "each answer is read once; then wants now"


def test_disabled_policy_predicts_everything():
    pr = ConceptPruner(PruningPolicy(enabled=False), concepts=3, batch=1, prior=0.01)
    pr.observe(1, torch.full((3, 1), 1e-9), torch.tensor([True] * 3))
    pr.observe(2, torch.full((3, 1), 1e-9), torch.tensor([True] * 3))
    assert pr.predicted() == [True, True, True]


# ---- per-concept posteriors --------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", [PosteriorVariance.KERNEL, PosteriorVariance.PATH])
def test_concepts_at_lambda0_zero_leave_the_single_concept_run(variance):
    """K concepts of which all but one have lambda0 = 0 give the single-concept run of that one (batch 3)."""
    toy = Toy(3)
    multi = DNGRun(config(variance), SCHEDULE, concepts=3, lambda0s=[0.0, 4.0, 0.0])
    single = DNGRun(config(variance), SCHEDULE, concepts=1)
    x_multi, _ = sample(multi, toy)
    x_single, _ = sample(single, toy, which=[1])
    torch.testing.assert_close(x_multi, x_single, rtol=0, atol=1e-12)
    p_multi, p_single = multi.trace.series("p"), single.trace.series("p")
    torch.testing.assert_close(p_multi[:, 1], p_single[:, 0], rtol=0, atol=0)
    assert multi.trace.series("scale")[:, 0].abs().max() == 0 and multi.trace.series("scale")[:, 2].abs().max() == 0
    # each concept and image has its own posterior
    assert not torch.allclose(p_multi[:, 0], p_multi[:, 2])
    assert not torch.allclose(p_multi[:, 1, 0], p_multi[:, 1, 1])
    assert multi.trace.params["lambda0s"] == [0.0, 4.0, 0.0]


def test_lambda0s_must_match_the_concepts():
    with pytest.raises(ValueError, match="2 values for 3 concepts"):
        DNGRun(config(), SCHEDULE, concepts=3, lambda0s=[1.0, 2.0])
    with pytest.raises(ValueError, match="lambda0 of concept 2"):
        DNGRun(config(), SCHEDULE, concepts=2, lambda0s=[1.0, -2.0])


# ---- pruning in a run --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", [PosteriorVariance.KERNEL, PosteriorVariance.PATH])
def test_pruning_stops_predicting_settled_concepts(variance):
    toy = Toy(4)
    # lambda0 1: the guidance (at most 4) does not overpower cfg 3 towards concept 0's target in image 1, so the
    # concept stays present there all the way
    full = DNGRun(config(variance, lambda0=1.0), SCHEDULE, concepts=4)
    pruned = DNGRun(config(variance, lambda0=1.0), SCHEDULE, concepts=4, pruning=PruningPolicy(reprobe_every=0))
    x_full, made_full = sample(full, toy)
    x_pruned, made_pruned = sample(pruned, toy)
    steps = len(SCHEDULE) - 1
    assert made_full == 4 * steps
    predicted = pruned.trace.predicted_series()
    print(f"{variance.value}: predictions {made_pruned} of {made_full}; predicted per step\n{predicted.int().T}")
    assert made_pruned == int(predicted.sum()) < made_full
    assert predicted[:, 0].all(), "concept 0 is present in image 1: it must never be pruned"
    assert not predicted[-1, 1:].any(), "the unrelated concepts should have been pruned by the end"
    # until the first pruned step, the two runs are the same computation
    first = int((~predicted.all(dim=1)).nonzero()[0])
    torch.testing.assert_close(pruned.trace.series("scale")[:first], full.trace.series("scale")[:first])
    # after it, only the pruned concepts' vanishing guidance is missing
    change = (x_pruned - x_full).abs().max() / (x_full.abs().max())
    assert change < 1e-3, change
    assert pruned.trace.state_updates == steps
    # a pruned concept's guidance is off and its posterior frozen
    scale, p = pruned.trace.series("scale"), pruned.trace.series("p")
    for i in range(steps):
        for k in range(4):
            if not predicted[i, k]:
                assert scale[i, k].abs().max() == 0
                if i > 0 and not predicted[i - 1, k]:
                    torch.testing.assert_close(p[i, k], p[i - 1, k])
    assert pruned.trace.params["pruning"] is True


def test_reprobing_predicts_a_pruned_concept_again():
    toy = Toy(2)
    run = DNGRun(config(), SCHEDULE, concepts=2, pruning=PruningPolicy(reprobe_every=3))
    sample(run, toy)
    col = run.trace.predicted_series()[:, 1].tolist()
    off = col.index(False)
    assert True in col[off:], f"concept 1 was never re-probed: {col}"


def test_trace_keeps_pruning_marks_through_json():
    toy = Toy(2)
    run = DNGRun(config(), SCHEDULE, concepts=2, pruning=PruningPolicy(), concept_labels=["watermark", "text"])
    sample(run, toy)
    back = GuidanceTrace.from_json(json.dumps(run.trace.to_dict()))
    assert back.predicted_series().tolist() == run.trace.predicted_series().tolist()
    assert back.steps[-1].settled == run.trace.steps[-1].settled and back.steps[-1].settled is not None
    assert back.concept_labels() == ["watermark", "text"]
    assert GuidanceTrace("dng", 1, 3).concept_labels() == ["concept 1", "concept 2", "concept 3"]


def test_plot_labels_concepts_and_marks_pruned_steps():
    from dng_core import plot_trace

    toy = Toy(2)
    run = DNGRun(config(lambda0=1.0), SCHEDULE, concepts=2, pruning=PruningPolicy(reprobe_every=0),
                 concept_labels=["negative prompt", "watermark"])
    sample(run, toy)
    assert not run.trace.predicted_series().all()
    marked = plot_trace(run.trace, width=400, height=300)
    # the same trace without the pruning marks draws fewer grey pixels
    plain = GuidanceTrace.from_dict({**run.trace.to_dict(), "steps": [
        {k: v for k, v in s.as_dict().items() if k not in ("predicted", "settled")} for s in run.trace.steps]})
    unmarked = plot_trace(plain, width=400, height=300)

    def grey(img):
        return int(((abs(img[..., 0].astype(int) - 0x88) < 8) & (abs(img[..., 1].astype(int) - 0x88) < 8)
                    & (abs(img[..., 2].astype(int) - 0x88) < 8)).sum())
    assert grey(marked) > grey(unmarked) + 20
