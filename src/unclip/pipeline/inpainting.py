"""Inpainting with the pipeline's models as trained: ``inpaint(pipe, image, mask, prompt)`` (``pipe.inpaint``).

The prompt's image embedding z_i comes from the prior (as text-to-image). The prior knows nothing of the image,
and a z_i whose unspecified attributes (where the object is, the background) disagree with the kept pixels makes
the decoder fill the hole with background, so ``context_candidates`` prior samples are drawn per image and the
one that best fits both is kept: the largest ``cos(z, z_image) + cos(z, z_text)``, z_image the CLIP embedding of
the input image (a best-of, as the paper's ``z_i · z_t`` ranking; 1 = the prior's sample as is). The decoder then
samples with RePaint (:mod:`unclip.samplers.repaint`): the known pixels are kept, forward-noised to each step's
level, while the masked region is generated from z_i and the caption; with ``jump_n_sample`` > 1 it jumps back to
harmonise the two. The upsamplers keep the known pixels at their resolution the same way, so the final images
equal the input image outside the mask (up to the 8-bit round trip; exactly, for an input already at the final
size).

Masks follow diffusers: white = repaint, black = keep. A mask (PIL image, path, or array) is converted to grey
levels in [0, 1] and thresholded at 0.5; it must have the image's size. Image and mask are centre-cropped to a
square and resized to each stage's resolution; a pixel of a lower (or higher) resolution is repainted when any
part of it is. A mask with no white pixel (inside the centre square) is an error; an all-white mask keeps nothing
and is plain text-to-image generation from the same draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from unclip.encoders.base import TextEmbedding
from unclip.images import (
    OUTPUT_TYPES,
    ImageInput,
    center_crop_square,
    load_image,
    open_image,
    pil_to_tensor,
    tensor_to_output,
)
from unclip.pipeline import bounds
from unclip.pipeline.options import GenerationDefaults, UnCLIPOutput, _check_positive_int, check_finite, check_prompts
from unclip.samplers import ProgressFn
from unclip.samplers.repaint import RePaintOptions
from unclip.stages.inpainting import inpaint_decoder, inpaint_upsampler

if TYPE_CHECKING:
    from unclip.pipeline.unclip_pipeline import UnCLIPPipeline

__all__ = [
    "CONTEXT_CANDIDATES",
    "MAX_JUMP_N_SAMPLE",
    "MaskInput",
    "InpaintInputs",
    "load_mask",
    "load_inpaint_inputs",
    "repaint_options",
    "fitting_embeddings",
    "inpaint",
]

MaskInput = Image.Image | str | Path | np.ndarray | Tensor
MAX_JUMP_N_SAMPLE = 50
"""Most resamplings per jump point (the decoder's cost grows about linearly with it; RePaint used 10)."""
CONTEXT_CANDIDATES = 16
"""Default prior samples per image ranked against the image. Built-in shapes model, held-out scenes, prompts naming
colour and shape only, images whose prompted object the oracle reads anywhere: 1 -> 0.15, 4 -> 0.28, 8 -> 0.53,
16 -> 0.58 (20 scenes x 2); benchmarks/inpaint_quality.py (object inside the mask): 8 -> 0.35, 16 -> 0.55, 32 -> 0.50,
64 -> 0.65 (10 scenes x 2). The prior's cost grows linearly with it; 1 for large priors on small machines."""
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, PIL's RGB -> L


def _unit_array(array: np.ndarray, name: str) -> np.ndarray:
    """A mask array [H, W] or [H, W, C] (C = 1, 3, 4; alpha ignored) -> float [H, W] grey levels in [0, 1].

    bool: True = 1; uint8 and other integers up to 255: / 255; integers past 255 (16-bit): / 65535; floats must
    lie in [0, 1]."""
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3]
    elif array.ndim != 2:
        raise ValueError(f"{name} must be [H, W] or [H, W, 1|3|4], got shape {array.shape}")
    if array.dtype == np.bool_:
        unit = array.astype(np.float64)
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min(initial=0)), int(array.max(initial=0))
        if low < 0 or high > 65535:
            raise ValueError(f"{name} values must lie in [0, 255] (or [0, 65535] for 16 bits), got {low}..{high}")
        unit = array.astype(np.float64) / (255.0 if high <= 255 and array.dtype != np.uint16 else 65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        unit = array.astype(np.float64)
        if not np.isfinite(unit).all() or unit.min(initial=0) < 0 or unit.max(initial=0) > 1:
            raise ValueError(f"{name} float values must be finite and lie in [0, 1]")
    else:
        raise TypeError(f"{name} must hold booleans, integers or floats, got dtype {array.dtype}")
    return unit @ _LUMA if unit.ndim == 3 else unit


def load_mask(mask: MaskInput) -> np.ndarray:
    """A mask (PIL image, path, numpy array or tensor) -> bool [H, W], True where to repaint (grey level >= 0.5).

    PIL images are converted to grey ("L"; alpha ignored; 16-bit and float modes keep their scale); tensors may
    also be [1, H, W]."""
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.is_file():
            raise FileNotFoundError(f"mask not found: {path}")
        mask = open_image(path, f"mask {path}")
    if isinstance(mask, Image.Image):
        if mask.mode.startswith("I") or mask.mode == "F":
            array = np.asarray(mask)
            unit = _unit_array(array.astype(np.uint16) if mask.mode.startswith("I;16") else array, "mask")
        else:
            unit = np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
    elif isinstance(mask, Tensor):
        array = mask.detach().cpu().numpy()
        unit = _unit_array(array[0] if array.ndim == 3 and array.shape[0] == 1 else array, "mask")
    elif isinstance(mask, np.ndarray):
        unit = _unit_array(mask, "mask")
    else:
        raise TypeError(f"mask must be a PIL image, a path, an array or a tensor, got {type(mask).__name__}")
    return unit >= 0.5


@dataclass(frozen=True)
class InpaintInputs:
    """A checked image and mask: ``image`` RGB, ``repaint`` bool [side, side] of their centre square."""

    image: Image.Image
    repaint: np.ndarray

    def known(self, size: int) -> Tensor:
        """The image at ``size`` [1, 3, size, size] in [-1, 1] (centre square, bicubic; exact at its own size)."""
        return pil_to_tensor([self.image], size)

    def keep(self, size: int) -> Tensor:
        """[1, 1, size, size] float: 1 where no part of the pixel is repainted."""
        repaint = self.repaint
        if repaint.shape != (size, size):
            grey = Image.fromarray(repaint.astype(np.float32), mode="F").resize((size, size), Image.BOX)
            repaint = np.asarray(grey) > 0
        return torch.from_numpy(~repaint).float()[None, None]


def load_inpaint_inputs(image: ImageInput, mask: MaskInput) -> InpaintInputs:
    """Load and check an image and its mask (same size; something to repaint in the centre square)."""
    rgb = load_image(image)
    repaint = load_mask(mask)
    if repaint.shape != (rgb.height, rgb.width):
        h, w = repaint.shape
        raise ValueError(f"the mask is {w}x{h} but the image is {rgb.width}x{rgb.height}; they must have one size")
    square = np.asarray(center_crop_square(Image.fromarray(repaint))).astype(bool)
    if not square.any():
        where = "" if square.shape == repaint.shape else " inside the image's centre square (what the model sees)"
        raise ValueError(f"the mask has no white (repaint) pixels{where}: nothing to inpaint")
    return InpaintInputs(rgb, square)


def repaint_options(jump_length: int | None, jump_n_sample: int | None, decoder_steps: int) -> RePaintOptions:
    """Checked jump-back options for ``decoder_steps`` decoder steps (None: the defaults)."""
    default = RePaintOptions()
    length = _check_positive_int("jump_length", default.jump_length if jump_length is None else jump_length)
    repeats = default.jump_n_sample if jump_n_sample is None else jump_n_sample
    repeats = _check_positive_int("jump_n_sample", repeats, MAX_JUMP_N_SAMPLE)
    if repeats > 1 and length >= decoder_steps:
        raise ValueError(f"jump_length must be less than decoder_steps ({decoder_steps}) to resample, got {length}")
    return RePaintOptions(length, repeats)


def fitting_embeddings(
    pipe: UnCLIPPipeline,
    text: TextEmbedding,
    image_embedding: Tensor | None,
    settings: GenerationDefaults,
    generator: torch.Generator | None,
    progress: ProgressFn | None,
    candidates: int,
) -> Tensor:
    """[B, D] prior samples for B encoded captions, each the best of ``candidates`` by
    ``cos(z, image_embedding) + cos(z, z_text)`` (``image_embedding`` [1 or B, D]); ``candidates = 1`` is
    ``pipe.run_prior`` as is (the same draws; ``image_embedding`` unused)."""
    if candidates == 1 or image_embedding is None:
        return pipe.run_prior(text, settings, generator, progress)
    b = text.pooled.shape[0]
    rows = torch.arange(b, device=text.pooled.device).repeat_interleave(candidates)
    z = pipe.run_prior(text[rows], settings, generator, progress).view(b, candidates, -1)
    z32 = z.float()
    score = torch.cosine_similarity(z32, image_embedding.to(z32)[:, None], dim=-1)
    score = score + torch.cosine_similarity(z32, text.pooled.to(z32)[:, None], dim=-1)
    return z[torch.arange(b, device=z.device), score.argmax(dim=1)]


@torch.no_grad()
def inpaint(
    pipe: UnCLIPPipeline,
    image: ImageInput,
    mask: MaskInput,
    prompt: str | Sequence[str],
    num_images: int = 1,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    jump_length: int | None = None,
    jump_n_sample: int | None = None,
    context_candidates: int | None = None,
    prior_steps: int | None = None,
    decoder_steps: int | None = None,
    upsampler_steps: int | None = None,
    prior_guidance_scale: float | None = None,
    decoder_guidance_scale: float | None = None,
    best_of: int | None = None,
    output_type: str = "pil",
    return_embeddings: bool = False,
    progress: ProgressFn | None = None,
) -> UnCLIPOutput:
    """Repaint the white part of ``mask`` in ``image`` with what ``prompt`` describes.

    Args:
        pipe: an :class:`~unclip.pipeline.UnCLIPPipeline` with a prior.
        image: PIL image or path (any size; centre square used).
        mask: PIL image, path or array of the image's size; white (>= 0.5) = repaint, black = keep.
        prompt: a caption, or a list (``num_images`` each, prompt-major).
        num_images: images per prompt.
        generator, seed: randomness (one of them), drawn in stage order: prior, decoder, upsamplers.
        jump_length, jump_n_sample: RePaint's jump-back schedule in the decoder (default
            :class:`~unclip.samplers.repaint.RePaintOptions`: no resampling); the upsamplers never jump.
        context_candidates: prior samples per image, the one fitting the image best kept (see the module doc;
            None: :data:`CONTEXT_CANDIDATES`; 1: the prior's sample, the paper's text-to-image z_i).
        prior_steps .. best_of: override the pipeline's defaults, as in ``pipe(...)``. The decoder and the
            upsamplers use RePaint's DDPM steps; the prior the pipeline's sampler.
        output_type: "pil" | "np" | "pt", as ``pipe(...)``.
        return_embeddings: also return the z_i decoded and the prompts' z_t.
        progress: ``progress(stage, step, total)`` (default: the pipeline's progress bars).

    Returns:
        an :class:`~unclip.pipeline.UnCLIPOutput` whose ``.images`` (as ``output_type``, prompt-major) equal the
        (resized) image outside the mask.
    """
    prompts = check_prompts(prompt)
    n = _check_positive_int("num_images", num_images, bounds.MAX_IMAGES)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    settings = pipe._settings(
        prior_steps=prior_steps,
        decoder_steps=decoder_steps,
        upsampler_steps=upsampler_steps,
        prior_guidance_scale=prior_guidance_scale,
        decoder_guidance_scale=decoder_guidance_scale,
        best_of=best_of,
    )
    options = repaint_options(jump_length, jump_n_sample, settings.decoder_steps)
    candidates = CONTEXT_CANDIDATES if context_candidates is None else context_candidates
    candidates = _check_positive_int("context_candidates", candidates, bounds.MAX_BEST_OF)
    inputs = load_inpaint_inputs(image, mask)
    pipe.check_batch("num_images", len(prompts) * n, settings.best_of * candidates)
    generator = pipe._generator(generator, seed)
    progress = pipe._progress(progress)
    pipe._warn_about_prompts(prompts)
    unique = pipe.embed_prompts(prompts)
    text = unique[torch.arange(len(prompts), device=unique.pooled.device).repeat_interleave(n)]
    z_image = pipe.embed_images([inputs.image]) if candidates > 1 else None
    z_i = fitting_embeddings(pipe, text, z_image, settings, generator, progress, candidates)
    batch = z_i.shape[0]

    decoder = pipe.decoder
    size = decoder.model.config.image_size
    images = inpaint_decoder(
        decoder.model, decoder.diffusion, z_i, text, inputs.known(size).expand(batch, -1, -1, -1), inputs.keep(size),
        steps=settings.decoder_steps, guidance_scale=settings.decoder_guidance_scale, options=options,
        generator=generator, progress=progress, null_text=pipe._decoder_null_text(),
        guidance_keep_mean=settings.decoder_guidance_keep_mean, zero_mean_noise=settings.decoder_zero_mean_noise,
    )  # fmt: skip
    check_finite("decoder", images)
    for i, stage in enumerate(pipe.upsamplers, start=1):
        size = stage.model.config.image_size
        images = inpaint_upsampler(
            stage.model, stage.diffusion, images, inputs.known(size).expand(batch, -1, -1, -1), inputs.keep(size),
            steps=settings.upsampler_steps, generator=generator, progress=progress, stage=f"upsampler_{i}",
            last_step_model=stage.last_step_model,
        )  # fmt: skip
        check_finite(f"upsampler_{i}", images)
    out = tensor_to_output(images, output_type)
    return UnCLIPOutput(out, z_i.float().cpu(), text.pooled.float().cpu()) if return_embeddings else UnCLIPOutput(out)
