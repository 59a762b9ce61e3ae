"""AR prior: causal masking, KV-cached sampling vs teacher forcing, the top-half rule, guidance, training."""

import pytest
import torch
import torch.nn.functional as F

from unclip.encoders.base import TextEmbedding
from unclip.models import build_model
from unclip.models.ar_prior import ARPrior, ARPriorConfig, upper_quantile_filter

CFG = ARPriorConfig(
    clip_dim=12, text_width=10, text_len=6, num_components=5, num_buckets=16, dot_buckets=12, width=32, layers=2,
    heads=4,
)  # fmt: skip


def _data(n=64, cfg=CFG, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, cfg.clip_dim, generator=g)
    img = torch.randn(n, 6, generator=g) @ basis + 0.05 * torch.randn(n, cfg.clip_dim, generator=g)
    pooled = img + 0.8 * torch.randn(n, cfg.clip_dim, generator=g)
    tokens = torch.randn(n, cfg.text_len, cfg.text_width, generator=g)
    lengths = torch.randint(1, cfg.text_len + 1, (n,), generator=g)
    mask = torch.arange(cfg.text_len)[None] < lengths[:, None]
    return img, TextEmbedding(pooled, tokens, mask)


def _null(cfg=CFG):
    mask = torch.zeros(1, cfg.text_len, dtype=torch.bool)
    mask[0, :2] = True
    return TextEmbedding(torch.zeros(1, cfg.clip_dim), torch.full((1, cfg.text_len, cfg.text_width), 0.3), mask)


def _model(cfg=CFG, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = ARPrior(cfg)
    img, text = _data(cfg=cfg)
    model.fit_quantizers(img, text.pooled)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


def test_future_tokens_never_influence_earlier_predictions():
    model = _model()
    img, text = _data(n=4, seed=1)
    dot, comps = model.encode_targets(img, text.pooled)
    d0, c0 = model(text.pooled, text.tokens, text.mask, dot, comps)
    assert d0.shape == (4, CFG.dot_buckets) and c0.shape == (4, CFG.num_components, CFG.num_buckets)
    for j in range(CFG.num_components - 1):  # change c_{j+1} (input index j)
        changed = comps.clone()
        changed[:, j] = (changed[:, j] + 5) % CFG.num_buckets
        d1, c1 = model(text.pooled, text.tokens, text.mask, dot, changed)
        torch.testing.assert_close(d1, d0, rtol=0, atol=0)
        torch.testing.assert_close(c1[:, : j + 1], c0[:, : j + 1], rtol=0, atol=0)
        assert (c1[:, j + 1] - c0[:, j + 1]).abs().amax(-1).min() > 1e-5
    # the dot token influences every component prediction but not its own
    d2, c2 = model(text.pooled, text.tokens, text.mask, (dot + 3) % CFG.dot_buckets, comps)
    torch.testing.assert_close(d2, d0, rtol=0, atol=0)
    assert (c2 - c0).abs().amax(-1).min() > 1e-5
    # the last component is never an input
    last = comps.clone()
    last[:, -1] = (last[:, -1] + 1) % CFG.num_buckets
    torch.testing.assert_close(model(text.pooled, text.tokens, text.mask, dot, last)[1], c0, rtol=0, atol=0)


def test_padded_text_never_influences_predictions_but_real_text_does():
    model = _model()
    img, text = _data(n=4, seed=1)
    text.mask[:, :3] = True
    text.mask[:, 3:] = False
    dot, comps = model.encode_targets(img, text.pooled)
    d0, c0 = model(text.pooled, text.tokens, text.mask, dot, comps)
    noisy = text.tokens.clone()
    noisy[:, 3:] += 50.0
    d1, c1 = model(text.pooled, noisy, text.mask, dot, comps)
    torch.testing.assert_close((d1, c1), (d0, c0), rtol=0, atol=1e-6)
    real = text.tokens.clone()
    real[:, 1] += 1.0
    d2, _ = model(text.pooled, real, text.mask, dot, comps)
    assert (d2 - d0).abs().amax(-1).min() > 1e-5


def test_upper_quantile_filter_keeps_the_top_half():
    logits = torch.zeros(1, 10)  # uniform: the median falls on the edge between buckets 4 and 5
    kept = torch.isfinite(upper_quantile_filter(logits, 0.5))[0]
    assert kept.tolist() == [False] * 5 + [True] * 5
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(200, 30, generator=g)
    kept = torch.isfinite(upper_quantile_filter(logits, 0.5))
    p = torch.softmax(logits.double(), -1)
    below = p.cumsum(-1) - p  # mass strictly below each bucket
    first = kept.float().argmax(-1)
    for row in range(200):
        f = int(first[row])
        assert kept[row, f:].all() and not kept[row, :f].any()  # a contiguous upper range
        assert below[row, f] <= 0.5 < below[row, f] + p[row, f] + 1e-12  # starting at the median's bucket
    with pytest.raises(ValueError, match="percentile"):
        upper_quantile_filter(logits, 1.0)


def test_generate_never_draws_the_dot_token_from_the_lower_half():
    model = _model()
    nd = CFG.dot_buckets
    target = torch.full((nd,), -1e9)
    target[:8] = 0.0  # the model's dot distribution: uniform over buckets 0..7, median at the 3|4 edge
    with torch.no_grad():
        model.dot_head.weight.zero_()
        model.dot_head.bias.copy_(target)
    _, text = _data(n=200, seed=2)
    g = torch.Generator().manual_seed(0)
    _, dot, _ = model.generate(text, generator=g)
    assert set(dot.tolist()) == {4, 5, 6, 7}
    _, dot_all, _ = model.generate(text, dot_percentile=0.0, generator=g)
    assert set(dot_all.tolist()) == set(range(8))  # without the rule the lower half is drawn too


def test_cached_greedy_generation_matches_teacher_forcing():
    model = _model(dtype=torch.float64)
    _, text = _data(n=6, seed=3)
    text = text.to(dtype=torch.float64)
    emb, dot, comps = model.generate(text, temperature=0.0, dot_percentile=0.0)
    assert emb.shape == (6, CFG.clip_dim) and emb.dtype == torch.float32
    assert comps.shape == (6, CFG.num_components) and dot.shape == (6,)
    d, c = model(text.pooled, text.tokens, text.mask, dot, comps)
    assert torch.equal(d.argmax(-1), dot)
    assert torch.equal(c.argmax(-1), comps)
    torch.testing.assert_close(emb, model.decode_tokens(comps))


def test_guided_greedy_generation_matches_the_logit_mixing_formula():
    model = _model(dtype=torch.float64)
    _, text = _data(n=5, seed=4)
    text = text.to(dtype=torch.float64)
    null = _null().to(dtype=torch.float64)
    s = 3.0
    _, dot, comps = model.generate(text, null, guidance_scale=s, temperature=0.0)
    nb = TextEmbedding(null.pooled.expand(5, -1), null.tokens.expand(5, -1, -1), null.mask.expand(5, -1))
    dc, cc = model(text.pooled, text.tokens, text.mask, dot, comps)
    du, cu = model(nb.pooled, nb.tokens, nb.mask, dot, comps)

    def mix(c, u):
        return F.log_softmax(u, -1) + s * (F.log_softmax(c, -1) - F.log_softmax(u, -1))

    assert torch.equal(upper_quantile_filter(mix(dc, du), 0.5).argmax(-1), dot)
    assert torch.equal(mix(cc, cu).argmax(-1), comps)
    # scale 1 is the unguided model
    _, dot1, comps1 = model.generate(text, null, guidance_scale=1.0, temperature=0.0)
    _, dot2, comps2 = model.generate(text, temperature=0.0)
    assert torch.equal(dot1, dot2) and torch.equal(comps1, comps2)
    with pytest.raises(ValueError, match="null_text"):
        model.generate(text, guidance_scale=2.0)


def test_loss_is_the_token_cross_entropy_and_training_reduces_it():
    torch.manual_seed(0)
    model = ARPrior(CFG)
    img, text = _data(n=16)
    model.fit_quantizers(img, text.pooled)
    loss, metrics = model.loss(img, text)
    dot, comps = model.encode_targets(img, text.pooled)
    d, c = model(text.pooled, text.tokens, text.mask, dot, comps)
    ref = torch.cat([F.cross_entropy(d, dot, reduction="none")[:, None], F.cross_entropy(c.transpose(1, 2), comps,
                    reduction="none")], 1).mean()  # fmt: skip
    torch.testing.assert_close(loss, ref)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss_i, _ = model.loss(img, text, _null(), torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss_i.backward()
        opt.step()
    final, m = model.loss(img, text)
    assert final.item() < 0.5 * loss.item() and m["acc_comp"] > 0.5


def test_state_dict_round_trip_including_quantizers():
    model = _model()
    other = ARPrior(CFG).eval()
    other.load_state_dict(model.state_dict())
    _, text = _data(n=3, seed=5)
    a = model.generate(text, generator=torch.Generator().manual_seed(7))
    b = other.generate(text, generator=torch.Generator().manual_seed(7))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    keys = set(model.state_dict())
    assert {"quantizer.components", "quantizer.quantizer.edges", "dot_quantizer.edges"} <= keys


def test_presets_and_bad_inputs():
    model = build_model("ar_prior", "tiny")
    c = model.config
    img = torch.randn(40, c.clip_dim)
    model.fit_quantizers(img, img + torch.randn_like(img))
    text = TextEmbedding(torch.randn(2, c.clip_dim), torch.randn(2, c.text_len, c.text_width),
                         torch.ones(2, c.text_len, dtype=torch.bool))  # fmt: skip
    emb, _, comps = model.eval().generate(text, top_k=5, generator=torch.Generator().manual_seed(0))
    assert emb.shape == (2, c.clip_dim) and int(comps.max()) < c.num_buckets
    with pytest.raises(ValueError, match="num_components"):
        ARPriorConfig(clip_dim=8, num_components=9)
    with pytest.raises(ValueError, match="text_tokens"):
        model(text.pooled, text.tokens[:, :-1], text.mask)
    with pytest.raises(RuntimeError, match="not fitted"):
        ARPrior(CFG).encode_targets(torch.randn(2, 12), torch.randn(2, 12))


def test_save_model_load_model_keeps_the_float64_quantizer_state(tmp_path):
    from unclip.models.serialization import load_model, save_model

    model = build_model("ar_prior", "tiny")
    c = model.config
    g = torch.Generator().manual_seed(0)
    img = torch.randn(80, c.clip_dim, generator=g)
    model.fit_quantizers(img, img + torch.randn(80, c.clip_dim, generator=g))
    save_model(model, tmp_path / "ar")
    loaded = load_model("ar_prior", tmp_path / "ar")
    assert loaded.quantizer.components.dtype == torch.float64
    assert torch.equal(loaded.quantizer.quantizer.edges, model.quantizer.quantizer.edges)
    assert torch.equal(loaded.encode_targets(img, img)[1], model.encode_targets(img, img)[1])
