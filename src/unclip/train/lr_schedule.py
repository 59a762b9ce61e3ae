"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr_ratio * lr``.

The schedule is a pure function of the optimizer step, so its whole state is the step number.
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, *, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning rate used by optimizer step ``step`` (0-based, ``0 <= step < steps``).

    Warm-up: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (so the first step already
    moves). Then cosine: with ``p = (step - warmup_steps) / (steps - warmup_steps)`` in [0, 1),
    ``lr * (r + (1 - r) * (1 + cos(pi * p)) / 2)`` where ``r = min_lr_ratio``; it would reach ``r * lr``
    at ``step == steps``.
    """
    if step < 0:
        raise ValueError(f"step={step} must be >= 0")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set every parameter group's learning rate to ``value`` times its ``lr_scale`` (1.0 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)


def schedule_state(step: int, *, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float) -> dict:
    """The schedule's checkpoint record (plain types): its kind, parameters and step."""
    return {
        "kind": "warmup_cosine",
        "step": int(step),
        "lr": float(lr),
        "steps": int(steps),
        "warmup_steps": int(warmup_steps),
        "min_lr_ratio": float(min_lr_ratio),
    }
