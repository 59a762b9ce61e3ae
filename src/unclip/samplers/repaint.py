"""RePaint: inpainting with an unconditional (or any) denoiser by resampling (Lugmayr et al. 2022, Algorithm 1).

On a (respaced) schedule, every denoising step i -> i-1 is the ancestral DDPM step of :mod:`ddpm` for the
unknown region, while the known region is replaced by the known image forward-noised to the new step's noise
level, ``q(x_{i-1} | x0_known) = N(sqrt(ᾱ_{i-1}) x0_known, (1 - ᾱ_{i-1}) I)``; after the final step (to x0)
it is the known image itself. So the model always sees the known region at the noise level it is evaluated at,
and the known pixels of the result are exact.

Jump-back (resampling, RePaint §4.2): after arriving at step ``j`` (j = 0, L, 2L, ... below ``N - L``) the
sample is re-noised ``L`` steps up with the forward process ``q(x_{k+1} | x_k) = N(sqrt(α_{k+1}) x_k, β_{k+1} I)``
and denoised again, ``r - 1`` times per jump point, so the generated region can harmonise with the known one.
``r = 1`` (the default) is plain replacement: no jumps, one model evaluation per step.

Randomness (the :mod:`unclip.samplers.base` convention): x_T first (when not given), then per denoising step
that adds noise one standard-normal tensor, shared by the DDPM step (unknown region) and the forward-noised
known image (each pixel uses one of the two, so sharing is a draw of each), and one more per re-noising step.
With nothing known and ``r = 1`` this is :func:`unclip.samplers.ddpm.ddpm_sample` draw for draw, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule, q_sample
from unclip.samplers.base import Predictor, ProgressFn, StepCallback, initial_noise, randn, report
from unclip.samplers.ddpm import ddpm_step

__all__ = ["RePaintOptions", "repaint_timesteps", "repaint_renoise", "repaint_sample"]


@dataclass(frozen=True)
class RePaintOptions:
    """The jump-back schedule of RePaint.

    Attributes:
        jump_length: L, how many steps each jump goes back up (RePaint: 10 of its 250 steps; the default 5 is a
            fifth of the 25 steps the stages take by default).
        jump_n_sample: r, how often each stretch of L steps is denoised (1: no resampling; RePaint: 10).
    """

    jump_length: int = 5
    jump_n_sample: int = 1

    def __post_init__(self) -> None:
        for name in ("jump_length", "jump_n_sample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def resamples(self) -> bool:
        """Whether this schedule jumps back at all."""
        return self.jump_n_sample > 1


def repaint_timesteps(num_steps: int, options: RePaintOptions | None = None) -> list[int]:
    """The states RePaint visits on a schedule of ``num_steps`` steps: step indices, ending with -1 (clean).

    Starts at ``num_steps - 1`` (x_T). A decrease ``k -> k-1`` is a model evaluation (denoising step ``k``), an
    increase ``k -> k+1`` a forward re-noising step. Jump points are ``j = 0, L, 2L, ... < num_steps - L``;
    at each, ``r - 1`` jumps of ``L`` steps up (RePaint's ``get_schedule_jump``). E.g. 6 steps, L = 2, r = 2:
    ``[5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]``.

    Raises:
        ValueError: ``num_steps`` < 1, or resampling asked for with ``L >= num_steps`` (no jump fits).
    """
    options = options if options is not None else RePaintOptions()
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    length, repeats = options.jump_length, options.jump_n_sample
    if options.resamples and length >= num_steps:
        raise ValueError(f"jump_length must be less than the number of steps ({num_steps}) to resample, got {length}")
    jumps = {j: repeats - 1 for j in range(0, num_steps - length, length)} if options.resamples else {}
    states = [num_steps - 1]
    t = num_steps - 1
    while t >= 0:
        t -= 1
        states.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(length):
                t += 1
                states.append(t)
    return states


def repaint_renoise(
    schedule: NoiseSchedule,
    x: Tensor,
    index: int,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """One forward step from step ``index - 1`` to step ``index``: ``sqrt(α_index) x + sqrt(β_index) z``.

    Args:
        x: x at step ``index - 1`` [B, ...] (index >= 1).
        noise: z (drawn from ``generator`` when None).

    Returns:
        x at step ``index`` [like x].
    """
    if not 1 <= index < len(schedule):
        raise IndexError(f"re-noising goes to steps 1..{len(schedule) - 1}, got {index}")
    if noise is None:
        noise = randn(x.shape, generator, x)
    return math.sqrt(float(schedule.alphas[index])) * x + math.sqrt(float(schedule.betas[index])) * noise


def _check_keep(keep: Tensor, known: Tensor) -> Tensor:
    """``keep`` broadcast to ``known``'s shape, dtype and device, values in [0, 1]."""
    if not isinstance(keep, Tensor):
        raise TypeError(f"keep must be a tensor, got {type(keep).__name__}")
    try:
        shape = torch.broadcast_shapes(keep.shape, known.shape)
    except RuntimeError:
        shape = None
    if shape != known.shape:
        raise ValueError(f"keep {tuple(keep.shape)} does not broadcast to the known image {tuple(known.shape)}")
    keep = keep.to(device=known.device, dtype=known.dtype)
    if not bool(((keep >= 0) & (keep <= 1)).all()):
        raise ValueError("keep must hold values in [0, 1] (1: known, 0: generated)")
    return keep


def repaint_sample(
    predictor: Predictor,
    schedule: NoiseSchedule,
    known: Tensor,
    keep: Tensor,
    x_T: Tensor | None = None,
    *,
    options: RePaintOptions | None = None,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    stage: str = "repaint",
    callback: StepCallback | None = None,
) -> Tensor:
    """Inpaint with RePaint over every step of ``schedule`` (respace it first: ``schedule.respace("25")``).

    Args:
        predictor: the model and its parameterisation (any conditioning bound inside).
        schedule: the sampling schedule.
        known: x0 of the known region [B, ...] (values elsewhere are ignored); its dtype and device are the
            sampler's (pass float32 for half-precision networks).
        keep: [B or 1, ...] broadcastable to ``known``, in [0, 1]: 1 where ``known`` is kept, 0 where the model
            generates; the result is ``keep * known_part + (1 - keep) * generated`` at every step.
        x_T: starting noise [like known]; drawn from ``generator`` when None. Its known region is replaced by
            ``q_sample(known, T, x_T)`` (x_T as that noise), so the first evaluation sees it too.
        options: the jump-back schedule (default: none).
        generator: randomness, see the module doc.
        progress: ``progress(stage, evaluation, total)`` after each model evaluation.
        callback: ``callback(evaluation, x, x0_pred)`` after each model evaluation.

    Returns:
        the sample x0 [like known]; equal to ``known`` wherever ``keep`` is 1.
    """
    keep = _check_keep(keep, known)
    x = initial_noise(x_T, known.shape, generator, known.device, known.dtype).to(known.dtype)
    states = repaint_timesteps(len(schedule), options)
    x = keep * q_sample(schedule, known, states[0], x) + (1 - keep) * x
    total = sum(b < a for a, b in zip(states[:-1], states[1:]))
    step = 0
    for current, following in zip(states[:-1], states[1:]):
        if following > current:  # jump back: forward process one step up
            x = repaint_renoise(schedule, x, following, generator)
            continue
        noise = randn(x.shape, generator, x) if current > 0 else None
        generated, pred = ddpm_step(predictor, schedule, x, current, generator, noise=noise)
        known_part = known if current == 0 else q_sample(schedule, known, current - 1, noise)
        x = keep * known_part + (1 - keep) * generated
        if callback is not None:
            callback(step, x, pred.x0)
        step += 1
        report(progress, stage, step, total)
    return x
