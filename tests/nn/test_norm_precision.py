"""GroupNorm32 / LayerNorm32 keep float32 statistics under bf16 and fp16 (the input far from zero mean)."""

import pytest
import torch
import torch.nn.functional as F

from unclip.nn.norm import GroupNorm32, LayerNorm32, _slow_channels_last_bf16


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
    reference = F.group_norm(x.double(), 32, norm.weight.detach().double(), norm.bias.detach().double(), norm.eps)
    out = norm(x).detach()
    assert out.dtype == dtype
    err = (out.double() - reference).abs()
    assert float(err.max()) <= 2 * float(_ulp_bf16(reference.abs().max()))  # within two bf16 ulps of float64
    assert float(err.mean()) < 0.004


@pytest.mark.parametrize(
    ("shape", "groups", "through_nchw"),
    [
        ((3, 64, 16, 16), 32, True),  # 2 channels per group, 256 pixels: PyTorch's channels-last kernel is slow
        ((2, 64, 31, 31), 16, True),  # 4 per group, 961 pixels
        ((2, 64, 32, 32), 32, False),  # 1,024 pixels: the channels-last kernel is the faster one
        ((2, 320, 8, 8), 32, False),  # 10 channels per group
    ],
)
def test_bf16_channels_last_group_norm_routes_and_keeps_layout(shape, groups, through_nchw):
    """Both routes of a bf16 channels-last GroupNorm agree with float64 and return channels-last bf16."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 5).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    assert _slow_channels_last_bf16(x, groups) is through_nchw
    norm = GroupNorm32(groups, shape[1]).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[1], generator=g) + 0.5)
        norm.bias.copy_(torch.randn(shape[1], generator=g))
        out = norm(x)
        reference = F.group_norm(x.double(), groups, norm.weight.double(), norm.bias.double(), norm.eps)
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    err = (out.double() - reference).abs()
    assert float(err.max()) <= 2 * float(_ulp_bf16(reference.abs().max()))
    assert not _slow_channels_last_bf16(x.contiguous(), groups)  # NCHW input: nothing to reroute
    assert not _slow_channels_last_bf16(x.float().contiguous(memory_format=torch.channels_last), groups)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_norm_statistics_are_float32(dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 9, 256, generator=g, dtype=torch.float64) * 2 + 50).to(dtype)
    norm = LayerNorm32(256).to(dtype)
    reference = F.layer_norm(x.double(), (256,), norm.weight.detach().double(), norm.bias.detach().double(), norm.eps)
    err = (norm(x).detach().double() - reference).abs()
    assert float(err.max()) <= 2 * float(_ulp_bf16(reference.abs().max())) and float(err.mean()) < 0.004


@pytest.mark.parametrize("norm_kind", ["group", "layer"])
def test_bf16_training_norm_is_the_float32_computation_rounded(norm_kind):
    """With autograd on, a bf16 CPU input gives the float32 computation rounded to bf16, forward and backward,
    bitwise on this NCHW input (LayerNorm goes through float32; GroupNorm's mixed bf16/float32 kernels compute
    in float32 internally), as under autocast training with float32 weights. Without autograd it stays
    PyTorch's native bf16 kernel."""
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


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_bf16_training_group_norm_matches_float64(channels_last, affine):
    """The bf16 CPU training path (forward on the input's layout, backward through the NCHW kernel) against
    a float64 GroupNorm: output and input gradient within bf16 rounding, float32 weight gradients, and the
    input gradient in the input's memory format."""
    g = torch.Generator().manual_seed(3)
    norm = GroupNorm32(8, 32, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.rand(32, generator=g) + 0.5)
            norm.bias.copy_(torch.randn(32, generator=g))
    x = (torch.randn(3, 32, 12, 12, generator=g) * 3 + 20).bfloat16()
    upstream = torch.randn(3, 32, 12, 12, generator=g).bfloat16()
    if channels_last:
        x, upstream = (t.contiguous(memory_format=torch.channels_last) for t in (x, upstream))
    x.requires_grad_()
    out = norm(x)
    out.backward(upstream)

    x64 = x.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_() if affine else None
    b64 = norm.bias.detach().double().requires_grad_() if affine else None
    ref = F.group_norm(x64, 8, w64, b64, norm.eps)
    ref.backward(upstream.double())

    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert x.grad.is_contiguous(memory_format=torch.channels_last) == channels_last
    err = (out.double() - ref.detach()).abs()
    assert float(err.max()) <= 2 * float(_ulp_bf16(ref.detach().abs().max()))
    grad_err = (x.grad.double() - x64.grad).abs()
    assert float(grad_err.max()) <= 0.02 * float(x64.grad.abs().max())
    if affine:
        assert norm.weight.grad.dtype == torch.float32 and norm.bias.grad.dtype == torch.float32
        torch.testing.assert_close(norm.weight.grad.double(), w64.grad, rtol=0.02, atol=0.02)
        torch.testing.assert_close(norm.bias.grad.double(), b64.grad, rtol=0.01, atol=0.01)


def test_bf16_training_group_norm_under_autocast_and_3d_input():
    """Under CPU autocast with float32 weights (how training runs) and on [B, C, T] input (attention blocks)."""
    g = torch.Generator().manual_seed(4)
    norm = GroupNorm32(4, 16)
    x = torch.randn(2, 16, 10, generator=g).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    out.float().sum().backward()
    x32 = x.detach().float().requires_grad_()
    F.group_norm(x32, 4, norm.weight, norm.bias, norm.eps).sum().backward()
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    torch.testing.assert_close(out.float(), F.group_norm(x32.detach(), 4, norm.weight, norm.bias, norm.eps),
                               rtol=0.02, atol=0.02)  # fmt: skip
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=0.05, atol=0.05)
