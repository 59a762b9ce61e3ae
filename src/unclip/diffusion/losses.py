"""Training losses: MSE on the chosen target, and the hybrid MSE + VLB loss for learned variance.

The entry point is :func:`training_losses`; the network is passed in as a callable, diffusion never
imports a network. The VLB terms (improved DDPM, Nichol & Dhariwal 2021, §3.1) are computed in float32
with autocast disabled, whatever the model's precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from unclip.diffusion.process import (
    Parameterization,
    model_log_variance,
    prediction_to_x0_eps,
    q_posterior,
    q_sample,
    training_target,
)
from unclip.diffusion.schedule import NoiseSchedule, extract

__all__ = [
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "gaussian_log_likelihood",
    "mean_flat",
    "vlb_terms",
    "sample_timesteps",
    "min_snr_weight",
    "channel_mean_error",
    "training_losses",
]

_LOG2 = math.log(2.0)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all dimensions but the first: [B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (arguments broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor, bins: int = 256) -> Tensor:
    """log-probability of data ``x`` ∈ [-1, 1] quantised to ``bins`` levels under N(means, e^{2 log_scales}).

    Each level owns the interval of width 2/(bins-1) around it; the two end levels own the tails
    (-inf, -1 + 1/(bins-1)] and [1 - 1/(bins-1), inf). Computed in log space with ``log_ndtr``: an interval
    in the upper tail is reflected to the lower tail (Φ(b) - Φ(a) = Φ(-a) - Φ(-b)) so that no probability
    is lost to cancellation (improved DDPM's version floors such bins at 1e-12 in float32).

    Returns:
        elementwise log-likelihoods in nats, shape of ``x``.
    """
    half_bin = 1.0 / (bins - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    plus_in = inv_std * (centered + half_bin)
    min_in = inv_std * (centered - half_bin)
    log_cdf_plus = torch.special.log_ndtr(plus_in)  # lowest level: log Φ(plus)
    log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)  # highest level: log(1 - Φ(min))
    # Middle levels: log(Φ(hi) - Φ(lo)), taken on the side of the distribution where Φ is small.
    upper = (min_in + plus_in) > 0
    hi = torch.where(upper, -min_in, plus_in)
    lo = torch.where(upper, -plus_in, min_in)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    log_delta = log_hi + torch.log(-torch.expm1((log_lo - log_hi).clamp(max=-1e-30)))
    edge = 1.0 - half_bin  # midway between the end level and its neighbour
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_min, log_delta))


def gaussian_log_likelihood(x: Tensor, means: Tensor, log_var: Tensor) -> Tensor:
    """Continuous Gaussian log-density of ``x`` under N(means, e^log_var), elementwise, in nats."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - means) ** 2 * torch.exp(-log_var))


def vlb_terms(
    schedule: NoiseSchedule,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    model_mean: Tensor,
    model_log_var: Tensor,
    bins: int | None = 256,
) -> Tensor:
    """The variational bound term L_t per sample, in bits per dimension, computed in float32.

    ``L_t = KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))`` for t > 0 and ``-log p(x0|x_1)`` for t = 0 (discretised
    Gaussian over ``bins`` levels for data in [-1, 1]; continuous Gaussian density when ``bins`` is None).

    Args:
        x0, x_t, model_mean: [B, ...]; model_log_var: broadcastable to them; t: long [B] schedule indices.

    Returns:
        float32 [B].
    """
    with torch.autocast(device_type=x0.device.type, enabled=False):
        x0, x_t = x0.float(), x_t.float()
        model_mean, model_log_var = model_mean.float(), model_log_var.float()
        true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var).expand_as(x0)) / _LOG2
        if bins is None:
            ll = gaussian_log_likelihood(x0, model_mean, model_log_var)
        else:
            ll = discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var, bins=bins)
        nll = -mean_flat(ll.expand_as(x0)) / _LOG2
        return torch.where(t.to(x0.device) == 0, nll, kl)


def sample_timesteps(
    batch_size: int,
    num_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform training step indices: long [batch_size] in [0, num_timesteps), drawn from ``generator``."""
    gen_device = generator.device if generator is not None else (device or "cpu")
    t = torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=gen_device)
    return t.to(device) if device is not None else t


def channel_mean_error(error: Tensor) -> Tensor:
    """Squared error of each channel's spatial mean, averaged over channels: [B, C, H, W] -> [B].

    The per-pixel MSE is the sum of this DC term and the energy of every other frequency (Parseval), so a
    model can leave a whole image a few levels off in colour at almost no cost; weighting this term makes the
    global colour as expensive as it looks.
    """
    return error.mean(dim=(2, 3)).pow(2).mean(dim=1)


def min_snr_weight(schedule: NoiseSchedule, t: Tensor, prediction: str, gamma: float) -> Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for the MSE on ``prediction``'s target: float32 [B].

    Each step's MSE is reweighted so that, expressed as an x0 error, it counts ``min(SNR_t, γ)`` (SNR_t =
    ᾱ_t / (1 - ᾱ_t)): the weight is ``min(SNR, γ)/SNR`` for eps, ``min(SNR, γ)`` for x0 and
    ``min(SNR, γ)/(SNR + 1)`` for v. Nearly clean steps, which otherwise dominate the x0-equivalent loss,
    stop crowding out the noisy ones where the layout and shapes are decided.
    """
    if not gamma > 0:
        raise ValueError(f"min-SNR gamma must be > 0, got {gamma}")
    acp = schedule.alphas_cumprod.to(t.device)[t]
    snr = acp / (1.0 - acp)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        weight = clipped / snr
    elif prediction == "x0":
        weight = clipped
    elif prediction == "v":
        weight = clipped / (snr + 1.0)
    else:
        raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
    return weight.float()


def _straight_through_clamp(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Forward: clamp(x, low, high); backward: identity (the gradient still points back into range)."""
    return x + (torch.maximum(torch.minimum(x, high), low) - x).detach()


def training_losses(
    model_fn: Callable[..., Tensor],
    x0: Tensor,
    t: Tensor,
    noise: Tensor | None = None,
    *,
    schedule: NoiseSchedule,
    param: Parameterization,
    model_kwargs: Mapping[str, Any] | None = None,
    lambda_vlb: float | None = None,
    generator: torch.Generator | None = None,
    vlb_bins: int | None = 256,
    stable_variance: bool = True,
    snr_gamma: float | None = None,
    channel_mean_weight: float = 0.0,
) -> dict[str, Tensor]:
    """Per-sample training losses of one batch.

    Noises ``x0`` to ``x_t = q_sample(x0, t, noise)``, calls ``model_fn(x_t, schedule.timesteps[t],
    **model_kwargs)`` (the network sees *original* step indices) and compares its mean channels with the
    target of ``param.prediction`` (eps: noise, x0: x0, v: v) by MSE. For a learned variance it adds the
    VLB term with the mean channels detached (the VLB trains only the variance channels), weighted by
    ``lambda_vlb`` (default ``len(schedule)/1000``: improved DDPM's RESCALED_MSE, Karlo's decoder loss).

    Args:
        model_fn: the network, ``(x_t [B, ...], t long [B], **model_kwargs) -> raw output`` of shape
            [B, ...] (doubled along ``param.channel_dim`` for learned variance).
        x0: clean data [B, ...] (images in [-1, 1] when the discretised VLB is used).
        t: long [B] step indices into ``schedule`` (see :func:`sample_timesteps`).
        noise: standard-normal [like x0]; drawn from ``generator`` when None.
        schedule: the training schedule (usually ``make_schedule("cosine")``).
        param: how to read the model output.
        model_kwargs: conditioning passed by name to ``model_fn``.
        lambda_vlb: weight of the VLB term; None: ``len(schedule)/1000``.
        vlb_bins: data quantisation levels for the t=0 term (None: continuous Gaussian density, e.g. for
            embeddings).
        stable_variance: clamp the model log-variance to [log β̃_t, log β_t] in the VLB forward pass with a
            straight-through gradient, so a tiny network whose variance channels wander far out of range
            cannot overflow ``exp`` (DALLE2-pytorch issues #138/#311). Identical to improved DDPM while the
            variance channels stay in range.
        snr_gamma: when set, the MSE term is weighted by :func:`min_snr_weight` (the VLB term is not).
        channel_mean_weight: w >= 0 adds ``w * mean_c(mean_hw(pred - target))^2`` for image data [B, C, H, W]:
            the error of each channel's spatial mean, an image's global colour, then counts (1 + w) times in
            the loss instead of once among H·W frequencies (:func:`channel_mean_error`). Weighted like the
            MSE term (min-SNR included).

    Returns:
        dict of float32 [B] tensors: ``"loss"`` (what to minimise after ``.mean()``), ``"mse"``, and
        ``"vlb"`` (bits/dim, unweighted) for learned variance.
    """
    if x0.ndim < 2:
        raise ValueError(f"x0 must be [B, ...] with at least 2 dims, got shape {tuple(x0.shape)}")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
    if not channel_mean_weight >= 0:
        raise ValueError(f"channel_mean_weight must be >= 0, got {channel_mean_weight}")
    if channel_mean_weight and x0.ndim != 4:
        raise ValueError(f"channel_mean_weight needs images [B, C, H, W], got x0 of shape {tuple(x0.shape)}")
    t = t.to(x0.device)
    if int(t.min()) < 0 or int(t.max()) >= len(schedule):
        raise ValueError(f"t must lie in [0, {len(schedule) - 1}], got {int(t.min())}..{int(t.max())}")
    if noise is None:
        gen_device = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    x_t = q_sample(schedule, x0, t, noise)
    model_t = schedule.timesteps.to(x0.device)[t]
    output = model_fn(x_t, model_t, **(model_kwargs or {}))
    mean_out, var_out = param.split(output, x0)

    target = training_target(schedule, x0, t, noise, param.prediction)
    error = mean_out.float() - target.float()
    mse = mean_flat(error**2)
    losses = {"mse": mse}
    if channel_mean_weight:
        losses["channel_mean_mse"] = channel_mean_error(error)
        mse = mse + channel_mean_weight * losses["channel_mean_mse"]
    weighted_mse = mse if snr_gamma is None else mse * min_snr_weight(schedule, t, param.prediction, snr_gamma)
    if not param.learned_variance:
        losses["loss"] = weighted_mse
        return losses

    with torch.autocast(device_type=x0.device.type, enabled=False):
        x0f, x_tf = x0.float(), x_t.float()
        # Stop the VLB gradient into the mean: it trains only the variance channels.
        x0_hat, _ = prediction_to_x0_eps(schedule, x_tf, t, mean_out.detach().float(), param.prediction)
        model_mean, _, _ = q_posterior(schedule, x0_hat, x_tf, t)
        log_var = model_log_variance(schedule, t, param.variance, var_out.float(), x_tf)
        if stable_variance:
            low = extract(schedule, "posterior_log_variance_clipped", t, x_tf)
            high = extract(schedule, "log_betas", t, x_tf)
            log_var = _straight_through_clamp(log_var, torch.minimum(low, high), torch.maximum(low, high))
        vlb = vlb_terms(schedule, x0f, x_tf, t, model_mean, log_var, bins=vlb_bins)
    weight = len(schedule) / 1000.0 if lambda_vlb is None else float(lambda_vlb)
    losses["vlb"] = vlb
    losses["loss"] = weighted_mse + weight * vlb
    return losses
