"""Sampling the image stages: the decoder (z_i [+ text] -> base image) and the upsamplers.

Each function binds a network's conditioning into a denoiser, wraps classifier-free guidance once
(:func:`unclip.samplers.classifier_free_guidance`), reads the output through the stage's
:class:`~unclip.diffusion.stage_config.DiffusionConfig`, and runs a sampler from :mod:`unclip.samplers`.

Decoder guidance follows the paper and the decoder's training dropout: the unconditional branch has
z_i replaced by the learned null embedding and the caption dropped (an all-False text mask and a zero
pooled text embedding, which is what :func:`unclip.models.decoder_unet.condition_dropout` trains). Decoders
trained Karlo's way (imported from Karlo or diffusers) instead take ``null_text``, CLIP's encoding of ``""``:
the unconditional branch then gets the null image embedding and that encoding, and decoding without a
caption uses it for the conditional branch too (diffusers' image-variation pipeline).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule
from unclip.diffusion.process import Parameterization
from unclip.diffusion.stage_config import DiffusionConfig
from unclip.encoders.base import TextEmbedding
from unclip.models.decoder_unet import DecoderUNet
from unclip.models.prior import DiffusionPrior
from unclip.models.upsampler_unet import UpsamplerUNet
from unclip.samplers import (
    Predictor,
    ProgressFn,
    StepCallback,
    classifier_free_guidance,
    ddim_invert,
    dpm_solver_timesteps,
    run_sampler,
    unclip_timesteps,
)
from unclip.samplers.base import initial_noise, randn, report
from unclip.stages.prior import repeat_text, select_best_of

__all__ = [
    "decoder_conditioning",
    "decoder_predictor",
    "final_timestep",
    "sample_decoder",
    "invert_decoder",
    "sample_upsampler",
    "unclip_sample_fp32",
    "sample_prior_unclip",
]


def final_timestep(sampler: str, schedule: NoiseSchedule, steps: int) -> int:
    """The training-schedule timestep of a sampler's last step (what :func:`run_sampler` would use)."""
    if sampler == "unclip":
        return unclip_timesteps(len(schedule), steps)[-1]
    spacing = dpm_solver_timesteps(len(schedule), steps) if sampler == "dpm++" else str(steps)
    return int(min(int(t) for t in schedule.respace(spacing).timesteps))


def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


def _expand_text(text: TextEmbedding, batch: int) -> TextEmbedding:
    if text.pooled.shape[0] == batch:
        return text
    if text.pooled.shape[0] != 1:
        raise ValueError(f"null_text must have batch 1 or {batch}, got {text.pooled.shape[0]}")
    return TextEmbedding(text.pooled.expand(batch, -1), text.tokens.expand(batch, -1, -1), text.mask.expand(batch, -1))


def decoder_conditioning(
    decoder: DecoderUNet,
    image_embedding: Tensor,
    text: TextEmbedding | None,
    null_text: TextEmbedding | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(cond, uncond) keyword conditioning for ``decoder`` on B image embeddings (and optionally captions).

    Text is used only if the decoder takes it; ``text=None`` decodes from z_i alone (as variations and
    edits do), which the decoder learned through text dropout. ``null_text`` (CLIP's encoding of "", batch
    1 or B) switches to Karlo's/diffusers' unconditional branch (see the module doc).
    """
    device, dtype = _device_dtype(decoder)
    c = decoder.config
    b = image_embedding.shape[0]
    z = image_embedding.to(device=device, dtype=dtype)
    null = _expand_text(null_text, b).to(device=device, dtype=dtype) if null_text is not None else None
    if text is None:
        text = null
    cond: dict[str, Any] = {"image_embedding": z, "drop_image": torch.zeros(b, dtype=torch.bool, device=device)}
    uncond: dict[str, Any] = {"image_embedding": z, "drop_image": torch.ones(b, dtype=torch.bool, device=device)}
    if c.text_width and text is not None:
        text = text.to(device=device, dtype=dtype)
        cond["text_tokens"], cond["text_mask"] = text.tokens, text.mask.bool()
        if null is not None:
            uncond["text_tokens"], uncond["text_mask"] = null.tokens, null.mask.bool()
        else:
            uncond["text_tokens"], uncond["text_mask"] = text.tokens, torch.zeros_like(text.mask, dtype=torch.bool)
    if c.use_pooled_text:
        pooled = text.pooled.to(device=device, dtype=dtype) if text is not None else torch.zeros_like(z)
        cond["text_pooled"] = pooled
        uncond["text_pooled"] = null.pooled if null is not None else torch.zeros_like(pooled)
    return cond, uncond


def decoder_predictor(
    decoder: DecoderUNet,
    diffusion: DiffusionConfig,
    image_embedding: Tensor,
    text: TextEmbedding | None = None,
    guidance_scale: float = 1.0,
    clip_x0: float | None = 1.0,
    null_text: TextEmbedding | None = None,
) -> Predictor:
    """The guided decoder as a :class:`Predictor` (x0 clamped to [-1, 1] by default, as Karlo)."""
    cond, uncond = decoder_conditioning(decoder, image_embedding, text, null_text)
    param = diffusion.parameterization()
    denoiser = classifier_free_guidance(decoder, guidance_scale, cond=cond, uncond=uncond, param=param)
    return Predictor(denoiser, param, clip_x0=clip_x0)


@torch.no_grad()
def sample_decoder(
    decoder: DecoderUNet,
    diffusion: DiffusionConfig,
    image_embedding: Tensor,
    text: TextEmbedding | None = None,
    *,
    steps: int = 25,
    sampler: str = "ddpm",
    guidance_scale: float = 8.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: ProgressFn | None = None,
    null_text: TextEmbedding | None = None,
) -> Tensor:
    """Decode B image embeddings into [B, 3, S, S] images in [-1, 1] (S = the decoder's image size).

    ``null_text``: see :func:`decoder_conditioning`.
    """
    device, dtype = _device_dtype(decoder)
    b, size = image_embedding.shape[0], decoder.config.image_size
    predictor = decoder_predictor(decoder, diffusion, image_embedding, text, guidance_scale, null_text=null_text)
    if sampler == "unclip":
        shape = None if x_T is not None else (b, decoder.config.in_channels, size, size)
        return unclip_sample_fp32(
            predictor, diffusion.make_schedule(), steps, x_T, shape=shape, generator=generator, device=device,
            dtype=dtype, progress=progress, stage="decoder",
        )  # fmt: skip
    return run_sampler(
        sampler,
        predictor,
        diffusion.make_schedule(),
        steps,
        x_T,
        shape=None if x_T is not None else (b, decoder.config.in_channels, size, size),
        generator=generator,
        device=device,
        dtype=dtype,
        eta=eta,
        progress=progress,
        stage="decoder",
    )


@torch.no_grad()
def invert_decoder(
    decoder: DecoderUNet,
    diffusion: DiffusionConfig,
    images: Tensor,
    image_embedding: Tensor,
    *,
    steps: int = 25,
    progress: ProgressFn | None = None,
    null_text: TextEmbedding | None = None,
) -> Tensor:
    """DDIM-invert base images [B, 3, S, S] in [-1, 1] to x_T, conditioned on their z_i (no guidance, no text).

    Decoding x_T back with ``sampler="ddim"``, ``eta=0``, the same ``steps`` and guidance 1 reconstructs the
    images; the manipulations decode with other z_i or eta > 0.
    """
    device, dtype = _device_dtype(decoder)
    predictor = decoder_predictor(
        decoder, diffusion, image_embedding, None, guidance_scale=1.0, clip_x0=None, null_text=null_text
    )
    schedule = diffusion.make_schedule().respace(str(steps))  # the spacing run_sampler("ddim", steps) uses
    return ddim_invert(predictor, schedule, images.to(device=device, dtype=dtype), progress=progress)


@torch.no_grad()
def sample_upsampler(
    upsampler: UpsamplerUNet,
    diffusion: DiffusionConfig,
    low_res: Tensor,
    *,
    steps: int = 7,
    sampler: str = "ddpm",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: ProgressFn | None = None,
    stage: str = "upsampler",
    last_step_model: UpsamplerUNet | None = None,
) -> Tensor:
    """Upsample [B, 3, h, w] images in [-1, 1] to [B, 3, S, S] (S = the upsampler's image size); no guidance.

    The low-resolution input is clamped to [-1, 1] before the network's bicubic resize (Karlo, diffusers).
    ``last_step_model`` (Karlo's ``model_last_step``, diffusers' ``super_res_last``) replaces ``upsampler``
    for the final step (the one at the smallest timestep).
    """
    device, dtype = _device_dtype(upsampler)
    c = upsampler.config
    cond = low_res.clamp(-1, 1).to(device=device, dtype=dtype)
    param = diffusion.parameterization()
    if last_step_model is None:
        predictor = Predictor(lambda x, t: upsampler(x, t, low_res=cond), param, clip_x0=1.0)
    else:
        final_t = final_timestep(sampler, diffusion.make_schedule(), steps)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            net = last_step_model if int(t[0]) == final_t else upsampler
            return net(x, t, low_res=cond)

        predictor = Predictor(denoise, param, clip_x0=1.0)
    if sampler == "unclip":
        shape = None if x_T is not None else (low_res.shape[0], c.in_channels, c.image_size, c.image_size)
        return unclip_sample_fp32(
            predictor, diffusion.make_schedule(), steps, x_T, shape=shape, generator=generator, device=device,
            dtype=dtype, progress=progress, stage=stage,
        )  # fmt: skip
    return run_sampler(
        sampler,
        predictor,
        diffusion.make_schedule(),
        steps,
        x_T,
        shape=None if x_T is not None else (low_res.shape[0], c.in_channels, c.image_size, c.image_size),
        generator=generator,
        device=device,
        dtype=dtype,
        eta=eta,
        progress=progress,
        stage=stage,
    )


# ---------------------------------------------------------------------------------------------------------------
# sampler "unclip" in diffusers' own float32 arithmetic
#
# unclip.samplers.unclip_sample computes UnCLIPScheduler's update in float64. diffusers computes it in float32 from
# float32 tables (ᾱ = cumprod(1 - β) in float32, then e.g. α = 1 - (1 - ᾱ_t/ᾱ_prev), which cancels at t = 999);
# with random-weight networks and guidance those ~1e-4 relative differences grow to ~0.07 pixel differences after
# 25 + 25 + 7 steps. The pipeline therefore runs sampler "unclip" through the two functions below, which repeat
# diffusers' operations in its order and dtype (parity within ~1e-5).


def unclip_sample_fp32(
    predictor: Predictor,
    schedule: NoiseSchedule,
    num_steps: int,
    x_T: Tensor | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    stage: str = "unclip",
    callback: StepCallback | None = None,
) -> Tensor:
    """diffusers' ``UnCLIPScheduler.step`` loop, operation for operation in float32.

    Same contract as :func:`unclip.samplers.unclip_sample` (training schedule, n >= 2 steps, x_T then one noise
    per step with t > 0 drawn from ``generator``); x0 comes from the raw output as diffusers computes it and
    is then clamped by the predictor (``clip_x0``).
    """
    param: Parameterization = predictor.param
    if param.variance not in ("fixed_small", "learned_range") or param.prediction not in ("eps", "x0", "v"):
        raise ValueError(f"the unclip sampler supports eps/x0/v with fixed_small/learned_range, got {param}")
    if schedule.is_respaced:
        raise ValueError("the unclip sampler takes the training schedule; it respaces by itself")
    timesteps = unclip_timesteps(len(schedule), num_steps)
    betas = schedule.betas.to(torch.float32)
    acp = torch.cumprod(1.0 - betas, dim=0)
    one = torch.tensor(1.0)
    x = initial_noise(x_T, shape, generator, device, dtype)
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


@torch.no_grad()
def sample_prior_unclip(
    prior: DiffusionPrior,
    text: TextEmbedding,
    null_text: TextEmbedding | None,
    *,
    steps: int,
    guidance_scale: float,
    best_of: int,
    clamp: float | None,
    generator: torch.Generator | None,
    diffusion: DiffusionConfig,
    progress: ProgressFn | None = None,
) -> Tensor:
    """:func:`unclip.stages.prior.sample_prior` with sampler "unclip" run by :func:`unclip_sample_fp32`
    (same CFG batch [null; text], clamp, best-of-k and draw order). Returns [B, D] image embeddings."""
    if best_of < 1 or guidance_scale < 0:
        raise ValueError(f"best_of must be >= 1 and guidance_scale >= 0, got {best_of}, {guidance_scale}")
    device, dtype = _device_dtype(prior)
    b, d = text.pooled.shape[0], prior.config.clip_dim
    cond = repeat_text(text.to(device=device, dtype=dtype), best_of)
    param = diffusion.parameterization()
    kwargs = {"text_pooled": cond.pooled, "text_tokens": cond.tokens, "text_mask": cond.mask.bool()}
    if guidance_scale != 1.0:
        if null_text is None:
            raise ValueError("guidance_scale != 1 needs null_text (the CLIP encoding of the empty caption)")
        null = repeat_text(null_text.to(device=device, dtype=dtype), best_of, batch=b)
        uncond = {"text_pooled": null.pooled, "text_tokens": null.tokens, "text_mask": null.mask.bool()}
        denoiser = classifier_free_guidance(prior, guidance_scale, cond=kwargs, uncond=uncond, param=param)
    else:
        denoiser = lambda x, t: prior(x, t, **kwargs)  # noqa: E731
    predictor = Predictor(denoiser, param, clip_x0=clamp)
    z = unclip_sample_fp32(
        predictor, diffusion.make_schedule(), steps, shape=(b * best_of, d), generator=generator, device=device,
        dtype=dtype, progress=progress, stage="prior",
    )  # fmt: skip
    candidates = prior.denormalize(z).view(b, best_of, d)
    if best_of == 1:
        return candidates[:, 0]
    return select_best_of(candidates, cond.pooled.view(b, best_of, d)[:, 0])[0]
