"""benchmarks/push_transmission.py's prompts and prediction on cases with known answers (no host)."""

from __future__ import annotations

import math

import pytest

from benchmarks.common import split_at_steps
from benchmarks.push_transmission import STEPS, predicted_ratio, window_prompt
from dng_core.transmission import ode_to_sde_gain_ratio


def _segments(p: dict) -> list[dict]:
    """The KSamplerAdvanced segments of a split prompt, first to last, following their latent links."""
    seg, chain = p["5"]["inputs"], []
    while True:
        chain.append(seg)
        link = seg["latent_image"]
        if p[link[0]]["class_type"] != "KSamplerAdvanced":
            return chain[::-1]
        seg = p[link[0]]["inputs"]


def test_split_at_steps_chains_segments_that_cover_every_step_once():
    p = split_at_steps({}, ks=[4, 8], models=[["a", 0], ["b", 0], ["c", 0]], negatives=[["n", 0]] * 3,
                       positive=["8", 0], latent=["4", 0], seed=7, steps=20, cfg=2.5, sampler="euler_ancestral")
    segs = _segments({**p, "4": {"class_type": "EmptyLatent"}})
    assert [(s["start_at_step"], s["end_at_step"]) for s in segs] == [(0, 4), (4, 8), (8, 10000)]
    assert [s["model"][0] for s in segs] == ["a", "b", "c"]
    # only the first adds the initial noise; each later segment reseeds its ancestral noise
    assert [s["add_noise"] for s in segs] == ["enable", "disable", "disable"]
    assert [s["noise_seed"] for s in segs] == [7, 1007, 2007]
    assert [s["return_with_leftover_noise"] for s in segs] == ["enable", "enable", "disable"]
    with pytest.raises(ValueError):
        split_at_steps({}, ks=[8, 4], models=[["a", 0]] * 3, negatives=[["n", 0]] * 3, positive=["8", 0],
                       latent=["4", 0], seed=0, steps=20, cfg=1.0, sampler="euler")


@pytest.mark.parametrize("window", [(0, 4), (4, 8), (16, 20)])
def test_window_prompt_pushes_on_the_window_only(window):
    pushed = window_prompt("digits8", "euler", window, push=True, n=2, seed=0)
    plain = window_prompt("digits8", "euler", window, push=False, n=2, seed=0)
    segs, ref = _segments(pushed), _segments(plain)
    assert [(s["start_at_step"], min(s["end_at_step"], STEPS)) for s in segs] == \
        [(s["start_at_step"], min(s["end_at_step"], STEPS)) for s in ref]
    np_segments = [(s["start_at_step"], min(s["end_at_step"], STEPS)) for s in segs
                   if pushed[s["model"][0]]["class_type"] == "DNGNegativePrompting"]
    assert np_segments == [window]
    assert all(plain[s["model"][0]]["class_type"] == "DNGReferenceModelLoader" for s in ref)


def test_predicted_ratio_of_one_step_is_the_gain_ratio_at_its_geometric_mid_sigma():
    sigmas = [16.0, 4.0, 1.0, 0.0]
    assert predicted_ratio(sigmas, (1, 2)) == pytest.approx(ode_to_sde_gain_ratio(2.0, 1.0))
    # over two steps it lies between the two steps' ratios
    both = predicted_ratio(sigmas, (0, 2))
    assert ode_to_sde_gain_ratio(8.0, 1.0) < both < ode_to_sde_gain_ratio(2.0, 1.0)
    assert math.isfinite(predicted_ratio(sigmas, (2, 3)))


def test_the_trial_shape_interpolates_in_log_sigma_and_is_flat_beyond_the_windows():
    from benchmarks.ancestral_push_shape import shape_at

    points = [(math.log(1.0), 1.0), (math.log(4.0), 0.5)]
    assert shape_at(points, 2.0) == pytest.approx(0.75)  # half-way in ln sigma
    assert shape_at(points, 0.1) == 1.0 and shape_at(points, 100.0) == 0.5
