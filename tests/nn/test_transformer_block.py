import math

import pytest
import torch

from unclip.nn.attention import pack_heads, unpack_heads
from unclip.nn.transformer import TransformerBlock


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def _reference_block(x, block: TransformerBlock, mask_bool):
    """Float64 hand-written pre-LN block with per-head packed qkv (Karlo's layout)."""
    sd = {k: v.double() for k, v in block.state_dict().items()}
    b, t, w = x.shape
    h = block.attn.heads
    d = w // h

    def ln(z, pre):
        mu = z.mean(-1, keepdim=True)
        var = ((z - mu) ** 2).mean(-1, keepdim=True)
        return (z - mu) / torch.sqrt(var + 1e-5) * sd[pre + ".weight"] + sd[pre + ".bias"]

    y = ln(x, "ln_1")
    qkv = y @ sd["attn.c_qkv.weight"].T + sd["attn.c_qkv.bias"]
    out = torch.zeros(b, t, w, dtype=torch.float64)
    for head in range(h):
        chunk = qkv[..., head * 3 * d : (head + 1) * 3 * d]
        q, k, v = chunk[..., :d], chunk[..., d : 2 * d], chunk[..., 2 * d :]
        logits = q @ k.transpose(1, 2) / math.sqrt(d)
        logits = logits.masked_fill(~mask_bool, float("-inf"))
        out[..., head * d : (head + 1) * d] = torch.softmax(logits, -1) @ v
    x = x + out @ sd["attn.c_proj.weight"].T + sd["attn.c_proj.bias"]
    y = ln(x, "ln_2")
    hid = y @ sd["mlp.c_fc.weight"].T + sd["mlp.c_fc.bias"]
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))
    return x + hid @ sd["mlp.c_proj.weight"].T + sd["mlp.c_proj.bias"]


def test_block_matches_float64_reference_with_causal_and_padding_mask():
    torch.manual_seed(0)
    block = TransformerBlock(width=32, heads=4).eval()
    _randomize(block)
    b, t = 3, 7
    x = torch.randn(b, t, 32)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[1, 2:4] = False  # padded keys of sample 1
    mask = causal[None] & keep[:, None, :]
    mask |= torch.eye(t, dtype=torch.bool)[None]  # every row keeps itself
    ref = _reference_block(x.double(), block, mask)
    out_bool = block(x, mask)
    out_add = block(x, torch.zeros(b, t, t).masked_fill(~mask, float("-inf")))
    torch.testing.assert_close(out_bool.double(), ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out_add, out_bool, atol=1e-6, rtol=1e-6)
    # fp64 run of our module agrees tightly
    torch.testing.assert_close(block.double()(x.double(), mask), ref, atol=1e-10, rtol=1e-10)


def test_block_matches_diffusers_basic_transformer_block():
    diffusers_attention = pytest.importorskip("diffusers.models.attention")
    torch.manual_seed(1)
    w, h = 64, 4
    ours = TransformerBlock(width=w, heads=h).eval()
    _randomize(ours, seed=3)
    theirs = diffusers_attention.BasicTransformerBlock(
        w, h, w // h, dropout=0.0, activation_fn="gelu", attention_bias=True
    ).eval()
    sd = ours.state_dict()
    q_w, k_w, v_w = unpack_heads(sd["attn.c_qkv.weight"], h, 3)
    q_b, k_b, v_b = unpack_heads(sd["attn.c_qkv.bias"], h, 3)
    mapped = {
        "norm1.weight": sd["ln_1.weight"],
        "norm1.bias": sd["ln_1.bias"],
        "norm3.weight": sd["ln_2.weight"],
        "norm3.bias": sd["ln_2.bias"],
        "attn1.to_q.weight": q_w,
        "attn1.to_q.bias": q_b,
        "attn1.to_k.weight": k_w,
        "attn1.to_k.bias": k_b,
        "attn1.to_v.weight": v_w,
        "attn1.to_v.bias": v_b,
        "attn1.to_out.0.weight": sd["attn.c_proj.weight"],
        "attn1.to_out.0.bias": sd["attn.c_proj.bias"],
        "ff.net.0.proj.weight": sd["mlp.c_fc.weight"],
        "ff.net.0.proj.bias": sd["mlp.c_fc.bias"],
        "ff.net.2.weight": sd["mlp.c_proj.weight"],
        "ff.net.2.bias": sd["mlp.c_proj.bias"],
    }
    theirs.load_state_dict(mapped, strict=True)
    x = torch.randn(2, 9, w)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_pack_unpack_roundtrip_and_layout():
    heads, d = 3, 2
    packed = torch.arange(3 * heads * d, dtype=torch.float32)
    q, k, v = unpack_heads(packed, heads, 3)
    # head 0 rows are [q0 q0 k0 k0 v0 v0], then head 1 ...
    assert q.tolist() == [0, 1, 6, 7, 12, 13]
    assert k.tolist() == [2, 3, 8, 9, 14, 15]
    assert v.tolist() == [4, 5, 10, 11, 16, 17]
    torch.testing.assert_close(pack_heads([q, k, v], heads), packed)
    weight = torch.randn(2 * heads * d, 5, 1)
    torch.testing.assert_close(pack_heads(unpack_heads(weight, heads, 2), heads), weight)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_heads(torch.zeros(10), heads=3, parts=3)


def test_bad_mask_shape_is_rejected():
    block = TransformerBlock(width=16, heads=2)
    with pytest.raises(ValueError, match="does not fit"):
        block(torch.randn(2, 5, 16), torch.ones(4, 4, dtype=torch.bool))
