"""The ``karlo`` presets hold exactly Karlo's parameters: counts and shapes equal diffusers' converted modules.

Everything is built on the meta device (no memory). diffusers' equivalents follow
``scripts/convert_kakao_brain_unclip_to_diffusers.py``: decoder = UNet2DConditionModel + UnCLIPTextProjModel,
super-resolution = UNet2DModel.
"""

import dataclasses
from collections import Counter

import pytest
import torch

from unclip.models import build_model

diffusers = pytest.importorskip("diffusers")


def _our_canonical_shapes(model: torch.nn.Module) -> Counter:
    """Shapes in diffusers' representation: 1x1 Conv1d -> Linear, fused per-head qkv / kv split in parts."""
    shapes: Counter = Counter()
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        module = name.split(".")[-2] if "." in name else ""
        if module in ("qkv", "encoder_kv", "proj_out") and p.dim() == 3:
            assert shape[-1] == 1, name
            shape = shape[:-1]
        parts = {"qkv": 3, "encoder_kv": 2}.get(module, 1)
        if parts > 1:
            shape = (shape[0] // parts, *shape[1:])
        shapes[shape] += parts
    return shapes


def _their_shapes(*modules: torch.nn.Module) -> Counter:
    return Counter(tuple(p.shape) for m in modules for p in m.parameters())


def _count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_karlo_decoder_matches_diffusers_unet_and_text_proj():
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    ours = build_model("decoder", "karlo", device="meta")
    assert all(p.is_meta for p in ours.parameters())
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(
            sample_size=64,
            layers_per_block=3,
            down_block_types=(
                "ResnetDownsampleBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
            ),
            up_block_types=(
                "SimpleCrossAttnUpBlock2D",
                "SimpleCrossAttnUpBlock2D",
                "SimpleCrossAttnUpBlock2D",
                "ResnetUpsampleBlock2D",
            ),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            block_out_channels=(320, 640, 960, 1280),
            in_channels=3,
            out_channels=6,
            cross_attention_dim=1536,
            class_embed_type="identity",
            attention_head_dim=64,
            resnet_time_scale_shift="scale_shift",
        )
        text_proj = UnCLIPTextProjModel(
            clip_extra_context_tokens=4, clip_embeddings_dim=768, time_embed_dim=1280, cross_attention_dim=1536
        )
    assert _count(ours) == _count(unet, text_proj) == 893_318_086
    assert _our_canonical_shapes(ours) == _their_shapes(unet, text_proj)
    # Karlo's own (un-split) tensor count: diffusers has 3 + 2 tensors where Karlo has one qkv + one encoder_kv
    n_attn = sum(1 for n, _ in ours.named_parameters() if n.endswith("qkv.weight"))
    assert n_attn == 3 * 3 + 1 + 3 * 4  # 3 per down level 1..3, 1 middle, 4 per up level 1..3
    assert len(list(ours.parameters())) + n_attn * (2 + 1) * 2 == len(list(unet.parameters())) + len(
        list(text_proj.parameters())
    )


def test_karlo_upsampler_matches_diffusers_unet2d():
    ours = build_model("upsampler", "karlo", device="meta")
    with torch.device("meta"):
        sr = diffusers.UNet2DModel(
            sample_size=256,
            layers_per_block=3,
            down_block_types=("ResnetDownsampleBlock2D",) * 4,
            up_block_types=("ResnetUpsampleBlock2D",) * 4,
            block_out_channels=(320, 640, 960, 1280),
            in_channels=6,
            out_channels=3,
            add_attention=False,
        )
    assert _count(ours) == _count(sr) == 691_579_523
    assert Counter(tuple(p.shape) for p in ours.parameters()) == _their_shapes(sr)
    assert len(list(ours.parameters())) == len(list(sr.parameters()))


def test_karlo_decoder_state_dict_names_follow_karlo():
    ours = build_model("decoder", "karlo", device="meta")
    names = set(ours.state_dict())
    for key in [
        "time_embed.0.weight",
        "time_embed.2.weight",
        "clip_emb.weight",
        "text_feat_proj.weight",
        "text_seq_proj.0.weight",
        "text_seq_proj.1.weight",
        "clip_tok_proj.weight",
        "null_image_embedding",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.5.0.skip_connection.weight",
        "input_blocks.5.1.qkv.weight",
        "input_blocks.5.1.encoder_kv.weight",
        "input_blocks.5.1.proj_out.weight",
        "middle_block.1.norm.weight",
        "middle_block.2.out_layers.3.bias",
        "output_blocks.3.2.in_layers.2.weight",  # up-ResBlock after the attention of level 3
        "output_blocks.15.0.in_layers.0.weight",
        "out.0.weight",
        "out.2.weight",
    ]:
        assert key in names, key
    assert len({k.split(".")[1] for k in names if k.startswith("input_blocks.")}) == 16
    assert len({k.split(".")[1] for k in names if k.startswith("output_blocks.")}) == 16
    sd = ours.state_dict()
    assert sd["input_blocks.5.1.qkv.weight"].shape == (3 * 640, 640, 1)
    assert sd["input_blocks.5.1.encoder_kv.weight"].shape == (2 * 640, 1536, 1)
    assert sd["output_blocks.11.0.in_layers.0.weight"].shape == (640 + 320,)  # skip from the level-0 down block
    assert sd["clip_tok_proj.weight"].shape == (4 * 1536, 768)
    assert sd["null_image_embedding"].shape == (768,)


# ------------------------------------------------------------------ numerical parity on tiny weights
# The Karlo -> diffusers key mapping of the conversion script, applied to our (Karlo-named) state dict. If
# our tiny networks reproduce diffusers' outputs on mapped weights, our layout holds Karlo's weights with
# Karlo's meaning (block order, skip order, head packing, token order), not only its shapes.


def _map_resblock(sd, src, dst, out):
    pairs = {
        "in_layers.0": "norm1",
        "in_layers.2": "conv1",
        "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2",
        "out_layers.3": "conv2",
        "skip_connection": "conv_shortcut",
    }
    for a, b in pairs.items():
        for suffix in ("weight", "bias"):
            key = f"{src}.{a}.{suffix}"
            if key in sd:
                out[f"{dst}.{b}.{suffix}"] = sd[key]


def _map_attention(sd, src, dst, heads, out):
    from unclip.nn.attention import unpack_heads

    out[f"{dst}.group_norm.weight"] = sd[f"{src}.norm.weight"]
    out[f"{dst}.group_norm.bias"] = sd[f"{src}.norm.bias"]
    for suffix in ("weight", "bias"):
        q, k, v = unpack_heads(sd[f"{src}.qkv.{suffix}"], heads, 3)
        ek, ev = unpack_heads(sd[f"{src}.encoder_kv.{suffix}"], heads, 2)
        for name, tensor in zip(("to_q", "to_k", "to_v", "add_k_proj", "add_v_proj"), (q, k, v, ek, ev)):
            out[f"{dst}.{name}.{suffix}"] = tensor.squeeze(-1) if suffix == "weight" else tensor
        proj = sd[f"{src}.proj_out.{suffix}"]
        out[f"{dst}.to_out.0.{suffix}"] = proj.squeeze(-1) if suffix == "weight" else proj


def _karlo_unet_to_diffusers(model) -> dict:
    sd = model.state_dict()
    c = model.config
    attn_ds = getattr(c, "attention_ds", ())
    heads = {m * c.model_channels: m * c.model_channels // getattr(c, "head_channels", 1) for m in c.channel_mult}
    out = {
        "time_embedding.linear_1.weight": sd["time_embed.0.weight"],
        "time_embedding.linear_1.bias": sd["time_embed.0.bias"],
        "time_embedding.linear_2.weight": sd["time_embed.2.weight"],
        "time_embedding.linear_2.bias": sd["time_embed.2.bias"],
        "conv_in.weight": sd["input_blocks.0.0.weight"],
        "conv_in.bias": sd["input_blocks.0.0.bias"],
        "conv_norm_out.weight": sd["out.0.weight"],
        "conv_norm_out.bias": sd["out.0.bias"],
        "conv_out.weight": sd["out.2.weight"],
        "conv_out.bias": sd["out.2.bias"],
    }
    r, n = c.num_res_blocks, len(c.channel_mult)
    idx = 1
    for level, mult in enumerate(c.channel_mult):
        width = mult * c.model_channels
        for j in range(r):
            _map_resblock(sd, f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}", out)
            if 2**level in attn_ds:
                _map_attention(sd, f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}", heads[width], out)
            idx += 1
        if level != n - 1:
            _map_resblock(sd, f"input_blocks.{idx}.0", f"down_blocks.{level}.downsamplers.0", out)
            idx += 1
    _map_resblock(sd, "middle_block.0", "mid_block.resnets.0", out)
    if getattr(c, "middle_attention", False):
        _map_attention(
            sd, "middle_block.1", "mid_block.attentions.0", heads[c.channel_mult[-1] * c.model_channels], out
        )
        _map_resblock(sd, "middle_block.2", "mid_block.resnets.1", out)
    else:
        _map_resblock(sd, "middle_block.1", "mid_block.resnets.1", out)
    idx = 0
    for up, level in enumerate(reversed(range(n))):
        width = c.channel_mult[level] * c.model_channels
        has_attn = 2**level in attn_ds
        for i in range(r + 1):
            _map_resblock(sd, f"output_blocks.{idx}.0", f"up_blocks.{up}.resnets.{i}", out)
            if has_attn:
                _map_attention(sd, f"output_blocks.{idx}.1", f"up_blocks.{up}.attentions.{i}", heads[width], out)
            if level and i == r:
                _map_resblock(sd, f"output_blocks.{idx}.{2 if has_attn else 1}", f"up_blocks.{up}.upsamplers.0", out)
            idx += 1
    return out


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def test_tiny_decoder_reproduces_diffusers_on_mapped_weights():
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    from unclip.models.decoder_unet import PRESETS

    # diffusers' text_proj assumes token width == CLIP dim (true for ViT-L: 768/768)
    tiny = PRESETS["tiny"]()
    ours = _randomize(build_model("decoder", dataclasses.replace(tiny, text_width=tiny.clip_dim)))
    c = ours.config
    assert c.attention_ds == (2,) and c.channel_mult == (1, 2)
    unet = diffusers.UNet2DConditionModel(
        sample_size=c.image_size,
        layers_per_block=c.num_res_blocks,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=6,
        cross_attention_dim=c.context_width,
        class_embed_type="identity",
        attention_head_dim=c.head_channels,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=c.norm_groups,
    ).eval()
    text_proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=c.clip_tokens,
        clip_embeddings_dim=c.clip_dim,
        time_embed_dim=4 * c.model_channels,
        cross_attention_dim=c.context_width,
    ).eval()
    unet.load_state_dict(_karlo_unet_to_diffusers(ours), strict=True)
    sd = ours.state_dict()
    text_proj.load_state_dict(
        {
            "encoder_hidden_states_proj.weight": sd["text_seq_proj.0.weight"],
            "encoder_hidden_states_proj.bias": sd["text_seq_proj.0.bias"],
            "text_encoder_hidden_states_norm.weight": sd["text_seq_proj.1.weight"],
            "text_encoder_hidden_states_norm.bias": sd["text_seq_proj.1.bias"],
            "clip_extra_context_tokens_proj.weight": sd["clip_tok_proj.weight"],
            "clip_extra_context_tokens_proj.bias": sd["clip_tok_proj.bias"],
            "embedding_proj.weight": sd["text_feat_proj.weight"],
            "embedding_proj.bias": sd["text_feat_proj.bias"],
            "learned_classifier_free_guidance_embeddings": sd["null_image_embedding"],
            "clip_image_embeddings_project_to_time_embeddings.weight": sd["clip_emb.weight"],
            "clip_image_embeddings_project_to_time_embeddings.bias": sd["clip_emb.bias"],
        },
        strict=True,
    )
    g = torch.Generator().manual_seed(1)
    b, length = 2, 6
    x = torch.randn(b, 3, 16, 16, generator=g)
    t = torch.tensor([17, 803])
    z_i = torch.randn(b, c.clip_dim, generator=g)
    tokens = torch.randn(b, length, c.text_width, generator=g)
    pooled = torch.randn(b, c.clip_dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        context, additive = text_proj(
            image_embeddings=z_i,
            prompt_embeds=pooled,
            text_encoder_hidden_states=tokens,
            do_classifier_free_guidance=False,
        )
        full_mask = torch.cat([torch.ones(b, c.clip_tokens, dtype=torch.bool), mask], dim=1)
        ref = unet(x, t, encoder_hidden_states=context, class_labels=additive, attention_mask=full_mask).sample
        out = ours(x, t, z_i, tokens, mask, pooled)
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)


def test_tiny_upsampler_reproduces_diffusers_on_mapped_weights():
    ours = _randomize(build_model("upsampler", "tiny"))
    c = ours.config
    sr = diffusers.UNet2DModel(
        sample_size=c.image_size,
        layers_per_block=c.num_res_blocks,
        down_block_types=("ResnetDownsampleBlock2D",) * 2,
        up_block_types=("ResnetUpsampleBlock2D",) * 2,
        block_out_channels=(16, 32),
        in_channels=6,
        out_channels=3,
        add_attention=False,
        norm_num_groups=c.norm_groups,
    ).eval()
    sr.load_state_dict(_karlo_unet_to_diffusers(ours), strict=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 16, 16, generator=g)
    up = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([0, 500])
    with torch.no_grad():
        ref = sr(torch.cat([x, up], dim=1), t).sample
        out = ours(x, t, up)
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
