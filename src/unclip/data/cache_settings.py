"""What an embedding cache records about how it was built, and how a build or a reuse is compared with it.

A cache records its settings (:func:`unclip.data.embed_cache.build_settings`, in ``settings.json``):
the CLIP by name or resolved directory and by the fingerprint of its weights, local paths resolved. A resumed
build, or a task reusing the cache, compares its own settings with them (:func:`setting_differences`) and
refuses with :func:`describe_differences`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from unclip.encoders.base import ClipEncoder


def clip_fingerprint(clip: ClipEncoder) -> str:
    """sha256 of a CLIP's weights (every network the encoder holds, float32 values in key order): the same
    weights give the same fingerprint whatever their file, directory or runtime dtype."""
    from torch import nn

    h = hashlib.sha256()
    modules = sorted((k, v) for k, v in vars(clip).items() if isinstance(v, nn.Module))
    for name, module in modules:
        for key, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else tensor.dtype).contiguous()
            h.update(f"{name}.{key}:{t.dtype}{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def resolved_location(value: str | Path, names: tuple[str, ...] = ()) -> str:
    """A local path as an absolute, resolved one (``photos`` and ``./photos/`` are the same directory); the
    built-in ``names`` (e.g. the CLIP ``"shapes"``), what does not exist, ``pipe:`` commands and URLs unchanged."""
    value = str(value)
    if value in names or value.startswith("pipe:") or "://" in value or not Path(value).exists():
        return value
    return str(Path(value).resolve())


def resolved_clip_name(clip_name: str | Path) -> str:
    """A CLIP's name as recorded in a cache: a built-in name as is, a directory resolved."""
    from unclip.encoders.loading import BUILTIN_NAMES

    return resolved_location(clip_name, tuple(BUILTIN_NAMES))


def resolved_source(description: dict[str, Any]) -> dict[str, Any]:
    """A source's description with its local paths (``root``, ``shards``) resolved."""
    out = dict(description)
    if isinstance(out.get("root"), str):
        out["root"] = resolved_location(out["root"])
    if isinstance(out.get("shards"), list):
        out["shards"] = [resolved_location(str(s)) for s in out["shards"]]
    return out


def setting_differences(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """Keys whose values differ between a cache's recorded settings and a build's (or a reuse's).

    Two CLIPs with the same weight fingerprint are the same CLIP wherever they live, so then ``clip`` (its name
    or directory) is not compared. A cache recorded before fingerprints existed is accepted with a warning.
    """
    same_weights = bool(old.get("clip_sha256")) and old.get("clip_sha256") == new.get("clip_sha256")
    diff = []
    for k in keys:
        if (k == "clip" and same_weights) or (k == "clip_sha256" and k not in old):
            continue
        if old.get(k) != new.get(k):
            diff.append(k)
    if "clip_sha256" not in old and "clip_sha256" in new:
        warnings.warn(
            "the cache does not record which CLIP weights built it (an older unclip); not checked", stacklevel=3
        )
    return diff


def describe_differences(old: dict[str, Any], new: dict[str, Any], keys: list[str]) -> str:
    """``key: cache has X, now Y`` for each differing key, values shortened."""

    def short(value: Any) -> str:
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    return "; ".join(f"{k}: cache has {short(old.get(k))}, now {short(new.get(k))}" for k in keys)
