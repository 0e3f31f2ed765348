"""How far a push on the prediction at noise level sigma moves the final sample, per sampler class.

DNG pushes the prediction, D -> D - lambda (D_neg - D_u). One lambda0 for every sampler needs a push at a given
noise level to move the final image equally far on deterministic and on stochastic samplers. It does not: on
the pack's digit model the same lambda0 changed the images of an unrelated negative 1.2-1.6x more on euler and
dpmpp_2m than on euler_ancestral (benchmarks/results/defaults_grid.md). The linear-Gaussian model says why, and
by how much.

Data x0 ~ N(mu, s^2 I) (s: the data's scale per dimension). In the variance-exploding state x = x0 + sigma eps
the ideal denoiser is linear, D(x) = mu + k (x - mu) with k = s^2 / (s^2 + sigma^2).

* **Probability-flow ODE** (euler, dpmpp_2m, heun, ...): dx / dsigma = (x - D) / sigma. A step sigma -> sigma'
  moves x by (1 - sigma' / sigma) times a change of D, i.e. |d ln sigma| per unit push; the homogeneous part
  d(x - mu) / dsigma = sigma (x - mu) / (s^2 + sigma^2) makes a displacement at sigma reach the end (sigma = 0)
  scaled by s / sqrt(s^2 + sigma^2). Gain: ``G_ode = |d ln sigma| s / sqrt(s^2 + sigma^2)``.
* **Reverse SDE** (euler_ancestral, dpmpp_2m_sde, ...): dx = 2 (x - D) / sigma dsigma + noise. An ancestral step
  moves x by (1 - sigma'^2 / sigma^2) ~ 2 |d ln sigma| per unit push; the homogeneous part doubles, so a
  displacement at sigma reaches the end scaled by s^2 / (s^2 + sigma^2) (the injected noise makes the sampler
  forget early pushes). Gain: ``G_sde = 2 |d ln sigma| s^2 / (s^2 + sigma^2)``.

Their ratio,

    T(sigma) = G_sde / G_ode = 2 s / sqrt(s^2 + sigma^2),

is the factor by which a deterministic sampler's push must be scaled to move the final sample as far as the
same push on a stochastic one: ~2 s / sigma at high noise (where the ODE keeps a push the SDE forgets), 1 at
sigma = sqrt(3) s, 2 as sigma -> 0. The pack applies it to lambda on deterministic samplers in the ``rate`` form,
so lambda0 means the same on both classes; the paper's exact mode and stochastic samplers are left as they are.
``tests/core/test_transmission.py`` checks both gains on the linear-Gaussian model sampled with ComfyUI's euler
and euler_ancestral updates.

s is the model's data scale: ComfyUI's ``model_sampling.sigma_data`` (1.0 for SD1.x / SDXL latents and for the
pack's digit models, which are discrete-schedule models like SD1.5; 0.5 for EDM-style pixel models). For
rectified-flow models sigma is the variance-exploding one, t / (1 - t).

What it leaves out: real data is not Gaussian. The removal of a concept that *is* forming is a choice between
modes, which the linear response does not describe; that DNG's posterior grows where the concept forms (and
with it lambda) is what keeps the removal (measured: benchmarks/results/defaults_grid.md).

**The late push on stochastic samplers** (``StochasticPush.LATE``, node input ``stochastic_push``; the default
since session 20): no push above sigma = 2 s on a sampler that adds noise, ``LATE_PUSH_GAIN`` (6) times the full
push below, held within sigma. Why a push high in the noise is waste there, in two parts. (i) It is forgotten
where it should act: by the SDE gain above, a push at sigma carries s^2 / (s^2 + sigma^2) of itself to the end, a
fifth at sigma = 2 s, so removal rests on the pushes below ~2 s. (ii) It acts where it should not: on the SDE the
sample's class is still being drawn there (the injected noise re-draws it), so the posterior's reading is weak and
its false alarms are many, and an early push on an unrelated sample does not fade like a linear response: it
changes which mode the sample falls into. Measured on the pack's digit models (ComfyUI 0.33.0,
``benchmarks/results/push_transmission_*.md``, ``model_posterior_*.md``, ``ancestral_push_shape_*.md``,
``defaults_grid.md``): at sigma 2-23 an ancestral push moves the final image 1.6-3.4x further, against euler's
same push, than T(sigma) says; euler_ancestral's posterior ranks the concept's samples with AUC 0.74-0.81 at sigma
5.4 -> 4 and 0.87-0.92 at 3 -> 2.3 (euler's path reading: 0.91-0.97); and without the pushes above sigma 2 the
unrelated images moved 6-10x less on the 16x16 model and about half as much on the 8x8 one, with as little of the
concept left. Where exactly to cut is measured, not derived: 2 s (s = 1 on the digit models) beat 2.5, 4 and 5.5
on mnist16's euler_ancestral cell. Deterministic samplers kept the full push until session 22 (its scaling
T(sigma) already makes early pushes weak, 1/5 of the raw push at sigma 10 s); they now have their own late push
(below).

**The late push's gain** (``LATE_PUSH_GAIN``): the push acts on fewer steps, so the same safety needs a larger
lambda; so that the node's one lambda0 serves both sampler classes, the late push multiplies it by 6. This factor
is measured, not derived. In the linear-Gaussian model the SDE's reach of a push at sigma, integrated over the
digit models' schedule (sigma 14.6 -> 0.029, s = 1), is ln(sigma^2 / (s^2 + sigma^2)) = 7.07, of which the part
above 2 s is ln(5/4) = 0.22, so the cut would cost ~3 % and need no gain; the measured factor is the early pushes'
non-linear mode choice, which that model does not describe. Measured (bounded late push against the full push at
lambda0 75, 8x8 digit model, euler_ancestral and dpmpp_2m_sde at 20 and 50 steps, two seeds, N 1000 / 500): every
target of the defaults grid met in all 8 cell-seeds at lambda0 300, 450 and 600 (4, 6 and 8x), 5 of 8 missed at
1000 (unrelated change above 0.10 of negative prompting's); 6 is that window's middle on a log scale. At 6 x 75:
0.0-0.1 % of the concept left, unrelated change 0.035-0.070 of negative prompting's (full push: 0.054-0.083); on
the 16x16 model's euler_ancestral cell 1.0 / 1.6 % left (full push: 0.8 / 1.7 %) with unrelated change 0.03 of
NP's (full push: 0.24-0.30). The late push is held within sigma (``bound_push``): at the lambda it needs, an
unbounded push destroyed 1.3-4.5 % of euler_ancestral's images on the digit models.

**The late push on deterministic samplers** (``DeterministicPush.LATE``, node input ``deterministic_push``
``late``): the same cut (2 s) and bound, on top of the matched scaling T(sigma), at its own gain
(``DETERMINISTIC_LATE_PUSH_GAIN``). Why:
part (ii) above holds on the ODE too, for a different reason. There the class is not re-drawn, but the
posterior's reading of it is weak high in the noise. On the 16x16 model's euler cell (seed 0,
``model_posterior_mnist16_euler_20_seed0.md``) the unrelated images whose posterior is over the line are 14 / 7 /
2.4 % after the steps ending at sigma 3.98 / 2.98 / 2.27 and 0.2-0.4 % at 1.74-1.03, and a rejection in the posterior's
order that leaves 1 % of the concept takes 27 / 28 / 19 % of the other images there against 10-13 % below. So a
push above ~2 s falls on many samples that never hold the concept, while a posterior known to have separated
removes it at lambda0 1 with no side effects (``hindsight_posterior.md``). DNG's own running posterior, pushing
only where it has separated, reached every target on that cell at lambda0 1000 (seed 1; Session 21,
``docs/step_invariance.md``). Unlike on the SDE, the linear model says the ODE keeps an early push (part (i)
does not hold), so the cut costs removal that the gain must buy back.

**Its gain** (``DETERMINISTIC_LATE_PUSH_GAIN``, 16) is measured, not derived (Session 22, ComfyUI 0.33.0, the
defaults grid's 10 deterministic cell-seeds, N 1000 / 500, at 6 x lambda0 75 / 125 / 200 / 300, i.e. gains 6 /
10 / 16 / 24 at lambda0 75). On the 8x8 model every target was met in all 8 cell-seeds at 6, 10 and 16, with
0.0 % of the concept left and the unrelated change rising with the gain (0.019-0.042 / 0.029-0.059 /
0.040-0.077 of negative prompting's; the matched push: 0.040-0.063). On the 16x16 model's euler cell the concept
left fell with the gain: 1.3 / 0.7 / 0.5 / 0.4 % (seed 0) and 1.8 / 1.3 / 0.9 / 0.7 % (seed 1), against the
matched push's 1.1 / 2.3 %, with the unrelated change 0.010-0.051 of NP's. 16 is the largest gain measured that
keeps the 8x8 model's unrelated change well under its bar (0.10) in every cell; at 24 it reached 0.053-0.102 (2
of 8 cell-seeds over the bar) while the 16x16 model met every target at seed 1 with its safety on the bar (upper
bound 1.44 % of 1.5): one gain for both models exists only on the bars.
"""

from __future__ import annotations

import enum
import math
from typing import Sequence

import torch

__all__ = ["DETERMINISTIC_LATE_PUSH_GAIN", "DeterministicPush", "LATE_PUSH_GAIN", "LATE_PUSH_SIGMA", "StochasticPush",
           "bound_push", "check_data_scale", "late_push_cut", "ode_to_sde_gain_ratio", "ode_gain", "sde_gain"]

#: the late push's cut on stochastic samplers, in units of the data scale s (module docstring)
LATE_PUSH_SIGMA = 2.0
#: the late push's lambda0 multiple, so that one lambda0 means the same removal with the late push on stochastic
#: samplers as with the matched full push on deterministic ones (measured, not derived: module docstring)
LATE_PUSH_GAIN = 6.0
#: the deterministic samplers' late push's lambda0 multiple (deterministic_push 'late'; measured, not derived:
#: module docstring)
DETERMINISTIC_LATE_PUSH_GAIN = 16.0


class DeterministicPush(str, enum.Enum):
    """How DNG's push is scaled on a deterministic sampler (named after the node input ``deterministic_push``).

    ``MATCHED``: times T(sigma) (``ode_to_sde_gain_ratio``), so that a push moves the final sample as far as on
    an ancestral sampler (the default in sessions 11-21); ``LATE`` (default): the matched push only at
    sigma <= 2 s (``late_push_cut``), at ``DETERMINISTIC_LATE_PUSH_GAIN`` times lambda0 and held within sigma
    (``bound_push``),
    as the stochastic samplers' late push (module docstring, "The late push on deterministic samplers"); ``RAW``:
    unscaled (before session 11). Stochastic samplers, samplers that can't be told, and the paper's exact mode are
    never scaled."""

    MATCHED = "matched"
    LATE = "late"
    RAW = "raw"


class StochasticPush(str, enum.Enum):
    """Where DNG pushes on a sampler that adds noise (named after the node input ``stochastic_push``).

    ``LATE`` (default): only at sigma <= 2 s (``late_push_cut``), at ``LATE_PUSH_GAIN`` times lambda0 and held
    within sigma (``bound_push``); module docstring: on the pack's digit models as safe as the full push at the
    same lambda0, with 1.1-9x less change to unrelated images. ``FULL``: at every noise level, at lambda0, as the
    paper does. Deterministic samplers (their own late push: ``DeterministicPush``), samplers that can't be told,
    and the paper's exact mode are not cut by it."""

    FULL = "full"
    LATE = "late"


def check_data_scale(data_scale: float) -> float:
    """``data_scale`` as a float; ValueError unless it is a finite number > 0."""
    if not (isinstance(data_scale, (int, float)) and math.isfinite(data_scale) and data_scale > 0):
        raise ValueError(f"data_scale must be a finite number > 0, got {data_scale!r}")
    return float(data_scale)


def _check(sigma: float, data_scale: float) -> None:
    check_data_scale(data_scale)
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")


def ode_gain(sigma: float, data_scale: float) -> float:
    """s / sqrt(s^2 + sigma^2): how much of a displacement of x at ``sigma`` the probability-flow ODE carries to
    the final sample in the linear-Gaussian model (per unit push: times |d ln sigma| of the step)."""
    _check(sigma, data_scale)
    if math.isinf(sigma):
        return 0.0
    return data_scale / math.hypot(data_scale, sigma)


def sde_gain(sigma: float, data_scale: float) -> float:
    """s^2 / (s^2 + sigma^2): the same for the reverse SDE (ancestral samplers), whose steps also move x twice as
    far per unit push (2 |d ln sigma|)."""
    return ode_gain(sigma, data_scale) ** 2


def ode_to_sde_gain_ratio(sigma: float, data_scale: float) -> float:
    """T(sigma) = 2 s / sqrt(s^2 + sigma^2), the factor on a deterministic sampler's push at ``sigma`` that moves
    the final sample as far as the same push on an ancestral sampler (module docstring). 0 at infinite sigma."""
    return 2.0 * ode_gain(sigma, data_scale)


def late_push_cut(data_scale: float) -> float:
    """The noise level (variance-exploding sigma) above which the late push does not act: 2 s."""
    return LATE_PUSH_SIGMA * check_data_scale(data_scale)


def bound_push(scale: torch.Tensor, d_u: torch.Tensor, d_negs: Sequence[torch.Tensor | None],
               sigma: float) -> torch.Tensor:
    """The late push's scale [K, B] with each concept's push lambda (D_neg - D_u) held within sigma (RMS per
    pixel, per image): lambda <= sigma / RMS(D_neg - D_u).

    Why: the late push acts where sigma is small and needs a large lambda (``LATE_PUSH_GAIN`` x lambda0), and
    lambda (D_neg - D_u) then reaches tens of units on data in [-1, 1]: the ancestral step carries a share of it
    into x, far outside anything x = x0 + sigma eps the model was trained on, and the image comes out destroyed
    (measured on the digit models without the bound: 1.3-2.1 % of euler_ancestral's images at lambda0 300, up
    to 4.5 % at 2000; the full push at the default lambda0 destroyed none, at 200 on the 16x16 model 0.3 %).
    A push within sigma moves x by no more than the noise it already carries, the same trust radius as the
    path estimator's offset (``PosteriorConfig.offset_trust``). A concept that was not predicted (``None``) keeps its scale (0)."""
    out = scale.clone()
    for k, d_neg in enumerate(d_negs):
        if d_neg is None:
            continue
        rms = (d_neg - d_u).flatten(1).to(scale.dtype).pow(2).mean(1).sqrt()
        limit = torch.where(rms > 0, sigma / rms.clamp_min(1e-30), torch.full_like(rms, math.inf))
        out[k] = torch.minimum(out[k], limit.to(out))
    return out
