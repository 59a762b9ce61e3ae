import copy
import dataclasses

import pytest
import torch

from unclip.models import build_model
from unclip.models.decoder_unet import PRESETS, DecoderConfig, DecoderUNet, condition_dropout
from unclip.nn.attention import SpatialAttention


def _randomized(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised output convs would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model.eval()


def _inputs(c: DecoderConfig, b: int = 3, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, c.image_size, c.image_size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    z_i = torch.randn(b, c.clip_dim, generator=g)
    tokens = torch.randn(b, length, c.text_width, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 1:] = False
    pooled = torch.randn(b, c.clip_dim, generator=g)
    return x, t, z_i, tokens, mask, pooled


@pytest.fixture(scope="module")
def tiny():
    return _randomized(build_model("decoder", "tiny"))


def test_tiny_output_shapes_and_param_budget(tiny):
    c = tiny.config
    assert sum(p.numel() for p in tiny.parameters()) < 1_000_000
    x, t, z_i, tokens, mask, pooled = _inputs(c)
    assert tiny(x, t, z_i, tokens, mask, pooled).shape == (3, 6, 16, 16)
    assert tiny(x, t, z_i).shape == (3, 6, 16, 16)
    no_sigma = DecoderUNet(dataclasses.replace(c, learn_sigma=False))
    assert no_sigma(x, t, z_i).shape == (3, 3, 16, 16)
    assert set(PRESETS) >= {"karlo", "tiny", "shapes"}


def test_null_image_embedding_path(tiny):
    x, t, z_i, tokens, mask, pooled = _inputs(tiny.config)
    drop = torch.tensor([True, False, True])
    out = tiny(x, t, z_i, tokens, mask, pooled, drop_image=drop)
    null = tiny.null_image_embedding.detach()[None].expand(3, -1)
    ref_null = tiny(x, t, null, tokens, mask, pooled)
    ref_cond = tiny(x, t, z_i, tokens, mask, pooled)
    torch.testing.assert_close(out[drop], ref_null[drop])
    torch.testing.assert_close(out[~drop], ref_cond[~drop])
    assert (ref_null[0] - ref_cond[0]).abs().max() > 1e-3
    # the null embedding is a trained parameter: gradient flows into it only where dropped
    tiny.zero_grad()
    tiny(x, t, z_i, drop_image=torch.zeros(3, dtype=torch.bool)).sum().backward()
    assert tiny.null_image_embedding.grad is None or tiny.null_image_embedding.grad.abs().max() == 0
    tiny(x, t, z_i, drop_image=drop).sum().backward()
    assert tiny.null_image_embedding.grad.abs().max() > 0
    tiny.zero_grad()


def test_padded_text_tokens_never_change_the_output(tiny):
    x, t, z_i, tokens, mask, pooled = _inputs(tiny.config)
    out = tiny(x, t, z_i, tokens, mask, pooled)
    noisy = tokens.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), tokens.shape[-1]) * 50
    torch.testing.assert_close(tiny(x, t, z_i, noisy, mask, pooled), out, atol=1e-5, rtol=1e-5)
    # ... while real tokens do change it
    changed = tokens.clone()
    changed[0, 0] += 1.0
    assert (tiny(x, t, z_i, changed, mask, pooled)[0] - out[0]).abs().max() > 1e-4
    # extra padding appended to the sequence changes nothing either
    longer = torch.cat([tokens, torch.randn(3, 4, tokens.shape[-1])], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(tiny(x, t, z_i, longer, longer_mask, pooled), out, atol=1e-5, rtol=1e-5)


def test_dropped_text_equals_absent_text(tiny):
    x, t, z_i, tokens, mask, pooled = _inputs(tiny.config)
    no_text = tiny(x, t, z_i)
    all_false = torch.zeros_like(mask)
    torch.testing.assert_close(
        tiny(x, t, z_i, tokens, all_false, torch.zeros_like(pooled)), no_text, atol=1e-5, rtol=1e-5
    )
    assert (tiny(x, t, z_i, tokens, mask, pooled) - no_text).abs().max() > 1e-3


def test_condition_dropout_rates_and_determinism():
    c = dataclasses.replace(PRESETS["tiny"](), image_drop=0.1, text_drop=0.5)
    b = 4000
    z_i = torch.randn(b, c.clip_dim)
    tokens, pooled = torch.randn(b, 3, c.text_width), torch.randn(b, c.clip_dim)
    mask = torch.ones(b, 3, dtype=torch.bool)
    kw = condition_dropout(c, z_i, tokens, mask, pooled, generator=torch.Generator().manual_seed(0))
    kw2 = condition_dropout(c, z_i, tokens, mask, pooled, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kw["drop_image"], kw2["drop_image"]) and torch.equal(kw["text_mask"], kw2["text_mask"])
    drop_text = ~kw["text_mask"].any(1)
    assert abs(kw["drop_image"].float().mean().item() - 0.1) < 0.02
    assert abs(drop_text.float().mean().item() - 0.5) < 0.03
    both = (kw["drop_image"] & drop_text).float().mean().item()
    assert abs(both - 0.05) < 0.015  # independent draws
    assert torch.all(kw["text_pooled"][drop_text] == 0)
    torch.testing.assert_close(kw["text_pooled"][~drop_text], pooled[~drop_text])
    assert kw["text_tokens"] is tokens and kw["image_embedding"] is z_i
    # Karlo-style null caption
    null_tok, null_mask, null_pool = (
        torch.randn(3, c.text_width),
        torch.tensor([True, True, False]),
        torch.randn(c.clip_dim),
    )
    kw3 = condition_dropout(
        c, z_i, tokens, mask, pooled, torch.Generator().manual_seed(0), null_tok, null_mask, null_pool
    )
    torch.testing.assert_close(kw3["text_tokens"][drop_text], null_tok.expand(int(drop_text.sum()), -1, -1))
    assert torch.equal(kw3["text_mask"][drop_text], null_mask.expand(int(drop_text.sum()), -1))
    torch.testing.assert_close(kw3["text_pooled"][drop_text], null_pool.expand(int(drop_text.sum()), -1))


def test_condition_dropout_output_feeds_forward(tiny):
    x, t, z_i, tokens, mask, pooled = _inputs(tiny.config)
    kw = condition_dropout(tiny.config, z_i, tokens, mask, pooled, generator=torch.Generator().manual_seed(1))
    assert tiny(x, t, **kw).shape == (3, 6, 16, 16)


def test_fp64_and_fp32_agree_and_channels_last(tiny):
    x, t, z_i, tokens, mask, pooled = _inputs(tiny.config)
    out32 = tiny(x, t, z_i, tokens, mask, pooled)
    model64 = copy.deepcopy(tiny).double()
    out64 = model64(x.double(), t, z_i.double(), tokens.double(), mask, pooled.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out32.double(), out64, atol=1e-4, rtol=1e-4)
    cl = tiny.to(memory_format=torch.channels_last)
    out_cl = cl(x.contiguous(memory_format=torch.channels_last), t, z_i, tokens, mask, pooled)
    torch.testing.assert_close(out_cl, out32, atol=1e-5, rtol=1e-5)
    tiny.to(memory_format=torch.contiguous_format)


def test_tiny_forward_backward_reaches_every_parameter():
    model = _randomized(build_model("decoder", "tiny")).train()
    x, t, z_i, tokens, mask, pooled = _inputs(model.config)
    out = model(x, t, z_i, tokens, mask, pooled, drop_image=torch.tensor([True, False, False]))
    loss = out.square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in model.named_parameters() if p.grad.abs().max() == 0]
    assert not zero, zero
    # default init: output conv zero -> output exactly zero, trainable
    fresh = build_model("decoder", "tiny")
    assert fresh(x, t, z_i).abs().max() == 0


def test_attention_placement_follows_config():
    model = build_model("decoder", "shapes")
    attn = [n for n, m in model.named_modules() if isinstance(m, SpatialAttention)]
    # shapes: attention at ds 4 (8x8 of 32x32) + middle
    assert attn and all(n.startswith(("input_blocks.", "middle_block.", "output_blocks.")) for n in attn)
    x = torch.randn(1, 3, 32, 32)
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
        for m in model.modules()
        if isinstance(m, SpatialAttention)
    ]
    model(x, torch.tensor([5]), torch.randn(1, 128))
    for h in hooks:
        h.remove()
    assert set(seen) == {8}


def test_bad_inputs_raise_clear_errors(tiny):
    c = tiny.config
    x, t, z_i, tokens, mask, pooled = _inputs(c)
    with pytest.raises(ValueError, match="image_embedding"):
        tiny(x, t, z_i[:, :5])
    with pytest.raises(ValueError, match="x must be"):
        tiny(x[:, :2], t, z_i)
    with pytest.raises(ValueError, match="t must be"):
        tiny(x, t[:2], z_i)
    with pytest.raises(ValueError, match="text_mask"):
        tiny(x, t, z_i, tokens, mask.float(), pooled)
    with pytest.raises(ValueError, match="drop_image"):
        tiny(x, t, z_i, drop_image=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="text_tokens"):
        tiny(x, t, z_i, tokens[..., :3])
    with pytest.raises(ValueError, match="norm_groups"):
        DecoderUNet(dataclasses.replace(c, model_channels=12))
    with pytest.raises(ValueError, match="attention_ds"):
        DecoderUNet(dataclasses.replace(c, attention_ds=(3,)))
    with pytest.raises(ValueError, match="text_drop"):
        DecoderUNet(dataclasses.replace(c, text_drop=1.5))
    no_text = DecoderUNet(dataclasses.replace(c, text_width=None, use_pooled_text=False))
    assert no_text(x, t, z_i).shape == (3, 6, 16, 16)
    with pytest.raises(ValueError, match="text_width=None"):
        no_text(x, t, z_i, tokens)


def test_conditioned_decoder_projects_the_context_once_and_equals_forward_at_every_step(monkeypatch):
    """decoder.conditioned(...) computes the z_i/text projections and each attention layer's context keys and
    values once; calling it at three steps (new x and t each time) equals a fresh forward each time (float64)."""
    model = _randomized(build_model("decoder", "tiny")).double()
    x, _, z_i, tokens, mask, pooled = _inputs(model.config)
    x, z_i, tokens, pooled = x.double(), z_i.double(), tokens.double(), pooled.double()
    drop = torch.tensor([False, True, False])
    kv_calls = []
    original = SpatialAttention.context_key_values
    monkeypatch.setattr(
        SpatialAttention, "context_key_values", lambda self, ctx: kv_calls.append(self) or original(self, ctx)
    )
    attention_layers = sum(isinstance(m, SpatialAttention) for m in model.modules())
    with torch.no_grad():
        cached = model.conditioned(z_i, tokens, mask, pooled, drop, dtype=torch.float64)
        outputs = [cached(x * (1 - 0.3 * s), torch.tensor([900, 500, 20]) - 100 * s) for s in range(3)]
        assert len(kv_calls) == attention_layers == len(set(map(id, kv_calls)))  # once per layer, not per step
        for s, out in enumerate(outputs):
            fresh = model(x * (1 - 0.3 * s), torch.tensor([900, 500, 20]) - 100 * s, z_i, tokens, mask, pooled, drop)
            torch.testing.assert_close(out, fresh, rtol=0, atol=1e-12)
        with pytest.raises(ValueError, match=r"x must be \[3, 3, H, W\] for this conditioning"):
            cached(x[:2], torch.tensor([1, 2]))


def test_image_embedding_grid_grows_on_a_trained_decoder_and_adds_a_located_map(tmp_path):
    from safetensors.torch import save_file

    from unclip.train.resume import load_init_weights

    plain_config = PRESETS["tiny"]()
    plain = _randomized(DecoderUNet(plain_config))
    grown = DecoderUNet(dataclasses.replace(plain_config, image_embedding_grid=4)).eval()
    export = tmp_path / "decoder"
    export.mkdir()
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(export / "model.safetensors"))
    load_init_weights(grown, export, "decoder")  # the located map is missing from the export: kept at zero
    x, t, z_i, tokens, mask, pooled = _inputs(plain_config)
    with torch.no_grad():
        assert torch.equal(grown(x, t, z_i, tokens, mask, pooled), plain(x, t, z_i, tokens, mask, pooled))
        # a map that is the same in every cell (weight 0, bias b per channel) is a bias on the first convolution
        bias = torch.randn(plain_config.model_channels)
        grown.clip_grid_proj.bias.copy_(bias.repeat_interleave(16))
        shifted = copy.deepcopy(plain)
        shifted.input_blocks[0][0].bias.add_(bias)
        expected = shifted(x, t, z_i, tokens, mask, pooled)
        assert torch.allclose(grown(x, t, z_i, tokens, mask, pooled), expected, atol=1e-5)
        # a located map: z_i switches on channel 0 in the top-left cell only; the output changes there most
        grown.clip_grid_proj.bias.zero_()
        weight = torch.zeros_like(grown.clip_grid_proj.weight)
        weight[0, :] = 3.0  # row 0 = channel 0, cell (0, 0)
        grown.clip_grid_proj.weight.copy_(weight)
        ones = torch.ones_like(z_i)
        change = (grown(x, t, ones, tokens, mask, pooled) - plain(x, t, ones, tokens, mask, pooled)).abs()
        quadrants = change[:, :3].unfold(2, 8, 8).unfold(3, 8, 8).mean((1, 4, 5))  # [B, 2, 2]
        assert (quadrants[:, 0, 0] > quadrants[:, 1, 1]).all()
        # the null embedding (guidance) goes through the same map
        dropped = grown(x, t, z_i, drop_image=torch.ones(3, dtype=torch.bool))
        null = grown.null_image_embedding[None].expand(3, -1)
        assert torch.equal(dropped, grown(x, t, null))
    # any other missing tensor is still refused
    broken = {k: v for k, v in plain.state_dict().items() if not k.startswith("clip_emb")}
    save_file({k: v.contiguous() for k, v in broken.items()}, str(export / "model.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        load_init_weights(grown, export, "decoder")


@pytest.mark.parametrize("bad", [-1, 17, True, 2.0])
def test_image_embedding_grid_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="image_embedding_grid"):
        DecoderUNet(dataclasses.replace(PRESETS["tiny"](), image_embedding_grid=bad))


def test_image_embedding_grid_does_not_export_to_diffusers():
    from unclip.interop.diffusers_config import decoder_config_to_diffusers

    config = dataclasses.replace(PRESETS["tiny"](), text_width=12, image_embedding_grid=2)
    with pytest.raises(ValueError, match="image_embedding_grid=2"):
        decoder_config_to_diffusers(config)
