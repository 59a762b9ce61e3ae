"""Pipeline settings and shared pieces: generation defaults, stages, outputs, file names, validation.

Kept apart from :mod:`unclip.pipeline.unclip_pipeline` (which re-exports them) so the pipeline class stays
about what it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from unclip.diffusion.stage_config import DiffusionConfig

INDEX_FILE = "model_index.json"
DIFFUSION_FILE = "diffusion.json"
FORMAT = "unclip-pipeline"
BUILTIN_MODELS = ("shapes",)
STAGES = ("prior", "decoder", "upsampler")
MAX_PROMPT_CHARS = 1000


@dataclass
class GenerationDefaults:
    """Default sampling settings of a pipeline (stored in ``model_index.json``; tuned per built-in model)."""

    sampler: str = "ddpm"
    prior_steps: int = 25
    decoder_steps: int = 25
    upsampler_steps: int = 7
    prior_guidance_scale: float = 4.0
    decoder_guidance_scale: float = 8.0
    best_of: int = 2
    eta: float = 0.0
    prior_clamp: float = 10.0
    inversion_steps: int = 50


@dataclass
class UnCLIPOutput:
    """What a call returns with ``return_embeddings=True``.

    Attributes:
        images: list of PIL images, np.ndarray [N, H, W, 3] or tensor [N, 3, H, W] in [0, 1].
        image_embeddings: [N, D] the z_i that were decoded.
        text_embeddings: [N, D] the prompts' z_t (repeated per image), or None.
    """

    images: Any
    image_embeddings: Tensor
    text_embeddings: Tensor | None = None


DECODER_UNCOND = ("masked", "empty_text")
"""How the decoder's unconditional branch sees the caption: "masked" (ours: an all-False text mask and a zero
pooled embedding) or "empty_text" (Karlo/diffusers: CLIP's encoding of "")."""


@dataclass
class Stage:
    """A diffusion network with the process it was trained on.

    ``last_step_model`` (upsamplers only): a second network of the same architecture that takes the final
    step, as Karlo's ``model_last_step`` / diffusers' ``super_res_last``.
    """

    model: nn.Module
    diffusion: DiffusionConfig
    last_step_model: nn.Module | None = None


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_scale(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def check_prompts(prompt: str | Sequence[str]) -> list[str]:
    """Validate prompts: a non-empty string or a non-empty list of them, each at most 1000 characters."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    out = []
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {type(p).__name__}: {p!r}")
        if not p.strip():
            raise ValueError("prompt is empty")
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is too long: {len(p)} characters (at most {MAX_PROMPT_CHARS})")
        out.append(p)
    return out


def builtin_model_dir(name: str) -> Path:
    """Directory of a pipeline shipped in the package (``unclip/assets/<name>``)."""
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; choose one of {list(BUILTIN_MODELS)} or give a directory")
    return Path(str(resources.files("unclip") / "assets" / name))
