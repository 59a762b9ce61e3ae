"""Register diffusers' and Karlo's layouts with the pipeline (:mod:`unclip.pipeline.formats`).

Imported by :mod:`unclip.interop` (and so by ``import unclip``). The loaders import their modules only when
called, so registering costs nothing: transformers and diffusers are not imported until a file needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unclip.pipeline.formats import register_exporter, register_format

DIFFUSERS_CLASSES = ("UnCLIPPipeline", "UnCLIPImageVariationPipeline")
KARLO_CHECKPOINTS = ("prior*.ckpt", "decoder*.ckpt", "*sr*.ckpt")


def is_diffusers_dir(directory: Path, index: dict[str, Any] | None) -> bool:
    """A diffusers UnCLIP(ImageVariation)Pipeline folder: its ``model_index.json`` names the class."""
    return index is not None and index.get("_class_name") in DIFFUSERS_CLASSES and "format" not in index


def is_karlo_dir(directory: Path, index: dict[str, Any] | None) -> bool:
    """Karlo's release folder: a prior, a decoder and a super-resolution ``.ckpt``, no ``model_index.json``."""
    return index is None and all(any(directory.glob(pattern)) for pattern in KARLO_CHECKPOINTS)


def _load_diffusers(directory: Path, device=None, dtype=None):
    from unclip.interop.diffusers_import import load_diffusers_pipeline

    return load_diffusers_pipeline(directory, device=device, dtype=dtype)


def _load_karlo(directory: Path, device=None, dtype=None):
    from unclip.interop.karlo_import import load_karlo

    return load_karlo(directory, device=device, dtype=dtype)


def _export_diffusers(pipe, path, dtype=None, variation: bool = False) -> Path:
    from unclip.interop.diffusers_export import export_diffusers

    return export_diffusers(pipe, path, dtype=dtype, variation=variation)


def _export_diffusers_variation(pipe, path, dtype=None) -> Path:
    return _export_diffusers(pipe, path, dtype=dtype, variation=True)


register_format("diffusers", is_diffusers_dir, _load_diffusers)
register_format("karlo", is_karlo_dir, _load_karlo)
register_exporter("diffusers", _export_diffusers)
register_exporter("diffusers-variation", _export_diffusers_variation)
