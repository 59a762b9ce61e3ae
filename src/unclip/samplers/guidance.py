"""Classifier-free guidance (Ho & Salimans 2021), written once as a denoiser wrapper.

The wrapped model runs once on the doubled batch ``[uncond; cond]`` (diffusers' order) and the mean
channels are guided: ``out = u + s (c - u)``. Guiding the raw mean channels is guiding eps, x0 or v alike
(each is affine in the raw output at fixed x_t, t). Learned-variance channels are taken from the
conditional half, as GLIDE, Karlo and diffusers do. The result is a plain :data:`Denoiser`, so every sampler
and the Predictor's clamping work unchanged.

``keep_mean`` (images only) leaves each channel's spatial mean to the conditional branch:
``out = c + (s - 1) (d - mean_hw d)`` with ``d = c - u``. Guidance then sharpens what the condition says
about layout and shape without also pushing the image's global colour away from the unconditional mean,
which it otherwise does by (s - 1) times the two branches' colour difference (measured on the built-in
model: docs/shapes_model.md). Each of eps, x0 and v is ``a x_t + b raw`` at fixed (x_t, t), so the
spatial mean of the guided x0 is the conditional x0's whatever the parameterisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from unclip.diffusion import Parameterization
from unclip.samplers.base import Denoiser

__all__ = ["concat_conditioning", "guide", "guided_denoiser", "classifier_free_guidance"]


def concat_conditioning(uncond: Any, cond: Any) -> Any:
    """Concatenate two conditioning structures along the batch dimension, uncond first.

    Tensors are concatenated on dim 0; dicts, lists, tuples and NamedTuples (e.g. ``TextEmbedding``) are
    walked recursively; None and other values must be equal in both and are passed through.
    """
    if isinstance(cond, Tensor):
        if not isinstance(uncond, Tensor):
            raise TypeError(f"conditioning mismatch: tensor vs {type(uncond).__name__}")
        if uncond.shape[1:] != cond.shape[1:]:
            raise ValueError(
                f"uncond and cond tensors differ beyond the batch dim: {tuple(uncond.shape)} vs {tuple(cond.shape)}"
            )
        return torch.cat([uncond.to(cond.device, cond.dtype), cond], dim=0)
    if isinstance(cond, Mapping):
        if not isinstance(uncond, Mapping) or set(uncond) != set(cond):
            raise ValueError(f"uncond and cond must have the same keys, got {sorted(uncond)} vs {sorted(cond)}")
        return {k: concat_conditioning(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (tuple, list)):
        if type(uncond) is not type(cond) or len(uncond) != len(cond):
            raise ValueError("uncond and cond sequences differ in type or length")
        items = [concat_conditioning(u, c) for u, c in zip(uncond, cond)]
        if hasattr(cond, "_fields"):  # NamedTuple
            return type(cond)(*items)
        return type(cond)(items)
    if uncond is not cond and uncond != cond:
        raise ValueError(f"non-tensor conditioning must match in both branches, got {uncond!r} vs {cond!r}")
    return cond


def guide(uncond: Tensor, cond: Tensor, guidance_scale: float, keep_mean: bool = False) -> Tensor:
    """Guided mean channels from the two branches [B, C, ...]: ``u + s (c - u)``; with ``keep_mean`` (images
    [B, C, H, W]) the guidance term's per-channel spatial mean is removed, so the result's mean is ``c``'s."""
    if not keep_mean:
        return uncond + guidance_scale * (cond - uncond)
    if cond.dim() != 4:
        raise ValueError(f"keep_mean guidance needs images [B, C, H, W], got shape {tuple(cond.shape)}")
    delta = cond - uncond
    return cond + (guidance_scale - 1.0) * (delta - delta.mean(dim=(2, 3), keepdim=True))


def guided_denoiser(
    doubled_model: Denoiser, guidance_scale: float, param: Parameterization, keep_mean: bool = False
) -> Denoiser:
    """CFG around a model that already holds the doubled conditioning ``[uncond; cond]``.

    Args:
        doubled_model: ``(x [2B, ...], t [2B]) -> raw [2B, ...]``: rows 0..B-1 unconditional, B..2B-1
            conditional.
        guidance_scale: s (1 = conditional only, 0 = unconditional); must be >= 0.
        param: where the variance channels are (taken from the conditional half).
        keep_mean: images only; the guided output keeps the conditional branch's per-channel spatial mean
            (see the module docstring).

    Returns:
        a Denoiser ``(x [B, ...], t [B]) -> guided raw output [B, ...]`` (one model call per evaluation).
    """
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    scale = float(guidance_scale)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        out = doubled_model(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0))
        if out.shape[0] != 2 * x.shape[0]:
            raise ValueError(f"doubled model returned batch {out.shape[0]}, expected {2 * x.shape[0]}")
        uncond, cond = out.chunk(2, dim=0)
        if param.learned_variance:
            u_mean, _ = uncond.chunk(2, dim=param.channel_dim)
            c_mean, c_var = cond.chunk(2, dim=param.channel_dim)
            return torch.cat([guide(u_mean, c_mean, scale, keep_mean), c_var], dim=param.channel_dim)
        return guide(uncond, cond, scale, keep_mean)

    return denoise


def classifier_free_guidance(
    model: Callable[..., Tensor],
    guidance_scale: float,
    *,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any],
    param: Parameterization,
    concat: Callable[[Any, Any], Any] = concat_conditioning,
    keep_mean: bool = False,
) -> Denoiser:
    """CFG for a network called as ``model(x, t, **conditioning)``.

    Builds the doubled conditioning once with ``concat(uncond, cond)`` (default: concatenate every tensor
    on the batch dim, uncond first; pass your own for structures that need it) and returns a Denoiser that
    calls ``model(cat[x, x], cat[t, t], **doubled)`` once per evaluation. With ``guidance_scale == 1`` the
    model runs once on the conditional batch only.

    Args:
        model: the network; conditioning by keyword.
        guidance_scale: s >= 0.
        cond, uncond: keyword conditioning of the two branches (same keys; batch B each).
        param: the model's parameterisation (variance channels from the conditional branch).
        concat: how to build the doubled conditioning from (uncond, cond).
        keep_mean: as :func:`guided_denoiser`.
    """
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if guidance_scale == 1.0:
        cond_kwargs = dict(cond)
        return lambda x, t: model(x, t, **cond_kwargs)
    doubled = concat(uncond, cond)
    if not isinstance(doubled, Mapping):
        raise TypeError(f"concat must return a mapping of keyword conditioning, got {type(doubled).__name__}")
    doubled = dict(doubled)
    return guided_denoiser(lambda x, t: model(x, t, **doubled), guidance_scale, param, keep_mean=keep_mean)
