"""unclip.diffusion: schedules, respacing, forward process, parameterisations, losses (torch only).

Public API::

    from unclip.diffusion import make_schedule, Parameterization, training_losses, sample_timesteps

    schedule = make_schedule("cosine")              # NoiseSchedule, 1000 steps, squaredcos_cap_v2 (β ≤ 0.999)
    schedule = make_schedule("linear")              # DDPM linear betas 1e-4 .. 0.02
    sampling = schedule.respace("25")               # 25 evenly spaced steps: round(i*999/24) (Karlo, diffusers UnCLIP)
    sampling = schedule.respace("ddim50")           # range(0, 1000, 20)
    sampling = schedule.respace([0, 250, 999])      # explicit
    sampling.timesteps                              # long [N]: original step index of each respaced step
    sampling.alphas_cumprod, sampling.betas, ...    # float64 [N] tables (see NoiseSchedule)

    param = Parameterization(prediction="eps", variance="learned_range")   # Karlo's decoder
    param = Parameterization(prediction="x0", variance="fixed_small")      # Karlo's prior

    # One training step (the network is any callable; conditioning is passed by name):
    t = sample_timesteps(B, len(schedule), generator, device)
    losses = training_losses(net, x0, t, schedule=schedule, param=param,
                             model_kwargs={"image_embed": z}, generator=generator)
    losses["loss"].mean().backward()                # "mse", and "vlb" (bits/dim) for learned variance

    q_sample(schedule, x0, t, noise)                # x_t
    q_posterior(schedule, x0, x_t, t)               # (mean, variance, clipped log-variance)
    x0_from_eps / eps_from_x0 / x0_from_v / eps_from_v / v_from_x0_eps / prediction_to_x0_eps
    model_log_variance(schedule, t, variance, var_values, like)
    normal_kl, discretized_gaussian_log_likelihood, vlb_terms
    DiffusionConfig(schedule, num_timesteps, prediction, variance)   # a stage's settings, saved as diffusion.json

Step indices ``t`` are always indices into the schedule object passed alongside (an int, or a long
tensor [B]); ``schedule.timesteps[t]`` is what the network receives. Full notes: ``docs/diffusion.md``.
"""

from unclip.diffusion.losses import (
    channel_mean_error,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    mean_flat,
    min_snr_weight,
    normal_kl,
    sample_timesteps,
    training_losses,
    vlb_terms,
)
from unclip.diffusion.process import (
    PREDICTIONS,
    VARIANCES,
    Parameterization,
    eps_from_v,
    eps_from_x0,
    model_log_variance,
    prediction_to_x0_eps,
    q_posterior,
    q_sample,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from unclip.diffusion.schedule import (
    NoiseSchedule,
    cosine_betas,
    extract,
    linear_betas,
    make_schedule,
    space_timesteps,
)
from unclip.diffusion.stage_config import DiffusionConfig

__all__ = [
    "DiffusionConfig",
    "NoiseSchedule",
    "cosine_betas",
    "linear_betas",
    "make_schedule",
    "space_timesteps",
    "extract",
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
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "gaussian_log_likelihood",
    "mean_flat",
    "vlb_terms",
    "sample_timesteps",
    "training_losses",
    "min_snr_weight",
    "channel_mean_error",
]
