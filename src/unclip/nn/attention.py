"""Attention helpers: head-packing conversions and masks for ``F.scaled_dot_product_attention``.

Karlo/GLIDE store fused projections *packed per head*: the output rows of a fused ``qkv`` projection of
width ``3*C`` with ``H`` heads of ``d = C/H`` channels are ordered ``[q_0, k_0, v_0, q_1, k_1, v_1, ...]``
(each block ``d`` rows). diffusers stores separate ``to_q/to_k/to_v`` (rows ``[head_0, head_1, ...]``).
:func:`unpack_heads` / :func:`pack_heads` convert between the two (weights or biases).
"""

from __future__ import annotations

import torch


def unpack_heads(packed: torch.Tensor, heads: int, parts: int = 3) -> list[torch.Tensor]:
    """Split a per-head-packed fused projection into ``parts`` separate ones.

    Args:
        packed: weight [parts*C, in, *k] or bias [parts*C], rows packed per head as described above.
        heads: number of heads H (C must be divisible by H).
        parts: 3 for ``qkv``, 2 for ``kv``.

    Returns:
        ``parts`` tensors of shape [C, in, *k] (or [C]), rows ordered head by head.
    """
    rows = packed.shape[0]
    if rows % (parts * heads) != 0:
        raise ValueError(f"packed projection with {rows} rows cannot hold {parts} parts of {heads} heads")
    d = rows // (parts * heads)
    grouped = packed.reshape(heads, parts, d, *packed.shape[1:])
    return [grouped[:, i].reshape(heads * d, *packed.shape[1:]) for i in range(parts)]


def pack_heads(separate: list[torch.Tensor] | tuple[torch.Tensor, ...], heads: int) -> torch.Tensor:
    """Inverse of :func:`unpack_heads`: ``parts`` tensors [C, ...] -> per-head packed [parts*C, ...]."""
    first = separate[0]
    if any(t.shape != first.shape for t in separate):
        raise ValueError(f"all parts must share one shape, got {[tuple(t.shape) for t in separate]}")
    if first.shape[0] % heads != 0:
        raise ValueError(f"{first.shape[0]} rows are not divisible by {heads} heads")
    d = first.shape[0] // heads
    stacked = torch.stack([t.reshape(heads, d, *first.shape[1:]) for t in separate], dim=1)
    return stacked.reshape(len(separate) * heads * d, *first.shape[1:])


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask (True = may attend) -> additive float mask (0 or -inf) of ``dtype``."""
    if mask.dtype != torch.bool:
        raise TypeError(f"expected a bool mask, got dtype {mask.dtype}")
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill(~mask, float("-inf"))
