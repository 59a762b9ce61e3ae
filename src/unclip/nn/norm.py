"""Normalisation layers that always compute in float32 (Karlo/GLIDE's ``GroupNorm32`` and ``LayerNorm``).

The statistics of GroupNorm and LayerNorm are always computed in float32 (or better). Under fp16 the input
is converted to float32 and the result back. Under bf16 the input goes to PyTorch's kernels as it is: on CPU
and CUDA they accumulate bf16 in float32 (``opmath``) and round once at the end, so the result equals the
float32 computation to bf16 rounding (``tests/nn/test_norm_precision.py``) without the two conversions
(a fifth of a bf16 U-Net step on CPU was those copies). Training in bf16 on a CPU is the exception.
For GroupNorm, PyTorch's bf16 backward kernel on a channels-last input is 20x slower than on the same
input in NCHW (20 vs 1 ms at 8x64x64x64). So :class:`_CpuBf16GroupNorm` runs the forward on the
channels-last bf16 input with float32 weights (float32 mean and rstd, float32 weight gradients). Its
backward runs the NCHW kernel. Against the float32 path this cut the GroupNorm share of a ``shapes64`` bf16
training step from 165 ms (plus its dtype copies) to about 75 ms, transposes included, and the step by 9 %.
LayerNorm with autograd on goes through float32 (:func:`norm_dtype`). In fp32 (and fp64) these are exactly
``nn.GroupNorm`` / ``nn.LayerNorm``.
"""

from __future__ import annotations

import math

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


class _CpuBf16GroupNorm(torch.autograd.Function):
    """GroupNorm of a bf16 CPU input [B, C, *spatial] with float32 weight and bias [C] (or None): bf16 output in
    the input's memory format, float32 statistics, and a backward through PyTorch's NCHW kernel (fast in bf16,
    unlike its channels-last one). The result and gradients are PyTorch's own kernels' outputs."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):  # type: ignore[override]
        batch, channels = x.shape[:2]
        spatial = math.prod(x.shape[2:])
        with torch.autocast("cpu", enabled=False):
            y, mean, rstd = torch.native_group_norm(x, weight, bias, batch, channels, spatial, groups, eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.sizes = (batch, channels, spatial, groups)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x, mean, rstd, weight = ctx.saved_tensors
        batch, channels, spatial, groups = ctx.sizes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mask = [need_x, need_w and weight is not None, need_b and ctx.has_bias]
        grad_x, grad_w, grad_b = torch.ops.aten.native_group_norm_backward(
            grad_y.contiguous(), x.contiguous(), mean, rstd, weight, batch, channels, spatial, groups, mask
        )
        if grad_x is not None and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        return grad_x, grad_w, grad_b, None, None


class GroupNorm32(nn.GroupNorm):
    """``nn.GroupNorm`` computed in float32. Input [B, C, *spatial] of any float dtype; output same dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and torch.is_grad_enabled():
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return _CpuBf16GroupNorm.apply(x, weight, bias, self.num_groups, self.eps)
        ct = norm_dtype(x)
        weight = None if self.weight is None else self.weight.to(ct)
        bias = None if self.bias is None else self.bias.to(ct)
        if _slow_channels_last_bf16(x, self.num_groups):
            y = F.group_norm(x.contiguous(), self.num_groups, weight, bias, self.eps)
            return y.contiguous(memory_format=torch.channels_last)
        return F.group_norm(x.to(ct), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _slow_channels_last_bf16(x: torch.Tensor, groups: int) -> bool:
    """Whether PyTorch's CPU GroupNorm would take its slow path for this bf16 channels-last input [B, C, H, W].

    Below 1,024 pixels per feature map its channels-last kernel parallelises over (batch, group) and walks
    each group's few channels with strided bf16 loads: with 2 or 4 channels per group that is 2-5x slower
    than a round trip through NCHW (8x64x16x16: 925 vs 274 us; 8x64x31x31: 3.5 vs 0.67 ms), while with 10 or
    more channels per group, or at 1,024 pixels and above, the channels-last kernel is the faster one
    (docs/performance.md, "bf16")."""
    return (
        x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[2] * x.shape[3] < 1024
        and x.shape[1] // groups < 8
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


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
