"""A transformers CLIP that can be written back to disk, for pipelines imported from diffusers or Karlo.

:class:`SavableHFClipEncoder` is :class:`~unclip.encoders.hf_clip.HFClipEncoder` plus ``save_pretrained``: it
writes diffusers' sub-folder layout (``text_encoder/``, ``tokenizer/`` and, when there is an image tower,
``image_encoder/`` + ``feature_extractor/``), which :func:`unclip.encoders.loading.load_clip` reads back. That is
what lets ``UnCLIPPipeline.save_pretrained`` store an imported pipeline in our layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unclip.encoders.hf_clip import HFClipEncoder
from unclip.io import atomic_write_text

__all__ = ["SavableHFClipEncoder", "save_hf_clip", "processor_config"]


def processor_config(encoder: HFClipEncoder) -> dict:
    """A ``CLIPImageProcessor`` config reproducing the encoder's preprocessing (bicubic, its mean/std, crop)."""
    size = encoder.image_size
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": bool(encoder.center_crop),
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(encoder.image_mean),
        "image_std": list(encoder.image_std),
        "resample": 3,
        "do_convert_rgb": True,
    }


def _save_transformers_model(model, directory: Path, dtype: torch.dtype | None) -> None:
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.save_pretrained(str(directory), state_dict=state, safe_serialization=True)


def save_hf_clip(
    encoder: HFClipEncoder, directory: str | Path, dtype: torch.dtype | None = None, vision: bool = True
) -> Path:
    """Write ``encoder`` in diffusers' layout under ``directory`` (``vision=False`` leaves the image tower out)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _save_transformers_model(encoder.text_model, directory / "text_encoder", dtype)
    encoder.tokenizer.save_pretrained(str(directory / "tokenizer"))
    if vision and encoder.vision_model is not None:
        _save_transformers_model(encoder.vision_model, directory / "image_encoder", dtype)
        (directory / "feature_extractor").mkdir(exist_ok=True)
        atomic_write_text(
            directory / "feature_extractor" / "preprocessor_config.json",
            json.dumps(processor_config(encoder), indent=2) + "\n",
        )
    return directory


class SavableHFClipEncoder(HFClipEncoder):
    """:class:`HFClipEncoder` with ``save_pretrained`` (diffusers' sub-folder layout)."""

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        return save_hf_clip(self, directory, dtype=dtype)
