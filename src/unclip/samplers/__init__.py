"""unclip.samplers: sampling algorithms on one denoiser contract (imports unclip.diffusion only).

Public API::

    from unclip.diffusion import make_schedule, Parameterization
    from unclip.samplers import (Predictor, classifier_free_guidance, run_sampler, ddpm_sample, ddim_sample,
                                 ddim_invert, dpm_solver_sample, dpm_solver_timesteps, unclip_sample)

    # 1. The contract: a Denoiser is (x_t [B, ...], t long [B] original step indices) -> raw output.
    #    Conditioning is bound inside it; CFG runs the model once on [uncond; cond]:
    denoiser = classifier_free_guidance(net, 8.0, cond={"image_embed": z}, uncond={"image_embed": z_null},
                                        param=param)
    # 2. The Predictor reads raw outputs once: (x0, eps, variance channels), with optional x0 processing.
    predictor = Predictor(denoiser, Parameterization("eps", "learned_range"), clip_x0=1.0)
    #    (or threshold=(0.995, max_value) for dynamic thresholding; clip_x0=10.0 for Karlo's prior)
    # 3. A sampler walks a (respaced) schedule:
    schedule = make_schedule("cosine")
    x0 = ddpm_sample(predictor, schedule.respace("25"), shape=(B, 3, 64, 64), generator=g)
    x0 = ddim_sample(predictor, schedule.respace("ddim50"), x_T, eta=0.0)
    x_T = ddim_invert(predictor, schedule.respace("50"), image)          # image -> x_T (eta=0 DDIM path)
    x0 = dpm_solver_sample(predictor, schedule.respace(dpm_solver_timesteps(1000, 20)), x_T)  # DPM-Solver++(2M)
    x0 = unclip_sample(predictor, schedule, 25, x_T, generator=g)       # diffusers' UnCLIPScheduler
    x0 = run_sampler("ddpm" | "ddim" | "dpm++" | "unclip", predictor, schedule, num_steps, shape=..., generator=g)
    x0 = repaint_sample(predictor, schedule.respace("25"), known, keep, options=RePaintOptions(5, 2))  # inpainting
    sampler_spec("unclip").min_steps    # 2; SAMPLERS: name -> SamplerSpec (function, spacing, min steps, support)

Every sampler takes ``x_T`` or ``shape`` (+ ``device``, ``dtype``), a ``generator`` (draw order: x_T first,
then one noise per noise-adding step), ``progress(stage, step, total)`` and ``callback(step, x, x0)``,
and works on any shape ([B, D] embeddings or [B, C, H, W] images), device and dtype. Step functions
(``ddpm_step``, ``ddim_step``, ``ddim_inversion_step``, ``dpm_solver_pp_update``) are public for custom
loops. A new sampler is one file here plus one :class:`SamplerSpec` in ``registry.py``; ``run_sampler``, the
stages, the pipeline, the CLI, the HTTP API and the page read :data:`SAMPLERS`. Full notes: ``docs/diffusion.md``.
"""

from unclip.diffusion import Parameterization
from unclip.samplers.base import (
    Denoiser,
    Prediction,
    Predictor,
    ProgressFn,
    StepCallback,
    ZeroMeanNoise,
    dynamic_threshold,
    initial_noise,
    randn,
    sampling_dtype,
)
from unclip.samplers.ddim import ddim_sample, ddim_sigma, ddim_step
from unclip.samplers.ddim_inversion import ddim_inversion_step, ddim_invert
from unclip.samplers.ddpm import ddpm_sample, ddpm_step
from unclip.samplers.dpm_solver import dpm_solver_pp_update, dpm_solver_sample, dpm_solver_timesteps
from unclip.samplers.guidance import classifier_free_guidance, concat_conditioning, guide, guided_denoiser
from unclip.samplers.registry import SAMPLER_NAMES, SAMPLERS, SamplerSpec, sampler_spec
from unclip.samplers.repaint import RePaintOptions, repaint_renoise, repaint_sample, repaint_timesteps
from unclip.samplers.run import run_sampler
from unclip.samplers.unclip import unclip_predictor, unclip_sample, unclip_tables, unclip_timesteps

__all__ = [
    "Parameterization",
    "Denoiser",
    "Prediction",
    "Predictor",
    "ProgressFn",
    "StepCallback",
    "dynamic_threshold",
    "initial_noise",
    "randn",
    "ZeroMeanNoise",
    "ddpm_sample",
    "ddpm_step",
    "ddim_sample",
    "ddim_sigma",
    "ddim_step",
    "ddim_inversion_step",
    "ddim_invert",
    "dpm_solver_pp_update",
    "dpm_solver_sample",
    "dpm_solver_timesteps",
    "unclip_predictor",
    "unclip_sample",
    "unclip_tables",
    "unclip_timesteps",
    "RePaintOptions",
    "repaint_renoise",
    "repaint_sample",
    "repaint_timesteps",
    "classifier_free_guidance",
    "concat_conditioning",
    "sampling_dtype",
    "guide",
    "guided_denoiser",
    "SAMPLER_NAMES",
    "SAMPLERS",
    "SamplerSpec",
    "sampler_spec",
    "run_sampler",
]
