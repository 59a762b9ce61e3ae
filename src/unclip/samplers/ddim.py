"""DDIM sampling with stochasticity eta (Song et al. 2021, eq. 12).

Step i -> i-1 (ᾱ_{-1} = 1):
``x_{i-1} = sqrt(ᾱ_{i-1}) x0 + sqrt(1 - ᾱ_{i-1} - σ²) eps + σ z``,
``σ = eta · sqrt((1-ᾱ_{i-1})/(1-ᾱ_i)) · sqrt(1 - ᾱ_i/ᾱ_{i-1})``.
eta = 0 is the deterministic ODE-like sampler (invertible, see ``ddim_inversion``); eta = 1 has the DDPM
fixed-small variance. Learned-variance channels are ignored. Matches diffusers' DDIMScheduler with
``use_clipped_model_output=True`` (eps recomputed from a clamped x0, as guided-diffusion).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule
from unclip.samplers.base import (
    Prediction,
    Predictor,
    ProgressFn,
    StepCallback,
    initial_noise,
    randn,
    report,
)

__all__ = ["ddim_sigma", "ddim_step", "ddim_sample"]


def ddim_sigma(schedule: NoiseSchedule, index: int, eta: float) -> float:
    """σ of the DDIM step ``index -> index-1`` (0 at index 0, where ᾱ_{-1} = 1)."""
    a_t = float(schedule.alphas_cumprod[index])
    a_prev = float(schedule.alphas_cumprod_prev[index])
    return eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))


def ddim_step(
    predictor: Predictor,
    schedule: NoiseSchedule,
    x: Tensor,
    index: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, Prediction]:
    """One DDIM step from step ``index`` to ``index - 1`` of ``schedule`` (to x0 at index 0).

    Noise is drawn (from ``generator``, unless ``noise`` is given) only when σ > 0.

    Returns:
        (x at step index-1, the prediction used).
    """
    pred = predictor(x, schedule, index)
    a_prev = float(schedule.alphas_cumprod_prev[index])
    sigma = ddim_sigma(schedule, index, eta)
    x_prev = math.sqrt(a_prev) * pred.x0 + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * pred.eps
    if sigma > 0:
        if noise is None:
            noise = randn(x.shape, generator, x)
        x_prev = x_prev + sigma * noise
    return x_prev, pred


def ddim_sample(
    predictor: Predictor,
    schedule: NoiseSchedule,
    x_T: Tensor | None = None,
    *,
    eta: float = 0.0,
    shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    stage: str = "ddim",
    callback: StepCallback | None = None,
) -> Tensor:
    """Sample with DDIM over every step of ``schedule`` (e.g. ``schedule.respace("ddim50")``).

    Args:
        eta: 0 deterministic, 1 DDPM-like; must be >= 0.
        generator: randomness: x_T (if drawn), then one noise per step with σ > 0 (none when eta = 0).
        Other arguments as :func:`unclip.samplers.ddpm.ddpm_sample`.

    Returns:
        the sample x0 [B, ...].
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x = initial_noise(x_T, shape, generator, device, dtype)
    total = len(schedule)
    for step, index in enumerate(range(total - 1, -1, -1)):
        x, pred = ddim_step(predictor, schedule, x, index, eta, generator)
        if callback is not None:
            callback(step, x, pred.x0)
        report(progress, stage, step + 1, total)
    return x
