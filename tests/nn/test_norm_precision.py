"""GroupNorm32 / LayerNorm32 keep float32 statistics under bf16 and fp16 (the input far from zero mean)."""

import pytest
import torch
import torch.nn.functional as F

from unclip.nn.norm import GroupNorm32, LayerNorm32


def _ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    """One bf16 unit in the last place at |x| (8 bits of mantissa)."""
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp(min=2.0**-126))) - 7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_statistics_are_float32(dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    # mean 100, std 3: a half-precision running sum of 2048 values would be off by far more than one ulp
    x = (torch.randn(2, 64, 16, 16, generator=g, dtype=torch.float64) * 3 + 100).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    norm = GroupNorm32(32, 64).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(64, generator=g))
    reference = F.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), norm.eps)
    out = norm(x)
    assert out.dtype == dtype
    err = (out.double() - reference).abs()
    assert float(err.max()) <= 2 * float(_ulp_bf16(reference.abs().max()))  # within two bf16 ulps of float64
    assert float(err.mean()) < 0.004


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_norm_statistics_are_float32(dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 9, 256, generator=g, dtype=torch.float64) * 2 + 50).to(dtype)
    norm = LayerNorm32(256).to(dtype)
    reference = F.layer_norm(x.double(), (256,), norm.weight.double(), norm.bias.double(), norm.eps)
    err = (norm(x).double() - reference).abs()
    assert float(err.max()) <= 2 * float(_ulp_bf16(reference.abs().max())) and float(err.mean()) < 0.004


@pytest.mark.parametrize("norm_kind", ["group", "layer"])
def test_bf16_training_norm_is_the_float32_computation_rounded(norm_kind):
    """With autograd on, a bf16 CPU input goes through float32 (forward and backward, bitwise), as under
    autocast training with float32 weights; without autograd it stays PyTorch's native bf16 kernel."""
    g = torch.Generator().manual_seed(2)
    if norm_kind == "group":
        norm = GroupNorm32(8, 16)
        shape = (2, 16, 8, 8)

        def reference(x):
            return F.group_norm(x, 8, norm.weight, norm.bias, norm.eps)
    else:
        norm = LayerNorm32(16)
        shape = (2, 5, 16)

        def reference(x):
            return F.layer_norm(x, (16,), norm.weight, norm.bias, norm.eps)

    with torch.no_grad():
        norm.weight.copy_(torch.rand(16, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(16, generator=g))
    x = (torch.randn(shape, generator=g) * 3 + 1).bfloat16().requires_grad_()
    upstream = torch.randn(shape, generator=g).bfloat16()
    out = norm(x)
    out.backward(upstream)
    x32 = x.detach().float().requires_grad_()
    expected = reference(x32).bfloat16()
    expected.backward(upstream)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    assert torch.equal(x.grad, x32.grad.bfloat16())
    with torch.no_grad():  # inference: the native bf16 kernel on bf16 weights, no float32 copies
        native = norm.to(torch.bfloat16)(x.detach())
        weight, bias = norm.weight, norm.bias
        if norm_kind == "group":
            assert torch.equal(native, F.group_norm(x.detach(), 8, weight, bias, norm.eps))
        else:
            assert torch.equal(native, F.layer_norm(x.detach(), (16,), weight, bias, norm.eps))
