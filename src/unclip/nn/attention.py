"""Attention helpers: head-packing conversions and masks for ``F.scaled_dot_product_attention``.

Karlo/GLIDE store fused projections *packed per head*: the output rows of a fused ``qkv`` projection of
width ``3*C`` with ``H`` heads of ``d = C/H`` channels are ordered ``[q_0, k_0, v_0, q_1, k_1, v_1, ...]``
(each block ``d`` rows). diffusers stores separate ``to_q/to_k/to_v`` (rows ``[head_0, head_1, ...]``).
:func:`unpack_heads` / :func:`pack_heads` convert between the two (weights or biases).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unclip.nn.norm import group_norm


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


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (q [B, H, N, d], k/v [B, H, M, d] -> [B, H, N, d]), except for bf16
    with autograd on on a CPU, which runs in float32 outside autocast and returns bf16: PyTorch's bf16 CPU
    flash-attention backward is ~9x slower than its float32 one (68 vs 8 ms per step of the 6-layer prior),
    and autocast would cast a float32 call back to bf16. Elsewhere (inference, CUDA, float32) it is the
    plain call."""
    if q.dtype != torch.bfloat16 or q.device.type != "cpu" or not torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    mask = attn_mask.float() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p)
    return out.to(q.dtype)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask (True = may attend) -> additive float mask (0 or -inf) of ``dtype``."""
    if mask.dtype != torch.bool:
        raise TypeError(f"expected a bool mask, got dtype {mask.dtype}")
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill(~mask, float("-inf"))


class AttentionContext:
    """Context tokens shared by every attention layer of a network, with each layer's keys/values cached.

    A sampler calls the network many times with the same context; each :class:`SpatialAttention` projects
    the tokens once (on first use) and reuses the projection on later calls.

    Args:
        tokens: [B, S, E] context tokens.
        mask: [B, S] bool (True = may be attended to), or None for all.
    """

    def __init__(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if mask is not None and mask.shape != tokens.shape[:2]:
            raise ValueError(f"context mask {tuple(mask.shape)} does not match tokens {tuple(tokens.shape)}")
        self.tokens, self.mask = tokens, mask
        self._key_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._key_masks: dict[int, torch.Tensor] = {}

    def key_values(self, layer: SpatialAttention) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer``'s keys and values of the tokens, each [B, heads, S, d] (computed on first use).

        Cached only without autograd (sampling): under autograd every call recomputes, so gradient
        checkpointing's recomputation saves the same tensors as the first pass.
        """
        if torch.is_grad_enabled():
            return layer.context_key_values(self.tokens)
        cached = self._key_values.get(id(layer))
        if cached is None:
            cached = self._key_values[id(layer)] = layer.context_key_values(self.tokens)
        return cached

    def key_mask(self, pixels: int) -> torch.Tensor | None:
        """[B, 1, 1, S + pixels] bool: the token mask followed by ``pixels`` always-visible keys (or None)."""
        if self.mask is None:
            return None
        keep = self._key_masks.get(pixels)
        if keep is None:
            b = self.mask.shape[0]
            keep = torch.cat([self.mask, self.mask.new_ones(b, pixels)], dim=1)[:, None, None, :]
            self._key_masks[pixels] = keep
        return keep


class SpatialAttention(nn.Module):
    """GLIDE/ADM attention over the pixels of a feature map, with optional context tokens as extra keys/values.

    ``GroupNorm -> 1x1 qkv`` on the spatial tokens; if a context is given, ``encoder_kv`` (1x1) projects it
    to keys/values that are placed *before* the spatial ones (keys = [context; pixels]); scaled dot-product
    attention per head; ``proj_out`` (1x1, zero-initialised) and a residual. State-dict layout as in
    GLIDE/Karlo: ``norm``, ``qkv`` Conv1d(C, 3C, 1) packed per head, ``encoder_kv`` Conv1d(E, 2C, 1) packed
    per head ``[k_h, v_h]``, ``proj_out`` Conv1d(C, C, 1). The 1x1 convs are applied as matmuls on
    token-major tensors, so channels_last inputs need no copies.

    Args:
        channels: C.
        head_channels: channels per head (heads = C / head_channels).
        context_channels: context token width E, or None for plain self-attention.
        norm_groups: GroupNorm groups.
    """

    def __init__(
        self, channels: int, head_channels: int, context_channels: int | None = None, norm_groups: int = 32
    ) -> None:
        super().__init__()
        if channels % head_channels != 0:
            raise ValueError(f"attention channels {channels} not divisible by head channels {head_channels}")
        self.channels, self.heads = channels, channels // head_channels
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.encoder_kv = nn.Conv1d(context_channels, 2 * channels, 1) if context_channels else None
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def context_key_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context tokens [B, S, E] -> this layer's keys and values, each [B, heads, S, d]."""
        if self.encoder_kv is None:
            raise ValueError("this attention block was built without context_channels but got a context")
        b, s, _ = context.shape
        kv = F.linear(context, self.encoder_kv.weight[:, :, 0], self.encoder_kv.bias)
        ek, ev = kv.view(b, s, self.heads, 2, self.channels // self.heads).permute(3, 0, 2, 1, 4).unbind(0)
        return ek, ev

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | AttentionContext | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: [B, C, H, W] feature map.
            context: [B, S, E] context tokens, an :class:`AttentionContext` (tokens, mask and cached
                projections; ``context_mask`` must then be None), or None (then only the pixels are keys).
            context_mask: [B, S] bool, True for tokens that may be attended to; None = all. At least the
                pixels are always attended to, so an all-False mask is allowed.

        Returns:
            [B, C, H, W] = x + attention output.
        """
        b, c, hgt, wid = x.shape
        n = hgt * wid
        d = c // self.heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, N, C]
        qkv = F.linear(tokens, self.qkv.weight[:, :, 0], self.qkv.bias).view(b, n, self.heads, 3, d)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # [B, heads, N, d]
        mask = None
        if isinstance(context, AttentionContext):
            if context_mask is not None:
                raise ValueError("pass the mask inside the AttentionContext, not as context_mask")
            ek, ev = context.key_values(self)
            mask = context.key_mask(n)
        elif context is not None:
            ek, ev = self.context_key_values(context)
            if context_mask is not None:
                keep = torch.cat([context_mask, context_mask.new_ones(b, n)], dim=1)
                mask = keep[:, None, None, :]
        if context is not None:
            k = torch.cat([ek, k], dim=2)
            v = torch.cat([ev, v], dim=2)
        out = attention(q, k, v, attn_mask=mask)  # [B, heads, N, d]
        out = F.linear(out.transpose(1, 2).reshape(b, n, c), self.proj_out.weight[:, :, 0], self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(b, c, hgt, wid)
