"""Run a sampler by name (what pipelines and the CLI call)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule
from unclip.samplers.base import Predictor, ProgressFn, StepCallback
from unclip.samplers.registry import SAMPLER_NAMES, sampler_spec

__all__ = ["SAMPLER_NAMES", "run_sampler"]


def run_sampler(
    name: str,
    predictor: Predictor,
    schedule: NoiseSchedule,
    num_steps: int,
    x_T: Tensor | None = None,
    *,
    shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    eta: float = 0.0,
    spacing: str | Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    stage: str | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Sample with the sampler ``name`` in ``num_steps`` model evaluations.

    Args:
        name: "ddpm" (ancestral), "ddim" (with ``eta``), "dpm++" (DPM-Solver++(2M)) or "unclip"
            (diffusers' UnCLIPScheduler behaviour).
        schedule: the *training* schedule; respaced here with ``spacing`` (default ``str(num_steps)``:
            evenly spaced, Karlo's and diffusers' UnCLIP spacing, e.g. "ddim25" for DDIM strides; for
            "dpm++" the default is :func:`dpm_solver_timesteps`, diffusers' linspace without step 0).
            "unclip" always uses its own even spacing and rejects ``spacing``.
        num_steps: number of steps (>= 1; >= 2 for "unclip").
        stage: label passed to ``progress`` (default: the sampler name).
        Other arguments: see the sampler functions.

    Returns:
        the sample x0 [B, ...].
    """
    spec = sampler_spec(name)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if schedule.is_respaced:
        raise ValueError("run_sampler takes the training schedule; pass spacing= to choose the steps")
    spec.check(num_steps, predictor.param.prediction, predictor.param.variance)
    common = dict(
        shape=shape,
        generator=generator,
        device=device,
        dtype=dtype,
        progress=progress,
        stage=stage or name,
        callback=callback,
    )
    if spec.takes_eta:
        common["eta"] = eta
    if spec.own_spacing:
        if spacing is not None:
            raise ValueError(f"the {name} sampler uses its own spacing; do not pass spacing")
        return spec.sample(predictor, schedule, num_steps, x_T, **common)
    sampling = schedule.respace(spacing if spacing is not None else spec.spacing(len(schedule), num_steps))
    if len(sampling) != num_steps:
        raise ValueError(f"spacing {spacing!r} gives {len(sampling)} steps, not num_steps={num_steps}")
    return spec.sample(predictor, sampling, x_T, **common)
