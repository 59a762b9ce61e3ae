"""The valid range of every user-facing generation option: one source of truth for the pipeline's checks, the
CLI's option types, the HTTP API's schemas and the web page's inputs.

A front end may apply a *lower* ceiling of its own (a server's ``max_images``), and then shows that one.
"""

from __future__ import annotations

MAX_IMAGES = 256
"""Images of one call (images per prompt, variations, frames, thetas), before the memory check."""
MAX_STEPS = 1000
"""Sampling steps of any stage (the training schedules have 1000 steps)."""
MAX_GUIDANCE = 100.0
MAX_ETA = 10.0
"""DDIM eta; must be finite."""
MAX_BEST_OF = 64
"""Prior candidates per image (the paper's best-of-2; more only re-ranks)."""
MIN_FRAMES = 2
MAX_FRAMES = 256
MAX_THETAS = 33
THETA_RANGE = (0.0, 1.0)
"""Text-diff strength: 0 keeps the image, 1 is the full slerp to the text-diff direction (paper figures: 0-0.5)."""
MAX_SEED = 2**64 - 1
"""Largest seed torch's generators take."""


def check_seed(seed: object, name: str = "seed") -> int:
    """Validate a seed: an integer in [0, 2**64 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, 2**64 - 1], got {seed!r}")
    return seed


def check_range(name: str, value: float, low: float, high: float) -> float:
    """Validate a finite number in [low, high] (NaN and infinities are refused by the comparison)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)
