"""Config translation between diffusers' UnCLIP components (``config.json`` dicts) and our config dataclasses.

Only architectures that exist on both sides translate: Karlo-shaped priors (``PriorTransformer`` with a linear
text projection and a learned ``prd`` token), decoders made of ``ResnetDownsampleBlock2D`` /
``SimpleCrossAttn*Block2D`` with ``UNetMidBlock2DSimpleCrossAttn`` and an identity class embedding fed by
``UnCLIPTextProjModel``, attention-free ``UNet2DModel`` super-resolution nets, and ``UnCLIPScheduler``. Anything
else raises a ``ValueError`` naming the key and value.
"""

from __future__ import annotations

from typing import Any

from unclip.diffusion.stage_config import DiffusionConfig
from unclip.models.decoder_unet import DecoderConfig
from unclip.models.prior import PriorConfig
from unclip.models.upsampler_unet import UpsamplerConfig

__all__ = [
    "DIFFUSERS_VERSION",
    "prior_config_from_diffusers",
    "prior_config_to_diffusers",
    "decoder_config_from_diffusers",
    "decoder_config_to_diffusers",
    "upsampler_config_from_diffusers",
    "upsampler_config_to_diffusers",
    "diffusion_from_scheduler",
    "scheduler_from_diffusion",
]

DIFFUSERS_VERSION = "0.42.1"
_DOWN = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}
_UP = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}


def _expect(cfg: dict[str, Any], what: str, key: str, allowed: tuple, default: Any = None) -> Any:
    value = cfg.get(key, default)
    if value not in allowed:
        raise ValueError(f"{what}: {key}={value!r} is not supported (expected one of {list(allowed)})")
    return value


def _required(cfg: dict[str, Any], what: str, key: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"{what}: config.json has no {key!r}")
    return cfg[key]


# ------------------------------------------------------------------ prior


def prior_config_from_diffusers(cfg: dict[str, Any], what: str = "prior") -> PriorConfig:
    """``PriorTransformer`` config -> :class:`PriorConfig` (text token width = embedding_dim, as diffusers)."""
    heads = int(cfg.get("num_attention_heads", 32))
    head_dim = int(cfg.get("attention_head_dim", 64))
    dim = int(cfg.get("embedding_dim", 768))
    _expect(cfg, what, "additional_embeddings", (4,), 4)
    _expect(cfg, what, "time_embed_act_fn", ("silu",), "silu")
    _expect(cfg, what, "norm_in_type", (None,))
    _expect(cfg, what, "embedding_proj_norm_type", (None,))
    _expect(cfg, what, "encoder_hid_proj_type", ("linear",), "linear")
    _expect(cfg, what, "added_emb_type", ("prd",), "prd")
    _expect(cfg, what, "time_embed_dim", (None, heads * head_dim))
    _expect(cfg, what, "embedding_proj_dim", (None, dim))
    _expect(cfg, what, "clip_embed_dim", (None, dim))
    return PriorConfig(
        clip_dim=dim,
        text_width=dim,
        text_len=int(cfg.get("num_embeddings", 77)),
        width=heads * head_dim,
        layers=int(cfg.get("num_layers", 20)),
        heads=heads,
        mlp_mult=4,
        dropout=float(cfg.get("dropout", 0.0)),
        text_drop_prob=0.2,
    )


def prior_config_to_diffusers(c: PriorConfig) -> dict[str, Any]:
    """:class:`PriorConfig` -> ``PriorTransformer`` config (raises if diffusers cannot express it)."""
    if c.text_width != c.clip_dim:
        raise ValueError(
            f"diffusers' PriorTransformer needs text token width == CLIP dim, got {c.text_width} != {c.clip_dim}"
        )
    if c.mlp_mult != 4:
        raise ValueError(f"diffusers' PriorTransformer has an MLP ratio of 4, got mlp_mult={c.mlp_mult}")
    return {
        "_class_name": "PriorTransformer",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_attention_heads": c.heads,
        "attention_head_dim": c.width // c.heads,
        "num_layers": c.layers,
        "embedding_dim": c.clip_dim,
        "num_embeddings": c.text_len,
        "additional_embeddings": 4,
        "dropout": c.dropout,
        "time_embed_act_fn": "silu",
        "norm_in_type": None,
        "embedding_proj_norm_type": None,
        "encoder_hid_proj_type": "linear",
        "added_emb_type": "prd",
        "time_embed_dim": None,
        "embedding_proj_dim": None,
        "clip_embed_dim": None,
    }


# ------------------------------------------------------------------ U-Nets


def _levels(cfg: dict[str, Any], what: str) -> tuple[int, tuple[int, ...]]:
    widths = [int(w) for w in _required(cfg, what, "block_out_channels")]
    base = widths[0]
    if any(w % base for w in widths):
        raise ValueError(f"{what}: block_out_channels {widths} are not multiples of the first")
    return base, tuple(w // base for w in widths)


def _check_common_unet(cfg: dict[str, Any], what: str) -> None:
    _expect(cfg, what, "flip_sin_to_cos", (True,), True)
    _expect(cfg, what, "freq_shift", (0,), 0)
    _expect(cfg, what, "act_fn", ("silu",), "silu")
    _expect(cfg, what, "norm_eps", (1e-5,), 1e-5)
    _expect(cfg, what, "center_input_sample", (False,), False)
    _expect(cfg, what, "time_embedding_type", ("positional",), "positional")
    _expect(cfg, what, "time_embedding_dim", (None,))
    _expect(cfg, what, "mid_block_scale_factor", (1, 1.0), 1)
    _expect(cfg, what, "resnet_time_scale_shift", ("default", "scale_shift"), "default")


def _image_channels(cfg: dict[str, Any], what: str, in_factor: int) -> tuple[int, bool]:
    cin, cout = int(cfg.get("in_channels", 3)), int(cfg.get("out_channels", 3))
    if cin % in_factor:
        raise ValueError(f"{what}: in_channels={cin} is not a multiple of {in_factor}")
    channels = cin // in_factor
    if cout not in (channels, 2 * channels):
        raise ValueError(f"{what}: out_channels={cout} must be {channels} or {2 * channels} (learned variance)")
    return channels, cout == 2 * channels


def decoder_config_from_diffusers(
    unet: dict[str, Any], text_proj: dict[str, Any], what: str = "decoder"
) -> DecoderConfig:
    """``UNet2DConditionModel`` + ``UnCLIPTextProjModel`` configs -> :class:`DecoderConfig`."""
    _check_common_unet(unet, what)
    for key, allowed in {
        "class_embed_type": ("identity",),
        "only_cross_attention": (False, None),
        "cross_attention_norm": (None,),
        "encoder_hid_dim": (None,),
        "addition_embed_type": (None,),
        "resnet_skip_time_act": (False,),
        "resnet_out_scale_factor": (1, 1.0),
        "conv_in_kernel": (3,),
        "conv_out_kernel": (3,),
        "time_cond_proj_dim": (None,),
        "class_embeddings_concat": (False,),
        "mid_block_only_cross_attention": (None, False),
        "mid_block_type": ("UNetMidBlock2DSimpleCrossAttn",),
    }.items():
        default = {"only_cross_attention": False, "resnet_skip_time_act": False, "resnet_out_scale_factor": 1,
                   "conv_in_kernel": 3, "conv_out_kernel": 3, "class_embeddings_concat": False}.get(key)  # fmt: skip
        _expect(unet, what, key, allowed, default)
    base, mult = _levels(unet, what)
    down = list(_required(unet, what, "down_block_types"))
    up = list(_required(unet, what, "up_block_types"))
    for t in down:
        _expect({"down_block_types": t}, what, "down_block_types", tuple(_DOWN))
    for t in up:
        _expect({"up_block_types": t}, what, "up_block_types", tuple(_UP))
    attn = [_DOWN[t] for t in down]
    if len(down) != len(mult) or [_UP[t] for t in up] != attn[::-1]:
        raise ValueError(f"{what}: up_block_types {up} do not mirror down_block_types {down}")
    head = unet.get("attention_head_dim", 8)
    if isinstance(head, (list, tuple)):
        if len(set(head)) != 1:
            raise ValueError(f"{what}: per-block attention_head_dim {head} is not supported")
        head = head[0]
    if unet.get("num_attention_heads") is not None:
        raise ValueError(f"{what}: num_attention_heads is not supported (SimpleCrossAttn uses attention_head_dim)")
    layers = unet.get("layers_per_block", 2)
    if isinstance(layers, (list, tuple)):
        raise ValueError(f"{what}: per-block layers_per_block {layers} is not supported")
    channels, learn_sigma = _image_channels(unet, what, 1)
    clip_dim = int(text_proj.get("clip_embeddings_dim", 768))
    context = int(_required(unet, what, "cross_attention_dim"))
    if int(_required(text_proj, "text_proj", "cross_attention_dim")) != context:
        raise ValueError(f"text_proj cross_attention_dim {text_proj['cross_attention_dim']} != decoder's {context}")
    if int(_required(text_proj, "text_proj", "time_embed_dim")) != 4 * base:
        raise ValueError(f"text_proj time_embed_dim {text_proj['time_embed_dim']} != 4 * {base}")
    return DecoderConfig(
        image_size=int(_required(unet, what, "sample_size")),
        in_channels=channels,
        model_channels=base,
        channel_mult=mult,
        num_res_blocks=int(layers),
        attention_ds=tuple(2**i for i, a in enumerate(attn) if a),
        middle_attention=True,
        head_channels=int(head),
        dropout=float(unet.get("dropout", 0.0)),
        learn_sigma=learn_sigma,
        use_scale_shift_norm=unet.get("resnet_time_scale_shift", "default") == "scale_shift",
        resblock_updown=True,
        norm_groups=int(unet.get("norm_num_groups", 32)),
        clip_dim=clip_dim,
        clip_tokens=int(text_proj.get("clip_extra_context_tokens", 4)),
        text_width=clip_dim,
        context_width=context,
        use_pooled_text=True,
        image_drop=0.1,
        text_drop=0.3,
    )


def decoder_config_to_diffusers(c: DecoderConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """:class:`DecoderConfig` -> (``UNet2DConditionModel`` config, ``UnCLIPTextProjModel`` config)."""
    problems = []
    if not c.resblock_updown:
        problems.append("resblock_updown=False")
    if not c.middle_attention:
        problems.append("middle_attention=False")
    if not c.use_pooled_text:
        problems.append("use_pooled_text=False")
    if c.text_width != c.clip_dim:
        problems.append(f"text_width={c.text_width} != clip_dim={c.clip_dim}")
    if c.image_embedding_grid:
        problems.append(f"image_embedding_grid={c.image_embedding_grid} (diffusers has no located z_i map)")
    if problems:
        raise ValueError(f"this decoder does not fit diffusers' UNet2DConditionModel + UnCLIPTextProjModel: {problems}")
    levels = range(len(c.channel_mult))
    down = [("SimpleCrossAttnDownBlock2D" if 2**i in c.attention_ds else "ResnetDownsampleBlock2D") for i in levels]
    up = [t.replace("Down", "Up").replace("Downsample", "Upsample") for t in reversed(down)]
    unet = {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": c.image_size,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "layers_per_block": c.num_res_blocks,
        "block_out_channels": [m * c.model_channels for m in c.channel_mult],
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "cross_attention_dim": c.context_width,
        "attention_head_dim": c.head_channels,
        "resnet_time_scale_shift": "scale_shift" if c.use_scale_shift_norm else "default",
        "class_embed_type": "identity",
        "norm_num_groups": c.norm_groups,
        "norm_eps": 1e-5,
        "dropout": c.dropout,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "center_input_sample": False,
    }
    text_proj = {
        "_class_name": "UnCLIPTextProjModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "clip_extra_context_tokens": c.clip_tokens,
        "clip_embeddings_dim": c.clip_dim,
        "time_embed_dim": 4 * c.model_channels,
        "cross_attention_dim": c.context_width,
    }
    return unet, text_proj


def upsampler_config_from_diffusers(cfg: dict[str, Any], low_res_size: int, what: str = "super_res") -> UpsamplerConfig:
    """``UNet2DModel`` config -> :class:`UpsamplerConfig` (``low_res_size``: the decoder's image size)."""
    _check_common_unet(cfg, what)
    _expect(cfg, what, "class_embed_type", (None,))
    _expect(cfg, what, "add_attention", (False,), True)
    _expect(cfg, what, "mid_block_type", ("UNetMidBlock2D",), "UNetMidBlock2D")
    base, mult = _levels(cfg, what)
    down = list(_required(cfg, what, "down_block_types"))
    up = list(_required(cfg, what, "up_block_types"))
    if down != ["ResnetDownsampleBlock2D"] * len(mult) or up != ["ResnetUpsampleBlock2D"] * len(mult):
        raise ValueError(
            f"{what}: block types {down} / {up} are not supported (expected ResnetDownsampleBlock2D / "
            "ResnetUpsampleBlock2D at every level)"
        )
    channels, learn_sigma = _image_channels(cfg, what, 2)
    if learn_sigma:
        raise ValueError(f"{what}: a learned-variance super-resolution net is not supported")
    return UpsamplerConfig(
        image_size=int(_required(cfg, what, "sample_size")),
        low_res_size=int(low_res_size),
        in_channels=channels,
        model_channels=base,
        channel_mult=mult,
        num_res_blocks=int(cfg.get("layers_per_block", 2)),
        dropout=float(cfg.get("dropout", 0.0)),
        learn_sigma=False,
        use_scale_shift_norm=cfg.get("resnet_time_scale_shift", "default") == "scale_shift",
        resblock_updown=True,
        norm_groups=int(cfg.get("norm_num_groups", 32)),
    )


def upsampler_config_to_diffusers(c: UpsamplerConfig) -> dict[str, Any]:
    """:class:`UpsamplerConfig` -> ``UNet2DModel`` config."""
    if c.residual:
        raise ValueError(
            "this upsampler is residual (trained on x - bicubic(low-res)); diffusers' UnCLIP pipelines run "
            "image-space super-resolution U-Nets only"
        )
    if not c.resblock_updown or c.learn_sigma:
        raise ValueError(
            f"this upsampler does not fit diffusers' UNet2DModel (resblock_updown={c.resblock_updown}, "
            f"learn_sigma={c.learn_sigma})"
        )
    n = len(c.channel_mult)
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": c.image_size,
        "in_channels": 2 * c.in_channels,
        "out_channels": c.out_channels,
        "layers_per_block": c.num_res_blocks,
        "block_out_channels": [m * c.model_channels for m in c.channel_mult],
        "down_block_types": ["ResnetDownsampleBlock2D"] * n,
        "up_block_types": ["ResnetUpsampleBlock2D"] * n,
        "mid_block_type": "UNetMidBlock2D",
        "add_attention": False,
        "resnet_time_scale_shift": "scale_shift" if c.use_scale_shift_norm else "default",
        "norm_num_groups": c.norm_groups,
        "norm_eps": 1e-5,
        "dropout": c.dropout,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "time_embedding_type": "positional",
        "center_input_sample": False,
    }


# ------------------------------------------------------------------ schedulers


def diffusion_from_scheduler(cfg: dict[str, Any], what: str = "scheduler") -> tuple[DiffusionConfig, float | None]:
    """``UnCLIPScheduler`` config -> (:class:`DiffusionConfig`, x0 clamp range or None when clip_sample is off)."""
    _expect(cfg, what, "_class_name", ("UnCLIPScheduler",), "UnCLIPScheduler")
    _expect(cfg, what, "beta_schedule", ("squaredcos_cap_v2",), "squaredcos_cap_v2")
    variance = _expect(cfg, what, "variance_type", ("fixed_small_log", "learned_range"), "fixed_small_log")
    prediction = _expect(cfg, what, "prediction_type", ("epsilon", "sample"), "epsilon")
    diffusion = DiffusionConfig(
        schedule="cosine",
        num_timesteps=int(cfg.get("num_train_timesteps", 1000)),
        prediction={"epsilon": "eps", "sample": "x0"}[prediction],
        variance={"fixed_small_log": "fixed_small", "learned_range": "learned_range"}[variance],
    )
    clamp = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", True) else None
    return diffusion, clamp


def scheduler_from_diffusion(d: DiffusionConfig, clamp: float | None) -> dict[str, Any]:
    """:class:`DiffusionConfig` (+ x0 clamp) -> ``UnCLIPScheduler`` config (raises if it cannot express it)."""
    if d.schedule not in ("cosine", "squaredcos_cap_v2"):
        raise ValueError(f"UnCLIPScheduler only has the cosine schedule, got {d.schedule!r}")
    predictions = {"eps": "epsilon", "x0": "sample"}
    variances = {"fixed_small": "fixed_small_log", "learned_range": "learned_range"}
    if d.prediction not in predictions or d.variance not in variances:
        raise ValueError(
            f"UnCLIPScheduler supports eps/x0 prediction and fixed_small/learned_range variance, "
            f"got {d.prediction!r}/{d.variance!r}"
        )
    return {
        "_class_name": "UnCLIPScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": d.num_timesteps,
        "variance_type": variances[d.variance],
        "clip_sample": clamp is not None,
        "clip_sample_range": float(clamp) if clamp is not None else 1.0,
        "prediction_type": predictions[d.prediction],
        "beta_schedule": "squaredcos_cap_v2",
    }
