"""Image input validation and output conversion for pipelines and front ends.

Inputs: PIL images or paths, any size and mode, validated with errors that name the bad value.
Outputs: [B, 3, H, W] tensors in [-1, 1] -> "pt" (float in [0, 1]), "np" (float32 [B, H, W, 3] in [0, 1])
or "pil" (list of RGB images).
"""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin, UnidentifiedImageError

ImageInput = Image.Image | str | Path

MIN_IMAGE_SIDE = 8
OUTPUT_TYPES = ("pil", "np", "pt")


MAX_INPUT_PIXELS = 64 * 1024 * 1024
"""Largest input image (pixels) read: more is refused before decoding (a decompression bomb needs only a
small file)."""


def open_image(source: Path | BinaryIO, name: str) -> Image.Image:
    """Read an image file (a path or a binary file object) fully, refusing files that are not images and
    images over :data:`MAX_INPUT_PIXELS` before their pixels are decoded. ``name`` names it in errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                w, h = opened.size
                if w * h > MAX_INPUT_PIXELS:
                    raise ValueError(
                        f"image {name} is {w}x{h} pixels, more than the {MAX_INPUT_PIXELS} read at most "
                        "(a decompression bomb, or far larger than any model here needs)"
                    )
                opened.load()
                return opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"image {name} is too large to decode safely: {err}") from None
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not a readable image (PNG, JPEG, WebP, ...): cannot identify the format") from None
    except (OSError, SyntaxError) as err:  # truncated or corrupt files; PIL raises SyntaxError for some
        raise ValueError(f"cannot read image {name}: {err}") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """Integer and float single-channel modes ("I;16", "I", "F") -> "L", keeping their tones: 16-bit values
    are scaled by 255/65535 (PIL's own convert would clip them to 255), floats in [0, 1] by 255."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return image
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255):
        array = array / 65535.0 * 255.0
    elif image.mode == "F" and array.max(initial=0) <= 1.0:
        array = array * 255.0
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), mode="L")


def load_image(image: ImageInput) -> Image.Image:
    """A PIL image or a path -> an RGB PIL image (alpha composited on white, palettes expanded, 16-bit tones
    scaled to 8 bits)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        image = open_image(path, str(path))
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a path, got {type(image).__name__}")
    image = _to_8bit(image)
    if min(image.size) < MIN_IMAGE_SIDE:
        w, h = image.size
        raise ValueError(f"image is too small: {w}x{h} (need at least {MIN_IMAGE_SIDE} px a side)")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def center_crop_square(image: Image.Image) -> Image.Image:
    """Crop the largest centred square."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def pil_to_tensor(images: list[ImageInput], size: int) -> torch.Tensor:
    """Images of any size/mode -> [B, 3, size, size] float32 in [-1, 1] (centre square crop, bicubic)."""
    out = []
    for image in images:
        rgb = center_crop_square(load_image(image))
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BICUBIC)
        array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
        out.append(torch.from_numpy(array).permute(2, 0, 1))
    return torch.stack(out)


def tensor_to_output(images: torch.Tensor, output_type: str = "pil"):
    """[B, 3, H, W] in [-1, 1] -> list of PIL images | np.ndarray [B, H, W, 3] | tensor [B, 3, H, W] in [0, 1]."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    unit = (images.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return unit
    array = unit.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    return [Image.fromarray(np.round(a * 255).astype(np.uint8)) for a in array]


def make_grid(images: list[Image.Image], columns: int | None = None, pad: int = 2) -> Image.Image:
    """Tile equally sized images into one grid image (white padding)."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    w, h = images[0].size
    cols = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), (255, 255, 255))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image.convert("RGB").resize((w, h)), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def upsample_bicubic(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, size, size], bicubic with antialias, clamped to [-1, 1] first (Karlo/diffusers)."""
    return F.interpolate(images.clamp(-1, 1), size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation along the last dim between a and b ([..., D]); falls back to lerp when parallel.

    Magnitudes are interpolated linearly, directions spherically.
    """
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(dim=-1, keepdim=True), b64.norm(dim=-1, keepdim=True)
    ua, ub = a64 / na.clamp_min(1e-12), b64 / nb.clamp_min(1e-12)
    dot = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(dot)
    t = torch.as_tensor(t, dtype=torch.float64, device=a.device)
    so = torch.sin(omega)
    parallel = so.abs() < 1e-6
    safe_so = torch.where(parallel, torch.ones_like(so), so)
    direction = torch.where(
        parallel,
        (1 - t) * ua + t * ub,
        (torch.sin((1 - t) * omega) / safe_so) * ua + (torch.sin(t * omega) / safe_so) * ub,
    )
    norm = (1 - t) * na + t * nb
    return (direction * norm).to(a.dtype)


PARAMS_KEY = "unclip"
"""PNG text chunk holding a generated image's parameters as JSON (CLI and server alike)."""


def encode_png(image: Image.Image, params: dict) -> bytes:
    """An image -> PNG bytes carrying ``params`` as JSON in an iTXt chunk (plus ``prompt``/``to_text``/``seed``
    chunks that image viewers show)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PARAMS_KEY, json.dumps(params, sort_keys=True, default=str))
    for key in ("prompt", "to_text", "seed"):
        if params.get(key) is not None:
            info.add_itxt(key, str(params[key]))
    info.add_text("Software", "unclip")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_params(png: bytes) -> dict:
    """The parameters :func:`encode_png` wrote into a PNG (empty when it holds none)."""
    with Image.open(io.BytesIO(png)) as opened:
        opened.load()
        text = getattr(opened, "text", {}).get(PARAMS_KEY)
    return json.loads(text) if text else {}
