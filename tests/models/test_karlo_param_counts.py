"""The ``karlo`` presets hold exactly Karlo's parameters: counts and shapes equal diffusers' converted modules.

Everything is built on the meta device (no memory). diffusers' equivalents follow
``scripts/convert_kakao_brain_unclip_to_diffusers.py``: decoder = UNet2DConditionModel + UnCLIPTextProjModel,
super-resolution = UNet2DModel.
"""

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
