import math

import pytest
import torch
import torch.nn.functional as F

from unclip.nn.attention import SpatialAttention, additive_mask
from unclip.nn.embeddings import timestep_embedding
from unclip.nn.norm import GroupNorm32, LayerNorm32
from unclip.nn.resblock import ResBlock


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


# ---------------------------------------------------------------- timestep embedding


def test_timestep_embedding_closed_form_and_diffusers():
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, 10, dtype=torch.float64)
    for row, tv in enumerate(t.tolist()):
        for i in range(5):
            f = 10000.0 ** (-i / 5)
            assert emb[row, i].item() == pytest.approx(math.cos(tv * f), abs=1e-12)
            assert emb[row, 5 + i].item() == pytest.approx(math.sin(tv * f), abs=1e-12)
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    ref = embeddings.Timesteps(64, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    torch.testing.assert_close(timestep_embedding(t, 64), ref, atol=1e-5, rtol=0)
    assert timestep_embedding(t, 7).shape == (4, 7)
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(t[None], 8)


def test_norms_compute_in_float32_under_bfloat16():
    x = torch.randn(2, 8, 4, 4) * 50 + 100
    gn = GroupNorm32(4, 8)
    out = gn(x.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = F.group_norm(x.bfloat16().float(), 4, gn.weight, gn.bias, gn.eps)
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)
    ln = LayerNorm32(8)
    assert ln(x.permute(0, 2, 3, 1).half()).dtype == torch.float16


# ---------------------------------------------------------------- ResBlocks


def _diffusers_resblock(ours: ResBlock, scale_shift: bool, up: bool, down: bool, groups: int):
    resnet = pytest.importorskip("diffusers.models.resnet")
    theirs = resnet.ResnetBlock2D(
        in_channels=ours.channels,
        out_channels=ours.out_channels,
        temb_channels=ours.emb_layers[1].in_features,
        groups=groups,
        eps=1e-5,
        time_embedding_norm="scale_shift" if scale_shift else "default",
        up=up,
        down=down,
    ).eval()
    sd = ours.state_dict()
    mapped = {
        "norm1.weight": sd["in_layers.0.weight"],
        "norm1.bias": sd["in_layers.0.bias"],
        "conv1.weight": sd["in_layers.2.weight"],
        "conv1.bias": sd["in_layers.2.bias"],
        "time_emb_proj.weight": sd["emb_layers.1.weight"],
        "time_emb_proj.bias": sd["emb_layers.1.bias"],
        "norm2.weight": sd["out_layers.0.weight"],
        "norm2.bias": sd["out_layers.0.bias"],
        "conv2.weight": sd["out_layers.3.weight"],
        "conv2.bias": sd["out_layers.3.bias"],
    }
    if "skip_connection.weight" in sd:
        mapped["conv_shortcut.weight"] = sd["skip_connection.weight"]
        mapped["conv_shortcut.bias"] = sd["skip_connection.bias"]
    theirs.load_state_dict(mapped, strict=True)
    return theirs


@pytest.mark.parametrize(
    "scale_shift,up,down,c_out", [(True, False, True, 8), (True, True, False, 8), (False, False, False, 16)]
)
def test_resblock_matches_diffusers_resnet(scale_shift, up, down, c_out):
    torch.manual_seed(0)
    ours = ResBlock(8, 12, c_out, use_scale_shift_norm=scale_shift, up=up, down=down, norm_groups=4).eval()
    _randomize(ours, seed=1)
    theirs = _diffusers_resblock(ours, scale_shift, up, down, groups=4)
    x, emb = torch.randn(2, 8, 8, 8), torch.randn(2, 12)
    out = ours(x, emb)
    side = 16 if up else 4 if down else 8
    assert out.shape == (2, c_out, side, side)
    torch.testing.assert_close(out, theirs(x, emb), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("up,down", [(False, True), (True, False)])
def test_resblock_down_up_float64_reference(up, down):
    """Hand-written float64 scale-shift ResBlock with avg-pool/nearest resampling inside."""
    torch.manual_seed(0)
    blk = ResBlock(4, 6, 4, use_scale_shift_norm=True, up=up, down=down, norm_groups=2).double().eval()
    _randomize(blk, seed=2)
    sd = blk.state_dict()
    x, emb = torch.randn(1, 4, 4, 4, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)

    def gn(z, pre):
        zz = z.reshape(1, 2, -1)
        zz = (zz - zz.mean(-1, keepdim=True)) / torch.sqrt(zz.var(-1, unbiased=False, keepdim=True) + 1e-5)
        return zz.reshape(z.shape) * sd[pre + ".weight"][:, None, None] + sd[pre + ".bias"][:, None, None]

    def resample(z):
        if down:
            return z.reshape(1, 4, z.shape[2] // 2, 2, z.shape[3] // 2, 2).mean((3, 5))
        return z.repeat_interleave(2, 2).repeat_interleave(2, 3)

    def silu(z):
        return z * torch.sigmoid(z)

    h = resample(silu(gn(x, "in_layers.0")))
    h = F.conv2d(h, sd["in_layers.2.weight"], sd["in_layers.2.bias"], padding=1)
    e = silu(emb) @ sd["emb_layers.1.weight"].T + sd["emb_layers.1.bias"]
    scale, shift = e[:, :4, None, None], e[:, 4:, None, None]
    h = gn(h, "out_layers.0") * (1 + scale) + shift
    h = F.conv2d(silu(h), sd["out_layers.3.weight"], sd["out_layers.3.bias"], padding=1)
    out = blk(x, emb)
    assert out.shape == ((1, 4, 8, 8) if up else (1, 4, 2, 2))
    torch.testing.assert_close(out, resample(x) + h, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------- spatial attention


def _reference_attention(attn: SpatialAttention, x, context, mask):
    """Float64 GLIDE/Karlo attention: per-head packed qkv, keys = [context; pixels], additive -inf mask."""
    sd = {k: v.double() for k, v in attn.state_dict().items()}
    b, c, h, w = x.shape
    heads = attn.heads
    d = c // heads
    xr = x.reshape(b, c, h * w)
    g = xr.reshape(b, 4, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)
    normed = g.reshape(b, c, -1) * sd["norm.weight"][:, None] + sd["norm.bias"][:, None]
    qkv = torch.einsum("oc,bct->bot", sd["qkv.weight"][:, :, 0], normed) + sd["qkv.bias"][:, None]
    q, k, v = qkv.reshape(b * heads, 3 * d, h * w).split(d, dim=1)
    if context is not None:
        ekv = torch.einsum("oe,bse->bos", sd["encoder_kv.weight"][:, :, 0], context) + sd["encoder_kv.bias"][:, None]
        ek, ev = ekv.reshape(b * heads, 2 * d, -1).split(d, dim=1)
        k, v = torch.cat([ek, k], -1), torch.cat([ev, v], -1)
    logits = torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d)
    if mask is not None:
        bias = additive_mask(torch.cat([mask, torch.ones(b, h * w, dtype=torch.bool)], 1), torch.float64)
        logits = logits + bias.repeat_interleave(heads, 0)[:, None, :]
    a = torch.einsum("bts,bcs->bct", torch.softmax(logits, -1), v).reshape(b, c, h * w)
    out = torch.einsum("oc,bct->bot", sd["proj_out.weight"][:, :, 0], a) + sd["proj_out.bias"][:, None]
    return x + out.reshape(b, c, h, w)


def test_spatial_attention_matches_float64_reference():
    torch.manual_seed(0)
    attn = SpatialAttention(16, head_channels=4, context_channels=6, norm_groups=4).eval()
    _randomize(attn, seed=4)
    x = torch.randn(2, 16, 3, 5)
    ctx = torch.randn(2, 7, 6)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 0] = False
    ref = _reference_attention(attn, x.double(), ctx.double(), mask)
    torch.testing.assert_close(attn(x, ctx, mask).double(), ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(attn.double()(x.double(), ctx.double(), mask), ref, atol=1e-10, rtol=1e-10)
    ref_nomask = _reference_attention(attn, x.double(), ctx.double(), None)
    torch.testing.assert_close(attn(x.double(), ctx.double()), ref_nomask, atol=1e-10, rtol=1e-10)
    # the mask actually matters
    assert (ref - ref_nomask).abs().max() > 1e-3


def test_spatial_attention_masked_tokens_are_ignored_and_channels_last():
    torch.manual_seed(0)
    attn = SpatialAttention(8, head_channels=4, context_channels=5, norm_groups=4).eval()
    _randomize(attn, seed=5)
    x, ctx = torch.randn(2, 8, 4, 4), torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    out = attn(x, ctx, mask)
    ctx2 = ctx.clone()
    ctx2[~mask] = torch.randn(int((~mask).sum()), 5) * 100
    torch.testing.assert_close(attn(x, ctx2, mask), out, atol=1e-6, rtol=1e-6)
    # all context tokens masked == no context at all (only the pixels are attended to)
    torch.testing.assert_close(attn(x, ctx, torch.zeros(2, 6, dtype=torch.bool)), attn(x), atol=1e-6, rtol=1e-6)
    cl = attn(x.contiguous(memory_format=torch.channels_last), ctx, mask)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, out, atol=1e-6, rtol=1e-6)


def test_spatial_attention_rejects_bad_config():
    with pytest.raises(ValueError, match="head channels"):
        SpatialAttention(12, head_channels=5, norm_groups=4)
    with pytest.raises(ValueError, match="norm groups"):
        SpatialAttention(12, head_channels=4, norm_groups=8)
    with pytest.raises(ValueError, match="context_channels"):
        SpatialAttention(8, head_channels=4, norm_groups=4)(torch.randn(1, 8, 2, 2), torch.randn(1, 3, 4))
