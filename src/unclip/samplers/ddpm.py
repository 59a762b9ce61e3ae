"""Ancestral DDPM sampling on a (respaced) schedule (Ho et al. 2020, Algorithm 2; Nichol & Dhariwal 2021).

Each step i -> i-1 of the schedule samples ``x_{i-1} ~ N(μ̃(x_i, x0_pred), σ_i²)`` with the posterior mean
μ̃ of the schedule and σ_i² from the parameterisation's variance (fixed small β̃, fixed large β, or the
learned range). The final step (i = 0) returns the posterior mean without noise. This is Karlo's sampler
(guided-diffusion ``p_sample_loop`` on a ``SpacedDiffusion``) and diffusers' DDPMScheduler.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule, model_log_variance, q_posterior
from unclip.samplers.base import (
    Prediction,
    Predictor,
    ProgressFn,
    StepCallback,
    initial_noise,
    randn,
    report,
)

__all__ = ["ddpm_step", "ddpm_sample"]


def ddpm_step(
    predictor: Predictor,
    schedule: NoiseSchedule,
    x: Tensor,
    index: int,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, Prediction]:
    """One ancestral step from step ``index`` to ``index - 1`` of ``schedule``.

    Args:
        x: x at step ``index`` [B, ...].
        noise: the standard-normal noise to add (drawn from ``generator`` when None; unused at index 0).

    Returns:
        (x at step index-1 — the clean sample when index = 0, the prediction used).
    """
    pred = predictor(x, schedule, index)
    mean, _, _ = q_posterior(schedule, pred.x0, x, index)
    if index == 0:
        return mean, pred
    log_var = model_log_variance(schedule, index, predictor.param.variance, pred.var_values, x)
    if noise is None:
        noise = randn(x.shape, generator, x)
    return mean + torch.exp(0.5 * log_var) * noise, pred


def ddpm_sample(
    predictor: Predictor,
    schedule: NoiseSchedule,
    x_T: Tensor | None = None,
    *,
    shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    stage: str = "ddpm",
    callback: StepCallback | None = None,
) -> Tensor:
    """Sample with ancestral DDPM over every step of ``schedule`` (respace it first: ``schedule.respace("25")``).

    Args:
        predictor: the model and its parameterisation.
        schedule: the sampling schedule; len(schedule) model evaluations.
        x_T: starting noise [B, ...]; drawn from ``generator`` with ``shape``/``device``/``dtype`` when None.
        generator: randomness: x_T (if drawn), then one noise per step except the last.
        progress: ``progress(stage, step, total)`` after each step.
        callback: ``callback(step, x, x0_pred)`` after each step.

    Returns:
        the sample x0 [B, ...] (same dtype/device as x_T).
    """
    x = initial_noise(x_T, shape, generator, device, dtype)
    total = len(schedule)
    for step, index in enumerate(range(total - 1, -1, -1)):
        x, pred = ddpm_step(predictor, schedule, x, index, generator)
        if callback is not None:
            callback(step, x, pred.x0)
        report(progress, stage, step + 1, total)
    return x
