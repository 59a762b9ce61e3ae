"""diffusers' UnCLIPScheduler behaviour, reproduced for parity with diffusers' UnCLIP pipelines.

Works on the *training* schedule directly (no respacing object): timesteps ``round(i*(T-1)/(n-1))``
descending (25 -> 999, 957, ..., 42, 0; 7 -> 999, 832, 666, 500, 333, 166, 0); each step t -> t_prev
recomputes β for the stride as ``1 - ᾱ_t/ᾱ_prev`` (ᾱ_prev = 1 after the last step), takes x0 from the
Predictor (eps -> x0, or x0 directly; clamped by the Predictor: diffusers' ``clip_sample_range`` is
``Predictor(clip_x0=r)``), forms the DDPM posterior mean and, for t > 0, adds noise with
``fixed_small_log`` σ = sqrt(max(β̃, 1e-20)) or ``learned_range`` log σ² = f log β + (1-f) log β̃,
f = (v+1)/2 (β̃ unclamped, as diffusers). Mathematically this is :func:`ddpm_sample` on
``schedule.respace(n)``; this file computes it the way diffusers does, step by step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule, Parameterization, space_timesteps
from unclip.samplers.base import Denoiser, Predictor, ProgressFn, StepCallback, initial_noise, randn, report

__all__ = ["unclip_timesteps", "unclip_predictor", "unclip_sample"]


def unclip_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """UnCLIPScheduler's timesteps, descending: ``round(i*(T-1)/(n-1))`` for i = n-1 .. 0."""
    if num_steps < 2:
        raise ValueError(f"the unclip sampler needs at least 2 steps, got {num_steps}")
    return space_timesteps(num_train_timesteps, str(num_steps))[::-1]


def unclip_predictor(
    denoiser: Denoiser,
    *,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small_log",
    clip_sample: bool = True,
    clip_sample_range: float = 1.0,
) -> Predictor:
    """A Predictor configured with UnCLIPScheduler's option names.

    Karlo via diffusers: prior ("sample", "fixed_small_log", range 5.0), decoder ("epsilon",
    "learned_range", 1.0), super-resolution ("epsilon", "fixed_small_log", 1.0).
    """
    predictions = {"epsilon": "eps", "sample": "x0"}
    variances = {"fixed_small_log": "fixed_small", "learned_range": "learned_range"}
    if prediction_type not in predictions:
        raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {prediction_type!r}")
    if variance_type not in variances:
        raise ValueError(f"variance_type must be 'fixed_small_log' or 'learned_range', got {variance_type!r}")
    param = Parameterization(predictions[prediction_type], variances[variance_type])
    return Predictor(denoiser, param, clip_x0=clip_sample_range if clip_sample else None)


def unclip_sample(
    predictor: Predictor,
    schedule: NoiseSchedule,
    num_steps: int,
    x_T: Tensor | None = None,
    *,
    shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    stage: str = "unclip",
    callback: StepCallback | None = None,
) -> Tensor:
    """Sample as diffusers' UnCLIPPipeline drives its UnCLIPScheduler.

    Args:
        predictor: the model; its variance must be "fixed_small" (= fixed_small_log) or "learned_range",
            its prediction "eps" or "x0".
        schedule: the training schedule (not respaced), e.g. ``make_schedule("cosine")``.
        num_steps: number of steps n >= 2.
        generator: randomness: x_T (if drawn), then one noise per step with t > 0.
        Other arguments as :func:`unclip.samplers.ddpm.ddpm_sample`.

    Returns:
        the sample x0 [B, ...].
    """
    variance = predictor.param.variance
    if variance not in ("fixed_small", "learned_range"):
        raise ValueError(f"the unclip sampler supports fixed_small or learned_range variance, got {variance!r}")
    if schedule.is_respaced:
        raise ValueError("the unclip sampler takes the training schedule; it respaces by itself")
    timesteps = unclip_timesteps(len(schedule), num_steps)
    acp = schedule.alphas_cumprod
    x = initial_noise(x_T, shape, generator, device, dtype)
    for step, t in enumerate(timesteps):
        prev_t = timesteps[step + 1] if step + 1 < len(timesteps) else -1
        a_t = float(acp[t])
        a_prev = float(acp[prev_t]) if prev_t >= 0 else 1.0
        beta = float(schedule.betas[t]) if prev_t == t - 1 else 1.0 - a_t / a_prev
        pred = predictor(x, schedule, t)
        coef_x0 = math.sqrt(a_prev) * beta / (1.0 - a_t)
        coef_xt = math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
        x_prev = coef_x0 * pred.x0 + coef_xt * x
        if t > 0:
            noise = randn(x.shape, generator, x)
            post_var = (1.0 - a_prev) / (1.0 - a_t) * beta
            if variance == "fixed_small":
                std: Tensor | float = math.sqrt(max(post_var, 1e-20))
            else:
                assert pred.var_values is not None
                frac = (pred.var_values + 1) / 2
                std = torch.exp(0.5 * (frac * math.log(beta) + (1 - frac) * math.log(post_var)))
            x_prev = x_prev + std * noise
        x = x_prev
        if callback is not None:
            callback(step, x, pred.x0)
        report(progress, stage, step + 1, len(timesteps))
    return x
