"""Sinusoidal timestep embeddings (GLIDE/ADM/Karlo convention: ``[cos, sin]``)."""

from __future__ import annotations

import math

import torch


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    ``emb[:, i] = cos(t * f_i)`` and ``emb[:, half + i] = sin(t * f_i)`` with
    ``f_i = max_period ** (-i / half)``, ``half = dim // 2`` (zero-padded when ``dim`` is odd). Equals
    diffusers' ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``.

    Args:
        timesteps: [B] integer or float timesteps (e.g. 0..999).
        dim: embedding width.
        max_period: controls the lowest frequency.
        dtype: output dtype; computed in float64 when ``dtype`` is float64, float32 otherwise.

    Returns:
        [B, dim] tensor of ``dtype`` with values in [-1, 1].
    """
    if timesteps.dim() != 1:
        raise ValueError(f"timesteps must be 1-D [B], got shape {tuple(timesteps.shape)}")
    if dim < 2:
        raise ValueError(f"timestep embedding width must be >= 2, got {dim}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=compute, device=timesteps.device) / half)
    args = timesteps.to(compute)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(dtype)
