"""diffusers' UnCLIPScheduler behaviour, step for step, for parity with diffusers' UnCLIP pipelines.

Works on the *training* schedule directly (no respacing object): timesteps ``round(i*(T-1)/(n-1))``
descending (25 -> 999, 957, ..., 42, 0; 7 -> 999, 832, 666, 500, 333, 166, 0); each step t -> t_prev
recomputes β for the stride as ``1 - ᾱ_t/ᾱ_prev`` (ᾱ_prev = 1 after the last step), takes x0 from the
raw output (eps -> x0, v -> x0, or x0 directly; then clamped by the Predictor: diffusers' ``clip_sample_range``
is ``Predictor(clip_x0=r)``), forms the DDPM posterior mean and, for t > 0, adds noise with ``fixed_small_log``
σ = sqrt(max(β̃, 1e-20)) or ``learned_range`` log σ² = f log β + (1-f) log β̃, f = (v+1)/2 (β̃ unclamped, as
diffusers). Mathematically this is :func:`ddpm_sample` on ``schedule.respace(n)``; this file computes it as
diffusers does, in float32 from float32 tables (ᾱ = cumprod(1 - β) in float32, α = 1 - (1 - ᾱ_t/ᾱ_prev),
which cancels at t = 999). A float64 computation differs by ~1e-4 relative per step, which guidance and 25 + 25
+ 7 steps grow to ~0.07 pixels; this arithmetic matches diffusers within ~1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule, Parameterization, space_timesteps
from unclip.samplers.base import Denoiser, Predictor, ProgressFn, StepCallback, initial_noise, randn, report

__all__ = ["PREDICTIONS", "VARIANCES", "unclip_timesteps", "unclip_tables", "unclip_predictor", "unclip_sample"]

PREDICTIONS = ("eps", "x0", "v")  # diffusers' "epsilon", "sample", "v_prediction"
VARIANCES = ("fixed_small", "learned_range")  # diffusers' "fixed_small_log", "learned_range"


def unclip_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """UnCLIPScheduler's timesteps, descending: ``round(i*(T-1)/(n-1))`` for i = n-1 .. 0."""
    if num_steps < 2:
        raise ValueError(f"the unclip sampler needs at least 2 steps, got {num_steps}")
    return space_timesteps(num_train_timesteps, str(num_steps))[::-1]


def unclip_tables(schedule: NoiseSchedule, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(β, ᾱ) as the sampler reads them for samples of ``dtype``: diffusers' float32 tables (β in float32,
    ᾱ = cumprod(1 - β) in float32) for every dtype but float64; the schedule's own float64 tables for float64
    samples (diffusers' scheduler given those tables computes the same)."""
    if dtype == torch.float64:
        return schedule.betas.to(torch.float64), schedule.alphas_cumprod.to(torch.float64)
    betas = schedule.betas.to(torch.float32)
    return betas, torch.cumprod(1.0 - betas, dim=0)


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
    """Sample as diffusers' UnCLIPPipeline drives its UnCLIPScheduler, operation for operation in float32.

    Args:
        predictor: the model; its variance must be "fixed_small" (= fixed_small_log) or "learned_range",
            its prediction "eps", "x0" or "v".
        schedule: the training schedule (not respaced), e.g. ``make_schedule("cosine")``.
        num_steps: number of steps n >= 2.
        generator: randomness: x_T (if drawn), then one noise per step with t > 0.
        Other arguments as :func:`unclip.samplers.ddpm.ddpm_sample`.

    Returns:
        the sample x0 [B, ...].
    """
    param: Parameterization = predictor.param
    if param.variance not in VARIANCES or param.prediction not in PREDICTIONS:
        raise ValueError(f"the unclip sampler supports eps/x0/v with fixed_small/learned_range, got {param}")
    if schedule.is_respaced:
        raise ValueError("the unclip sampler takes the training schedule; it respaces by itself")
    timesteps = unclip_timesteps(len(schedule), num_steps)
    x = initial_noise(x_T, shape, generator, device, dtype)
    betas, acp = unclip_tables(schedule, x.dtype)
    one = torch.tensor(1.0, dtype=acp.dtype)
    for step, t in enumerate(timesteps):
        prev_t = timesteps[step + 1] if step + 1 < len(timesteps) else t - 1
        a_t = acp[t]
        a_prev = acp[prev_t] if prev_t >= 0 else one
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if prev_t == t - 1:
            beta, alpha = betas[t], 1 - betas[t]
        else:
            beta = 1 - a_t / a_prev
            alpha = 1 - beta
        out = predictor.raw(x, schedule, t)
        mean, var_values = param.split(out, x)
        if param.prediction == "eps":
            x0 = (x - b_t**0.5 * mean) / a_t**0.5
        elif param.prediction == "v":  # v = sqrt(ᾱ) eps - sqrt(1 - ᾱ) x0  =>  x0 = sqrt(ᾱ) x - sqrt(1 - ᾱ) v
            x0 = a_t**0.5 * x - b_t**0.5 * mean
        else:
            x0 = mean
        x0 = predictor.process_x0(x0)
        x_prev = (a_prev**0.5 * beta) / b_t * x0 + alpha**0.5 * b_prev / b_t * x
        if t > 0:
            noise = randn(x.shape, generator, x)
            variance = b_prev / b_t * beta
            if param.variance == "fixed_small":
                std = torch.exp(0.5 * torch.log(torch.clamp(variance, min=1e-20)))
            else:
                frac = (var_values + 1) / 2
                std = (0.5 * (frac * beta.log() + (1 - frac) * variance.log())).exp()
            x_prev = x_prev + std * noise
        x = x_prev
        if callback is not None:
            callback(step, x, x0)
        report(progress, stage, step + 1, len(timesteps))
    return x
