"""Sampling the image stages: the decoder (z_i [+ text] -> base image) and the upsamplers.

Each function binds a network's conditioning into a denoiser, wraps classifier-free guidance once
(:func:`unclip.samplers.classifier_free_guidance`), reads the output through the stage's
:class:`~unclip.diffusion.stage_config.DiffusionConfig`, and runs a sampler from :mod:`unclip.samplers`.

Decoder guidance follows DESIGN.md §1 and the decoder's training dropout: the unconditional branch has
z_i replaced by the learned null embedding and the caption dropped (an all-False text mask and a zero
pooled text embedding, which is what :func:`unclip.models.decoder_unet.condition_dropout` trains).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unclip.diffusion.stage_config import DiffusionConfig
from unclip.encoders.base import TextEmbedding
from unclip.models.decoder_unet import DecoderUNet
from unclip.models.upsampler_unet import UpsamplerUNet
from unclip.samplers import Predictor, ProgressFn, classifier_free_guidance, ddim_invert, run_sampler

__all__ = ["decoder_conditioning", "decoder_predictor", "sample_decoder", "invert_decoder", "sample_upsampler"]


def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


def decoder_conditioning(
    decoder: DecoderUNet, image_embedding: Tensor, text: TextEmbedding | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(cond, uncond) keyword conditioning for ``decoder`` on B image embeddings (and optionally captions).

    Text is used only if the decoder takes it; ``text=None`` decodes from z_i alone (as variations and
    edits do), which the decoder learned through text dropout.
    """
    device, dtype = _device_dtype(decoder)
    c = decoder.config
    b = image_embedding.shape[0]
    z = image_embedding.to(device=device, dtype=dtype)
    cond: dict[str, Any] = {"image_embedding": z, "drop_image": torch.zeros(b, dtype=torch.bool, device=device)}
    uncond: dict[str, Any] = {"image_embedding": z, "drop_image": torch.ones(b, dtype=torch.bool, device=device)}
    if c.text_width and text is not None:
        text = text.to(device=device, dtype=dtype)
        cond["text_tokens"], cond["text_mask"] = text.tokens, text.mask.bool()
        uncond["text_tokens"], uncond["text_mask"] = text.tokens, torch.zeros_like(text.mask, dtype=torch.bool)
    if c.use_pooled_text:
        pooled = text.pooled.to(device=device, dtype=dtype) if text is not None else torch.zeros_like(z)
        cond["text_pooled"], uncond["text_pooled"] = pooled, torch.zeros_like(pooled)
    return cond, uncond


def decoder_predictor(
    decoder: DecoderUNet,
    diffusion: DiffusionConfig,
    image_embedding: Tensor,
    text: TextEmbedding | None = None,
    guidance_scale: float = 1.0,
    clip_x0: float | None = 1.0,
) -> Predictor:
    """The guided decoder as a :class:`Predictor` (x0 clamped to [-1, 1] by default, as Karlo)."""
    cond, uncond = decoder_conditioning(decoder, image_embedding, text)
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
) -> Tensor:
    """Decode B image embeddings into [B, 3, S, S] images in [-1, 1] (S = the decoder's image size)."""
    device, dtype = _device_dtype(decoder)
    b, size = image_embedding.shape[0], decoder.config.image_size
    predictor = decoder_predictor(decoder, diffusion, image_embedding, text, guidance_scale)
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
) -> Tensor:
    """DDIM-invert base images [B, 3, S, S] in [-1, 1] to x_T, conditioned on their z_i (no guidance, no text).

    Decoding x_T back with ``sampler="ddim"``, ``eta=0``, the same ``steps`` and guidance 1 reconstructs the
    images; the manipulations decode with other z_i or eta > 0.
    """
    device, dtype = _device_dtype(decoder)
    predictor = decoder_predictor(decoder, diffusion, image_embedding, None, guidance_scale=1.0, clip_x0=None)
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
) -> Tensor:
    """Upsample [B, 3, h, w] images in [-1, 1] to [B, 3, S, S] (S = the upsampler's image size); no guidance.

    The low-resolution input is clamped to [-1, 1] before the network's bicubic resize (Karlo, diffusers).
    """
    device, dtype = _device_dtype(upsampler)
    c = upsampler.config
    cond = low_res.clamp(-1, 1).to(device=device, dtype=dtype)
    param = diffusion.parameterization()
    predictor = Predictor(lambda x, t: upsampler(x, t, low_res=cond), param, clip_x0=1.0)
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
