"""``load_clip``: one entry point that returns a :class:`ClipEncoder` for a name or a directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from unclip.encoders.base import ClipEncoder
from unclip.encoders.own_clip import OwnClipEncoder, is_own_clip_dir

BUILTIN_NAMES = ("shapes",)


def builtin_clip_dir(name: str = "shapes") -> Path:
    """Directory of a CLIP shipped inside the package: the built-in pipeline's (``unclip/assets/shapes/clip``)."""
    if name not in BUILTIN_NAMES:
        raise ValueError(f"unknown built-in CLIP {name!r}; choose one of {list(BUILTIN_NAMES)}")
    return Path(str(resources.files("unclip") / "assets" / name / "clip"))


def load_clip(
    path_or_name: str | Path = "shapes",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    center_crop: bool = False,
) -> ClipEncoder:
    """Load a CLIP as a :class:`ClipEncoder`.

    Args:
        path_or_name: "shapes" (the built-in small CLIP, the default), or a directory holding our format
            (``config.json`` + ``model.safetensors`` + ``tokenizer.json``), a pipeline directory with a
            ``clip/`` part, diffusers' UnCLIP layout (``text_encoder/``, ``tokenizer/``, ``image_encoder/``,
            ``feature_extractor/``), or a transformers ``CLIPModel`` folder.
        device, dtype: where to put it (default CPU, float32).
        center_crop: transformers CLIPs only: centre-crop images (diffusers) instead of squashing (Karlo).
    """
    from unclip.encoders.hf_clip import HFClipEncoder, is_hf_clip_dir

    if isinstance(path_or_name, str) and path_or_name in BUILTIN_NAMES:
        directory = builtin_clip_dir(path_or_name)
        if not is_own_clip_dir(directory):
            raise FileNotFoundError(
                f"the built-in CLIP {path_or_name!r} is missing from {directory}; "
                "train one with `unclip train clip` and point load_clip at its export directory"
            )
    else:
        directory = Path(path_or_name)
        if not directory.exists():
            raise FileNotFoundError(
                f"CLIP not found: {str(path_or_name)!r} is neither a directory nor a built-in name "
                f"{list(BUILTIN_NAMES)}"
            )
        if not directory.is_dir():
            raise ValueError(f"{directory} is a file; load_clip expects a directory or a built-in name")
    if is_own_clip_dir(directory):
        return OwnClipEncoder.from_pretrained(directory, device=device, dtype=dtype)
    if is_hf_clip_dir(directory):
        return HFClipEncoder.from_pretrained(directory, device=device, dtype=dtype, center_crop=center_crop)
    if (directory / "clip").is_dir():
        return load_clip(directory / "clip", device=device, dtype=dtype, center_crop=center_crop)
    raise ValueError(
        f"{directory} holds no recognised CLIP: expected config.json + model.safetensors + tokenizer.json "
        "(unclip), text_encoder/ + tokenizer/ (diffusers UnCLIP), or a transformers CLIPModel folder"
    )
