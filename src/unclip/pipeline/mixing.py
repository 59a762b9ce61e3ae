"""Mixing captions and images in CLIP image-embedding space (Kandinsky's ``mix_images``), decoded like a prompt.

Each item gives an image embedding: a caption through the prior (one prior sample per output image, so text
items keep their diversity), an image through CLIP's image tower. The embeddings are normalised and combined
by the weights: two items spherically (slerp at ``t = w_2 / (w_1 + w_2)``), more as the normalised weighted
sum; the mixture gets the weighted mean of the items' norms, then the decoder and upsamplers turn it into
images (conditioned on z_i alone, as variations are).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor

from unclip.images import slerp, tensor_to_output
from unclip.pipeline import bounds
from unclip.pipeline.options import UnCLIPOutput, _check_positive_int, check_prompts

if TYPE_CHECKING:
    from unclip.pipeline.unclip_pipeline import UnCLIPPipeline

MixItem = str | Image.Image | PathLike
"""A caption (``str``) or an image (a PIL image or a ``pathlib.Path``)."""

MAX_ITEMS = 16


def is_image_item(item: Any) -> bool:
    """True for an image (PIL image or path object), False for a caption (str); TypeError otherwise."""
    if isinstance(item, str):
        return False
    if isinstance(item, (Image.Image, PathLike)):
        return True
    raise TypeError(f"mix items must be captions (str) or images (PIL image or pathlib.Path), got {item!r}")


def check_mix_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """One finite weight per item (equal weights when None), summing to a positive number."""
    if weights is None:
        return [1.0] * count
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a list of numbers, got {weights!r}")
    if len(weights) != count:
        raise ValueError(f"weights must hold one number per item ({count}), got {len(weights)}: {list(weights)}")
    out = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"weights must be finite numbers, got {w!r}")
        out.append(float(w))
    if not sum(out) > 0:
        raise ValueError(f"weights must sum to a positive number, got {out} (sum {sum(out):g})")
    return out


def combine_embeddings(embeddings: Tensor, weights: Sequence[float]) -> Tensor:
    """[K, N, D] item embeddings, K weights -> [N, D] mixture.

    Directions: slerp for K = 2 (``t = w_2 / (w_1 + w_2)``), the normalised weighted sum of unit vectors
    otherwise (K = 1 returns the item). Norm: the weighted mean of the items' norms.
    """
    k = embeddings.shape[0]
    w = torch.tensor(weights, dtype=torch.float64, device=embeddings.device)
    e64 = embeddings.double()
    norms = e64.norm(dim=-1, keepdim=True)  # [K, N, 1]
    unit = e64 / norms.clamp_min(1e-12)
    norm = (w[:, None, None] * norms).sum(0) / w.sum()
    if k == 2:
        direction = slerp(unit[0], unit[1], float(w[1] / w.sum()))
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    else:
        summed = (w[:, None, None] * unit).sum(0)
        length = summed.norm(dim=-1, keepdim=True)
        if bool((length < 1e-6).any()):
            raise ValueError(f"the weighted items cancel out (weights {list(weights)}): nothing is left to decode")
        direction = summed / length
    return (direction * norm).to(embeddings.dtype)


def mix_embeddings(
    pipe: UnCLIPPipeline,
    items: Sequence[MixItem],
    weights: Sequence[float],
    num_images: int,
    settings: Any,
    generator: torch.Generator | None,
    progress: Any = None,
) -> Tensor:
    """The [num_images, D] mixed image embeddings of ``items`` (captions through the prior, one sample per
    image, all captions in one batch; images through CLIP)."""
    image_flags = [is_image_item(item) for item in items]
    captions = [check_prompts(item)[0] for item, flag in zip(items, image_flags) if not flag]
    images = [item for item, flag in zip(items, image_flags) if flag]
    pipe._warn_about_prompts(captions)
    per_item: dict[int, Tensor] = {}
    if captions:
        text = pipe.embed_prompts(captions)
        index = torch.arange(len(captions), device=text.pooled.device).repeat_interleave(num_images)
        z = pipe.run_prior(text[index], settings, generator, progress).view(len(captions), num_images, -1)
        caption_rows = iter(z)
        for i, flag in enumerate(image_flags):
            if not flag:
                per_item[i] = next(caption_rows)
    if images:
        z_img = pipe.embed_images(images)
        image_rows = iter(z_img)
        for i, flag in enumerate(image_flags):
            if flag:
                per_item[i] = next(image_rows).to(pipe.device).expand(num_images, -1)
    stacked = torch.stack([per_item[i].to(device=pipe.device, dtype=torch.float32) for i in range(len(items))])
    return combine_embeddings(stacked, weights)


def mix(
    pipe: UnCLIPPipeline,
    items: Sequence[MixItem],
    weights: Sequence[float] | None = None,
    num_images: int = 1,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sampler: str | None = None,
    prior_steps: int | None = None,
    decoder_steps: int | None = None,
    upsampler_steps: int | None = None,
    prior_guidance_scale: float | None = None,
    decoder_guidance_scale: float | None = None,
    output_type: str = "pil",
    return_embeddings: bool = False,
    progress: Any = None,
) -> UnCLIPOutput:
    """``num_images`` images of the weighted mixture of ``items`` (captions and images) in CLIP space.

    Returns an :class:`UnCLIPOutput` (``return_embeddings``: with the mixed z_i [num_images, D]).
    """
    if isinstance(items, (str, Image.Image, PathLike)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a list of captions and images, got {items!r}")
    if not items:
        raise ValueError("mix needs at least one item (a caption or an image)")
    if len(items) > MAX_ITEMS:
        raise ValueError(f"mix takes at most {MAX_ITEMS} items, got {len(items)}")
    for item in items:
        is_image_item(item)
    weights = check_mix_weights(weights, len(items))
    n = _check_positive_int("num_images", num_images, bounds.MAX_IMAGES)
    settings = pipe._settings(
        sampler=sampler, prior_steps=prior_steps, decoder_steps=decoder_steps, upsampler_steps=upsampler_steps,
        prior_guidance_scale=prior_guidance_scale, decoder_guidance_scale=decoder_guidance_scale,
    )  # fmt: skip
    captions = sum(not is_image_item(item) for item in items)
    pipe.check_batch("num_images", n * max(1, captions), settings.best_of if captions else 0)
    generator = pipe._generator(generator, seed)
    progress = pipe._progress(progress)
    z_i = mix_embeddings(pipe, items, weights, n, settings, generator, progress)
    images = pipe.decode(z_i, None, settings, generator, progress=progress)
    out = tensor_to_output(images, output_type)
    return UnCLIPOutput(out, z_i.float().cpu()) if return_embeddings else UnCLIPOutput(out)
