"""Pre-LN transformer block (GPT/CLIP style), with Karlo's prior weight layout.

Layout (state-dict names relative to the block), identical to Karlo's ``xf.ResidualAttentionBlock``:

- ``ln_1``, ``ln_2``: LayerNorm(W), eps 1e-5, computed in float32.
- ``attn.c_qkv``: Linear(W, 3W), output rows packed *per head* ``[q_h, k_h, v_h]`` (see
  :mod:`unclip.nn.attention`); ``attn.c_proj``: Linear(W, W).
- ``mlp.c_fc``: Linear(W, 4W), exact GELU, ``mlp.c_proj``: Linear(4W, W).

Mapping to diffusers' ``BasicTransformerBlock`` (PriorTransformer): ``ln_1 -> norm1``, ``ln_2 -> norm3``,
``attn.c_qkv -> attn1.to_q/to_k/to_v`` via ``unpack_heads(weight, heads, 3)`` (same for the bias),
``attn.c_proj -> attn1.to_out.0``, ``mlp.c_fc -> ff.net.0.proj``, ``mlp.c_proj -> ff.net.2``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from unclip.nn.attention import attention
from unclip.nn.norm import LayerNorm32


class KeyValues(NamedTuple):
    """One attention layer's keys and values of earlier tokens, each [B, H, P, W/H] (a prefix cache)."""

    keys: torch.Tensor
    values: torch.Tensor


def _prepare_mask(
    mask: torch.Tensor | None, batch: int, length: int, dtype: torch.dtype, key_length: int | None = None
) -> torch.Tensor | None:
    """Mask [T,S] | [B,T,S] | [B,1|H,T,S] (bool: True = may attend; float: additive) -> 4-D for SDPA.

    T = ``length`` queries, S = ``key_length`` keys (default T).
    """
    key_length = length if key_length is None else key_length
    if mask is None:
        return None
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    elif mask.dim() != 4:
        raise ValueError(f"attention mask must be 2-, 3- or 4-D, got shape {tuple(mask.shape)}")
    if mask.shape[-2:] != (length, key_length) or mask.shape[0] not in (1, batch):
        raise ValueError(
            f"attention mask of shape {tuple(mask.shape)} does not fit batch {batch}, "
            f"{length} queries and {key_length} keys"
        )
    if mask.dtype != torch.bool:
        mask = mask.to(dtype)
    return mask


class MultiheadSelfAttention(nn.Module):
    """Multi-head self-attention with a fused, per-head-packed ``c_qkv`` projection.

    Args:
        width: model width W.
        heads: number of heads H (W divisible by H).
        dropout: attention-probability dropout (training only).
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.width, self.heads, self.dropout = width, heads, dropout
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, W] -> q, k, v, each [B, H, T, W/H]."""
        b, t, w = x.shape
        qkv = self.c_qkv(x).view(b, t, self.heads, 3, w // self.heads)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)
        return q, k, v

    def key_values(self, x: torch.Tensor) -> KeyValues:
        """Keys and values of the (already normalised) tokens x [B, P, W], for later queries to attend to."""
        _, k, v = self._qkv(x)
        return KeyValues(k, v)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, past: KeyValues | None = None) -> torch.Tensor:
        """x [B, T, W]; mask see :class:`TransformerBlock`. Returns [B, T, W].

        With ``past`` (keys/values of P earlier tokens, [B, H, P, W/H]) the T queries attend to the P + T
        keys ``[past; x]`` and ``mask`` is [.., T, P + T].
        """
        b, t, w = x.shape
        q, k, v = self._qkv(x)
        if past is not None:
            if past.keys.shape[0] != b:
                raise ValueError(f"cached keys have batch {past.keys.shape[0]}, the queries {b}")
            k = torch.cat([past.keys.to(k.dtype), k], dim=2)
            v = torch.cat([past.values.to(v.dtype), v], dim=2)
        out = attention(
            q,
            k,
            v,
            attn_mask=_prepare_mask(mask, b, t, q.dtype, k.shape[2]),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.c_proj(out.transpose(1, 2).reshape(b, t, w))


class MLP(nn.Module):
    """Linear(W, mult*W) -> exact GELU -> Linear(mult*W, W)."""

    def __init__(self, width: int, mult: int = 4) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, mult * width)
        self.c_proj = nn.Linear(mult * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class TransformerBlock(nn.Module):
    """Pre-LN residual block: ``x + attn(ln_1(x), mask)``, then ``x + mlp(ln_2(x))``.

    Args:
        width: model width W.
        heads: attention heads H (head width W/H; Karlo's prior: W=2048, H=32).
        mlp_mult: hidden width multiplier of the MLP (4).
        dropout: attention-probability and residual dropout (0 in Karlo).
        eps: LayerNorm epsilon.
    """

    def __init__(self, width: int, heads: int, mlp_mult: int = 4, dropout: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_1 = LayerNorm32(width, eps=eps)
        self.attn = MultiheadSelfAttention(width, heads, dropout)
        self.ln_2 = LayerNorm32(width, eps=eps)
        self.mlp = MLP(width, mlp_mult)
        self.drop = nn.Dropout(dropout)

    def key_values(self, x: torch.Tensor) -> KeyValues:
        """This block's attention keys/values of the tokens x [B, P, W] (its input), for a prefix cache."""
        return self.attn.key_values(self.ln_1(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, past: KeyValues | None = None) -> torch.Tensor:
        """Apply the block.

        Args:
            x: [B, T, W].
            mask: None, or [T, T] / [B, T, T] / [B, 1 or H, T, T]; bool (True = query may attend to key)
                or float (added to the attention logits, e.g. 0 / -inf). Every query row must keep at
                least one key, otherwise that row's output is NaN.
            past: keys/values of P earlier tokens (:meth:`key_values` of their input to this block); the
                queries then attend to ``[past; x]`` and ``mask`` is [.., T, P + T].

        Returns:
            [B, T, W].
        """
        x = x + self.drop(self.attn(self.ln_1(x), mask, past))
        return x + self.drop(self.mlp(self.ln_2(x)))
