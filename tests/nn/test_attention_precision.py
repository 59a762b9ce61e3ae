"""unclip.nn.attention.attention: bf16 training on a CPU runs float32 attention (autocast kept out)."""

import torch
import torch.nn.functional as F

from unclip.nn.attention import additive_mask, attention


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g).bfloat16().requires_grad_() for _ in range(3))
    keep = torch.rand(2, 1, 7, 7, generator=g) > 0.3
    keep[..., 0] = True  # every query sees at least one key
    return q, k, v, additive_mask(keep, torch.bfloat16)


def test_bf16_training_attention_is_float32_rounded_under_autocast():
    q, k, v, mask = _inputs()
    upstream = torch.randn(2, 3, 7, 8, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would cast a plain float32 call back to bf16
        out = attention(q, k, v, attn_mask=mask)
    out.backward(upstream)
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    expected = F.scaled_dot_product_attention(*leaves, attn_mask=mask.float()).bfloat16()
    expected.backward(upstream)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    for ours, ref in zip((q, k, v), leaves):
        assert torch.equal(ours.grad, ref.grad.bfloat16())


def test_attention_without_autograd_is_the_plain_call():
    q, k, v, mask = _inputs(3)
    with torch.no_grad():
        assert torch.equal(attention(q, k, v, attn_mask=mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        q32, k32, v32 = q.float(), k.float(), v.float()
        assert torch.equal(attention(q32, k32, v32), F.scaled_dot_product_attention(q32, k32, v32))
