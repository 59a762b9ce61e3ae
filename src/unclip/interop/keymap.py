"""State-dict key maps between our networks, diffusers' UnCLIP modules and Karlo's checkpoints.

Our networks use Karlo's own parameter names (``model.`` prefix stripped; ``cf_param`` is called
``null_image_embedding``), so Karlo <-> ours is a prefix change (:func:`karlo_to_ours`, :func:`ours_to_karlo`).

diffusers splits Karlo's per-head packed projections and renames every block
(``reference/karlo_and_diffusers.md`` §b, "Mapping performed by convert_kakao_brain_unclip_to_diffusers"). Each
correspondence is one :class:`Link`: an our key, the diffusers key(s) it becomes, how many heads a packed
projection has, and whether a 1x1 ``Conv1d`` weight [C_out, C_in, 1] becomes a ``Linear`` weight [C_out, C_in]
("squeeze") or a vector [D] a row [1, D] ("row"). The same list converts both ways
(:func:`ours_to_diffusers`, :func:`diffusers_to_ours`), so import and export cannot drift apart.

Decoder links point into two diffusers modules; their keys are prefixed ``decoder.`` (UNet2DConditionModel) and
``text_proj.`` (UnCLIPTextProjModel).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from unclip.models.decoder_unet import DecoderConfig
from unclip.models.prior import PriorConfig
from unclip.models.upsampler_unet import UpsamplerConfig
from unclip.nn.attention import pack_heads, unpack_heads

__all__ = [
    "Link",
    "prior_links",
    "decoder_links",
    "upsampler_links",
    "ours_to_diffusers",
    "diffusers_to_ours",
    "karlo_to_ours",
    "ours_to_karlo",
    "KARLO_PREFIX",
]

KARLO_PREFIX = {"prior": "model.", "decoder": "model.", "sr_first": "model_first_steps.", "sr_last": "model_last_step."}
"""Top-level prefix of each network's weights in Karlo's ``.ckpt`` ``state_dict``."""
_KARLO_RENAMES = {"decoder": {"null_image_embedding": "cf_param"}}
_KARLO_NON_PERSISTENT = {"prior": ("clip_mean", "clip_std")}  # Karlo keeps these in ViT-L-14_stats.th


@dataclass(frozen=True)
class Link:
    """One our-key <-> diffusers-key(s) correspondence.

    Attributes:
        ours: key in our state dict.
        theirs: one diffusers key (a rename), or 2/3 keys a per-head packed tensor is split into ([k, v] or
            [q, k, v], see :func:`unclip.nn.attention.unpack_heads`).
        heads: number of heads of a packed tensor.
        reshape: "" (same shape), "squeeze" (Conv1d weight [O, I, 1] <-> Linear weight [O, I]) or
            "row" ([D] <-> [1, D]).
    """

    ours: str
    theirs: tuple[str, ...]
    heads: int = 1
    reshape: str = ""


def _pair(ours: str, theirs: str, reshape: str = "") -> list[Link]:
    """weight + bias renames of one layer."""
    return [Link(f"{ours}.weight", (f"{theirs}.weight",), reshape=reshape), Link(f"{ours}.bias", (f"{theirs}.bias",))]


# ------------------------------------------------------------------ prior


def prior_links(config: PriorConfig) -> list[Link]:
    """Our ``DiffusionPrior`` <-> diffusers ``PriorTransformer``."""
    links = (
        _pair("text_enc_proj", "encoder_hidden_states_proj")
        + _pair("text_emb_proj", "embedding_proj")
        + _pair("time_embed.0", "time_embedding.linear_1")
        + _pair("time_embed.2", "time_embedding.linear_2")
        + _pair("clip_img_proj", "proj_in")
        + _pair("final_ln", "norm_out")
        + _pair("out_proj", "proj_to_clip_embeddings")
        + [
            Link("positional_embedding", ("positional_embedding",)),
            Link("prd_emb", ("prd_embedding",)),
            Link("clip_mean", ("clip_mean",), reshape="row"),
            Link("clip_std", ("clip_std",), reshape="row"),
        ]
    )
    for i in range(config.layers):
        src, dst = f"transformer.resblocks.{i}", f"transformer_blocks.{i}"
        qkv = tuple(f"{dst}.attn1.to_{p}" for p in "qkv")
        links += [
            Link(f"{src}.attn.c_qkv.weight", tuple(f"{k}.weight" for k in qkv), heads=config.heads),
            Link(f"{src}.attn.c_qkv.bias", tuple(f"{k}.bias" for k in qkv), heads=config.heads),
        ]
        links += _pair(f"{src}.attn.c_proj", f"{dst}.attn1.to_out.0")
        links += _pair(f"{src}.ln_1", f"{dst}.norm1") + _pair(f"{src}.ln_2", f"{dst}.norm3")
        links += _pair(f"{src}.mlp.c_fc", f"{dst}.ff.net.0.proj") + _pair(f"{src}.mlp.c_proj", f"{dst}.ff.net.2")
    return links


# ------------------------------------------------------------------ U-Nets

_RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
}


def _resblock(src: str, dst: str, has_skip: bool) -> list[Link]:
    links = [link for a, b in _RESBLOCK.items() for link in _pair(f"{src}.{a}", f"{dst}.{b}")]
    return links + (_pair(f"{src}.skip_connection", f"{dst}.conv_shortcut") if has_skip else [])


def _attention(src: str, dst: str, heads: int, context: bool) -> list[Link]:
    links = _pair(f"{src}.norm", f"{dst}.group_norm")
    qkv = tuple(f"{dst}.to_{p}" for p in "qkv")
    links += [
        Link(f"{src}.qkv.weight", tuple(f"{k}.weight" for k in qkv), heads=heads, reshape="squeeze"),
        Link(f"{src}.qkv.bias", tuple(f"{k}.bias" for k in qkv), heads=heads),
    ]
    if context:
        kv = (f"{dst}.add_k_proj", f"{dst}.add_v_proj")
        links += [
            Link(f"{src}.encoder_kv.weight", tuple(f"{k}.weight" for k in kv), heads=heads, reshape="squeeze"),
            Link(f"{src}.encoder_kv.bias", tuple(f"{k}.bias" for k in kv), heads=heads),
        ]
    return links + _pair(f"{src}.proj_out", f"{dst}.to_out.0", reshape="squeeze")


def _unet_links(
    config: DecoderConfig | UpsamplerConfig, attention_ds: tuple[int, ...], middle_attention: bool, context: bool
) -> list[Link]:
    """The ADM trunk (``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``) <->
    diffusers' ``UNet2DConditionModel`` / ``UNet2DModel`` with resblock up/down-sampling."""
    c = config
    if not c.resblock_updown:
        raise ValueError("only U-Nets with resblock_updown=True map to diffusers' Resnet{Down,Up}sampleBlock2D")
    head_channels = getattr(c, "head_channels", 1)
    widths = [m * c.model_channels for m in c.channel_mult]
    links = (
        _pair("time_embed.0", "time_embedding.linear_1")
        + _pair("time_embed.2", "time_embedding.linear_2")
        + _pair("input_blocks.0.0", "conv_in")
        + _pair("out.0", "conv_norm_out")
        + _pair("out.2", "conv_out")
    )
    r, n = c.num_res_blocks, len(c.channel_mult)
    idx, ch = 1, widths[0]
    skips = [ch]
    for level, width in enumerate(widths):
        for j in range(r):
            links += _resblock(f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}", ch != width)
            ch = width
            if 2**level in attention_ds:
                dst = f"down_blocks.{level}.attentions.{j}"
                links += _attention(f"input_blocks.{idx}.1", dst, width // head_channels, context)
            skips.append(ch)
            idx += 1
        if level != n - 1:
            links += _resblock(f"input_blocks.{idx}.0", f"down_blocks.{level}.downsamplers.0", False)
            skips.append(ch)
            idx += 1
    links += _resblock("middle_block.0", "mid_block.resnets.0", False)
    if middle_attention:
        links += _attention("middle_block.1", "mid_block.attentions.0", ch // head_channels, context)
    links += _resblock(f"middle_block.{2 if middle_attention else 1}", "mid_block.resnets.1", False)
    idx = 0
    for up, level in enumerate(reversed(range(n))):
        width = widths[level]
        has_attn = 2**level in attention_ds
        for i in range(r + 1):
            links += _resblock(f"output_blocks.{idx}.0", f"up_blocks.{up}.resnets.{i}", ch + skips.pop() != width)
            ch = width
            if has_attn:
                dst = f"up_blocks.{up}.attentions.{i}"
                links += _attention(f"output_blocks.{idx}.1", dst, width // head_channels, context)
            if level and i == r:
                src = f"output_blocks.{idx}.{2 if has_attn else 1}"
                links += _resblock(src, f"up_blocks.{up}.upsamplers.0", False)
            idx += 1
    return links


def decoder_links(config: DecoderConfig) -> list[Link]:
    """Our ``DecoderUNet`` <-> ``decoder.`` (UNet2DConditionModel) + ``text_proj.`` (UnCLIPTextProjModel)."""
    c = config
    if not c.use_pooled_text or not c.text_width:
        raise ValueError(
            "diffusers' UnCLIPTextProjModel needs a decoder with text tokens and the pooled text embedding "
            f"(text_width={c.text_width}, use_pooled_text={c.use_pooled_text})"
        )
    trunk = _unet_links(c, c.attention_ds, c.middle_attention, context=True)
    links = [Link(link.ours, tuple(f"decoder.{k}" for k in link.theirs), link.heads, link.reshape) for link in trunk]
    t = "text_proj."
    links += (
        _pair("text_seq_proj.0", f"{t}encoder_hidden_states_proj")
        + _pair("text_seq_proj.1", f"{t}text_encoder_hidden_states_norm")
        + _pair("clip_tok_proj", f"{t}clip_extra_context_tokens_proj")
        + _pair("text_feat_proj", f"{t}embedding_proj")
        + _pair("clip_emb", f"{t}clip_image_embeddings_project_to_time_embeddings")
        + [Link("null_image_embedding", (f"{t}learned_classifier_free_guidance_embeddings",))]
    )
    return links


def upsampler_links(config: UpsamplerConfig) -> list[Link]:
    """Our ``UpsamplerUNet`` <-> diffusers ``UNet2DModel`` (no attention)."""
    return _unet_links(config, (), False, context=False)


# ------------------------------------------------------------------ conversion


def ours_to_diffusers(state_dict: dict[str, Tensor], links: list[Link]) -> dict[str, Tensor]:
    """Our state dict -> diffusers keys (split and reshaped). Raises naming any key the links do not cover."""
    missing = [link.ours for link in links if link.ours not in state_dict]
    extra = sorted(set(state_dict) - {link.ours for link in links})
    if missing or extra:
        raise ValueError(f"state dict does not match the key map: missing {missing[:5]}, unexpected {extra[:5]}")
    out: dict[str, Tensor] = {}
    for link in links:
        t = state_dict[link.ours]
        if link.reshape == "squeeze":
            t = t.squeeze(-1)
        elif link.reshape == "row":
            t = t.reshape(1, -1)
        parts = unpack_heads(t, link.heads, len(link.theirs)) if len(link.theirs) > 1 else [t]
        for key, part in zip(link.theirs, parts):
            out[key] = part.contiguous()
    return out


def diffusers_to_ours(state_dict: dict[str, Tensor], links: list[Link], source: str = "") -> dict[str, Tensor]:
    """diffusers keys -> our state dict (packed per head, reshaped). Raises naming missing/unexpected keys."""
    wanted = {k for link in links for k in link.theirs}
    missing = sorted(wanted - set(state_dict))
    extra = sorted(set(state_dict) - wanted)
    if missing or extra:
        where = f" in {source}" if source else ""
        raise ValueError(
            f"diffusers weights{where} do not fit the architecture from its config: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    out: dict[str, Tensor] = {}
    for link in links:
        parts = [state_dict[k] for k in link.theirs]
        t = pack_heads(parts, link.heads) if len(parts) > 1 else parts[0]
        if link.reshape == "squeeze":
            t = t.unsqueeze(-1)
        elif link.reshape == "row":
            t = t.reshape(-1)
        out[link.ours] = t
    return out


def karlo_to_ours(state_dict: dict[str, Tensor], part: str) -> dict[str, Tensor]:
    """The weights of one Karlo network (``part`` in :data:`KARLO_PREFIX`) from a ``.ckpt`` ``state_dict``,
    with our names. Keys of other networks are ignored; none found raises."""
    if part not in KARLO_PREFIX:
        raise ValueError(f"unknown Karlo part {part!r}; expected one of {list(KARLO_PREFIX)}")
    prefix = KARLO_PREFIX[part]
    renames = {v: k for k, v in _KARLO_RENAMES.get(part.split("_")[0], {}).items()}
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            out[renames.get(name, name)] = value
    if not out:
        raise ValueError(f"no '{prefix}*' weights found (is this Karlo's {part} checkpoint?)")
    return out


def ours_to_karlo(state_dict: dict[str, Tensor], part: str) -> dict[str, Tensor]:
    """Inverse of :func:`karlo_to_ours` (Karlo's non-persistent buffers, e.g. the prior's CLIP stats, dropped)."""
    if part not in KARLO_PREFIX:
        raise ValueError(f"unknown Karlo part {part!r}; expected one of {list(KARLO_PREFIX)}")
    kind = part.split("_")[0]
    renames = _KARLO_RENAMES.get(kind, {})
    skip = _KARLO_NON_PERSISTENT.get(kind, ())
    return {KARLO_PREFIX[part] + renames.get(k, k): v for k, v in state_dict.items() if k not in skip}
