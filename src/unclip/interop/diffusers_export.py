"""Export our pipelines to diffusers' UnCLIP layout, loadable by diffusers 0.42's ``UnCLIPPipeline.from_pretrained``
(or ``UnCLIPImageVariationPipeline`` with ``variation=True``).

A pipeline fits when its CLIP is a transformers CLIP (:class:`~unclip.encoders.hf_clip.HFClipEncoder`; our small
CLIP has its own tokenizer, which diffusers cannot load), its prior is a diffusion prior whose text token width
equals the CLIP dimension, its decoder has text tokens + pooled text and resblock up/down-sampling, and it has
exactly one upsampler taking the decoder's output size. Everything else raises a ``ValueError`` saying why.

``text_proj`` is written with the class path ``["diffusers.pipelines.deprecated.unclip.text_proj",
"UnCLIPTextProjModel"]``: diffusers' own ``save_pretrained`` writes ``["diffusers", "UnCLIPTextProjModel"]``,
which its ``from_pretrained`` then fails to resolve (``reference/karlo_and_diffusers.md`` §b).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from unclip.encoders.hf_clip import HFClipEncoder
from unclip.interop.diffusers_config import (
    DIFFUSERS_VERSION,
    decoder_config_to_diffusers,
    prior_config_to_diffusers,
    scheduler_from_diffusion,
    upsampler_config_to_diffusers,
)
from unclip.interop.hf_clip_io import save_hf_clip
from unclip.interop.keymap import decoder_links, ours_to_diffusers, prior_links, upsampler_links
from unclip.io import atomic_write_text, save_safetensors
from unclip.models.prior import DiffusionPrior
from unclip.pipeline.priors import DiffusionPriorStage
from unclip.pipeline.unclip_pipeline import Stage, UnCLIPPipeline

__all__ = ["TEXT_PROJ_CLASS", "export_diffusers"]

TEXT_PROJ_CLASS = ["diffusers.pipelines.deprecated.unclip.text_proj", "UnCLIPTextProjModel"]
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _write_part(directory: Path, config: dict[str, Any], state: dict[str, torch.Tensor], dtype) -> None:
    _write_json(directory / "config.json", config)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_safetensors({k: v.detach().cpu() for k, v in state.items()}, directory / WEIGHTS_NAME)


def _check_fits(pipe: UnCLIPPipeline, variation: bool) -> Stage:
    if not isinstance(pipe.clip, HFClipEncoder):
        raise ValueError(
            f"only pipelines with a transformers CLIP can be exported to diffusers, this one has "
            f"{type(pipe.clip).__name__} (its tokenizer and towers have no diffusers/transformers class)"
        )
    if variation and pipe.clip.vision_model is None:
        raise ValueError("an image-variation export needs a CLIP with an image encoder")
    diffusion_prior = isinstance(pipe.prior, DiffusionPriorStage) and isinstance(pipe.prior.model, DiffusionPrior)
    if not variation and not diffusion_prior:
        raise ValueError("diffusers' UnCLIPPipeline needs a diffusion prior; this pipeline has none or an AR prior")
    if len(pipe.upsamplers) != 1:
        raise ValueError(
            f"diffusers' UnCLIP pipelines have exactly one super-resolution stage, this one has {len(pipe.upsamplers)}"
        )
    up = pipe.upsamplers[0]
    if up.model.config.low_res_size != pipe.decoder.model.config.image_size:
        raise ValueError(
            f"the upsampler takes {up.model.config.low_res_size}px input but the decoder makes "
            f"{pipe.decoder.model.config.image_size}px images"
        )
    if pipe.clip.dim != pipe.decoder.model.config.clip_dim:
        raise ValueError(f"CLIP dim {pipe.clip.dim} != decoder clip_dim {pipe.decoder.model.config.clip_dim}")
    return up


def export_diffusers(
    pipe: UnCLIPPipeline, path: str | Path, dtype: torch.dtype | None = None, variation: bool = False
) -> Path:
    """Write ``pipe`` as a diffusers ``UnCLIPPipeline`` (or ``UnCLIPImageVariationPipeline``) directory.

    Args:
        pipe: the pipeline (see the module doc for what fits).
        path: output directory (created).
        dtype: cast the weights (e.g. ``torch.float16``); default: as they are.
        variation: write the image-variation layout (no prior; image encoder and feature extractor).

    Returns:
        the directory. diffusers then samples as our pipeline with ``sampler="unclip"``, ``best_of=1``
        and the pipeline's ``prior_clamp`` (written as the prior scheduler's ``clip_sample_range``) does. A
        pipeline whose decoder uses our unconditional caption (``decoder_uncond="masked"``) is exported with a
        warning: diffusers always guides the decoder against CLIP's "", so its images will differ.
    """
    up = _check_fits(pipe, variation)
    if pipe.decoder_uncond != "empty_text":
        warnings.warn(
            "this pipeline's decoder guides against a masked caption; diffusers guides against CLIP's encoding "
            'of "" so the exported pipeline will not reproduce its images exactly',
            stacklevel=2,
        )
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {
        "_class_name": "UnCLIPImageVariationPipeline" if variation else "UnCLIPPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
    }

    if not variation:
        prior = pipe.prior
        assert isinstance(prior, DiffusionPriorStage)
        config = prior.model.config
        state = ours_to_diffusers(prior.model.state_dict(), prior_links(config))
        _write_part(directory / "prior", prior_config_to_diffusers(config), state, dtype)
        clamp = pipe.defaults.prior_clamp
        scheduler = scheduler_from_diffusion(prior.diffusion, None if math.isinf(clamp) else clamp)
        _write_json(directory / "prior_scheduler" / "scheduler_config.json", scheduler)
        index["prior"] = ["diffusers", "PriorTransformer"]
        index["prior_scheduler"] = ["diffusers", "UnCLIPScheduler"]

    dec = pipe.decoder.model
    unet_cfg, text_proj_cfg = decoder_config_to_diffusers(dec.config)
    mapped = ours_to_diffusers(dec.state_dict(), decoder_links(dec.config))
    unet_state = {k[len("decoder.") :]: v for k, v in mapped.items() if k.startswith("decoder.")}
    text_proj_state = {k[len("text_proj.") :]: v for k, v in mapped.items() if k.startswith("text_proj.")}
    _write_part(directory / "decoder", unet_cfg, unet_state, dtype)
    _write_part(directory / "text_proj", text_proj_cfg, text_proj_state, dtype)
    scheduler = scheduler_from_diffusion(pipe.decoder.diffusion, 1.0)
    _write_json(directory / "decoder_scheduler" / "scheduler_config.json", scheduler)

    for name, model in (("super_res_first", up.model), ("super_res_last", up.last_step_model or up.model)):
        state = ours_to_diffusers(model.state_dict(), upsampler_links(model.config))
        _write_part(directory / name, upsampler_config_to_diffusers(model.config), state, dtype)
    _write_json(
        directory / "super_res_scheduler" / "scheduler_config.json", scheduler_from_diffusion(up.diffusion, 1.0)
    )

    save_hf_clip(pipe.clip, directory, dtype=dtype, vision=variation)
    index.update(
        {
            "decoder": ["diffusers", "UNet2DConditionModel"],
            "decoder_scheduler": ["diffusers", "UnCLIPScheduler"],
            "super_res_first": ["diffusers", "UNet2DModel"],
            "super_res_last": ["diffusers", "UNet2DModel"],
            "super_res_scheduler": ["diffusers", "UnCLIPScheduler"],
            "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
            "text_proj": TEXT_PROJ_CLASS,
            "tokenizer": ["transformers", "CLIPTokenizer"],
        }
    )
    if variation:
        index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    _write_json(directory / "model_index.json", dict(sorted(index.items())))
    return directory
