"""benchmarks/defaults_grid.py without the host: the points, their sharding and the per-cell verdict."""

from __future__ import annotations

import math

import pytest

from benchmarks.defaults_grid import CELLS, cell_verdict, points, shard, wilson_upper


def test_every_required_cell_and_a_disjoint_cover_by_shards():
    assert len(CELLS) == 10 and ("mnist16", "euler", 20) in CELLS and ("digits8", "dpmpp_2m_sde", 50) in CELLS
    pts = points([0, 1])
    assert len({p.key for p in pts}) == len(pts)
    parts = [shard(pts, f"{i}/3") for i in range(3)]
    assert sorted(p.key for part in parts for p in part) == sorted(p.key for p in pts)
    with pytest.raises(ValueError):
        shard(pts, "3/3")


def test_wilson_upper_bound():
    # 0 of 1000: the rule of three gives ~0.3 %; Wilson's upper end is 0.38 %
    assert wilson_upper(0, 1000) == pytest.approx(0.383, abs=0.002)
    assert wilson_upper(10, 1000) == pytest.approx(1.83, abs=0.01)  # 1 % observed: upper ~1.8 %
    assert math.isnan(wilson_upper(0, 0))


def _row(case, method, strength, forbidden=0.0, upper=0.5, kl=0.1, fd=1.0, change=None):
    return {"case": case, "method": method, "strength": strength, "forbidden_pct": forbidden,
            "forbidden_upper95": upper, "kl": kl, "fd_clf": fd, "mean_abs_change": change}


def test_cell_verdict_on_a_known_case():
    rows = [
        _row("removal", "dng", 2.0, forbidden=2.0, upper=3.0, kl=0.01, fd=1.0),
        _row("removal", "dng", 5.0, forbidden=0.8, upper=1.4, kl=0.02, fd=2.0),  # the weakest safe point
        _row("removal", "np", 0.3, forbidden=1.6, kl=0.05, fd=5.0),
        _row("removal", "np", 0.5, forbidden=0.0, kl=0.09, fd=9.0),  # at 0.8 %: KL 0.07, FD 7 (interpolated)
        _row("removal", "sld", 0.5, forbidden=1.2, kl=0.03, fd=3.0),
        _row("removal", "sld", 1.0, forbidden=0.4, kl=0.05, fd=5.0),  # at 0.8 %: KL 0.04, FD 4
        _row("unrelated", "dng", 5.0, change=0.005),
        _row("unrelated", "np", 0.5, change=0.1),
    ]
    v = cell_verdict(rows)
    assert v["safety_met"] and v["lambda0"] == 5.0
    assert v["kl_ratio_np"] == pytest.approx(0.02 / 0.07) and v["kl_vs_np_met"]
    assert v["fd_clf_ratio_sld"] == pytest.approx(2.0 / 4.0) and v["fd_clf_vs_sld_met"]
    assert v["np_matched_scale"] == 0.5 and v["change_ratio"] == pytest.approx(0.05) and v["deactivation_met"]
    assert v["all_met"]
    # the upper bound decides safety too: 0.8 % observed with an upper bound of 1.6 % is not safe enough
    rows[1] = _row("removal", "dng", 5.0, forbidden=0.8, upper=1.6)
    assert not cell_verdict(rows)["safety_met"]


def test_the_unrelated_ratio_carries_a_standard_error_only_where_both_rows_have_one():
    from benchmarks.defaults_grid import ratio_se

    # a = 1 +- 0.1, b = 2 +- 0.2: a / b = 0.5 with relative error sqrt(0.1^2 + 0.1^2)
    assert ratio_se(1.0, 0.1, 2.0, 0.2) == pytest.approx(0.5 * math.sqrt(0.02))
    assert ratio_se(1.0, 0.1, 2.0, 0.0) == pytest.approx(0.05)  # an exact denominator leaves a's error alone
    assert ratio_se(1.0, None, 2.0, 0.2) is None and ratio_se(1.0, 0.1, 2.0, None) is None
    rows = [_row("removal", "dng", 5.0, forbidden=0.8, upper=1.4), _row("removal", "np", 0.5, forbidden=0.0),
            {**_row("unrelated", "dng", 5.0, change=0.005), "change_se": 0.001},
            _row("unrelated", "np", 0.5, change=0.1)]
    assert cell_verdict(rows)["change_ratio_se"] is None  # NP's row predates change_se
    rows[3]["change_se"] = 0.002
    assert cell_verdict(rows)["change_ratio_se"] == pytest.approx(0.05 * math.sqrt(0.2 ** 2 + 0.02 ** 2))


def test_the_quality_ratios_carry_the_interpolated_baselines_error():
    """KL / NP at DNG's forbidden %: NP's KL interpolated between its two points either side, with the error of a
    weighted sum of two independent points, then the ratio's first-order error."""
    from benchmarks.common import crossing, interpolate_se_at

    sweep = [{"scale": 0.3, "forbidden_pct": 1.6, "kl": 0.05, "kl_se": 0.01},
             {"scale": 0.5, "forbidden_pct": 0.0, "kl": 0.09, "kl_se": 0.02},
             {"scale": 0.2, "forbidden_pct": 3.0, "kl": 0.04, "kl_se": 0.01}]
    a, b, w = crossing(sweep, 0.4)
    assert (a["scale"], b["scale"], w) == (0.3, 0.5, pytest.approx(0.75))
    assert interpolate_se_at(sweep, 0.4, "kl", "kl_se") == pytest.approx(math.hypot(0.25 * 0.01, 0.75 * 0.02))
    assert crossing(sweep, 5.0) is None and interpolate_se_at(sweep, 5.0, "kl", "kl_se") is None  # never that unsafe
    assert interpolate_se_at(sweep, 0.4, "fd_clf", "fd_clf_se") is None  # rows before session 24: no FD error
    # where the comparison falls is uncertain too: KL falls 0.04 over 1.6 points of forbidden % (slope 0.025 per
    # point), so the target's error 0.2 and the points' 0.1 / 0.05 add 0.025^2 (0.2^2 + 0.025^2 0.1^2 + ...)
    sweep[0]["forbidden_se"], sweep[1]["forbidden_se"] = 0.1, 0.05
    expected = math.sqrt((0.25 * 0.01) ** 2 + (0.75 * 0.02) ** 2
                         + 0.025 ** 2 * (0.2 ** 2 + (0.25 * 0.1) ** 2 + (0.75 * 0.05) ** 2))
    assert interpolate_se_at(sweep, 0.4, "kl", "kl_se", target_se=0.2) == pytest.approx(expected)

    rows = [{**_row("removal", "dng", 5.0, forbidden=0.4, upper=1.4, kl=0.02, fd=2.0), "kl_se": 0.004},
            {**_row("removal", "np", 0.3, forbidden=1.6, kl=0.05, fd=5.0), "kl_se": 0.01, "fd_clf_se": 0.5},
            {**_row("removal", "np", 0.5, forbidden=0.0, kl=0.09, fd=9.0), "kl_se": 0.02, "fd_clf_se": 1.0}]
    v = cell_verdict(rows)
    ref, ref_se = 0.08, math.hypot(0.25 * 0.01, 0.75 * 0.02)
    assert v["kl_ratio_np"] == pytest.approx(0.02 / ref)
    assert v["kl_ratio_np_se"] == pytest.approx(0.02 / ref * math.hypot(0.004 / 0.02, ref_se / ref))
    assert v["fd_clf_ratio_np_se"] is None  # DNG's row has no FD error
    rows[0]["fd_clf_se"] = 0.2
    fd_ref, fd_ref_se = 8.0, math.hypot(0.25 * 0.5, 0.75 * 1.0)
    assert cell_verdict(rows)["fd_clf_ratio_np_se"] == pytest.approx(0.25 * math.hypot(0.2 / 2.0, fd_ref_se / fd_ref))


def test_the_decisive_points_are_dng_at_the_default_and_the_baselines_either_side():
    from benchmarks.defaults_grid import decisive_points

    rows = [{**_row("removal", "dng", 75.0, forbidden=0.4), "uses_defaults": True},
            {**_row("removal", "dng", 40.0, forbidden=1.4), "uses_defaults": True},
            {**_row("removal", "dng", 75.0, forbidden=0.0), "uses_defaults": False},  # another setting
            _row("removal", "np", 0.2, forbidden=3.0), _row("removal", "np", 0.3, forbidden=1.6),
            _row("removal", "np", 0.5, forbidden=0.0),
            _row("removal", "sld", 0.5, forbidden=2.0), _row("removal", "sld", 1.0, forbidden=0.9),  # never as safe
            _row("unrelated", "np", 0.5, change=0.1)]
    for r in rows:
        r.update(model="digits8", sampler="euler", steps=20, seed=1)
    keys = [p.key for p in decisive_points(rows, 75.0)]
    cell = "digits8/euler/20/seed1/removal"
    assert keys == [f"{cell}/dng/75", f"{cell}/np/0.3", f"{cell}/np/0.5", f"{cell}/sld/1"]
    assert decisive_points(rows, 20.0) == []  # no DNG point there


def test_a_case_can_be_rerun_alone():
    keys = {p.key for p in points([0], [("digits8", "euler", 20)], ("dng", "np"), [75.0], [0.5], cases=["unrelated"])}
    assert keys == {"digits8/euler/20/seed0/unrelated/dng/75", "digits8/euler/20/seed0/unrelated/np/0.5"}


def test_a_point_sampled_at_two_sizes_keeps_both_rows_and_the_larger_decides():
    from benchmarks.defaults_grid import N_REMOVAL, Point, default_settings, row_key

    pt = Point("digits8", "euler_ancestral", 50, 1, "removal", "dng", 75.0)
    assert row_key(pt, default_settings(), N_REMOVAL) == pt.key
    assert row_key(pt, default_settings(), 2 * N_REMOVAL) == pt.key + "/n2000"
    small = {**_row("removal", "dng", 75.0, forbidden=1.0, upper=1.83, kl=0.02, fd=2.0), "n": 1000}
    large = {**_row("removal", "dng", 75.0, forbidden=0.8, upper=1.25, kl=0.01, fd=1.0), "n": 2000}
    baselines = [_row("removal", "np", 0.5, forbidden=0.0, kl=0.1, fd=10.0),
                 _row("removal", "np", 0.2, forbidden=2.0, kl=0.1, fd=10.0)]
    for rows in ([small, large], [large, small]):  # the order of the parts does not matter
        v = cell_verdict(rows + baselines, 75.0)
        assert v["safety_met"] and v["n"] == 2000 and v["forbidden_pct"] == 0.8
        # KL and FD shrink with the sample size: compared at the baselines' N, from the protocol-size row
        assert v["quality_n"] == 1000 and v["kl_ratio_np"] == pytest.approx(0.2) and v["fd_clf"] == 2.0
    assert cell_verdict([small] + baselines, 75.0)["safety_met"] is False
    assert cell_verdict([large] + baselines, 75.0)["kl_ratio_np"] == pytest.approx(0.1)  # no protocol row: its own


def test_merge_builds_on_the_committed_rows_and_a_part_replaces_its_point(tmp_path):
    """The part files are git-ignored: a fresh clone's merge must keep the committed grid and add to it."""
    import json

    from benchmarks.defaults_grid import RESULTS, current_key, merge

    committed = json.loads((RESULTS / "defaults_grid.json").read_text())
    cell = [r for r in committed if (r["model"], r["sampler"], r["steps"], r["seed"]) == ("digits8", "euler", 20, 0)]
    assert len(cell) > 3
    results, out = tmp_path / "results", tmp_path / "out"
    results.mkdir()
    (out / "parts").mkdir(parents=True)
    (results / "defaults_grid.json").write_text(json.dumps(cell[1:]))
    replaced = dict(cell[1], seconds=-1.0)  # the same point, measured again
    (out / "parts" / "shard-0-of-1.jsonl").write_text(json.dumps(cell[0]) + "\n" + json.dumps(replaced) + "\n")
    summary = merge(out, results)
    merged = json.loads((results / "defaults_grid.json").read_text())
    assert summary["rows"] == len(merged) == len(cell)
    by_key = {r["key"]: r for r in merged}
    assert current_key(cell[0]) in by_key
    assert by_key[current_key(cell[1])]["seconds"] == -1.0
    assert (results / "defaults_grid.md").is_file()


def test_a_rows_key_names_the_late_gain_that_acted_on_its_sampler():
    """Each late push's gain is named only where that push acts: the stochastic samplers' gain on a stochastic
    sampler with stochastic_push 'late', deterministic_late_gain on a deterministic one with deterministic_push
    'late'; a deterministic 'late' row that predates deterministic_late_gain ran at the late push's gain."""
    from benchmarks.defaults_grid import default_settings, setting_suffix

    d = default_settings()
    det, sto = d["deterministic_late_gain"], d["late_push_gain"]
    other = det + 1.0
    late = {**d, "deterministic_push": "late"}
    assert setting_suffix({**late, "deterministic_late_gain": other}, "euler").endswith(
        f"/deterministic_late_gain={other}" + ("" if d["deterministic_push"] == "late" else "/deterministic_push=late"))
    # the deterministic gain does nothing on a stochastic sampler, the stochastic one nothing on euler
    assert setting_suffix({**late, "deterministic_late_gain": other}, "euler_ancestral") == setting_suffix(late, "euler_ancestral")
    assert setting_suffix({**late, "late_push_gain": sto + 1.0}, "euler") == setting_suffix(late, "euler")
    assert f"/late_push_gain={sto + 1.0}" in setting_suffix({**d, "late_push_gain": sto + 1.0}, "euler_ancestral")
    # before the field: the row's late push gain is what acted
    before = {k: v for k, v in late.items() if k != "deterministic_late_gain"}
    assert setting_suffix({**before, "late_push_gain": det}, "euler") == setting_suffix(late, "euler")
    assert f"/deterministic_late_gain={other}" in setting_suffix({**before, "late_push_gain": other}, "euler")
    # a deterministic row at 'matched' does not name either gain
    matched = {**d, "deterministic_push": "matched", "deterministic_late_gain": other}
    assert "gain" not in setting_suffix(matched, "euler")


def test_the_deterministic_push_is_not_named_on_a_sampler_that_adds_noise():
    """A stochastic row measured when 'matched' was the default is still a default row: deterministic_push does
    nothing there; on euler the same row is not."""
    from benchmarks.defaults_grid import default_settings, setting_suffix

    d = default_settings()
    other = "matched" if d["deterministic_push"] != "matched" else "raw"
    assert setting_suffix({**d, "deterministic_push": other}, "euler_ancestral") == ""
    assert setting_suffix({**d, "deterministic_push": other}, "euler") == f"/deterministic_push={other}"


def test_the_straddling_steps_share_below_the_cut():
    from benchmarks.deterministic_cut import straddling_share

    # the digit models' 20-step schedule: the step 2.2657 -> 1.7401 straddles sigma 2
    assert straddling_share(2.2657, 1.7401, 2.0) == pytest.approx(math.log(2 / 1.7401) / math.log(2.2657 / 1.7401))
    assert straddling_share(2.2657, 1.7401, 2.0) == pytest.approx(0.527, abs=0.001)
    assert straddling_share(4.0, 1.0, 2.0) == pytest.approx(0.5)  # half the log interval: 2 is 4 and 1's geometric mean
    assert straddling_share(1.9, 1.5, 2.0) is None and straddling_share(3.0, 2.5, 2.0) is None  # wholly below / above
    assert straddling_share(2.5, 0.0, 2.0) is None  # a last step to 0 has no log interval


def test_fd_clfs_bootstrap_error_is_opt_in_and_leaves_the_kls_draws_alone():
    """Rows before session 24 were scored without FD_clf's bootstrap: adding it must not move their KL error."""
    from benchmarks.common import Scorer
    from reference_model.data import load_dataset

    scorer = Scorer(removed=0)
    data = load_dataset("digits8")
    x = data.x_heldout[data.y_heldout != 0][:200]
    plain = scorer.score(x, bootstrap=50)
    with_fd = scorer.score(x, bootstrap=50, fd_bootstrap=20)
    assert with_fd["kl_se"] == plain["kl_se"] and with_fd["fd_clf"] == plain["fd_clf"]
    assert math.isnan(plain["fd_clf_se"])
    assert 0.0 < with_fd["fd_clf_se"] < with_fd["fd_clf"]


def test_the_seed_pair_check_pairs_one_point_across_seeds():
    from benchmarks.defaults_grid import seed_pair_z

    rows = []
    for seed, kl in ((0, 0.10), (1, 0.13)):
        rows.append({**_row("removal", "np", 0.5, kl=kl), "kl_se": 0.02, "seed": seed, "n": 1000})
        rows.append({**_row("removal", "dng", 75.0, kl=kl), "kl_se": 0.02, "seed": seed, "n": 1000,
                     "uses_defaults": False})  # another setting: not the default's point
    rows.append({**_row("removal", "sld", 1.0), "kl_se": 0.02, "seed": 0, "n": 1000})  # no partner
    for r in rows:
        r.update(model="digits8", sampler="euler", steps=20)
    assert seed_pair_z(rows, "kl", "kl_se") == [pytest.approx(-0.03 / math.hypot(0.02, 0.02))]
    assert seed_pair_z(rows, "fd_clf", "fd_clf_se") == []
