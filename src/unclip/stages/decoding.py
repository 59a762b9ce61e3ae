"""Sampling the image stages: the decoder (z_i [+ text] -> base image) and the upsamplers.

Each function binds a network's conditioning into a denoiser, wraps classifier-free guidance once
(:func:`unclip.samplers.guided_denoiser`), reads the output through the stage's
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
from unclip.diffusion.stage_config import DiffusionConfig
from unclip.encoders.base import TextEmbedding
from unclip.models.decoder_unet import DecoderUNet
from unclip.models.upsampler_unet import UpsamplerUNet
from unclip.samplers import (
    Predictor,
    ProgressFn,
    ZeroMeanNoise,
    concat_conditioning,
    ddim_invert,
    guided_denoiser,
    run_sampler,
    sampling_dtype,
)
from unclip.samplers.registry import sampler_spec

__all__ = [
    "decoder_conditioning",
    "decoder_predictor",
    "keep_input_mean",
    "final_timestep",
    "sample_decoder",
    "invert_decoder",
    "sample_upsampler",
    "image_space_denoiser",
    "upsampler_denoiser",
]


def final_timestep(sampler: str, schedule: NoiseSchedule, steps: int) -> int:
    """The training-schedule timestep of a sampler's last step (what :func:`run_sampler` would use)."""
    return sampler_spec(sampler).sampling_timesteps(schedule, steps)[-1]


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
    guidance_keep_mean: bool = False,
) -> Predictor:
    """The guided decoder as a :class:`Predictor` (x0 clamped to [-1, 1] by default, as Karlo);
    ``guidance_keep_mean``: guidance leaves each channel's spatial mean to the conditional branch
    (:func:`unclip.samplers.guidance.guide`)."""
    cond, uncond = decoder_conditioning(decoder, image_embedding, text, null_text)
    param = diffusion.parameterization()
    if guidance_scale == 1.0:
        denoiser = decoder.conditioned(**cond)
    else:  # the doubled batch [uncond; cond], its step-independent projections computed once
        doubled = decoder.conditioned(**concat_conditioning(uncond, cond))
        denoiser = guided_denoiser(doubled, guidance_scale, param, keep_mean=guidance_keep_mean)
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
    guidance_keep_mean: bool = False,
    zero_mean_noise: bool = False,
) -> Tensor:
    """Decode B image embeddings into [B, 3, S, S] images in [-1, 1] (S = the decoder's image size).

    A bf16/fp16 decoder runs in its dtype; the sampler's arithmetic and the result are float32.

    ``null_text``: see :func:`decoder_conditioning`; ``guidance_keep_mean``: see :func:`decoder_predictor`;
    ``zero_mean_noise``: the sampler's noise (x_T when drawn, and each step's) comes from
    :class:`unclip.samplers.ZeroMeanNoise`.
    """
    device, dtype = _device_dtype(decoder)
    b, size = image_embedding.shape[0], decoder.config.image_size
    predictor = decoder_predictor(
        decoder, diffusion, image_embedding, text, guidance_scale, null_text=null_text,
        guidance_keep_mean=guidance_keep_mean,
    )  # fmt: skip
    return run_sampler(
        sampler,
        predictor,
        diffusion.make_schedule(),
        steps,
        x_T,
        shape=None if x_T is not None else (b, decoder.config.in_channels, size, size),
        generator=ZeroMeanNoise(generator) if zero_mean_noise else generator,
        device=device,
        dtype=sampling_dtype(dtype),
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
    return ddim_invert(predictor, schedule, images.to(device=device, dtype=sampling_dtype(dtype)), progress=progress)


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
    keep_mean: bool = False,
) -> Tensor:
    """Upsample [B, 3, h, w] images in [-1, 1] to [B, 3, S, S] (S = the upsampler's image size); no guidance.

    The low-resolution input is clamped to [-1, 1] before the network's bicubic resize (Karlo, diffusers).
    ``last_step_model`` (Karlo's ``model_last_step``, diffusers' ``super_res_last``) replaces ``upsampler``
    for the final step (the one at the smallest timestep). ``keep_mean`` shifts each output channel so that
    its spatial mean is the input's (:func:`keep_input_mean`).
    """
    device, dtype = _device_dtype(upsampler)
    c = upsampler.config
    param = diffusion.parameterization()
    size = (c.image_size, c.image_size) if x_T is None else (x_T.shape[-2], x_T.shape[-1])
    final_t = final_timestep(sampler, diffusion.make_schedule(), steps) if last_step_model is not None else None
    denoise = upsampler_denoiser(upsampler, diffusion, low_res, size, final_t, last_step_model)
    predictor = Predictor(denoise, param, clip_x0=1.0)
    images = run_sampler(
        sampler,
        predictor,
        diffusion.make_schedule(),
        steps,
        x_T,
        shape=None if x_T is not None else (low_res.shape[0], c.in_channels, c.image_size, c.image_size),
        generator=generator,
        device=device,
        dtype=sampling_dtype(dtype),
        eta=eta,
        progress=progress,
        stage=stage,
    )
    return keep_input_mean(images, low_res) if keep_mean else images


def keep_input_mean(images: Tensor, low_res: Tensor) -> Tensor:
    """Shift upsampled ``images`` [B, C, H, W] so each channel's spatial mean is that of ``low_res`` [B, C, h, w]
    (clamped to [-1, 1], as the network sees it); the result is clamped to [-1, 1].

    A downscale by area averaging keeps an image's mean, so the true high-resolution image has its low-resolution
    version's mean colour: an upsampler should add detail, not colour. A sampled one drifts by a few levels per
    image (docs/shapes_model.md); this removes the drift and leaves everything else as sampled.
    """
    if images.shape[:2] != low_res.shape[:2]:
        raise ValueError(f"images {tuple(images.shape)} and low_res {tuple(low_res.shape)} differ in batch or channels")
    target = low_res.to(images.device, images.dtype).clamp(-1, 1).mean(dim=(2, 3), keepdim=True)
    return (images - images.mean(dim=(2, 3), keepdim=True) + target).clamp(-1, 1)


def image_space_denoiser(conditioned: Any, diffusion: DiffusionConfig, resized_low_res: Tensor) -> Any:
    """A residual upsampler (trained on r = x - bicubic(low_res), ``UpsamplerConfig.residual``) as a denoiser of
    the image x itself, so samplers, x0 clamping and inpainting work in image space unchanged.

    With x_t = a_t x0 + s_t eps and r = x0 - b (b = ``resized_low_res`` [B, 3, H, W]): r_t = x_t - a_t b, and the
    network's prediction for r_t converts as eps -> eps, x0 -> x0 + b, v = a_t eps - s_t x0 -> v - s_t b. Learned
    variance channels pass through. ``conditioned``: ``(r_t [B, 3, H, W], t [B]) -> [B, C, H, W]``.
    """
    schedule = diffusion.make_schedule()
    prediction = diffusion.parameterization().prediction
    signal = schedule.sqrt_alphas_cumprod.to(resized_low_res.device, torch.float64)
    noise = schedule.sqrt_one_minus_alphas_cumprod.to(resized_low_res.device, torch.float64)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        a = signal[t].to(x.dtype).view(-1, 1, 1, 1)
        base = resized_low_res.to(x.dtype)
        out = conditioned(x - a * base, t)
        mean, rest = out[:, : base.shape[1]], out[:, base.shape[1] :]
        if prediction == "x0":
            mean = mean + base.to(mean.dtype)
        elif prediction == "v":
            mean = mean - (noise[t].view(-1, 1, 1, 1) * base).to(mean.dtype)
        return torch.cat([mean, rest], dim=1) if rest.shape[1] else mean

    return denoise


def upsampler_denoiser(
    upsampler: UpsamplerUNet,
    diffusion: DiffusionConfig,
    low_res: Tensor,
    size: tuple[int, int],
    final_t: int | None = None,
    last_step_model: UpsamplerUNet | None = None,
) -> Any:
    """``(x_t [B, 3, H, W], t [B]) -> prediction`` of the upsampler conditioned on ``low_res`` [B, 3, h, w] (clamped
    to [-1, 1], resized to ``size`` once), in image space (residual upsamplers wrapped); ``last_step_model``
    (Karlo's ``model_last_step``) takes the evaluation at timestep ``final_t``."""
    device, dtype = _device_dtype(upsampler)
    cond = low_res.clamp(-1, 1).to(device=device, dtype=dtype)

    def for_model(net: UpsamplerUNet) -> Any:
        conditioned = net.conditioned(cond, size, dtype=dtype)  # the low-res resize, once per call
        if net.config.residual:
            return image_space_denoiser(conditioned, diffusion, conditioned.resized_low_res)
        return conditioned

    model = for_model(upsampler)
    if last_step_model is None:
        return model
    if final_t is None:
        raise ValueError("final_t is needed with a last_step_model")
    last_model = for_model(last_step_model)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        return last_model(x, t) if int(t[0]) == final_t else model(x, t)

    return denoise
