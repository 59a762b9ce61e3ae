"""DPM-Solver++(2M): multistep second-order solver in data-prediction form (Lu et al. 2022, Algorithm 2).

With α_i = sqrt(ᾱ_i), σ_i = sqrt(1-ᾱ_i), λ_i = log(α_i/σ_i) and D = predicted x0, the step from step s
(the current one) to step t (the next, less noisy one) with h = λ_t - λ_s is
``x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) D``, where D = D_s (first order) or, using the previous step's
prediction D_p and r = (λ_s - λ_p)/h, ``D = D_s + (D_s - D_p)/(2r)`` (second order, "midpoint").
The walk goes through every step of ``schedule`` and then to the clean sample (σ = 0). The first step and
the final step to σ = 0 are first order (the final step returns D); all others second order. This is
diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
final_sigmas_type="zero"). Deterministic: the generator is used only to draw x_T.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule
from unclip.samplers.base import Predictor, ProgressFn, StepCallback, initial_noise, report

__all__ = ["dpm_solver_timesteps", "dpm_solver_pp_update", "dpm_solver_sample"]


def dpm_solver_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """diffusers' "linspace" timesteps for DPM-Solver, ascending: ``round(i*(T-1)/n)`` for i = 1..n.

    Unlike the "n" respacing these leave out step 0: the final solver step goes from the smallest kept
    step straight to σ = 0. Including t = 0 would make the last second-order step extrapolate over a
    very large λ interval (a measurable loss of accuracy). Use with ``schedule.respace(...)``.
    """
    if num_steps < 1 or num_steps >= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps - 1}], got {num_steps}")
    stride = (num_train_timesteps - 1) / num_steps
    return sorted({round(i * stride) for i in range(1, num_steps + 1)})


def _alpha_sigma_lambda(schedule: NoiseSchedule, index: int) -> tuple[float, float, float]:
    a = float(schedule.alphas_cumprod[index])
    alpha, sigma = math.sqrt(a), math.sqrt(1.0 - a)
    return alpha, sigma, math.log(alpha) - math.log(sigma)


def dpm_solver_pp_update(
    x: Tensor,
    d_cur: Tensor,
    cur: tuple[float, float, float],
    nxt: tuple[float, float, float] | None,
    d_prev: Tensor | None = None,
    lambda_prev: float | None = None,
) -> Tensor:
    """One DPM-Solver++ update.

    Args:
        x: sample at the current step [B, ...].
        d_cur: x0 prediction at the current step.
        cur, nxt: (α, σ, λ) of the current and next step; ``nxt`` None means the clean sample (σ = 0),
            which returns ``d_cur``.
        d_prev, lambda_prev: the previous step's x0 prediction and λ for the second-order update; None for
            first order.

    Returns:
        the sample at the next step.
    """
    if nxt is None:
        return d_cur
    _, sigma_s, lambda_s = cur
    alpha_t, sigma_t, lambda_t = nxt
    h = lambda_t - lambda_s
    coef = -alpha_t * math.expm1(-h)  # α_t (1 - e^{-h})
    d = d_cur
    if d_prev is not None:
        if lambda_prev is None:
            raise ValueError("second-order update needs lambda_prev")
        r = (lambda_s - lambda_prev) / h
        d = d_cur + (d_cur - d_prev) / (2.0 * r)
    return (sigma_t / sigma_s) * x + coef * d


def dpm_solver_sample(
    predictor: Predictor,
    schedule: NoiseSchedule,
    x_T: Tensor | None = None,
    *,
    order: int = 2,
    shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    stage: str = "dpm++",
    callback: StepCallback | None = None,
) -> Tensor:
    """Sample with DPM-Solver++(2M) (or (1), = DDIM eta 0, with ``order=1``).

    len(schedule) model evaluations: one per step of the schedule, from its last step down to its first,
    then the final step to σ = 0. 10-25 steps are typical; respace with
    ``schedule.respace(dpm_solver_timesteps(1000, 20))`` (what :func:`run_sampler` does).

    Args:
        order: 1 or 2.
        Other arguments as :func:`unclip.samplers.ddpm.ddpm_sample` (the generator only draws x_T).

    Returns:
        the sample x0 [B, ...].
    """
    if order not in (1, 2):
        raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {order}")
    x = initial_noise(x_T, shape, generator, device, dtype)
    total = len(schedule)
    d_prev: Tensor | None = None
    lambda_prev: float | None = None
    for step, index in enumerate(range(total - 1, -1, -1)):
        pred = predictor(x, schedule, index)
        cur = _alpha_sigma_lambda(schedule, index)
        nxt = _alpha_sigma_lambda(schedule, index - 1) if index > 0 else None
        second = order == 2 and d_prev is not None and nxt is not None
        x = dpm_solver_pp_update(x, pred.x0, cur, nxt, d_prev if second else None, lambda_prev if second else None)
        d_prev, lambda_prev = pred.x0, cur[2]
        if callback is not None:
            callback(step, x, pred.x0)
        report(progress, stage, step + 1, total)
    return x
