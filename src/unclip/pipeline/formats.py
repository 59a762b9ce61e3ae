"""Other checkpoint layouts a pipeline loads from and exports to, registered by the packages that know them.

The pipeline knows only its own layout. :mod:`unclip.interop` registers diffusers' and Karlo's when it is
imported (``import unclip`` does that, so every user sees them), keeping the imports one way: interop uses the
pipeline, never the reverse. A new format is one :func:`register_format` call (and, to write it, one
:func:`register_exporter` call) in the module that implements it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Loader = Callable[..., Any]
"""``load(directory, device=None, dtype=None) -> UnCLIPPipeline``."""
Detector = Callable[[Path, dict[str, Any] | None], bool]
"""``detect(directory, model_index or None) -> bool``: does this directory hold the format?"""
Exporter = Callable[..., Path]
"""``export(pipeline, path, dtype=None) -> path``."""


@dataclass(frozen=True)
class PipelineFormat:
    """A layout :meth:`UnCLIPPipeline.from_pretrained` can read."""

    name: str
    detect: Detector
    load: Loader


_FORMATS: dict[str, PipelineFormat] = {}
_EXPORTERS: dict[str, Exporter] = {}


def register_format(name: str, detect: Detector, load: Loader) -> None:
    """Make :meth:`UnCLIPPipeline.from_pretrained` read directories that ``detect`` recognises with ``load``."""
    _FORMATS[name] = PipelineFormat(name, detect, load)


def register_exporter(name: str, export: Exporter) -> None:
    """Make ``UnCLIPPipeline.export(name, path)`` (and :meth:`export_diffusers` for "diffusers") write ``name``."""
    _EXPORTERS[name] = export


def read_index(directory: Path, index_file: str) -> dict[str, Any] | None:
    """The parsed ``model_index.json`` of ``directory`` (None when it has none); invalid JSON is an error."""
    path = directory / index_file
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def find_format(directory: Path, index: dict[str, Any] | None) -> PipelineFormat | None:
    """The registered format that recognises ``directory``, if any."""
    for fmt in _FORMATS.values():
        if fmt.detect(directory, index):
            return fmt
    return None


def exporter(name: str) -> Exporter:
    """The exporter registered for ``name``; a clear error when none is."""
    if name not in _EXPORTERS:
        known = sorted(_EXPORTERS) or "none (`import unclip` registers diffusers')"
        raise ValueError(f"no exporter for {name!r}; registered: {known}")
    return _EXPORTERS[name]


def format_names() -> list[str]:
    """Names of the registered formats (for error messages)."""
    return sorted(_FORMATS)
