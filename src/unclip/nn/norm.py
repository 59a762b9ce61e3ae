"""Normalisation layers that always compute in float32 (Karlo/GLIDE's ``GroupNorm32`` and ``LayerNorm``).

Under fp16/bf16 the statistics of GroupNorm and LayerNorm are computed in float32 and the result is cast
back to the input dtype; in fp32 (and fp64) these are exactly ``nn.GroupNorm`` / ``nn.LayerNorm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16 inputs, the input dtype otherwise (float32 stays, float64 stays)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class GroupNorm32(nn.GroupNorm):
    """``nn.GroupNorm`` computed in float32. Input [B, C, *spatial] of any float dtype; output same dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct = _compute_dtype(x.dtype)
        weight = None if self.weight is None else self.weight.to(ct)
        bias = None if self.bias is None else self.bias.to(ct)
        return F.group_norm(x.to(ct), self.num_groups, weight, bias, self.eps).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32. Input [..., C] of any float dtype; output same dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct = _compute_dtype(x.dtype)
        weight = None if self.weight is None else self.weight.to(ct)
        bias = None if self.bias is None else self.bias.to(ct)
        return F.layer_norm(x.to(ct), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def group_norm(channels: int, groups: int = 32, eps: float = 1e-5) -> GroupNorm32:
    """GroupNorm with ``groups`` groups over ``channels`` channels; raises if they do not divide."""
    if channels % groups != 0:
        raise ValueError(f"GroupNorm needs channels ({channels}) divisible by norm groups ({groups})")
    return GroupNorm32(groups, channels, eps=eps)
