"""Pixel cleanliness of shapes-world images: how far a plain background is from its palette colour, and its grain.

A generated image of a caption that names every attribute has its object somewhere in the named cell of the 3 x 3
grid, not where the truth scene has it, so the background is read outside every object's cell (widened by
``pad_fraction`` of the side), and pixels more than ``OUTLIER_LEVELS`` from that region's median (a stray
object) are dropped. Error = the largest channel of |median - palette colour|; grain = the robust standard
deviation (1.4826 x median absolute deviation, ~sigma for Gaussian noise), averaged over the channels. Both are in
8-bit levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unclip.data.shapes import PALETTE, Scene

OUTLIER_LEVELS = 40.0  # a background pixel further than this from the region's median is an object's, not grain
MAD_TO_SIGMA = 1.4826  # sigma / MAD of a Gaussian


@dataclass(frozen=True)
class BackgroundReading:
    """One image's background: ``offset`` [3] = median - palette (levels), ``error`` = max |offset|,
    ``grain`` = robust std (levels, mean over channels), ``pixels`` = how many pixels were read."""

    offset: np.ndarray
    error: float
    grain: float
    pixels: int


def background_mask(scene: Scene, size: int, pad_fraction: float = 1 / 12) -> np.ndarray:
    """[size, size] bool: True outside every object's grid cell (each widened by ``pad_fraction`` of the side)."""
    if size < 3:
        raise ValueError(f"size must be at least 3, got {size}")
    if not 0 <= pad_fraction < 1 / 3:
        raise ValueError(f"pad_fraction must be in [0, 1/3), got {pad_fraction}")
    mask = np.ones((size, size), bool)
    pad = int(round(pad_fraction * size))
    for obj in scene.objects:
        col, row = min(int(obj.cx * 3), 2), min(int(obj.cy * 3), 2)
        x0, x1 = max(0, col * size // 3 - pad), min(size, (col + 1) * size // 3 + pad)
        y0, y1 = max(0, row * size // 3 - pad), min(size, (row + 1) * size // 3 + pad)
        mask[y0:y1, x0:x1] = False
    return mask


def read_background(image: np.ndarray, scene: Scene, pad_fraction: float = 1 / 12) -> BackgroundReading:
    """``image`` [S, S, 3] in 8-bit levels (uint8 or float 0..255) of ``scene`` -> its :class:`BackgroundReading`."""
    pixels = np.asarray(image, np.float64)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] != pixels.shape[1]:
        raise ValueError(f"image must be [S, S, 3], got {tuple(pixels.shape)}")
    region = pixels[background_mask(scene, pixels.shape[0], pad_fraction)]
    centre = np.median(region, axis=0)
    region = region[np.abs(region - centre).max(axis=1) < OUTLIER_LEVELS]
    if len(region) == 0:
        raise ValueError("no background pixels left to read (every pixel is far from the median)")
    median = np.median(region, axis=0)
    offset = median - np.asarray(PALETTE[scene.background], np.float64)
    grain = float((np.median(np.abs(region - median), axis=0) * MAD_TO_SIGMA).mean())
    return BackgroundReading(offset, float(np.abs(offset).max()), grain, len(region))


def summarize_backgrounds(readings: list[BackgroundReading]) -> dict[str, float]:
    """Mean and max of error and grain over images."""
    if not readings:
        raise ValueError("no readings to summarize")
    errors = [r.error for r in readings]
    grains = [r.grain for r in readings]
    return {
        "error_mean": float(np.mean(errors)),
        "error_max": float(np.max(errors)),
        "grain_mean": float(np.mean(grains)),
        "grain_max": float(np.max(grains)),
    }
