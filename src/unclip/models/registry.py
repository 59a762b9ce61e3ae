"""``build_model(kind, preset)``: one place that knows every network and its named presets.

Each model module defines a config dataclass, the ``nn.Module`` built from it, and a ``PRESETS``
dict mapping a preset name to a zero-argument function returning a config. The registry imports a
module only when its kind is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unclip.limits import check_allocation
from unclip.models.init import no_weight_init

# kind -> (module, model class name). The module must define PRESETS: dict[str, Callable[[], Config]].
MODEL_KINDS: dict[str, tuple[str, str]] = {
    "clip": ("unclip.models.clip", "SmallCLIP"),
    "prior": ("unclip.models.prior", "DiffusionPrior"),
    "ar_prior": ("unclip.models.ar_prior", "ARPrior"),
    "projection_prior": ("unclip.models.projection_prior", "ProjectionPrior"),
    "decoder": ("unclip.models.decoder_unet", "DecoderUNet"),
    "upsampler": ("unclip.models.upsampler_unet", "UpsamplerUNet"),
    "oracle": ("unclip.models.oracle_net", "ShapesOracle"),
}


def _lookup(kind: str) -> tuple[type[nn.Module], dict[str, Callable[[], Any]]]:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    module_name, class_name = MODEL_KINDS[kind]
    module = importlib.import_module(module_name)
    return getattr(module, class_name), module.PRESETS


def list_presets(kind: str) -> list[str]:
    """Names of the presets defined for ``kind``."""
    return sorted(_lookup(kind)[1])


def model_config(kind: str, preset: str) -> Any:
    """The config dataclass of preset ``preset`` of ``kind``."""
    _, presets = _lookup(kind)
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for model kind {kind!r}; choose one of {sorted(presets)}")
    return presets[preset]()


def model_class(kind: str) -> type[nn.Module]:
    return _lookup(kind)[0]


def model_bytes(cls: type[nn.Module], config: Any, dtype: torch.dtype | None = None) -> int:
    """Bytes of the parameters and buffers of ``cls(config)``, counted on the meta device (nothing allocated)."""
    with torch.device("meta"), no_weight_init():
        model = cls(config)
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        size = torch.empty((), dtype=dtype).element_size() if dtype is not None and tensor.is_floating_point() else None
        total += tensor.numel() * (size or tensor.element_size())
    return total


def build_model(
    kind: str,
    preset: str | Any = "tiny",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build network ``kind`` ("clip", "prior", "ar_prior", "projection_prior", "decoder", "upsampler") from a
    preset name or a config dataclass. ``device="meta"`` builds it without allocating memory (e.g. ``karlo``)."""
    cls, _ = _lookup(kind)
    config = model_config(kind, preset) if isinstance(preset, str) else preset
    target = torch.device(device if device is not None else "cpu")
    if target.type != "meta":  # size the network without memory first: a typo in a config must not take the machine
        check_allocation(f"the {kind} network of this config", model_bytes(cls, config, dtype))
    with target:
        model = cls(config)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model
