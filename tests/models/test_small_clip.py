import math

import pytest
import torch
import torch.nn.functional as F

from unclip.encoders.tokenizer import END_ID, WordByteTokenizer
from unclip.models import build_model
from unclip.models.clip import ClipConfig, SmallCLIP, contrastive_loss


def _tiny(**overrides) -> SmallCLIP:
    torch.manual_seed(0)
    base = build_model("clip", "tiny").config
    return SmallCLIP(ClipConfig(**{**base.__dict__, **overrides})).eval()


def test_presets_sizes():
    shapes = build_model("clip", "shapes", device="meta")
    n = sum(p.numel() for p in shapes.parameters())
    assert 1.2e6 < n < 2.5e6
    assert shapes.config.embed_dim == 128 and shapes.config.image_size == 32 and shapes.config.image_pooled
    assert build_model("clip", "shapes64", device="meta").config.image_size == 64
    assert shapes.config.vocab_size >= WordByteTokenizer().vocab_size
    tiny = build_model("clip", "tiny")
    assert sum(p.numel() for p in tiny.parameters()) < 50_000


def _to_hf_text(model: SmallCLIP):
    """Map our text tower onto transformers' CLIPTextModelWithProjection (hidden_act='gelu')."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    c = model.config
    hf_config = CLIPTextConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.text_width,
        intermediate_size=int(c.text_width * c.mlp_ratio),
        num_hidden_layers=c.text_layers,
        num_attention_heads=c.text_heads,
        max_position_embeddings=c.context_length,
        projection_dim=c.embed_dim,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        eos_token_id=END_ID,
        bos_token_id=1,
        pad_token_id=0,
    )
    hf = CLIPTextModelWithProjection(hf_config).eval()
    t = model.text
    sd = {
        "text_model.embeddings.token_embedding.weight": t.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": t.positional_embedding,
        "text_model.final_layer_norm.weight": t.ln_final.weight,
        "text_model.final_layer_norm.bias": t.ln_final.bias,
        "text_projection.weight": t.projection.weight,
    }
    for i, b in enumerate(t.blocks):
        p = f"text_model.encoder.layers.{i}."
        qw, kw, vw = b.attn.qkv.weight.chunk(3)
        qb, kb, vb = b.attn.qkv.bias.chunk(3)
        sd.update({
            p + "self_attn.q_proj.weight": qw, p + "self_attn.q_proj.bias": qb,
            p + "self_attn.k_proj.weight": kw, p + "self_attn.k_proj.bias": kb,
            p + "self_attn.v_proj.weight": vw, p + "self_attn.v_proj.bias": vb,
            p + "self_attn.out_proj.weight": b.attn.out.weight, p + "self_attn.out_proj.bias": b.attn.out.bias,
            p + "layer_norm1.weight": b.ln_1.weight, p + "layer_norm1.bias": b.ln_1.bias,
            p + "layer_norm2.weight": b.ln_2.weight, p + "layer_norm2.bias": b.ln_2.bias,
            p + "mlp.fc1.weight": b.mlp[0].weight, p + "mlp.fc1.bias": b.mlp[0].bias,
            p + "mlp.fc2.weight": b.mlp[2].weight, p + "mlp.fc2.bias": b.mlp[2].bias,
        })  # fmt: skip
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return hf


def test_text_tower_matches_transformers_clip_text_model():
    model = _tiny()
    # random non-trivial LayerNorm parameters so that a mis-mapped norm cannot pass
    with torch.no_grad():
        for name, p in model.text.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    hf = _to_hf_text(model).double()
    tok = WordByteTokenizer(max_length=model.config.context_length)
    ids, mask = tok(["a red circle", "a large outlined blue star in the top left", "an unseen zebra"])
    pooled, tokens = model.double().encode_text(ids, mask)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask.long())
    torch.testing.assert_close(pooled, out.text_embeds, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(tokens[mask], out.last_hidden_state[mask], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("causal", [True, False])
def test_text_outputs_do_not_depend_on_padding(causal):
    model = _tiny(causal=causal).double()
    tok = WordByteTokenizer(max_length=model.config.context_length)
    short, mask_s = tok(["a red circle"])
    L = int(mask_s.sum())
    pooled_s, tokens_s = model.encode_text(short[:, :L], mask_s[:, :L])
    pooled, tokens = model.encode_text(short, mask_s)
    torch.testing.assert_close(pooled, pooled_s)
    torch.testing.assert_close(tokens[:, :L], tokens_s)


def test_full_attention_lets_early_tokens_see_later_ones():
    tok = WordByteTokenizer(max_length=16)
    ids, mask = tok(["a red circle", "a red square"])
    for causal, same in ((True, True), (False, False)):
        _, tokens = _tiny(causal=causal).encode_text(ids, mask)
        assert torch.allclose(tokens[0, 2], tokens[1, 2]) is same  # the "red" token


@pytest.mark.parametrize("norm", ["channel", "batch", "group"])
def test_image_tower_is_per_sample_and_checks_size(norm):
    model = _tiny(image_norm=norm)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    z = model.encode_image(x)
    assert z.shape == (4, 16)
    torch.testing.assert_close(model.encode_image(x[2:3]), z[2:3], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="16×16"):
        model.encode_image(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="ids and mask must both be"):
        model.encode_text(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))


def test_contrastive_loss_matches_a_float64_loop():
    torch.manual_seed(1)
    logits = torch.randn(5, 5, dtype=torch.float64) * 3
    targets = torch.eye(5, dtype=torch.float64)
    targets[1, 3] = targets[3, 1] = targets[3, 3] = targets[1, 1] = 1  # captions 1 and 3 identical

    def ce(rows, tgt):
        total = 0.0
        for i in range(rows.shape[0]):
            lse = math.log(sum(math.exp(v) for v in rows[i].tolist()))
            w = tgt[i] / tgt[i].sum()
            total += sum(-float(w[j]) * (float(rows[i, j]) - lse) for j in range(rows.shape[1]))
        return total / rows.shape[0]

    expected = 0.5 * (ce(logits, targets) + ce(logits.t(), targets.t()))
    assert abs(float(contrastive_loss(logits, targets)) - expected) < 1e-12
    eye_expected = 0.5 * (ce(logits, torch.eye(5)) + ce(logits.t(), torch.eye(5)))
    assert abs(float(contrastive_loss(logits)) - eye_expected) < 1e-12
    # extra texts (hard negatives): all columns in image->text; text->image only for columns with a match
    wide = torch.cat([logits, torch.randn(5, 3, dtype=torch.float64)], 1)
    wide_targets = torch.cat([targets, torch.zeros(5, 3, dtype=torch.float64)], 1)
    wide_targets[2, 6] = 1  # extra text 6 happens to describe image 2
    cols = [0, 1, 2, 3, 4, 6]
    expected = 0.5 * (ce(wide, wide_targets) + ce(wide.t()[cols], wide_targets.t()[cols]))
    assert abs(float(contrastive_loss(wide, wide_targets)) - expected) < 1e-12
    with pytest.raises(ValueError, match="T >= B"):
        contrastive_loss(wide.t(), wide_targets.t())
    with pytest.raises(ValueError, match="at least one matching text"):
        contrastive_loss(wide, torch.zeros_like(wide))


def test_tiny_clip_learns_where_a_square_is():
    """A few steps on 4 images that differ only by position must separate them (spatial information kept)."""
    torch.manual_seed(0)
    model = _tiny().train()
    x = -torch.ones(4, 3, 16, 16)
    x[0, :, 2:7, 2:7] = 1  # top left
    x[1, :, 2:7, 9:14] = 1  # top right
    x[2, :, 9:14, 2:7] = 1  # bottom left
    x[3, :, 9:14, 9:14] = 1  # bottom right
    tok = WordByteTokenizer(max_length=16)
    ids, mask = tok(["in the top left", "in the top right", "in the bottom left", "in the bottom right"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = contrastive_loss(model(x, ids, mask))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model.eval()(x, ids, mask)
    assert logits.argmax(1).tolist() == [0, 1, 2, 3]
    assert loss.item() < 0.2
    assert model.inverse_temperature() <= model.config.logit_scale_max


def test_config_validation():
    with pytest.raises(ValueError, match="image_size"):
        ClipConfig(image_size=20, image_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="divisible"):
        ClipConfig(text_width=30, text_heads=4)
    with pytest.raises(ValueError, match="image_norm"):
        ClipConfig(image_norm="layer")
    assert F.normalize(torch.ones(1, 2), dim=-1).shape == (1, 2)


def test_pooled_branch_adds_a_position_free_summary():
    model = _tiny(image_pooled=True, image_norm="batch")
    tower = model.visual
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        first = tower.stages[0](torch.nn.functional.silu(tower.stem(x)))
        flat = tower.to_map(tower.stages[1:](first)).flatten(1)
        summary = torch.cat([first.amax((2, 3)), first.mean((2, 3))], 1)
        expected = tower.proj(tower.norm(torch.cat([flat, summary], 1)))
        assert torch.allclose(tower(x), expected, atol=1e-5)
        assert summary.shape == (3, 2 * model.config.image_channels[0])
    plain = _tiny(image_norm="batch")
    assert plain.visual.proj.in_features + 2 * plain.config.image_channels[0] == tower.proj.in_features


def test_grid_pool_branch_locates_colours_and_starts_as_the_model_without_it(tmp_path):
    from safetensors.torch import save_file

    from unclip.train.resume import load_init_weights

    plain = _tiny(image_pooled=True, image_norm="batch")
    grown = _tiny(image_pooled=True, image_norm="batch", image_grid_pool=2)
    export = tmp_path / "clip"
    export.mkdir()
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(export / "model.safetensors"))
    load_init_weights(grown, export, "clip")
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(grown.visual(x), plain.visual(x))  # zero-initialised projection: the same function
    # the located summary: per-channel max and mean over each cell of the 2x2 grid of the first stage's map
    tower = grown.visual
    torch.nn.init.normal_(tower.grid_proj.weight)
    with torch.no_grad():
        first = tower.stages[0](F.silu(tower.stem(x)))
        cells = [first[:, :, :4, :4], first[:, :, :4, 4:], first[:, :, 4:, :4], first[:, :, 4:, 4:]]
        maxes = torch.stack([c.amax((2, 3)) for c in cells], -1)
        means = torch.stack([c.mean((2, 3)) for c in cells], -1)
        located = torch.cat([maxes, means], 1).flatten(1)
        expected = plain.visual(x) + tower.grid_proj(tower.grid_norm(located))
        assert torch.allclose(tower(x), expected, atol=1e-5)
        # which colour is where: mirroring the image changes the located summary, not the global one
        flipped = first.flip(-1)
        assert not torch.allclose(F.adaptive_avg_pool2d(flipped, 2), F.adaptive_avg_pool2d(first, 2))
    with pytest.raises(ValueError, match="image_grid_pool"):
        ClipConfig(image_size=16, image_channels=(8, 16), image_grid_pool=9)
    # a checkpoint missing other tensors than the added branch is still refused
    broken = {k: v for k, v in plain.state_dict().items() if not k.startswith("visual.proj")}
    save_file({k: v.contiguous() for k, v in broken.items()}, str(export / "model.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        load_init_weights(grown, export, "clip")
