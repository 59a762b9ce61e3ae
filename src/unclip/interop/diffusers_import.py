"""Import diffusers' UnCLIP pipelines (``UnCLIPPipeline`` / ``UnCLIPImageVariationPipeline`` directories, as
written by their ``save_pretrained`` and as published for kakaobrain/karlo-v1-alpha) into our models.

Nothing from diffusers is imported: the configs are read as JSON, the weights as safetensors (or, refused
unless ``trust_pickle``, as ``.bin`` via ``weights_only`` loading) and mapped with :mod:`unclip.interop.keymap`.
The result is an :class:`~unclip.pipeline.UnCLIPPipeline` set up to behave like diffusers': sampler "unclip",
best-of 1, the prior scheduler's x0 clamp, the decoder's unconditional caption = CLIP's "" and
``super_res_last`` for the final super-resolution step. :func:`diffusers_variation` reproduces
``UnCLIPImageVariationPipeline.__call__``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unclip.interop.diffusers_config import (
    decoder_config_from_diffusers,
    diffusion_from_scheduler,
    prior_config_from_diffusers,
    upsampler_config_from_diffusers,
)
from unclip.interop.hf_clip_io import SavableHFClipEncoder
from unclip.interop.keymap import decoder_links, diffusers_to_ours, prior_links, upsampler_links
from unclip.io import load_safetensors, safe_torch_load
from unclip.models import build_model
from unclip.pipeline.unclip_pipeline import GenerationDefaults, Stage, UnCLIPPipeline

__all__ = [
    "PIPELINE_CLASSES",
    "read_json",
    "read_diffusers_weights",
    "load_diffusers_pipeline",
    "diffusers_variation",
]

PIPELINE_CLASSES = ("UnCLIPPipeline", "UnCLIPImageVariationPipeline")
_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, with clear errors for a missing or malformed file."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def read_diffusers_weights(part: Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The state dict of one diffusers model folder (safetensors, sharded safetensors, or ``.bin``)."""
    for name in _WEIGHT_NAMES:
        path = part / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            weight_map = read_json(path).get("weight_map", {})
            out: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                out.update(load_safetensors(part / shard))
            return out
        if name.endswith(".safetensors"):
            return load_safetensors(path)
        state = safe_torch_load(path, trust_pickle=trust_pickle)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        return state
    raise FileNotFoundError(f"{part} holds no weights (expected one of {list(_WEIGHT_NAMES)})")


def _build(kind: str, config: Any, state: dict[str, Tensor], device, dtype) -> nn.Module:
    """Build our ``kind`` network from ``config`` and load mapped weights strictly."""
    model = build_model(kind, config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{kind} weights do not fit the {kind} built from the config: {err}") from None
    return model.to(device=device, dtype=dtype).eval()


def _check_index(index: dict[str, Any], directory: Path) -> str:
    cls = index.get("_class_name")
    if cls not in PIPELINE_CLASSES:
        raise ValueError(f"{directory / 'model_index.json'}: _class_name {cls!r} is not one of {PIPELINE_CLASSES}")
    needed = ["decoder", "text_proj", "text_encoder", "tokenizer", "super_res_first", "super_res_last"]
    needed += ["decoder_scheduler", "super_res_scheduler"]
    needed += ["prior", "prior_scheduler"] if cls == "UnCLIPPipeline" else ["image_encoder"]
    missing = [n for n in needed if not index.get(n) or index[n][0] is None or not (directory / n).is_dir()]
    if missing:
        raise ValueError(f"{directory} is missing components of a diffusers {cls}: {missing}")
    return cls


def _scheduler(directory: Path, name: str, want_clamp: float | None) -> tuple[Any, float | None]:
    diffusion, clamp = diffusion_from_scheduler(read_json(directory / name / "scheduler_config.json"), name)
    if want_clamp is not None and clamp != want_clamp:
        raise ValueError(f"{name}: clip_sample_range {clamp} is not supported (our decoder/upsamplers clamp x0 to 1)")
    return diffusion, clamp


def load_diffusers_pipeline(
    directory: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_pickle: bool = False,
) -> UnCLIPPipeline:
    """Load a diffusers ``UnCLIPPipeline`` or ``UnCLIPImageVariationPipeline`` directory as our pipeline.

    Args:
        directory: the folder holding ``model_index.json`` and the component sub-folders.
        device, dtype: where to put every part (default CPU, float32).
        trust_pickle: allow ``.bin`` weights that need full unpickling.

    Returns:
        an :class:`UnCLIPPipeline` whose defaults are diffusers' (sampler "unclip", 25/25/7 steps, guidance
        4/8, best-of 1, the prior scheduler's clamp) and whose decoder uses CLIP's "" as its unconditional
        caption. An image-variation directory has no prior (``pipe.prior is None``).
    """
    directory = Path(directory)
    index = read_json(directory / "model_index.json")
    cls = _check_index(index, directory)
    center_crop = True
    proc = directory / "feature_extractor" / "preprocessor_config.json"
    if proc.is_file():
        center_crop = bool(read_json(proc).get("do_center_crop", True))
    clip = SavableHFClipEncoder.from_pretrained(directory, device=device, dtype=dtype, center_crop=center_crop)

    prior: Stage | None = None
    prior_clamp: float | None = 5.0
    if cls == "UnCLIPPipeline":
        config = prior_config_from_diffusers(read_json(directory / "prior" / "config.json"))
        state = diffusers_to_ours(
            read_diffusers_weights(directory / "prior", trust_pickle), prior_links(config), "prior"
        )
        prior_diffusion, prior_clamp = _scheduler(directory, "prior_scheduler", None)
        prior = Stage(_build("prior", config, state, device, dtype), prior_diffusion)

    text_proj_cfg = read_json(directory / "text_proj" / "config.json")
    config = decoder_config_from_diffusers(read_json(directory / "decoder" / "config.json"), text_proj_cfg)
    weights = {f"decoder.{k}": v for k, v in read_diffusers_weights(directory / "decoder", trust_pickle).items()}
    weights.update(
        {f"text_proj.{k}": v for k, v in read_diffusers_weights(directory / "text_proj", trust_pickle).items()}
    )
    state = diffusers_to_ours(weights, decoder_links(config), "decoder + text_proj")
    decoder_diffusion, _ = _scheduler(directory, "decoder_scheduler", 1.0)
    decoder = Stage(_build("decoder", config, state, device, dtype), decoder_diffusion)
    if clip.dim != config.clip_dim or clip.token_width != config.text_width:
        raise ValueError(
            f"the text encoder (dim {clip.dim}, token width {clip.token_width}) does not fit the decoder "
            f"(clip_dim {config.clip_dim}, text width {config.text_width})"
        )

    sr_diffusion, _ = _scheduler(directory, "super_res_scheduler", 1.0)
    sr_models = []
    sr_configs = []
    for name in ("super_res_first", "super_res_last"):
        sr_config = upsampler_config_from_diffusers(
            read_json(directory / name / "config.json"), config.image_size, name
        )
        state = diffusers_to_ours(
            read_diffusers_weights(directory / name, trust_pickle), upsampler_links(sr_config), name
        )
        sr_configs.append(sr_config)
        sr_models.append(_build("upsampler", sr_config, state, device, dtype))
    if sr_configs[0] != sr_configs[1]:
        # diffusers reads the output size from super_res_first only; the nets must agree on everything else
        raise ValueError(f"super_res_first and super_res_last differ in architecture: {sr_configs}")
    upsampler = Stage(sr_models[0], sr_diffusion, last_step_model=sr_models[1])

    defaults = GenerationDefaults(
        sampler="unclip",
        prior_steps=25,
        decoder_steps=25,
        upsampler_steps=7,
        prior_guidance_scale=4.0,
        decoder_guidance_scale=8.0,
        best_of=1,
        eta=0.0,
        prior_clamp=prior_clamp if prior_clamp is not None else math.inf,
    )
    return UnCLIPPipeline(clip, prior, decoder, [upsampler], defaults, decoder_uncond="empty_text")


@torch.no_grad()
def diffusers_variation(
    pipe: UnCLIPPipeline,
    image: Any = None,
    num_images_per_prompt: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    decoder_steps: int | None = None,
    upsampler_steps: int | None = None,
    decoder_guidance_scale: float | None = None,
    image_embeddings: Tensor | None = None,
    output_type: str = "pil",
):
    """Image variations the way diffusers' ``UnCLIPImageVariationPipeline`` makes them.

    Each image's CLIP embedding is decoded from fresh noise, with the caption "" in both guidance branches
    (the pipeline's decoder must use ``decoder_uncond="empty_text"``), then super-resolved. Unlike
    :meth:`UnCLIPPipeline.vary` there is no DDIM inversion: variations share only z_i.

    Args:
        image: a PIL image / path, a list of them, or a tensor [B, 3, S, S] of CLIP pixel values (already
            preprocessed, as diffusers takes tensors); or None with ``image_embeddings`` [B, D].
        Other arguments as :meth:`UnCLIPPipeline.__call__` (defaults from ``pipe.defaults``).

    Returns:
        ``num_images_per_prompt`` images per input image, image-major, as ``output_type``.
    """
    from unclip.images import tensor_to_output

    if pipe.decoder_uncond != "empty_text":
        raise ValueError("diffusers_variation needs a pipeline with decoder_uncond='empty_text' (Karlo/diffusers)")
    if (image is None) == (image_embeddings is None):
        raise ValueError("give exactly one of image and image_embeddings")
    settings = pipe._settings(
        decoder_steps=decoder_steps, upsampler_steps=upsampler_steps, decoder_guidance_scale=decoder_guidance_scale
    )
    generator = pipe._generator(generator, seed)
    if image_embeddings is None:
        if isinstance(image, Tensor):
            vision = getattr(pipe.clip, "vision_model", None)
            if vision is None:
                raise ValueError("tensor images are CLIP pixel values and need a transformers image encoder")
            image_embeddings = vision(pixel_values=image.to(pipe.clip.device, pipe.clip.dtype)).image_embeds
        else:
            image_embeddings = pipe.embed_images(image if isinstance(image, (list, tuple)) else [image])
    if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
    z = image_embeddings.repeat_interleave(num_images_per_prompt, dim=0)
    images = pipe.decode(z, None, settings, generator)
    return tensor_to_output(images, output_type)
