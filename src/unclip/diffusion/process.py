"""Forward process, posterior, parameterisations and variances.

Notation (Ho et al. 2020; Nichol & Dhariwal 2021): ``x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) eps``; the v target
(Salimans & Ho 2022) is ``v = sqrt(ᾱ_t) eps - sqrt(1-ᾱ_t) x0``. Every function takes step indices ``t``
into the schedule it is given (an int for the whole batch, or a long tensor [B]) and tensors of any shape
[B, ...] (images [B, C, H, W] or embeddings [B, D]); results have the dtype and device of ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unclip.diffusion.schedule import NoiseSchedule, extract

__all__ = [
    "PREDICTIONS",
    "VARIANCES",
    "Parameterization",
    "q_sample",
    "q_posterior",
    "x0_from_eps",
    "eps_from_x0",
    "x0_from_v",
    "eps_from_v",
    "v_from_x0_eps",
    "prediction_to_x0_eps",
    "training_target",
    "model_log_variance",
]

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range", "learned")


@dataclass(frozen=True)
class Parameterization:
    """How to read a network's raw output.

    Attributes:
        prediction: what the mean channels predict: ``"eps"`` (noise), ``"x0"`` (clean sample) or ``"v"``.
        variance: ``"fixed_small"`` (posterior variance β̃_t, Karlo's prior and upsamplers), ``"fixed_large"``
            (β_t), ``"learned_range"`` (extra channels hold v ∈ [-1, 1]: log σ² = f log β_t + (1-f) log β̃_t,
            f = (v+1)/2; Karlo's decoder) or ``"learned"`` (extra channels hold log σ² directly).
        channel_dim: the dimension along which a learned-variance output is [mean channels; variance
            channels] (two equal halves). 1 for both [B, 2C, H, W] images and [B, 2D] embeddings.
    """

    prediction: str = "eps"
    variance: str = "fixed_small"
    channel_dim: int = 1

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}")

    @property
    def learned_variance(self) -> bool:
        """True when the network outputs variance channels."""
        return self.variance in ("learned_range", "learned")

    def out_channels(self, channels: int) -> int:
        """Network output channels for ``channels`` data channels (doubled with learned variance)."""
        return 2 * channels if self.learned_variance else channels

    def split(self, output: Tensor, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """Split a raw output into (mean channels [like.shape], variance channels or None).

        Raises:
            ValueError: when the output shape does not match ``like`` (doubled along ``channel_dim`` for
                learned variance).
        """
        if not self.learned_variance:
            if output.shape != like.shape:
                raise ValueError(
                    f"model output shape {tuple(output.shape)} != sample shape {tuple(like.shape)} "
                    f"(parameterization {self})"
                )
            return output, None
        expected = list(like.shape)
        expected[self.channel_dim] *= 2
        if list(output.shape) != expected:
            raise ValueError(
                f"learned-variance model output shape {tuple(output.shape)} != {tuple(expected)} "
                f"(sample shape {tuple(like.shape)}, channel_dim {self.channel_dim})"
            )
        mean, var = output.chunk(2, dim=self.channel_dim)
        return mean, var


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
    """Sample q(x_t | x0) = N(sqrt(ᾱ_t) x0, (1-ᾱ_t) I) with the given standard-normal ``noise`` [like x0]."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    return (
        extract(schedule, "sqrt_alphas_cumprod", t, x0) * x0
        + extract(schedule, "sqrt_one_minus_alphas_cumprod", t, x0) * noise
    )


def q_posterior(
    schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor | int
) -> tuple[Tensor, Tensor | float, Tensor | float]:
    """Posterior q(x_{t-1} | x_t, x0) of the schedule's step t -> t-1 (t-1 = "clean" when t = 0).

    Returns:
        (mean [like x_t], variance β̃_t, clipped log-variance), the last two broadcastable ([B,1,..] or float).
    """
    mean = (
        extract(schedule, "posterior_mean_coef1", t, x_t) * x0 + extract(schedule, "posterior_mean_coef2", t, x_t) * x_t
    )
    var = extract(schedule, "posterior_variance", t, x_t)
    log_var = extract(schedule, "posterior_log_variance_clipped", t, x_t)
    return mean, var, log_var


def x0_from_eps(schedule: NoiseSchedule, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1-ᾱ) eps) / sqrt(ᾱ)."""
    return (
        extract(schedule, "sqrt_recip_alphas_cumprod", t, x_t) * x_t
        - extract(schedule, "sqrt_recipm1_alphas_cumprod", t, x_t) * eps
    )


def eps_from_x0(schedule: NoiseSchedule, x_t: Tensor, t: Tensor | int, x0: Tensor) -> Tensor:
    """eps = (x_t - sqrt(ᾱ) x0) / sqrt(1-ᾱ)."""
    return (extract(schedule, "sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / extract(
        schedule, "sqrt_recipm1_alphas_cumprod", t, x_t
    )


def x0_from_v(schedule: NoiseSchedule, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
    """x0 = sqrt(ᾱ) x_t - sqrt(1-ᾱ) v."""
    return (
        extract(schedule, "sqrt_alphas_cumprod", t, x_t) * x_t
        - extract(schedule, "sqrt_one_minus_alphas_cumprod", t, x_t) * v
    )


def eps_from_v(schedule: NoiseSchedule, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
    """eps = sqrt(1-ᾱ) x_t + sqrt(ᾱ) v."""
    return (
        extract(schedule, "sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
        + extract(schedule, "sqrt_alphas_cumprod", t, x_t) * v
    )


def v_from_x0_eps(schedule: NoiseSchedule, x0: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
    """v = sqrt(ᾱ) eps - sqrt(1-ᾱ) x0."""
    return (
        extract(schedule, "sqrt_alphas_cumprod", t, x0) * eps
        - extract(schedule, "sqrt_one_minus_alphas_cumprod", t, x0) * x0
    )


def prediction_to_x0_eps(
    schedule: NoiseSchedule, x_t: Tensor, t: Tensor | int, pred: Tensor, prediction: str
) -> tuple[Tensor, Tensor]:
    """Convert a mean prediction of kind ``prediction`` ("eps" | "x0" | "v") into (x0, eps)."""
    if prediction == "eps":
        return x0_from_eps(schedule, x_t, t, pred), pred
    if prediction == "x0":
        return pred, eps_from_x0(schedule, x_t, t, pred)
    if prediction == "v":
        return x0_from_v(schedule, x_t, t, pred), eps_from_v(schedule, x_t, t, pred)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def training_target(schedule: NoiseSchedule, x0: Tensor, t: Tensor | int, noise: Tensor, prediction: str) -> Tensor:
    """The regression target of the mean channels: ``noise``, ``x0`` or ``v``."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_x0_eps(schedule, x0, t, noise)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def model_log_variance(
    schedule: NoiseSchedule, t: Tensor | int, variance: str, var_values: Tensor | None, like: Tensor
) -> Tensor:
    """log σ_t² of the reverse step t -> t-1 of ``schedule``.

    Args:
        variance: "fixed_small" (log β̃_t, clipped at t=0), "fixed_large" (log β_t, with β̃_1 at t=0 as
            improved DDPM), "learned_range" (f log β_t + (1-f) log β̃_t with f = (v+1)/2, ``var_values`` = v,
            not clamped, as Karlo and diffusers) or "learned" (``var_values`` = log σ²).
        var_values: the network's variance channels [like ``like``] for learned variances, else None.

    Returns:
        a tensor broadcastable to ``like`` ([B,1,..] or [like.shape]) of ``like.dtype``.
    """
    if variance == "fixed_small":
        value = extract(schedule, "posterior_log_variance_clipped", t, like)
    elif variance == "fixed_large":
        if isinstance(t, int):
            name = "posterior_log_variance_clipped" if t % len(schedule) == 0 else "log_betas"
            value = extract(schedule, name, t, like)
        else:
            value = torch.where(
                t.to(like.device).reshape(-1, *([1] * (like.ndim - 1))) == 0,
                extract(schedule, "posterior_log_variance_clipped", t, like),
                extract(schedule, "log_betas", t, like),
            )
    elif variance in ("learned_range", "learned"):
        if var_values is None:
            raise ValueError(f"variance {variance!r} needs the model's variance channels")
        if variance == "learned":
            return var_values
        min_log = extract(schedule, "posterior_log_variance_clipped", t, like)
        max_log = extract(schedule, "log_betas", t, like)
        frac = (var_values + 1) / 2
        return frac * max_log + (1 - frac) * min_log
    else:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if isinstance(value, float):
        return torch.full((1,) * like.ndim, value, dtype=like.dtype, device=like.device)
    return value
