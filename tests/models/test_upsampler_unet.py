import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from unclip.models import build_model
from unclip.models.upsampler_unet import PRESETS, UpsamplerUNet
from unclip.nn.attention import SpatialAttention
from unclip.nn.resblock import ResBlock


def _randomized(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    return _randomized(build_model("upsampler", "tiny"))


def test_tiny_shapes_and_presets(tiny):
    c = tiny.config
    assert set(PRESETS) >= {"karlo", "tiny", "shapes"}
    assert sum(p.numel() for p in tiny.parameters()) < 1_000_000
    x = torch.randn(2, 3, c.image_size, c.image_size)
    low = torch.randn(2, 3, c.low_res_size, c.low_res_size)
    assert tiny(x, torch.tensor([0, 999]), low).shape == (2, 3, 16, 16)
    # crops of half the side run too (training on crops)
    assert tiny(x[..., :8, :8], torch.tensor([0, 999]), low[..., :4, :4]).shape == (2, 3, 8, 8)
    assert tiny.input_blocks[0][0].in_channels == 6


def test_no_attention_anywhere_and_additive_time_conditioning():
    for preset in ("tiny", "shapes"):
        model = build_model("upsampler", preset)
        assert not any(isinstance(m, (SpatialAttention, torch.nn.MultiheadAttention)) for m in model.modules())
        assert not any("attn" in n or "qkv" in n for n, _ in model.named_parameters())
        blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
        assert blocks and not any(b.use_scale_shift_norm for b in blocks)
        assert len(model.middle_block) == 2 and all(isinstance(m, ResBlock) for m in model.middle_block)
    karlo = build_model("upsampler", "karlo", device="meta")
    assert not any(isinstance(m, SpatialAttention) for m in karlo.modules())


def test_low_res_is_bicubic_upsampled_and_concatenated(tiny):
    c = tiny.config
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([3, 400])
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    up = F.interpolate(low, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(tiny(x, t, low), tiny(x, t, up))
    # the condition matters, and its channels come after the noisy image's
    assert (tiny(x, t, low) - tiny(x, t, torch.zeros_like(low))).abs().max() > 1e-3
    w = tiny.input_blocks[0][0].weight
    manual = F.conv2d(torch.cat([x, up], 1), w, tiny.input_blocks[0][0].bias, padding=1)
    hooked = []
    h = tiny.input_blocks[0].register_forward_hook(lambda m, i, o: hooked.append(o))
    tiny(x, t, low)
    h.remove()
    torch.testing.assert_close(hooked[0], manual)
    assert c.out_channels == 3


def test_fp64_fp32_channels_last_and_backward(tiny):
    x, t, low = torch.randn(2, 3, 16, 16), torch.tensor([10, 700]), torch.randn(2, 3, 8, 8)
    out = tiny(x, t, low)
    out64 = copy.deepcopy(tiny).double()(x.double(), t, low.double())
    torch.testing.assert_close(out.double(), out64, atol=1e-4, rtol=1e-4)
    cl = copy.deepcopy(tiny).to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last), t, low), out, atol=1e-5, rtol=1e-5)
    model = copy.deepcopy(tiny).train()
    model(x, t, low).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())


def test_bad_inputs(tiny):
    x, t, low = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="low_res"):
        tiny(x, t, low[:1])
    with pytest.raises(ValueError, match="t must be"):
        tiny(x, t[:1], low)
    with pytest.raises(ValueError, match="low_res_size"):
        UpsamplerUNet(dataclasses.replace(tiny.config, low_res_size=32))


def test_conditioned_upsampler_resizes_once_and_equals_forward(tiny, monkeypatch):
    """upsampler.conditioned(low_res, size) resizes the conditioning image once; later calls equal forward."""
    import unclip.models.upsampler_unet as module

    c = tiny.config
    g = torch.Generator().manual_seed(1)
    low = torch.rand(2, 3, c.low_res_size, c.low_res_size, generator=g) * 2 - 1
    x = torch.randn(2, 3, c.image_size, c.image_size, generator=g)
    resizes = []
    original = module.bicubic_resize
    monkeypatch.setattr(module, "bicubic_resize", lambda *a, **k: resizes.append(1) or original(*a, **k))
    with torch.no_grad():
        cached = tiny.conditioned(low, (c.image_size, c.image_size))
        outs = [cached(x * (s + 1), torch.tensor([700, 300]) - 200 * s) for s in range(3)]
        assert len(resizes) == 1
        for s, out in enumerate(outs):
            torch.testing.assert_close(out, tiny(x * (s + 1), torch.tensor([700, 300]) - 200 * s, low), rtol=0, atol=0)
    with pytest.raises(ValueError, match="for this conditioning"):
        cached(x[:, :, :8, :8], torch.tensor([1, 2]))
