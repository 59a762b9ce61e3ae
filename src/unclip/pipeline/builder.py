"""Build an untrained pipeline whose parts agree on dimensions (for tests, and as the start of training).

``build_pipeline("tiny")`` gives every part its ``tiny`` preset with the prior's and decoder's CLIP widths
taken from the CLIP, so the parts plug together. Training (``unclip train shapes``) starts from the same
configs and replaces each part by its trained weights.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from unclip.diffusion.stage_config import DECODER_DIFFUSION, PRIOR_DIFFUSION, UPSAMPLER_DIFFUSION
from unclip.encoders.base import ClipEncoder
from unclip.models import build_model, model_config
from unclip.pipeline.unclip_pipeline import GenerationDefaults, Stage, UnCLIPPipeline


def tiny_clip(seed: int = 0) -> ClipEncoder:
    """An untrained ``tiny`` :class:`~unclip.encoders.own_clip.OwnClipEncoder`."""
    from unclip.encoders.own_clip import OwnClipEncoder
    from unclip.encoders.tokenizer import WordByteTokenizer

    torch.manual_seed(seed)
    model = build_model("clip", "tiny").eval()
    return OwnClipEncoder(model, WordByteTokenizer(max_length=model.config.context_length))


def fit_configs_to_clip(clip: ClipEncoder, prior_config, decoder_config):
    """Copy the CLIP's widths (D, W, L) into prior and decoder configs."""
    prior_config = replace(prior_config, clip_dim=clip.dim, text_width=clip.token_width, text_len=clip.max_text_length)
    decoder_config = replace(
        decoder_config, clip_dim=clip.dim, text_width=clip.token_width if decoder_config.text_width else None
    )
    return prior_config, decoder_config


def build_pipeline(
    preset: str = "tiny",
    clip: ClipEncoder | None = None,
    num_upsamplers: int = 1,
    seed: int = 0,
    defaults: GenerationDefaults | None = None,
) -> UnCLIPPipeline:
    """An untrained pipeline from model presets (``preset`` for prior, decoder and upsamplers).

    The upsamplers are chained: upsampler i takes the previous stage's output size as its low-res size and
    doubles it.
    """
    clip = clip or tiny_clip(seed)
    torch.manual_seed(seed)
    prior_cfg, decoder_cfg = fit_configs_to_clip(clip, model_config("prior", preset), model_config("decoder", preset))
    prior = build_model("prior", prior_cfg)
    decoder = build_model("decoder", decoder_cfg)
    upsamplers = []
    size = decoder_cfg.image_size
    for _ in range(num_upsamplers):
        up_cfg = replace(model_config("upsampler", preset), low_res_size=size, image_size=2 * size)
        upsamplers.append(Stage(build_model("upsampler", up_cfg), UPSAMPLER_DIFFUSION))
        size *= 2
    return UnCLIPPipeline(
        clip,
        Stage(prior, PRIOR_DIFFUSION),
        Stage(decoder, DECODER_DIFFUSION),
        upsamplers,
        defaults or GenerationDefaults(),
    )
