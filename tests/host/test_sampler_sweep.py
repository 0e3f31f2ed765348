"""Every sampler ComfyUI offers, with the DNG patch (normal and karras schedules, 3 steps, batch 2):

* the posterior advances once per step taken and the trace has one record per step;
* no NaN or inf in the latent or the trace;
* with lambda0 = 0, DNG gives what a plain KSampler gives with the empty prompt as its negative (the host's
  unconditional), within ``TOL`` of the latent's scale. This covers the CFG++ samplers, which re-noise from the
  host's unconditional prediction: under the patch it is the empty prompt's, not the negative concept's;
* dpm_fast and dpm_adaptive evaluate the model at noise levels of their own: they are refused before sampling,
  with a message naming the sampler.

The table (sampler, scheduler, steps, updates, max |lambda0=0 difference|) is printed with ``-s``.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.prompts import dng_prompt

STEPS = 3
REFUSED = {"dpm_fast", "dpm_adaptive"}
# max |DNG(lambda0 = 0) - plain| relative to max |plain latent|: the two runs batch different prompts through the
# UNet ([pos, empty, neg] vs [pos, empty]), so they may differ by float32 rounding only
TOL = 1e-4


def _samplers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def _pair(sampler: str, scheduler: str, seed: int) -> tuple[dict, dict]:
    dng = dng_prompt(sampler=sampler, steps=STEPS, seed=seed, batch_size=2, lambda0=0.0)
    dng["5"]["inputs"]["scheduler"] = scheduler
    plain = dng_prompt(sampler=sampler, steps=STEPS, seed=seed, batch_size=2)
    plain["5"]["inputs"].update({"scheduler": scheduler, "model": ["1", 0], "negative": ["8", 0]})
    for p in (dng, plain):
        del p["11"]  # the latent is compared; the trace is read from the patch's history
    del plain["10"]
    return dng, plain


@pytest.mark.parametrize("scheduler", ["normal", "karras"])
def test_every_sampler(prompt_runner, pack_nodes, scheduler):
    rows, failures = [], []
    for i, sampler in enumerate(_samplers()):
        dng, plain = _pair(sampler, scheduler, seed=1000 + i)
        res = prompt_runner.run(dng)
        if sampler in REFUSED:
            err = res.error or {}
            ok = (not res.success and err.get("exception_type", "").endswith("ValueError")
                  and sampler in err.get("exception_message", ""))
            rows.append((sampler, scheduler, STEPS, "refused", "-", "-"))
            if not ok:
                failures.append(f"{sampler}: not refused with a message naming it: {err.get('exception_message')}")
            continue
        if not res.ok:
            failures.append(f"{sampler}: {(res.error or {}).get('exception_message') or res.node_errors}")
            rows.append((sampler, scheduler, STEPS, "failed", "-", "-"))
            continue
        latent = prompt_runner.output_of("5")[0][0]["samples"].clone()
        history = prompt_runner.output_of("10")[1][0]
        trace = history.find(latent)
        prompt_runner.run(plain, check=True)
        reference = prompt_runner.output_of("5")[0][0]["samples"]
        diff = float((latent - reference).abs().max())
        scale = float(reference.abs().max())
        rows.append((sampler, scheduler, STEPS, trace.state_updates if trace else None, diff, scale))
        if trace is None:
            failures.append(f"{sampler}: no trace recorded for its latent")
            continue
        if trace.state_updates != STEPS or len(trace.steps) != STEPS or trace.step_indices() != list(range(STEPS)):
            failures.append(f"{sampler}: {trace.state_updates} posterior updates, steps {trace.step_indices()}")
        if not (torch.isfinite(latent).all() and torch.isfinite(trace.series("scale")).all()
                and torch.isfinite(trace.series("p")).all()):
            failures.append(f"{sampler}: NaN or inf")
        if not diff <= TOL * max(scale, 1.0):
            failures.append(f"{sampler}: lambda0 = 0 differs from plain sampling by {diff:.3g} (latent scale "
                            f"{scale:.3g})")
    print(f"\n{'sampler':<30} {'scheduler':<8} steps updates max|lambda0=0 diff| max|latent|")
    for r in rows:
        d = r[4] if isinstance(r[4], str) else f"{r[4]:.2e}"
        m = r[5] if isinstance(r[5], str) else f"{r[5]:.3g}"
        print(f"{r[0]:<30} {r[1]:<8} {r[2]:>5} {str(r[3]):>7} {d:>19} {m:>11}")
    assert not failures, "\n".join(failures)
    assert len(rows) == len(_samplers())
