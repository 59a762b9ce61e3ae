"""Sampling image embeddings from a prior: the diffusion prior (respaced sampler, CFG, x0 clamp, best-of-k)
and the AR prior (top-half dot-product token, autoregressive components).

Best-of-k (paper §2.2): draw k candidates per caption and keep the one with the larger z_i·z_t, measured as
the cosine similarity of the (de-normalised) candidate and the caption's pooled text embedding — the dot
product of the L2-normalised embeddings, as in DALLE2-pytorch, so the embedding norm cannot win the choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from unclip.diffusion import Parameterization
from unclip.diffusion.stage_config import PRIOR_DIFFUSION, DiffusionConfig
from unclip.encoders.base import TextEmbedding
from unclip.models.ar_prior import ARPrior
from unclip.models.prior import DiffusionPrior
from unclip.samplers import (
    Predictor,
    ProgressFn,
    concat_conditioning,
    guided_denoiser,
    run_sampler,
    sampling_dtype,
)

__all__ = [
    "PRIOR_DIFFUSION",
    "PRIOR_PARAMETERIZATION",
    "repeat_text",
    "sample_ar_prior",
    "sample_prior",
    "select_best_of",
]

"""The diffusion prior's process: 1000-step cosine schedule, x0 prediction, fixed-small variance (Karlo)."""
PRIOR_PARAMETERIZATION: Parameterization = PRIOR_DIFFUSION.parameterization()


def repeat_text(text: TextEmbedding, repeats: int, batch: int | None = None) -> TextEmbedding:
    """Each caption repeated ``repeats`` times in a row: rows [c0, c0, ..., c1, c1, ...].

    A batch-1 ``text`` (e.g. the null caption) is first expanded to ``batch`` rows when ``batch`` is given.
    """
    if batch is not None and text.pooled.shape[0] == 1 and batch != 1:
        text = TextEmbedding(
            text.pooled.expand(batch, -1), text.tokens.expand(batch, -1, -1), text.mask.expand(batch, -1)
        )
    if repeats == 1:
        return text
    return TextEmbedding(
        text.pooled.repeat_interleave(repeats, 0),
        text.tokens.repeat_interleave(repeats, 0),
        text.mask.repeat_interleave(repeats, 0),
    )


def select_best_of(candidates: Tensor, text_pooled: Tensor) -> tuple[Tensor, Tensor]:
    """Per caption, the candidate with the largest cosine similarity to the text embedding.

    Args:
        candidates: [B, k, D] image embeddings.
        text_pooled: [B, D] text embeddings z_t.

    Returns:
        ``(best [B, D], index [B] long into k)``.
    """
    if candidates.ndim != 3 or text_pooled.shape != (candidates.shape[0], candidates.shape[2]):
        raise ValueError(
            f"candidates must be [B, k, D] and text [B, D]; got {tuple(candidates.shape)}, {tuple(text_pooled.shape)}"
        )
    sims = F.cosine_similarity(candidates.float(), text_pooled.float()[:, None], dim=-1)  # [B, k]
    index = sims.argmax(1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), index], index


def _check_text(text: TextEmbedding, clip_dim: int, text_len: int, text_width: int, what: str) -> None:
    b = text.pooled.shape[0]
    shapes = {"pooled": (b, clip_dim), "tokens": (b, text_len, text_width), "mask": (b, text_len)}
    for name, shape in shapes.items():
        got = tuple(getattr(text, name).shape)
        if got != shape:
            raise ValueError(f"{what}.{name} must have shape {shape} for this prior, got {got}")


@torch.no_grad()
def sample_prior(
    prior: DiffusionPrior,
    text: TextEmbedding,
    null_text: TextEmbedding | None = None,
    *,
    steps: int = 25,
    sampler: str = "ddpm",
    guidance_scale: float = 4.0,
    best_of: int = 2,
    clamp: float | None = 10.0,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    diffusion: DiffusionConfig | None = None,
    x_T: Tensor | None = None,
    progress: ProgressFn | None = None,
) -> Tensor:
    """Sample one image embedding per caption from the diffusion prior.

    Args:
        prior: the network (x0 prediction in normalised CLIP space); run in its own device/dtype.
        text: B captions' CLIP encodings.
        null_text: CLIP encoding of ``""`` (batch 1 or B); required when ``guidance_scale != 1``.
        steps: sampler steps (respaced evenly from the training schedule, Karlo's 25).
        sampler: a name in :data:`unclip.samplers.SAMPLERS` ("ddpm", "ddim", "dpm++", "unclip": diffusers'
            UnCLIPScheduler in its float32 arithmetic, what Karlo/diffusers pipelines ship); see
            :func:`unclip.samplers.run_sampler`.
        guidance_scale: classifier-free guidance scale s (1 = off); one batched forward per step on
            [null; text].
        best_of: k candidates per caption; the one with the largest cos(z_i, z_t) is kept.
        clamp: clamp predicted x0 to [-clamp, clamp] in normalised space (Karlo 10; None = off).
        generator: randomness (x_T for all B·k candidates first, then the step noises).
        eta: DDIM eta (sampler "ddim" only).
        diffusion: the process the prior was trained with (its ``diffusion.json``); default
            :data:`PRIOR_DIFFUSION` (cosine, 1000 steps, x0 prediction, fixed-small variance, as Karlo).
        x_T: optional starting noise [B·k, D] (candidates of caption b are rows b·k .. b·k + k − 1).
        progress: ``progress(stage, step, total)`` callback.

    Returns:
        [B, D] image embeddings z_i (de-normalised), in :func:`~unclip.samplers.sampling_dtype` of the prior's
        dtype (float32 for a bf16/fp16 prior).
    """
    c = prior.config
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if best_of < 1:
        raise ValueError(f"best_of must be >= 1, got {best_of}")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if clamp is not None and clamp <= 0:
        raise ValueError(f"clamp must be positive or None, got {clamp}")
    _check_text(text, c.clip_dim, c.text_len, c.text_width, "text")
    weight = next(prior.parameters())
    device, dtype = weight.device, weight.dtype
    b, d = text.pooled.shape[0], c.clip_dim
    cond = repeat_text(text.to(device=device, dtype=dtype), best_of)
    diffusion = diffusion if diffusion is not None else PRIOR_DIFFUSION
    param_kind = diffusion.parameterization()
    kwargs = {"text_pooled": cond.pooled, "text_tokens": cond.tokens, "text_mask": cond.mask.bool()}
    if guidance_scale != 1.0:
        if null_text is None:
            raise ValueError("guidance_scale != 1 needs null_text (the CLIP encoding of the empty caption)")
        if null_text.pooled.shape[0] not in (1, b):
            raise ValueError(f"null_text must have batch 1 or {b}, got {null_text.pooled.shape[0]}")
        _check_text(null_text, c.clip_dim, c.text_len, c.text_width, "null_text")
        null = repeat_text(null_text.to(device=device, dtype=dtype), best_of, batch=b)
        uncond = {"text_pooled": null.pooled, "text_tokens": null.tokens, "text_mask": null.mask.bool()}
        doubled = prior.conditioned(**concat_conditioning(uncond, kwargs))  # text keys/values cached once
        denoiser = guided_denoiser(doubled, guidance_scale, param_kind)
    else:
        denoiser = prior.conditioned(**kwargs)
    predictor = Predictor(denoiser, param_kind, clip_x0=clamp)
    z = run_sampler(
        sampler,
        predictor,
        diffusion.make_schedule(),
        steps,
        x_T,
        shape=None if x_T is not None else (b * best_of, d),
        generator=generator,
        device=device,
        dtype=sampling_dtype(dtype),  # the network runs in its dtype, the walk in float32 for bf16/fp16
        eta=eta,
        progress=progress,
        stage="prior",
    )
    candidates = prior.denormalize(z).view(b, best_of, d)
    if best_of == 1:
        return candidates[:, 0]
    return select_best_of(candidates, cond.pooled.view(b, best_of, d)[:, 0])[0]


@torch.no_grad()
def sample_ar_prior(
    prior: ARPrior,
    text: TextEmbedding,
    null_text: TextEmbedding | None = None,
    *,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    dot_percentile: float = 0.5,
    best_of: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample one image embedding per caption from the AR prior.

    The dot-product token is drawn from the part of its distribution above ``dot_percentile`` (the paper's
    top half), then the PCA component tokens autoregressively (``temperature``, ``top_k``), decoded through
    the inverse PCA (:meth:`ARPrior.generate`). Optional logit-mixing guidance with ``null_text`` and
    best-of-k selection (as for the diffusion prior; the paper relies on the dot-product token instead).

    Returns:
        [B, D] float32 image embeddings z_i.
    """
    if best_of < 1:
        raise ValueError(f"best_of must be >= 1, got {best_of}")
    c = prior.config
    _check_text(text, c.clip_dim, c.text_len, c.text_width, "text")
    b = text.pooled.shape[0]
    if null_text is not None:
        _check_text(null_text, c.clip_dim, c.text_len, c.text_width, "null_text")
        null_text = repeat_text(null_text, best_of, batch=b) if null_text.pooled.shape[0] == b else null_text
    cond = repeat_text(text, best_of)
    z, _, _ = prior.generate(
        cond,
        null_text,
        guidance_scale=guidance_scale,
        temperature=temperature,
        top_k=top_k,
        dot_percentile=dot_percentile,
        generator=generator,
    )
    candidates = z.view(b, best_of, -1)
    if best_of == 1:
        return candidates[:, 0]
    return select_best_of(candidates, text.pooled.to(z.device).float())[0]
