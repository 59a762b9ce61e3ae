"""Save and load one network as a directory: ``config.json`` (its config dataclass) + ``model.safetensors``.

This is the per-part layout of a pipeline directory. Loading never unpickles anything,
checks that the weights fit the config (missing / unexpected keys, shapes) and names what is wrong.
"""

from __future__ import annotations

import typing
from pathlib import Path

import torch
from torch import nn

from unclip.config import load_config, save_config
from unclip.io import load_safetensors, save_safetensors
from unclip.limits import ResourceLimitError
from unclip.models.init import no_weight_init
from unclip.models.registry import build_model, model_class

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def config_class(kind: str) -> type:
    """The config dataclass that model kind ``kind`` is built from (read off its constructor)."""
    cls = model_class(kind)
    hints = typing.get_type_hints(cls.__init__)
    if "config" not in hints:
        raise TypeError(f"{cls.__name__}.__init__ must take `config` with a type hint")
    return hints["config"]


def save_model(model: nn.Module, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model.config`` and the model's state dict, float32 tensors optionally cast to ``dtype`` (e.g.
    fp16 to ship). float64 buffers (PCA and quantiser state) keep their precision."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no .config to save")
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if dtype is not None and value.dtype == torch.float32:
            value = value.to(dtype)
        state[key] = value
    save_safetensors(state, directory / WEIGHTS_FILE)
    save_config(config, directory / CONFIG_FILE)
    return directory


def load_model(
    kind: str,
    directory: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build model ``kind`` from ``directory/config.json`` and load ``directory/model.safetensors`` strictly.

    The result is in eval mode, on ``device`` (default CPU) in ``dtype`` (default float32).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is missing {name} (expected a {kind} saved by unclip)")
    config = load_config(config_class(kind), directory / CONFIG_FILE)
    try:
        with no_weight_init():  # every parameter is loaded strictly below
            model = build_model(kind, config, device="cpu")
    except ResourceLimitError as err:
        raise ResourceLimitError(f"{directory / CONFIG_FILE}: {err}") from None
    state = load_safetensors(directory / WEIGHTS_FILE)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or bad_shapes:
        raise ValueError(
            f"weights in {directory / WEIGHTS_FILE} do not fit the {kind} config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, shape mismatches {bad_shapes[:5]}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()
