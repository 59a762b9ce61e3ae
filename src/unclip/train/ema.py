"""Exponential moving average of model weights, as small functions (after DiT's ``update_ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` in eval mode, to hold the moving average."""
    ema = copy.deepcopy(model)
    ema.eval()
    requires_grad(ema, False)
    return ema


def requires_grad(model: nn.Module, flag: bool) -> None:
    """Set ``requires_grad`` on every parameter of ``model``."""
    for p in model.parameters():
        p.requires_grad_(flag)


def ema_decay_at(updates: int, decay: float, warmup: bool) -> float:
    """Decay for the update that follows ``updates`` earlier ones.

    With warm-up: ``min(decay, (1 + updates) / (10 + updates))`` (0.1, 0.18, 0.25, ... rising to
    ``decay``), so a short run's EMA tracks the trained weights rather than the initial ones.
    """
    if warmup:
        return min(decay, (1.0 + updates) / (10.0 + updates))
    return decay


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for floating parameters; buffers are copied.

    Both modules must have the same structure (``model`` unwrapped from DDP).
    """
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        target = ema_params[name]
        # lerp: target + (1 - decay) * (param - target)
        target.lerp_(param.detach().to(target.dtype), 1.0 - decay)
    ema_buffers = dict(ema.named_buffers())
    for name, buf in model.named_buffers():
        ema_buffers[name].copy_(buf)
