"""Samples of captioned-image sources, their validation, and the image preprocessing of every stage.

A *source* (an image folder, webdataset shards, ...) yields :class:`CaptionedSample` for good samples and
:class:`SkippedSample` for bad ones (unreadable image, missing caption, tiny image): a bad sample is counted
(:class:`SkipCounts`) and skipped, it never stops a run.

:class:`ImageTransform` turns a decoded image into the square uint8 array stored in an embedding cache:
crop a square at full resolution (centre or random), then resize it to ``size`` (antialiased bicubic).
Horizontal flips are off by default: captions may name left and right.
"""

from __future__ import annotations

import io
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Reasons a sample is skipped (the keys of SkipCounts).
SKIP_REASONS = ("unreadable_image", "missing_image", "missing_caption", "too_small")
CROPS = ("center", "random", "none")


class BadSample(ValueError):
    """A sample that cannot be used; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {SKIP_REASONS}")
        super().__init__(message)
        self.reason = reason


@dataclass
class CaptionedSample:
    """One good sample: ``image`` is a decoded RGB PIL image, ``caption`` a non-empty string.

    ``key`` identifies the sample in its source (file name or webdataset key); ``extra`` holds the
    source's per-sample metadata (e.g. the webdataset ``.json`` or the metadata row's other columns).
    """

    key: str
    image: Image.Image
    caption: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SkippedSample:
    """A bad sample: its key, the reason (one of :data:`SKIP_REASONS`) and a human-readable message."""

    key: str
    reason: str
    message: str = ""


@dataclass
class SkipCounts:
    """How many samples were skipped, by reason; ``warn_first`` bad samples are also reported as warnings."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    warn_first: int = 5

    def add(self, skipped: SkippedSample) -> None:
        self.counts[skipped.reason] = self.counts.get(skipped.reason, 0) + 1
        if self.total <= self.warn_first:
            warnings.warn(f"skipping sample {skipped.key!r}: {skipped.reason} ({skipped.message})", stacklevel=2)

    def merge(self, other: dict[str, int]) -> None:
        for k, v in other.items():
            self.counts[k] = self.counts.get(k, 0) + int(v)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def clean_caption(caption: Any) -> str:
    """A caption as a stripped string; raises :class:`BadSample` ("missing_caption") if absent or empty."""
    if isinstance(caption, bytes):
        caption = caption.decode("utf-8", errors="replace")
    if not isinstance(caption, str) or not caption.strip():
        raise BadSample("missing_caption", f"caption is {caption!r}")
    return " ".join(caption.split())


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes | str | Path, min_size: int = 1) -> Image.Image:
    """Bytes or a path -> a fully decoded RGB PIL image.

    Raises :class:`BadSample`: "missing_image" (no such file), "unreadable_image" (not an image or
    truncated), "too_small" (a side below ``min_size``).
    """
    try:
        if isinstance(data, (str, Path)):
            with open(data, "rb") as f:
                data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode now: truncated files fail here, not later
            image = to_rgb(im)
    except FileNotFoundError as err:
        raise BadSample("missing_image", str(err)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadSample("unreadable_image", f"{type(err).__name__}: {err}") from None
    if min(image.size) < min_size:
        raise BadSample("too_small", f"image is {image.size[0]}x{image.size[1]}, smaller than {min_size} px")
    return image


@dataclass
class ImageTransform:
    """Square crop at full resolution, then resize to ``size`` x ``size``; optional random flip.

    Attributes:
        size: side of the output (>= 8).
        crop: "center" (the centred square of side min(W, H)), "random" (a square at a random offset) or
            "none" (squash the whole image to a square, no crop).
        flip: mirror horizontally with probability 1/2. Off by default: captions may say left or right.
        min_size: images with a side below this are bad samples ("too_small"); default ``size // 2``.
    """

    size: int = 64
    crop: str = "center"
    flip: bool = False
    min_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 8:
            raise ValueError(f"size must be an integer >= 8, got {self.size!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.min_size is None:
            self.min_size = max(1, self.size // 2)

    def square(self, image: Image.Image, rng: random.Random | None = None) -> Image.Image:
        """The square region of ``image`` (full resolution) that the output shows, flipped if drawn."""
        rng = rng or random.Random(0)
        w, h = image.size
        if min(w, h) < self.min_size:
            raise BadSample("too_small", f"image is {w}x{h}, smaller than {self.min_size} px")
        if self.crop != "none" and w != h:
            side = min(w, h)
            if self.crop == "center":
                left, top = (w - side) // 2, (h - side) // 2
            else:
                left, top = rng.randint(0, w - side), rng.randint(0, h - side)
            image = image.crop((left, top, left + side, top + side))
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def resize(self, square: Image.Image) -> np.ndarray:
        """A square (or any) RGB image -> uint8 [size, size, 3] (antialiased bicubic)."""
        if square.size != (self.size, self.size):
            square = square.resize((self.size, self.size), Image.Resampling.BICUBIC, reducing_gap=None)
        return np.asarray(square.convert("RGB"), dtype=np.uint8).copy()

    def __call__(self, image: Image.Image, seed: int | str = 0) -> np.ndarray:
        """``image`` -> uint8 [size, size, 3]; random choices (crop offset, flip) are drawn from ``seed``."""
        return self.resize(self.square(image, random.Random(seed)))


def uint8_to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1]."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
