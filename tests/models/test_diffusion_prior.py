"""Diffusion prior network: masking, parity with diffusers' PriorTransformer, Karlo shapes, stats, dropout."""

from collections import Counter

import numpy as np
import pytest
import torch

from unclip.encoders.base import TextEmbedding
from unclip.models import build_model
from unclip.models.prior import (
    PRESETS,
    DiffusionPrior,
    PriorConfig,
    prefix_attention_mask,
    text_dropout,
)
from unclip.nn.attention import unpack_heads

CFG = PriorConfig(clip_dim=12, text_width=10, text_len=6, width=32, layers=2, heads=4)


def _inputs(cfg=CFG, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, cfg.clip_dim, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    pooled = torch.randn(b, cfg.clip_dim, generator=g)
    tokens = torch.randn(b, cfg.text_len, cfg.text_width, generator=g)
    lengths = torch.tensor([2, cfg.text_len, 4])[:b]
    mask = torch.arange(cfg.text_len)[None] < lengths[:, None]
    return z, t, pooled, tokens, mask


def _model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    model = DiffusionPrior(cfg).eval()
    with torch.no_grad():  # non-trivial values everywhere (LayerNorm affine, biases)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _hidden_states(model, *args):
    """All positions' hidden states after the last block [B, T, width], and the output."""
    seen = {}
    last = model.transformer["resblocks"][-1]
    handle = last.register_forward_hook(lambda m, inp, out: seen.setdefault("h", out))
    try:
        out = model(*args)
    finally:
        handle.remove()
    return seen["h"], out


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_cached_text_prefix_equals_the_full_forward_at_every_step(dtype, tol):
    """conditioned(text) computes the text tokens' keys/values once; each step then runs three tokens. Along a
    12-step walk (x_t and t change every step, the text does not) it equals the uncached forward."""
    model = _model().to(dtype)
    _, _, pooled, tokens, mask = _inputs()
    pooled, tokens = pooled.to(dtype), tokens.to(dtype)
    cached = model.conditioned(pooled, tokens, mask)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, CFG.clip_dim, generator=g, dtype=dtype)
    with torch.no_grad():
        for step in range(12):
            t = torch.tensor([999 - 83 * step, 500 - 40 * step, 7 * step])
            full = model(x, t, pooled, tokens, mask)
            fast = cached(x, t)
            torch.testing.assert_close(fast, full, rtol=tol, atol=tol)
            x = 0.7 * x + 0.3 * full  # the next step's input depends on the prediction
    with pytest.raises(ValueError, match=r"conditioned on 3 captions"):
        cached(x[:2], t[:2])
    with pytest.raises(ValueError, match="text_tokens must have shape"):
        model.conditioned(pooled, tokens[:, :4], mask)


def test_attention_mask_is_causal_with_key_padding():
    text_mask = torch.tensor([[True, True, False], [True, False, False]])
    m = prefix_attention_mask(text_mask, 5)[:, 0]
    assert m.shape == (2, 5, 5)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                key_valid = j >= 3 or bool(text_mask[b, j])
                assert bool(m[b, i, j]) == (j <= i and (key_valid or i == j))


def test_future_tokens_never_influence_earlier_positions():
    model = _model()
    z, t, pooled, tokens, mask = _inputs()
    h0, out0 = _hidden_states(model, z, t, pooled, tokens, mask)
    L = CFG.text_len
    # perturb the noised image embedding (position L+2): positions <= L+1 unchanged, query changes
    h1, out1 = _hidden_states(model, z + 1.0, t, pooled, tokens, mask)
    torch.testing.assert_close(h1[:, : L + 2], h0[:, : L + 2], rtol=0, atol=0)
    assert (out1 - out0).abs().min() > 1e-4
    # perturb the timestep (position L+1): earlier positions unchanged
    h2, out2 = _hidden_states(model, z, (t + 137) % 1000, pooled, tokens, mask)
    torch.testing.assert_close(h2[:, : L + 1], h0[:, : L + 1], rtol=0, atol=0)
    assert (out2 - out0).abs().min() > 1e-4
    # perturb the last real text token of row 2 (length 4): tokens before it unchanged
    tok3 = tokens.clone()
    tok3[2, 3] += 1.0
    h3, out3 = _hidden_states(model, z, t, pooled, tok3, mask)
    torch.testing.assert_close(h3[2, :3], h0[2, :3], rtol=0, atol=0)
    assert (out3[2] - out0[2]).abs().max() > 1e-4
    torch.testing.assert_close(out3[:2], out0[:2], rtol=0, atol=0)  # other rows untouched


def test_padded_text_tokens_never_influence_the_query():
    model = _model()
    z, t, pooled, tokens, mask = _inputs()
    out0 = model(z, t, pooled, tokens, mask)
    noisy = tokens.clone()
    noisy[~mask] = 100.0 * torch.randn(int((~mask).sum()), CFG.text_width)
    out1 = model(z, t, pooled, noisy, mask)
    torch.testing.assert_close(out1, out0, rtol=0, atol=1e-6)
    # ... while real text tokens and the pooled embedding do
    assert (model(z, t, pooled + 1.0, tokens, mask) - out0).abs().min() > 1e-4
    real = tokens.clone()
    real[:, 0] += 1.0
    assert (model(z, t, pooled, real, mask) - out0).abs().min() > 1e-4


def test_fully_padded_caption_gives_finite_output():
    model = _model()
    z, t, pooled, tokens, _ = _inputs()
    out = model(z, t, pooled, tokens, torch.zeros(3, CFG.text_len, dtype=torch.bool))
    assert torch.isfinite(out).all()


def _to_diffusers(model: DiffusionPrior):
    """Our tiny prior's weights -> an equivalent diffusers PriorTransformer (an independent implementation)."""
    from diffusers import PriorTransformer

    c = model.config
    assert c.text_width == c.clip_dim  # diffusers ties the token width to the embedding width
    ref = PriorTransformer(
        num_attention_heads=c.heads,
        attention_head_dim=c.width // c.heads,
        num_layers=c.layers,
        embedding_dim=c.clip_dim,
        num_embeddings=c.text_len,
        additional_embeddings=4,
    ).eval()
    sd = model.state_dict()
    new = {
        "positional_embedding": sd["positional_embedding"],
        "prd_embedding": sd["prd_emb"],
        "clip_mean": sd["clip_mean"][None],
        "clip_std": sd["clip_std"][None],
        "norm_out.weight": sd["final_ln.weight"],
        "norm_out.bias": sd["final_ln.bias"],
    }
    for ours, theirs in [
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("clip_img_proj", "proj_in"),
        ("text_emb_proj", "embedding_proj"),
        ("text_enc_proj", "encoder_hidden_states_proj"),
        ("out_proj", "proj_to_clip_embeddings"),
    ]:
        for s in ("weight", "bias"):
            new[f"{theirs}.{s}"] = sd[f"{ours}.{s}"]
    for i in range(c.layers):
        p, q = f"transformer.resblocks.{i}.", f"transformer_blocks.{i}."
        for ours, theirs in [
            ("ln_1", "norm1"),
            ("ln_2", "norm3"),
            ("attn.c_proj", "attn1.to_out.0"),
            ("mlp.c_fc", "ff.net.0.proj"),
            ("mlp.c_proj", "ff.net.2"),
        ]:
            for s in ("weight", "bias"):
                new[f"{q}{theirs}.{s}"] = sd[f"{p}{ours}.{s}"]
        for s in ("weight", "bias"):
            for name, part in zip(("to_q", "to_k", "to_v"), unpack_heads(sd[f"{p}attn.c_qkv.{s}"], c.heads, 3)):
                new[f"{q}attn1.{name}.{s}"] = part
    ref.load_state_dict(new, strict=True)
    return ref


def test_matches_diffusers_prior_transformer_on_identical_weights():
    cfg = PriorConfig(clip_dim=16, text_width=16, text_len=7, width=32, layers=2, heads=4)
    model = _model(cfg, seed=3)
    ref = _to_diffusers(model)
    z, t, pooled, tokens, mask = _inputs(cfg, b=3, seed=4)
    with torch.no_grad():
        ours = model(z, t, pooled, tokens, mask)
        theirs = ref(z, t, proj_embedding=pooled, encoder_hidden_states=tokens, attention_mask=mask)
    torch.testing.assert_close(ours, theirs.predicted_image_embedding, rtol=1e-4, atol=1e-5)


def test_karlo_preset_has_diffusers_prior_parameters():
    from diffusers import PriorTransformer

    ours = build_model("prior", "karlo", device="meta")
    with torch.device("meta"):
        ref = PriorTransformer()
    heads = ours.config.heads
    our_shapes = Counter()
    for name, p in ours.named_parameters():
        if name.endswith("attn.c_qkv.weight") or name.endswith("attn.c_qkv.bias"):
            for part in unpack_heads(torch.empty(p.shape, device="meta"), heads, 3):
                our_shapes[tuple(part.shape)] += 1
        else:
            our_shapes[tuple(p.shape)] += 1
    # diffusers keeps the CLIP stats as (1, 768) parameters; ours are [768] buffers saved in the state dict
    for name in ("clip_mean", "clip_std"):
        our_shapes[(1, *getattr(ours, name).shape)] += 1
    ref_shapes = Counter(tuple(p.shape) for p in ref.parameters())
    assert our_shapes == ref_shapes
    n_ours = sum(p.numel() for p in ours.parameters()) + ours.clip_mean.numel() + ours.clip_std.numel()
    assert n_ours == sum(p.numel() for p in ref.parameters()) == 1_022_030_080
    assert {"clip_mean", "clip_std"} <= set(ours.state_dict())


def test_clip_stats_normalise_round_trip_and_save():
    model = _model()
    g = torch.Generator().manual_seed(5)
    data = torch.randn(500, CFG.clip_dim, generator=g, dtype=torch.float64) * 3 + 7
    model.fit_clip_stats(data.float())
    np.testing.assert_allclose(model.clip_mean.numpy(), data.numpy().mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.clip_std.numpy(), data.numpy().std(0, ddof=1), rtol=1e-5)
    z = data[:4].float()
    torch.testing.assert_close(model.denormalize(model.normalize(z)), z)
    n = model.normalize(data.float())
    assert n.mean().abs() < 1e-3 and (n.std(0) - 1).abs().max() < 1e-3
    other = DiffusionPrior(CFG)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.clip_std, model.clip_std)
    with pytest.raises(ValueError, match="positive"):
        model.set_clip_stats(torch.zeros(CFG.clip_dim), torch.zeros(CFG.clip_dim))


def test_text_dropout_replaces_rows_with_the_null_text():
    z, t, pooled, tokens, mask = _inputs(b=3)
    text = TextEmbedding(pooled.repeat(200, 1), tokens.repeat(200, 1, 1), mask.repeat(200, 1))
    null = TextEmbedding(
        torch.zeros(1, CFG.clip_dim),
        -torch.ones(1, CFG.text_len, CFG.text_width),
        torch.tensor([[True, True] + [False] * (CFG.text_len - 2)]),
    )
    out, dropped = text_dropout(text, null, 0.25, torch.Generator().manual_seed(0))
    assert 0.18 < dropped.float().mean() < 0.32
    assert torch.equal(out.pooled[dropped], torch.zeros(int(dropped.sum()), CFG.clip_dim))
    assert torch.equal(out.mask[dropped], null.mask.expand(int(dropped.sum()), -1))
    assert bool((out.tokens[dropped] == -1).all())
    assert torch.equal(out.tokens[~dropped], text.tokens[~dropped])
    assert torch.equal(out.mask[~dropped], text.mask[~dropped])
    _, none = text_dropout(text, null, 0.0)
    assert not none.any()


def test_presets_build_and_bad_inputs_raise():
    for name in PRESETS:
        if name != "karlo":
            m = build_model("prior", name)
            c = m.config
            b = 2
            out = m(
                torch.randn(b, c.clip_dim),
                torch.tensor([0, 999]),
                torch.randn(b, c.clip_dim),
                torch.randn(b, c.text_len, c.text_width),
                torch.ones(b, c.text_len, dtype=torch.bool),
            )
            assert out.shape == (b, c.clip_dim)
    model = _model()
    z, t, pooled, tokens, mask = _inputs()
    with pytest.raises(ValueError, match="text_tokens"):
        model(z, t, pooled, tokens[:, :-1], mask)
    with pytest.raises(ValueError, match="divisible"):
        PriorConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="text_drop_prob"):
        PriorConfig(text_drop_prob=1.0)


def test_save_model_load_model_keeps_the_clip_stats(tmp_path):
    from unclip.models.serialization import load_model, save_model

    model = build_model("prior", "tiny")
    model.set_clip_stats(torch.arange(16.0), torch.full((16,), 3.0))
    save_model(model, tmp_path / "prior")
    loaded = load_model("prior", tmp_path / "prior")
    assert torch.equal(loaded.clip_mean, torch.arange(16.0)) and torch.equal(loaded.clip_std, torch.full((16,), 3.0))
