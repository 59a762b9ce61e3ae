"""Reading and writing pipelines: our layout, and the registered formats (:mod:`unclip.pipeline.formats`).

Our layout is a directory with ``model_index.json`` and one sub-directory per part: ``clip/``, ``prior/``,
``decoder/``, ``upsampler_1/``, ... Each diffusion part has ``config.json`` + ``model.safetensors`` +
``diffusion.json`` (its :class:`DiffusionConfig`); the AR prior has no ``diffusion.json``. The index names the
parts, the prior's kind (``"prior"`` or ``"ar_prior"``, :data:`unclip.pipeline.priors.PRIOR_KINDS`) and the
generation defaults.

:meth:`UnCLIPPipeline.from_pretrained` and :meth:`UnCLIPPipeline.save_pretrained` call :func:`load_pipeline` and
:func:`save_pipeline`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unclip.config import config_from_dict, config_to_dict, load_config, save_config
from unclip.diffusion.stage_config import DIFFUSION_FILE, DiffusionConfig
from unclip.io import atomic_write_text
from unclip.models.serialization import load_model, save_model
from unclip.pipeline.formats import find_format, format_names, read_index
from unclip.pipeline.hub import resolve_model_dir
from unclip.pipeline.options import FORMAT, INDEX_FILE, GenerationDefaults, Stage
from unclip.pipeline.priors import PRIOR_KINDS

if TYPE_CHECKING:
    from unclip.pipeline.unclip_pipeline import UnCLIPPipeline

__all__ = ["load_pipeline", "save_pipeline"]


def load_pipeline(
    path: str | Path = "shapes",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> UnCLIPPipeline:
    """A pipeline from a built-in name (``"shapes"``), a directory (ours, or one a registered format reads) or a
    hub id ``"org/name"`` at ``revision``, through the Hugging Face cache ``cache_dir`` (:mod:`unclip.pipeline.hub`)."""
    directory = resolve_model_dir(path, revision=revision, cache_dir=cache_dir)
    index = read_index(directory, INDEX_FILE)
    if index is None or index.get("format") != FORMAT:
        fmt = find_format(directory, index)
        if fmt is not None:
            return fmt.load(directory, device=device, dtype=dtype)
        if index is None:
            raise FileNotFoundError(
                f"{directory} has no {INDEX_FILE} and is no layout of {format_names()}; it is not a pipeline"
            )
        raise ValueError(f"{directory / INDEX_FILE} is not an unclip pipeline index (format {index.get('format')!r})")
    return _load_ours(directory, index, device, dtype)


def _load_ours(directory: Path, index: dict[str, Any], device, dtype) -> UnCLIPPipeline:
    from unclip.encoders.loading import load_clip
    from unclip.pipeline.unclip_pipeline import UnCLIPPipeline

    def stage(kind: str, sub: str) -> Stage:
        part = directory / sub
        return Stage(load_model(kind, part, device, dtype), load_config(DiffusionConfig, part / DIFFUSION_FILE))

    for key in ("clip", "prior", "decoder"):
        if key not in index:
            raise ValueError(f"{directory / INDEX_FILE} names no {key!r} part")
    clip_kwargs = {"center_crop": True} if index.get("clip_center_crop") else {}
    clip = load_clip(directory / index["clip"], device=device, dtype=dtype, **clip_kwargs)
    prior = None
    if index["prior"] is not None:
        kind = index.get("prior_kind") or "prior"
        if kind not in PRIOR_KINDS:
            raise ValueError(f"{directory / INDEX_FILE}: unknown prior_kind {kind!r}; known: {sorted(PRIOR_KINDS)}")
        prior = PRIOR_KINDS[kind].load(directory / index["prior"], device, dtype)
    decoder = stage("decoder", index["decoder"])
    upsamplers = [stage("upsampler", sub) for sub in index.get("upsamplers", [])]
    for up, sub in zip(upsamplers, index.get("upsampler_last_step", [None] * len(upsamplers))):
        if sub is not None:
            up.last_step_model = load_model("upsampler", directory / sub, device, dtype)
    defaults = config_from_dict(GenerationDefaults, index.get("defaults", {}))
    return UnCLIPPipeline(clip, prior, decoder, upsamplers, defaults, index.get("decoder_uncond", "masked"))


def save_pipeline(pipe: UnCLIPPipeline, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe`` in our layout under ``path``; weights cast to ``dtype`` if given (e.g. fp16)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    save_clip = getattr(pipe.clip, "save_pretrained", None)
    if save_clip is None:
        raise TypeError(f"{type(pipe.clip).__name__} cannot be saved in our layout")
    save_clip(directory / "clip", dtype=dtype)

    def write_stage(stage: Stage, sub: str) -> None:
        save_model(stage.model, directory / sub, dtype=dtype)
        save_config(stage.diffusion, directory / sub / DIFFUSION_FILE)

    if pipe.prior is not None:
        pipe.prior.save(directory / "prior", dtype=dtype)
    write_stage(pipe.decoder, "decoder")
    subs, last_subs = [], []
    for i, stage in enumerate(pipe.upsamplers, start=1):
        write_stage(stage, f"upsampler_{i}")
        subs.append(f"upsampler_{i}")
        last_subs.append(f"upsampler_{i}_last_step" if stage.last_step_model is not None else None)
        if stage.last_step_model is not None:
            save_model(stage.last_step_model, directory / last_subs[-1], dtype=dtype)
    index = {
        "format": FORMAT,
        "_class_name": "UnCLIPPipeline",
        "clip": "clip",
        "prior": "prior" if pipe.prior is not None else None,
        "prior_kind": pipe.prior.kind if pipe.prior is not None else None,
        "decoder": "decoder",
        "upsamplers": subs,
        "defaults": config_to_dict(pipe.defaults),
    }
    if any(last_subs):
        index["upsampler_last_step"] = last_subs
    if pipe.decoder_uncond != "masked":
        index["decoder_uncond"] = pipe.decoder_uncond
    if getattr(pipe.clip, "center_crop", False):
        index["clip_center_crop"] = True
    atomic_write_text(directory / INDEX_FILE, json.dumps(index, indent=2) + "\n")
    return directory
