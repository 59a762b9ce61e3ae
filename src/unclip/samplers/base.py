"""The denoiser contract every sampler is written against.

A :data:`Denoiser` is any callable ``(x_t [B, ...], t long [B]) -> raw model output``; ``t`` holds indices
into the *original* (training, usually 1000-step) schedule, and conditioning is bound inside the callable
(a closure, ``functools.partial`` or :func:`unclip.samplers.guidance.classifier_free_guidance`).

A :class:`Predictor` wraps a denoiser with its :class:`~unclip.diffusion.Parameterization` and optional x0
processing (clamping, dynamic thresholding) and turns the raw output into a :class:`Prediction`
``(x0, eps, var_values)`` once, for every sampler. Samplers only ever see predictions.

Randomness: samplers draw from the ``torch.Generator`` they are given, on the generator's device, in the
dtype of the sample (like diffusers' ``randn_tensor``), in this order: x_T first (when not given), then one
noise tensor per step that adds noise (never for the final step to x0). A :class:`ZeroMeanNoise` may be given
wherever a sampler takes ``generator``: the same draws, with each channel's spatial mean removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule, Parameterization, eps_from_x0, prediction_to_x0_eps

__all__ = [
    "Denoiser",
    "ProgressFn",
    "StepCallback",
    "Prediction",
    "Predictor",
    "dynamic_threshold",
    "randn",
    "ZeroMeanNoise",
    "initial_noise",
    "report",
    "sampling_dtype",
]


def sampling_dtype(network_dtype: torch.dtype) -> torch.dtype:
    """The dtype a sampler keeps x_t, the noise and its arithmetic in for a network of ``network_dtype``.

    Half-precision networks (bf16, fp16) are sampled in float32: the network runs in its own dtype, while
    the diffusion arithmetic (x0/eps conversion, clamps, posterior means, noise) stays float32, as each
    step adds a small update to x_t that half precision would round away. Other dtypes are kept.
    """
    return torch.float32 if network_dtype in (torch.bfloat16, torch.float16) else network_dtype


Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``(x_t [B, ...], t long [B] original step indices) -> raw output [B, ...]`` (variance channels included)."""

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, step, total)``, called after each step with step = 1..total."""

StepCallback = Callable[[int, Tensor, Tensor], None]
"""``callback(step, x, x0)``: step = 0..total-1, ``x`` the sample after the step, ``x0`` the prediction used."""


class Prediction(NamedTuple):
    """What a sampler needs from the model at one step.

    Attributes:
        x0: predicted clean sample [like x_t], after clamping / thresholding.
        eps: predicted noise [like x_t], consistent with the processed x0 (recomputed from it when x0 was
            processed, as guided-diffusion's DDIM).
        var_values: raw variance channels [like x_t] for learned variance, else None.
    """

    x0: Tensor
    eps: Tensor
    var_values: Tensor | None


def dynamic_threshold(x0: Tensor, ratio: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022), per sample.

    ``s = clamp(quantile(|x0|, ratio), 1, max_value)`` over all non-batch elements; ``x0 -> clamp(x0, -s, s)/s``
    (diffusers' ``_threshold_sample``).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"dynamic threshold ratio must be in (0, 1], got {ratio}")
    if max_value < 1.0:
        raise ValueError(f"dynamic threshold max_value must be >= 1, got {max_value}")
    flat = x0.reshape(x0.shape[0], -1)
    flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()  # quantile needs fp32/64
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class Predictor:
    """A denoiser plus how to read its output: the one place raw outputs become (x0, eps, variance).

    Args:
        denoiser: the network (with conditioning bound), see :data:`Denoiser`.
        param: its parameterisation (prediction kind, variance kind, channel split).
        clip_x0: clamp predicted x0 to [-c, c] (a float) or [lo, hi] (a pair); None: no clamp. Karlo's
            decoder/upsamplers use 1, its prior 10, diffusers' prior scheduler 5.
        threshold: dynamic thresholding ``(ratio, max_value)`` instead of a fixed clamp; None: off.
        clamp_variance: for ``learned_range``, clamp the variance channels to [-1, 1] (σ² between β̃_t and
            β_t), the range training evaluates them in (``training_losses(stable_variance=True)`` clamps its
            forward pass the same way). A network whose channels drifted past a bound — the VLB optimum at
            a bound pushes them on with nothing pulling back — would otherwise extrapolate σ² far outside
            the range and blow up the sample. No-op for in-range outputs (Karlo's and diffusers').
    """

    def __init__(
        self,
        denoiser: Denoiser,
        param: Parameterization | None = None,
        *,
        clip_x0: float | tuple[float, float] | None = None,
        threshold: tuple[float, float] | None = None,
        clamp_variance: bool = True,
    ) -> None:
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.param = param if param is not None else Parameterization()
        if clip_x0 is not None and threshold is not None:
            raise ValueError("use either clip_x0 or threshold, not both")
        if isinstance(clip_x0, (int, float)):
            if clip_x0 <= 0:
                raise ValueError(f"clip_x0 must be positive, got {clip_x0}")
            clip_x0 = (-float(clip_x0), float(clip_x0))
        if clip_x0 is not None and not clip_x0[0] < clip_x0[1]:
            raise ValueError(f"clip_x0 range must have low < high, got {clip_x0}")
        self.clip_x0 = clip_x0
        if threshold is not None:
            dynamic_threshold(torch.zeros(1, 1), *threshold)  # validates the arguments
        self.threshold = threshold
        self.clamp_variance = bool(clamp_variance)

    def raw(self, x: Tensor, schedule: NoiseSchedule, index: int) -> Tensor:
        """The denoiser's raw output at step ``index`` of ``schedule`` (shape-checked, dtype of ``x``)."""
        t = torch.full((x.shape[0],), int(schedule.timesteps[index]), dtype=torch.long, device=x.device)
        out = self.denoiser(x, t)
        if not isinstance(out, Tensor):
            raise TypeError(f"denoiser must return a Tensor, got {type(out).__name__}")
        return out.to(x.dtype)

    def process_x0(self, x0: Tensor) -> Tensor:
        """Apply the configured clamp or dynamic threshold to x0."""
        if self.threshold is not None:
            return dynamic_threshold(x0, *self.threshold)
        if self.clip_x0 is not None:
            return x0.clamp(*self.clip_x0)
        return x0

    def from_raw(self, x: Tensor, schedule: NoiseSchedule, index: int, out: Tensor) -> Prediction:
        """Convert a raw output at step ``index`` into a :class:`Prediction`."""
        mean, var_values = self.param.split(out, x)
        if var_values is not None and self.clamp_variance and self.param.variance == "learned_range":
            var_values = var_values.clamp(-1.0, 1.0)
        x0, eps = prediction_to_x0_eps(schedule, x, index, mean, self.param.prediction)
        if self.threshold is not None or self.clip_x0 is not None:
            x0 = self.process_x0(x0)
            eps = eps_from_x0(schedule, x, index, x0)
        return Prediction(x0, eps, var_values)

    def __call__(self, x: Tensor, schedule: NoiseSchedule, index: int) -> Prediction:
        """Predict at step ``index`` of ``schedule`` (the network gets ``schedule.timesteps[index]``)."""
        return self.from_raw(x, schedule, index, self.raw(x, schedule, index))


class ZeroMeanNoise:
    """A noise source for image samplers: the draws of ``generator`` (same order, same values) with each
    channel's spatial mean removed, for x_T and for every step's noise alike.

    The spatial mean of a [B, C, H, W] draw is an image's global colour. In a forward-process x_t it is
    ``a_t mean(x0) + s_t mean(eps)``, with mean(eps) of standard deviation 1/sqrt(H W): a denoiser that reads the
    colour off x_t cannot tell the two apart, so each step's fresh noise nudges the sample's colour and later
    steps keep it as signal (on the built-in model the x0 prediction's background drifts from about 2 to 5 levels
    along a sampled trajectory, while on forward-noised renders it stays near 2; docs/shapes_model.md). Without
    that component the colour is left to the model's predictions; everything orthogonal to it, where the
    sample's detail lives, is the same isotropic Gaussian as before.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        if isinstance(generator, ZeroMeanNoise):
            generator = generator.generator
        self.generator = generator

    def draw(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """[B, C, H, W] standard-normal noise (as :func:`randn`) minus its per-channel spatial mean."""
        if len(shape) != 4:
            raise ValueError(f"ZeroMeanNoise draws images [B, C, H, W], got shape {tuple(shape)}")
        noise = randn(shape, self.generator, like)
        return noise - noise.mean(dim=(2, 3), keepdim=True)


def randn(shape: Sequence[int], generator: torch.Generator | ZeroMeanNoise | None, like: Tensor) -> Tensor:
    """Standard normal noise of ``shape`` drawn on the generator's device in ``like.dtype``, moved to
    ``like.device`` (diffusers' ``randn_tensor`` convention, so the same seed gives the same noise); a
    :class:`ZeroMeanNoise` source draws its own."""
    if isinstance(generator, ZeroMeanNoise):
        return generator.draw(shape, like)
    device = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


def initial_noise(
    x_T: Tensor | None,
    shape: Sequence[int] | None,
    generator: torch.Generator | ZeroMeanNoise | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Tensor:
    """x_T as given, or drawn from ``generator`` with ``shape`` (first draw of every sampler)."""
    if x_T is not None:
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape {tuple(shape)} disagrees with x_T shape {tuple(x_T.shape)}")
        return x_T
    if shape is None:
        raise ValueError("give either x_T or shape")
    if len(shape) < 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be [B, ...] with positive sizes, got {tuple(shape)}")
    like = torch.empty(0, device=device or "cpu", dtype=dtype or torch.float32)
    return randn(shape, generator, like)


def report(progress: ProgressFn | None, stage: str, step: int, total: int) -> None:
    """Call ``progress(stage, step, total)`` if given."""
    if progress is not None:
        progress(stage, step, total)
