"""DDIM inversion: a clean sample -> the x_T from which eta=0 DDIM reproduces it (Song et al. 2021, §4.3;
used by unCLIP for variations and text diffs, Ramesh et al. 2022, §3).

The input is taken as x at the schedule's first step (index 0, ᾱ_0 ≈ 1); each step i -> i+1 re-noises
deterministically with the model's own prediction at step i:
``x_{i+1} = sqrt(ᾱ_{i+1}) x0(x_i) + sqrt(1-ᾱ_{i+1}) eps(x_i)`` (guided-diffusion ``ddim_reverse_sample``).
``ddim_sample(..., eta=0)`` on the same schedule walks the same path back. The Predictor's x0 clamp is
applied as configured; leave it off for the most exact round trip.
"""

from __future__ import annotations

import math

from torch import Tensor

from unclip.diffusion import NoiseSchedule
from unclip.samplers.base import Predictor, ProgressFn, StepCallback, report

__all__ = ["ddim_inversion_step", "ddim_invert"]


def ddim_inversion_step(predictor: Predictor, schedule: NoiseSchedule, x: Tensor, index: int) -> tuple[Tensor, Tensor]:
    """One inversion step from step ``index`` to ``index + 1`` of ``schedule``.

    Returns:
        (x at step index+1, the x0 prediction used).
    """
    if not 0 <= index < len(schedule) - 1:
        raise IndexError(f"inversion step index must be in [0, {len(schedule) - 2}], got {index}")
    pred = predictor(x, schedule, index)
    a_next = float(schedule.alphas_cumprod[index + 1])
    return math.sqrt(a_next) * pred.x0 + math.sqrt(1.0 - a_next) * pred.eps, pred.x0


def ddim_invert(
    predictor: Predictor,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    progress: ProgressFn | None = None,
    stage: str = "ddim_inversion",
    callback: StepCallback | None = None,
) -> Tensor:
    """Invert a clean sample to x_T (the schedule's last step) with len(schedule)-1 model evaluations.

    Args:
        predictor: the model (for a conditional model, bind the same conditioning and guidance used to
            decode back).
        schedule: the sampling schedule to invert along (the same one ``ddim_sample`` will use).
        x0: clean sample [B, ...] (images in [-1, 1]).

    Returns:
        x_T [B, ...], deterministic (no randomness).
    """
    if len(schedule) < 2:
        raise ValueError("DDIM inversion needs a schedule of at least 2 steps")
    x = x0
    total = len(schedule) - 1
    for index in range(total):
        x, x0_pred = ddim_inversion_step(predictor, schedule, x, index)
        if callback is not None:
            callback(index, x, x0_pred)
        report(progress, stage, index + 1, total)
    return x
