"""Low-resolution corruption and cropping for training the upsamplers (paper §2.1, "Upsamplers").

- First stage (e.g. 64->256, ours 32->64): :func:`gaussian_blur_degrade` = downscale (antialiased bicubic)
  then Gaussian blur (paper: kernel 3, sigma 0.6).
- Second stage (256->1024): :func:`bsr_degrade`, a light BSR-style chain (after BSRGAN / latent diffusion's
  ``bsr_light``): random Gaussian blur (isotropic or anisotropic), downscale with a random interpolation,
  additive Gaussian noise, JPEG re-compression (PIL), resize to the exact low-res size.
- :func:`paired_random_crop`: aligned random crops of the high-res target and the low-res condition.
  "Random crops of 1/4 the target size" is read as 1/4 of the *area* (side / 2) by default; pass another
  size for side / 4. To condition crops exactly as full images are conditioned at sampling time, upsample
  the low-res image to the high-res size first (``unclip.nn.resample.bicubic_resize``) and crop both at
  scale 1; the upsampler accepts a condition already at the target size.

All images are float tensors [B, 3, H, W] in [-1, 1]; randomness comes only from the ``generator``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unclip.nn.resample import bicubic_resize


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [B, C, H, W], got {images.dtype} {tuple(images.shape)}")


def _uniform(generator: torch.Generator | None, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def gaussian_kernel(
    sigma_x: float, sigma_y: float | None = None, angle: float = 0.0, size: int | None = None
) -> torch.Tensor:
    """Normalised 2-D Gaussian kernel [k, k] (float64), anisotropic when ``sigma_y`` differs, rotated by
    ``angle`` radians. ``size`` defaults to the odd number ``2 * ceil(3 * max sigma) + 1``."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"Gaussian sigmas must be > 0, got {sigma_x}, {sigma_y}")
    if size is None:
        size = 2 * math.ceil(3 * max(sigma_x, sigma_y)) + 1
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / k.sum()


def blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of [B, C, H, W] with ``kernel`` [k, k] (reflect padding); same shape out."""
    _check_images(images)
    k = kernel.shape[-1]
    c = images.shape[1]
    pad = k // 2
    mode = "reflect" if pad < min(images.shape[-2:]) else "replicate"
    x = F.pad(images, (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(images)[None, None].expand(c, 1, k, k)
    return F.conv2d(x, weight, groups=c)


def gaussian_blur_degrade(
    images: torch.Tensor, low_res_size: int, sigma: float = 0.6, kernel_size: int = 3
) -> torch.Tensor:
    """First-stage corruption: antialiased bicubic downscale to ``low_res_size``, then Gaussian blur.

    Args:
        images: [B, 3, H, W] high-resolution images in [-1, 1].
        low_res_size: side of the output.
        sigma, kernel_size: the blur (paper: 0.6 and 3); ``sigma=0`` disables it.

    Returns:
        [B, 3, low_res_size, low_res_size] in [-1, 1].
    """
    _check_images(images)
    low = bicubic_resize(images, low_res_size).clamp(-1, 1)
    if sigma > 0:
        low = blur(low, gaussian_kernel(sigma, size=kernel_size))
    return low


def jpeg(images: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """JPEG-compress each image with PIL at its quality (1..95) and decode; [B, 3, H, W] in [-1, 1]."""
    _check_images(images)
    if len(qualities) != images.shape[0]:
        raise ValueError(f"need one JPEG quality per image, got {len(qualities)} for {images.shape[0]}")
    out = []
    arrays = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    for arr, q in zip(arrays.cpu().numpy(), qualities):
        if not 1 <= q <= 95:
            raise ValueError(f"JPEG quality must be in [1, 95], got {q}")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    decoded = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(images.device, images.dtype)
    return decoded / 127.5 - 1


def bsr_degrade(
    images: torch.Tensor,
    low_res_size: int,
    generator: torch.Generator | None = None,
    blur_sigma: tuple[float, float] = (0.2, 2.0),
    noise_sigma: tuple[float, float] = (1 / 255, 25 / 255),
    jpeg_quality: tuple[int, int] = (30, 95),
    p_anisotropic: float = 0.5,
) -> torch.Tensor:
    """Second-stage BSR-style corruption of high-res images into a low-res condition.

    Per image: (1) Gaussian blur with sigma(s) uniform in ``blur_sigma`` (anisotropic with a random angle
    with probability ``p_anisotropic``); (2) downscale to a random intermediate size between
    ``low_res_size`` and 2x it (capped at the input size), with a random interpolation (area, bilinear or
    bicubic); (3) additive Gaussian noise with std uniform in ``noise_sigma`` (in units of [0, 1]
    intensities); (4) JPEG at a quality uniform in ``jpeg_quality``; (5) antialiased bicubic resize to
    exactly ``low_res_size`` and clamp to [-1, 1].

    Returns:
        [B, 3, low_res_size, low_res_size] in [-1, 1].
    """
    _check_images(images)
    side = images.shape[-1]
    out = []
    for img in images:
        x = img[None]
        sx = float(_uniform(generator, *blur_sigma))
        if float(_uniform(generator, 0, 1)) < p_anisotropic:
            sy = float(_uniform(generator, *blur_sigma))
            angle = float(_uniform(generator, 0, math.pi))
        else:
            sy, angle = sx, 0.0
        x = blur(x, gaussian_kernel(sx, sy, angle, size=min(2 * math.ceil(3 * max(sx, sy)) + 1, 21)))
        mid = int(torch.randint(low_res_size, min(2 * low_res_size, side) + 1, (1,), generator=generator))
        mode = ["area", "bilinear", "bicubic"][int(torch.randint(0, 3, (1,), generator=generator))]
        if mode == "area":
            x = F.interpolate(x, size=(mid, mid), mode="area")
        else:
            x = F.interpolate(x, size=(mid, mid), mode=mode, align_corners=False, antialias=True)
        std = 2.0 * float(_uniform(generator, *noise_sigma))  # [0,1] units -> [-1,1] units
        x = x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        q = int(torch.randint(jpeg_quality[0], jpeg_quality[1] + 1, (1,), generator=generator))
        x = jpeg(x.clamp(-1, 1), [q])
        out.append(bicubic_resize(x, low_res_size).clamp(-1, 1))
    return torch.cat(out)


def paired_random_crop(
    high: torch.Tensor, low: torch.Tensor, crop_size: int | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned random crops of high-res targets and their low-res conditions (one offset per image).

    Args:
        high: [B, C, H, H] targets.
        low: [B, C, h, h] conditions with H = s * h for an integer scale s.
        crop_size: side of the high-res crop, a multiple of s; default H // 2 (a quarter of the area).
        generator: source of the offsets (multiples of s, so the crops stay pixel-aligned).

    Returns:
        ([B, C, crop, crop], [B, C, crop / s, crop / s]).
    """
    _check_images(high)
    _check_images(low)
    side, low_side = high.shape[-1], low.shape[-1]
    if high.shape[-2] != side or low.shape[-2] != low_side or side % low_side or high.shape[0] != low.shape[0]:
        raise ValueError(f"need square images with an integer scale, got {tuple(high.shape)} and {tuple(low.shape)}")
    scale = side // low_side
    crop = side // 2 if crop_size is None else crop_size
    if crop % scale or not 0 < crop <= side:
        raise ValueError(f"crop_size {crop} must be a multiple of the scale {scale} and in (0, {side}]")
    lc = crop // scale
    n_pos = low_side - lc + 1
    ys = torch.randint(0, n_pos, (high.shape[0],), generator=generator)
    xs = torch.randint(0, n_pos, (high.shape[0],), generator=generator)
    hi_out = torch.stack(
        [h[:, y * scale : y * scale + crop, x * scale : x * scale + crop] for h, y, x in zip(high, ys, xs)]
    )
    lo_out = torch.stack([lo[:, y : y + lc, x : x + lc] for lo, y, x in zip(low, ys, xs)])
    return hi_out, lo_out
