"""Normalisation layers that always compute in float32 (Karlo/GLIDE's ``GroupNorm32`` and ``LayerNorm``).

The statistics of GroupNorm and LayerNorm are always computed in float32 (or better). Under fp16 the input
is converted to float32 and the result back. Under bf16 the input goes to PyTorch's kernels as it is: on CPU
and CUDA they accumulate bf16 in float32 (``opmath``) and round once at the end, so the result equals the
float32 computation to bf16 rounding (``tests/nn/test_norm_precision.py``) without the two conversions
(a fifth of a bf16 U-Net step on CPU was those copies). Training in bf16 on a CPU is the exception: there
PyTorch's bf16 GroupNorm backward is 5x slower than its float32 one (5.4 vs 1.1 ms per call on the
``shapes64`` decoder), so a bf16 input with autograd on goes through float32 (:func:`norm_dtype`).
In fp32 (and fp64) these are exactly ``nn.GroupNorm`` / ``nn.LayerNorm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def norm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a norm computes ``x`` in: float32 for float16, and for bf16 that autograd records on a CPU
    (the slow bf16 backward kernels); the input's dtype otherwise (bf16 kernels accumulate in float32)."""
    if x.dtype == torch.float16:
        return torch.float32
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and torch.is_grad_enabled():
        return torch.float32
    return x.dtype


class GroupNorm32(nn.GroupNorm):
    """``nn.GroupNorm`` computed in float32. Input [B, C, *spatial] of any float dtype; output same dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct = norm_dtype(x)
        weight = None if self.weight is None else self.weight.to(ct)
        bias = None if self.bias is None else self.bias.to(ct)
        return F.group_norm(x.to(ct), self.num_groups, weight, bias, self.eps).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32. Input [..., C] of any float dtype; output same dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct = norm_dtype(x)
        weight = None if self.weight is None else self.weight.to(ct)
        bias = None if self.bias is None else self.bias.to(ct)
        return F.layer_norm(x.to(ct), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def group_norm(channels: int, groups: int = 32, eps: float = 1e-5) -> GroupNorm32:
    """GroupNorm with ``groups`` groups over ``channels`` channels; raises if they do not divide."""
    if channels % groups != 0:
        raise ValueError(f"GroupNorm needs channels ({channels}) divisible by norm groups ({groups})")
    return GroupNorm32(groups, channels, eps=eps)
