"""Inpainting the image stages with RePaint (:mod:`unclip.samplers.repaint`): the decoder and the upsamplers keep
the known pixels at every step and generate the rest, with the models as trained (no retraining).

- Decoder: the guided decoder of :func:`unclip.stages.decoding.decoder_predictor` (z_i, caption, CFG) under
  RePaint on the DDPM spacing of ``steps`` (what ``run_sampler("ddpm", steps)`` walks), with the jump-back schedule
  of :class:`~unclip.samplers.repaint.RePaintOptions`.
- Upsamplers: conditioned on the low-resolution inpainted image as usual, while the known image at the
  upsampler's resolution is kept the same way; the last step pastes it exactly.

``keep`` masks are [B or 1, 1, S, S] at the stage's resolution, 1 where the known image is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unclip.diffusion import NoiseSchedule
from unclip.diffusion.stage_config import DiffusionConfig
from unclip.encoders.base import TextEmbedding
from unclip.models.decoder_unet import DecoderUNet
from unclip.models.upsampler_unet import UpsamplerUNet
from unclip.samplers import Predictor, ProgressFn, ZeroMeanNoise, sampling_dtype
from unclip.samplers.registry import sampler_spec
from unclip.samplers.repaint import RePaintOptions, repaint_sample
from unclip.stages.decoding import decoder_predictor, upsampler_denoiser

__all__ = ["repaint_schedule", "upsampler_predictor", "inpaint_decoder", "inpaint_upsampler"]


def repaint_schedule(diffusion: DiffusionConfig, steps: int) -> NoiseSchedule:
    """The stage's training schedule respaced as the ``ddpm`` sampler respaces it for ``steps`` steps."""
    schedule = diffusion.make_schedule()
    return schedule.respace(sampler_spec("ddpm").spacing(len(schedule), steps))


def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


def _stage_inputs(known: Tensor, keep: Tensor, size: int, module: torch.nn.Module) -> tuple[Tensor, Tensor]:
    """``known`` [B, 3, size, size] and ``keep`` [B or 1, 1, size, size] checked, on the module's device in its
    sampling dtype."""
    if known.dim() != 4 or known.shape[-2:] != (size, size):
        raise ValueError(f"the known image must be [B, 3, {size}, {size}] for this stage, got {tuple(known.shape)}")
    if keep.dim() != 4 or keep.shape[1] != 1 or keep.shape[-2:] != (size, size):
        raise ValueError(f"keep must be [B or 1, 1, {size}, {size}] for this stage, got {tuple(keep.shape)}")
    device, dtype = _device_dtype(module)
    dtype = sampling_dtype(dtype)
    return known.to(device=device, dtype=dtype), keep.to(device=device, dtype=dtype)


@torch.no_grad()
def inpaint_decoder(
    decoder: DecoderUNet,
    diffusion: DiffusionConfig,
    image_embedding: Tensor,
    text: TextEmbedding | None,
    known: Tensor,
    keep: Tensor,
    *,
    steps: int = 25,
    guidance_scale: float = 8.0,
    options: RePaintOptions | None = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: ProgressFn | None = None,
    null_text: TextEmbedding | None = None,
    guidance_keep_mean: bool = False,
    zero_mean_noise: bool = False,
) -> Tensor:
    """Inpaint B base images [B, 3, S, S] (S = the decoder's image size) from their z_i [B, D] (+ captions).

    Args:
        known: the known images [B, 3, S, S] in [-1, 1].
        keep: [B or 1, 1, S, S] in [0, 1], 1 where ``known`` is kept.
        steps, guidance_scale, null_text, guidance_keep_mean, zero_mean_noise: as
            :func:`unclip.stages.decoding.sample_decoder`.
        options: RePaint's jump-back schedule (default: none).

    Returns:
        [B, 3, S, S] float32 in [-1, 1], equal to ``known`` where ``keep`` is 1.
    """
    known, keep = _stage_inputs(known, keep, decoder.config.image_size, decoder)
    if known.shape[0] != image_embedding.shape[0]:
        raise ValueError(f"{image_embedding.shape[0]} image embeddings for {known.shape[0]} known images")
    predictor = decoder_predictor(
        decoder, diffusion, image_embedding, text, guidance_scale, null_text=null_text,
        guidance_keep_mean=guidance_keep_mean,
    )  # fmt: skip
    return repaint_sample(
        predictor, repaint_schedule(diffusion, steps), known, keep, x_T,
        options=options, generator=ZeroMeanNoise(generator) if zero_mean_noise else generator, progress=progress,
        stage="decoder",
    )  # fmt: skip


def upsampler_predictor(
    upsampler: UpsamplerUNet,
    diffusion: DiffusionConfig,
    low_res: Tensor,
    final_timestep: int,
    last_step_model: UpsamplerUNet | None = None,
) -> Predictor:
    """The upsampler conditioned on ``low_res`` [B, 3, h, w] (clamped to [-1, 1], resized once) as a
    :class:`Predictor` clamping x0 to [-1, 1]; ``last_step_model`` takes the evaluation at ``final_timestep``
    (as :func:`unclip.stages.decoding.sample_upsampler` builds it)."""
    size = (upsampler.config.image_size, upsampler.config.image_size)
    denoise = upsampler_denoiser(upsampler, diffusion, low_res, size, final_timestep, last_step_model)
    return Predictor(denoise, diffusion.parameterization(), clip_x0=1.0)


@torch.no_grad()
def inpaint_upsampler(
    upsampler: UpsamplerUNet,
    diffusion: DiffusionConfig,
    low_res: Tensor,
    known: Tensor,
    keep: Tensor,
    *,
    steps: int = 7,
    options: RePaintOptions | None = None,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    stage: str = "upsampler",
    last_step_model: UpsamplerUNet | None = None,
) -> Tensor:
    """Upsample inpainted images [B, 3, h, w] to [B, 3, S, S] keeping the known pixels at resolution S.

    Args:
        low_res: the previous stage's output in [-1, 1].
        known: the known images at this stage's resolution [B, 3, S, S] in [-1, 1].
        keep: [B or 1, 1, S, S] in [0, 1], 1 where ``known`` is kept.
        options: RePaint's jump-back schedule (default: none; the low-resolution input already agrees with the
            known region).
        last_step_model: as :func:`unclip.stages.decoding.sample_upsampler`.

    Returns:
        [B, 3, S, S] float32 in [-1, 1], equal to ``known`` where ``keep`` is 1.
    """
    known, keep = _stage_inputs(known, keep, upsampler.config.image_size, upsampler)
    if known.shape[0] != low_res.shape[0]:
        raise ValueError(f"{low_res.shape[0]} low-resolution images for {known.shape[0]} known images")
    schedule = repaint_schedule(diffusion, steps)
    predictor = upsampler_predictor(upsampler, diffusion, low_res, int(schedule.timesteps[0]), last_step_model)
    return repaint_sample(
        predictor, schedule, known, keep, options=options, generator=generator, progress=progress, stage=stage
    )
