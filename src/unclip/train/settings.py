"""A task's result-changing settings, derived from the task object, recorded in checkpoints, checked on resume.

:func:`task_settings` collects, by default:

- every config dataclass the task holds as an attribute (``config``, ``model_config``, ``diffusion``, ...),
  every field, nested ones too;
- the identity of the cache it trains on (a loaded cache attribute, or its ``meta`` kept as ``cache_meta``):
  the meta less where it lives, the CLIP's weight fingerprint included, so a moved cache still resumes and
  another cache does not;
- the attributes a task names in ``setting_attributes`` (constructor settings kept outside a dataclass, e.g.
  a data seed, or a helper object such as a ``ShapesWorld`` whose seed and probabilities are then taken).

Only a short allow-list inside those is left out, the settings that cannot change the trained weights: names
starting with ``eval_`` (evaluation runs on a copy of the EMA with the training RNG preserved) or ``export_``
(the export's dtype), private names, and a config's ``cache`` path (replaced by the cache's identity). Tensors,
networks and long lists are data, not settings. A task may instead define ``result_settings() -> dict``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

_SKIP_PREFIXES = ("_", "eval_", "export_")
_LOCATION_KEYS = frozenset({"clip", "source", "parts"})  # where a cache's inputs live, not what it holds
_SCALARS = (bool, int, float, str, type(None))
_MAX_SEQUENCE = 64  # longer lists are data (row indices, vocabularies), not settings


def _skipped(name: str) -> bool:
    return name.startswith(_SKIP_PREFIXES)


def cache_identity(cache: Any) -> dict[str, Any]:
    """What a loaded cache (or its ``meta`` dict) holds, by its metadata (location keys left out, so a moved
    cache is the same)."""
    meta = dict(cache if isinstance(cache, dict) else getattr(cache, "meta", {}) or {})
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key in _LOCATION_KEYS:
            continue
        _walk(out, f"cache.{key}", value, depth=1)
    source = meta.get("source")
    if isinstance(source, dict):  # keep what the source is (row count, columns), not where it is
        for key, value in source.items():
            if key not in ("root", "shards"):
                _walk(out, f"cache.source.{key}", value, depth=1)
    return out


def _walk(out: dict[str, Any], name: str, value: Any, depth: int) -> None:
    """Add the settings found in ``value`` under the dotted ``name``."""
    if isinstance(value, _SCALARS):
        out[name] = value
    elif isinstance(value, torch.dtype):
        out[name] = str(value)
    elif isinstance(value, (list, tuple)) and (depth > 0 or isinstance(value, tuple)):  # a task's lists are data
        if len(value) <= _MAX_SEQUENCE and all(isinstance(v, _SCALARS) for v in value):
            out[name] = list(value)
        elif len(value) <= _MAX_SEQUENCE and all(isinstance(v, (list, tuple)) for v in value):
            for i, item in enumerate(value):
                _walk(out, f"{name}.{i}", item, depth)
    elif isinstance(value, dict):
        if depth > 0 and len(value) <= _MAX_SEQUENCE:
            for key, item in value.items():
                if isinstance(key, str) and not _skipped(key):
                    _walk(out, f"{name}.{key}", item, depth)
    elif isinstance(value, (torch.Tensor, nn.Module)):
        return
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            if _skipped(field.name) or (field.name == "cache" and isinstance(value.cache, str)):
                continue
            _walk(out, f"{name}.{field.name}", getattr(value, field.name), depth + 1)
    elif depth == 0 and hasattr(value, "__dict__") and type(value).__module__.startswith("unclip."):
        for key, item in vars(value).items():
            if not _skipped(key):
                _walk(out, f"{name}.{key}", item, depth + 1)


def task_settings(task: Any) -> dict[str, Any]:
    """The task's result-changing settings as a flat ``{"dotted.name": JSON value}`` dict (see the module doc)."""
    out: dict[str, Any] = {}
    own = getattr(task, "result_settings", None)
    if callable(own):
        for key, value in dict(own()).items():
            _walk(out, str(key), value, depth=1)
        return out
    named = tuple(getattr(task, "setting_attributes", ()))
    for key, value in vars(task).items():
        if _skipped(key):
            continue
        if (hasattr(value, "meta") and hasattr(value, "image_embedding")) or (
            key == "cache_meta" and isinstance(value, dict)
        ):  # the cache it trains on (loaded, or its meta kept)
            out.update(cache_identity(value))
        elif key in named:
            _walk(out, key, value, depth=0)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            _walk(out, key, value, depth=0)
    missing = [k for k in named if not hasattr(task, k)]
    if missing:
        raise AttributeError(f"task {getattr(task, 'name', task)!r} names setting_attributes it lacks: {missing}")
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def setting_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, saved value, current value)`` for every setting recorded on both sides that differs (a setting
    that only one side knows is a change of unclip's version, not of the run, and is not compared)."""
    return [(k, saved[k], current[k]) for k in sorted(saved) if k in current and not _same(saved[k], current[k])]
