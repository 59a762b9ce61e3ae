"""A bounded in-memory store of PNG images (results and uploads) with their parameters.

Results are lossless PNGs whose parameters (seed included) are written into PNG text chunks, as the CLI writes
them (:func:`unclip.images.encode_png`): an ``unclip`` iTXt chunk holds them all as JSON, and
``prompt`` / ``seed`` chunks repeat the common ones for tools that show plain text chunks. The oldest images
are dropped first when the store holds more than ``max_images`` images or ``max_bytes`` PNG bytes.
"""

from __future__ import annotations

import io
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from unclip.images import PARAMS_KEY, encode_png, load_image, read_png_params
from unclip.web.config import MAX_UPLOAD_SIDE

__all__ = ["PARAMS_KEY", "ImageStore", "StoredImage", "decode_upload", "encode_png", "read_png_params"]
READABLE = "PNG, JPEG, WebP, GIF, BMP, TIFF, ..."


@dataclass
class StoredImage:
    """One PNG: ``png`` bytes, its size, what made it (``kind``: generate, variations, ..., upload)."""

    id: str
    png: bytes
    width: int
    height: int
    kind: str
    params: dict[str, Any]
    index: int = 0
    created: float = field(default_factory=time.time)

    @property
    def seed(self) -> int | None:
        seed = self.params.get("seed")
        return seed if isinstance(seed, int) else None


def _reason(err: Exception) -> str:
    """PIL's message without object reprs (``<_io.BytesIO object at 0x...>``)."""
    text = re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>", "", str(err)).strip()
    return text or type(err).__name__


def decode_upload(
    data: bytes, max_side: int = MAX_UPLOAD_SIDE, what: str = "the image", keep_mode: bool = False
) -> Image.Image:
    """Bytes of an image file -> an RGB PIL image, validated as the CLI validates images.

    ``keep_mode``: the decoded image in its own mode (a mask, whose grey levels are read with alpha ignored, as
    ``pipe.inpaint`` reads a mask file) instead of RGB with alpha composited on white.

    Raises ValueError naming ``what`` (the field or the upload's file name) and the problem (not an image,
    too large, too small).
    """
    if not data:
        raise ValueError(f"{what} is empty (0 bytes)")
    try:
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"{what} is not a readable image ({READABLE}): cannot identify the image format") from None
    except Exception as err:  # PIL raises several types for garbage
        raise ValueError(f"{what} is not a readable image ({READABLE}): {_reason(err)}") from None
    with opened:
        w, h = opened.size
        if max(w, h) > max_side:
            raise ValueError(f"{what} is too large: {w}x{h} (at most {max_side} px a side)")
        try:
            opened.load()
        except Exception as err:
            raise ValueError(f"{what} cannot be decoded ({opened.format or 'unknown'} file): {_reason(err)}") from None
        image = opened.copy()
    if keep_mode:
        return image
    try:
        return load_image(image)
    except ValueError as err:
        raise ValueError(f"{what}: {_reason(err)}") from None


class ImageStore:
    """Thread-safe, bounded, insertion-ordered store of :class:`StoredImage`."""

    def __init__(self, max_images: int = 256, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_images = max_images
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, StoredImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def add(self, image: Image.Image, kind: str, params: dict[str, Any], index: int = 0) -> StoredImage:
        """Encode ``image`` as PNG with ``params`` and keep it; returns the stored record."""
        png = encode_png(image, params)
        item = StoredImage(secrets.token_hex(8), png, image.width, image.height, kind, params, index)
        with self._lock:
            self._items[item.id] = item
            self._bytes += len(png)
            while len(self._items) > self.max_images or (self._bytes > self.max_bytes and len(self._items) > 1):
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old.png)
        return item

    def get(self, image_id: str) -> StoredImage | None:
        with self._lock:
            return self._items.get(image_id)

    def image(self, image_id: str) -> Image.Image | None:
        """The stored image decoded (RGB), or None if unknown or dropped."""
        item = self.get(image_id)
        if item is None:
            return None
        with Image.open(io.BytesIO(item.png)) as opened:
            return opened.convert("RGB")
