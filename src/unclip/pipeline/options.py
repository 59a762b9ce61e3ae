"""Pipeline settings and shared pieces: generation defaults, stages, outputs, file names, validation.

Kept apart from :mod:`unclip.pipeline.unclip_pipeline` (which re-exports them) so the pipeline class stays
about what it does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unclip.diffusion.stage_config import DIFFUSION_FILE, DiffusionConfig  # noqa: F401 - re-exported

INDEX_FILE = "model_index.json"
FORMAT = "unclip-pipeline"
BUILTIN_MODELS = ("shapes",)
STAGES = ("prior", "decoder", "upsampler")
MAX_PROMPT_CHARS = 20_000
"""A sanity bound on prompt length (tokenising costs time); text past the encoder's context is truncated with a
:class:`PromptWarning` that says what was cut."""


class PromptWarning(UserWarning):
    """Part of a prompt the text encoder does not see: truncated words, words outside its vocabulary."""


class NonFiniteError(ValueError):
    """A stage produced NaN or infinite values; nothing is written."""


def check_finite(stage: str, tensor: Tensor) -> Tensor:
    """Return ``tensor`` [B, ...] if every value is finite, else raise :class:`NonFiniteError` naming ``stage``."""
    bad = ~torch.isfinite(tensor.detach()).flatten(1).all(dim=1) if tensor.dim() > 1 else ~torch.isfinite(tensor)
    if bool(bad.any()):
        raise NonFiniteError(
            f"the {stage} stage produced non-finite values (NaN or inf) in {int(bad.sum())} of {bad.numel()} "
            "samples; nothing was written (check the model's weights and the sampling options)"
        )
    return tensor


MEAN_COLOUR_SETTINGS = ("decoder_zero_mean_noise", "decoder_guidance_keep_mean", "upsampler_keep_mean")
"""The boolean :class:`GenerationDefaults` that keep each image's mean colour (the CLI's ``--keep-mean`` sets all)."""


@dataclass
class GenerationDefaults:
    """Default sampling settings of a pipeline (stored in ``model_index.json``; tuned per built-in model).

    ``decoder_guidance_keep_mean``: the decoder's guidance leaves each channel's spatial mean (the image's
    global colour) to the conditional branch (:func:`unclip.samplers.guidance.guide`);
    ``decoder_zero_mean_noise``: the decoder's sampler draws its noise without the per-channel spatial mean
    (:class:`unclip.samplers.ZeroMeanNoise`);
    ``upsampler_keep_mean``: each upsampler's output keeps its input's per-channel mean
    (:func:`unclip.stages.decoding.keep_input_mean`). All three are off for imported Karlo and diffusers weights,
    as those projects sample.
    """

    sampler: str = "ddpm"
    prior_steps: int = 25
    decoder_steps: int = 25
    upsampler_steps: int = 7
    upsampler_keep_mean: bool = False
    prior_guidance_scale: float = 4.0
    decoder_guidance_scale: float = 8.0
    decoder_guidance_keep_mean: bool = False
    decoder_zero_mean_noise: bool = False
    best_of: int = 2
    eta: float = 0.0
    prior_clamp: float = 10.0
    inversion_steps: int = 50
    precision: str = "auto"  # what ``--precision auto`` runs: "auto" (bf16 where native), "fp32", "bf16"


def override_defaults(defaults: GenerationDefaults, items: Sequence[str]) -> GenerationDefaults:
    """A copy of ``defaults`` with ``"FIELD=VALUE"`` items applied (a benchmark's ``--set``), typed as the field.

    Raises ValueError naming the item for an unknown field, a missing ``=``, or a value of the wrong type."""
    names = [f.name for f in fields(GenerationDefaults)]
    changes: dict[str, Any] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        if not sep or name not in names or not value:
            raise ValueError(f"{item!r}: expected FIELD=VALUE with FIELD one of {names}")
        kind = type(getattr(defaults, name))
        if kind is bool:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{item!r}: {name} takes true or false")
            changes[name] = value.lower() == "true"
            continue
        try:
            changes[name] = kind(value)
        except ValueError:
            raise ValueError(f"{item!r}: {name} takes a value of type {kind.__name__}, got {value!r}") from None
    return replace(defaults, **changes)


@dataclass
class UnCLIPOutput(Sequence):
    """What every generating call returns: the images, and with ``return_embeddings=True`` their embeddings.

    It indexes, iterates and has a length like the images themselves (``out[0]``, ``for image in out``,
    ``len(out)``), so code written for a plain list of images keeps working; ``np.asarray(out)`` gives the
    array of ``output_type="np"`` images.

    Attributes:
        images: list of PIL images, np.ndarray [N, H, W, 3] or tensor [N, 3, H, W] in [0, 1].
        image_embeddings: [N, D] the z_i that were decoded (``return_embeddings``), else None.
        text_embeddings: [N, D] the prompts' z_t (repeated per image), or None.
    """

    images: Any
    image_embeddings: Tensor | None = None
    text_embeddings: Tensor | None = None

    def __getitem__(self, index: Any) -> Any:
        return self.images[index]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Any:
        return iter(self.images)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        images = self.images
        if isinstance(images, Tensor):
            images = images.numpy()
        elif isinstance(images, list):
            images = np.stack([np.asarray(image) for image in images])
        return np.asarray(images, dtype=dtype)


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


def _check_positive_int(name: str, value: Any, limit: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if limit is not None and value > limit:
        raise ValueError(f"{name} must be at most {limit}, got {value!r}")
    return value


def _check_scale(name: str, value: Any, limit: float = math.inf) -> float:
    """A finite number in [0, limit] (NaN and infinities refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if value > limit:
        raise ValueError(f"{name} must be at most {limit:g}, got {value!r}")
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
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as err:  # lone surrogates: undecodable bytes in argv, or "\\ud800" from JSON
            raise ValueError(
                f"prompt is not valid UTF-8 text: {p[err.start : err.end]!r} at character {err.start} of {p!r}"
            ) from None
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is too long: {len(p)} characters (at most {MAX_PROMPT_CHARS})")
        out.append(p)
    return out


def check_negative_prompts(negative: str | Sequence[str] | None, count: int) -> list[str] | None:
    """``negative_prompt`` as one caption per prompt (``count``), or None when not given.

    A string applies to every prompt; a list needs one per prompt. An empty string is allowed (it is the
    null text the unconditional branch uses anyway)."""
    if negative is None:
        return None
    listed = [negative] * count if isinstance(negative, str) else negative
    if not isinstance(listed, (list, tuple)) or len(listed) != count:
        raise ValueError(
            f"negative_prompt must be a string or a list of {count} strings (one per prompt), got {negative!r}"
        )
    return [check_prompts(p)[0] if p.strip() else p for p in map(_as_text, listed)]


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"negative_prompt must hold strings, got {type(value).__name__}: {value!r}")
    return value


def builtin_model_dir(name: str) -> Path:
    """Directory of a pipeline shipped in the package (``unclip/assets/<name>``)."""
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; choose one of {list(BUILTIN_MODELS)} or give a directory")
    return Path(str(resources.files("unclip") / "assets" / name))


def model_dir(path: str | Path) -> Path:
    """The directory a pipeline is loaded from: a built-in model's (``"shapes"``, which must be installed) or
    ``path`` itself, which must be a directory."""
    if isinstance(path, str) and path in BUILTIN_MODELS:
        directory = builtin_model_dir(path)
        if not (directory / INDEX_FILE).is_file():
            raise FileNotFoundError(
                f"the built-in model {path!r} is not in this installation ({directory}); "
                "train it with `unclip train shapes`"
            )
        return directory
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model not found: {str(path)!r} is neither a directory nor a built-in model {list(BUILTIN_MODELS)}"
        )
    return directory


ACTIVATION_FACTOR = 48
"""Activation bytes of a network forward per (position x base width x element size): ~25 measured on the shapes
model's peak memory, doubled for safety."""


def unet_bytes_per_sample(model: nn.Module, guided: bool) -> int:
    """A conservative estimate of the memory one sample takes in a decoder/upsampler U-Net's sampling loop
    (both guidance branches when ``guided``), from its config: image_size² x model_channels x element size."""
    config = model.config
    element = next(model.parameters()).element_size()
    return (2 if guided else 1) * element * config.image_size**2 * config.model_channels * ACTIVATION_FACTOR


def prior_bytes_per_sample(model: nn.Module, text_length: int) -> int:
    """A conservative estimate of the memory one guided prior candidate takes: tokens x width x element size."""
    element = next(model.parameters()).element_size()
    width = getattr(getattr(model, "config", None), "width", 1024)
    return 2 * element * (text_length + 8) * width * ACTIVATION_FACTOR
