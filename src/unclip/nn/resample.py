"""Image resampling used to condition the upsamplers (shared by models and data transforms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bicubic_resize(images: torch.Tensor, size: int | tuple[int, int], clamp: bool = False) -> torch.Tensor:
    """Resize [B, C, h, w] images to ``size`` with antialiased bicubic interpolation (align_corners=False).

    This is how Karlo and diffusers' UnCLIPPipeline feed the low-resolution image to the super-resolution
    U-Net (PIL-style bicubic, a = -0.5). With ``clamp`` the input is first clamped to [-1, 1] (Karlo
    clamps the 64 px sample before upsampling). Computed in float32 for half inputs; same dtype out.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if min(hw) <= 0:
        raise ValueError(f"target size must be positive, got {size}")
    x = images.clamp(-1.0, 1.0) if clamp else images
    if tuple(x.shape[-2:]) == hw:
        return x
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return F.interpolate(x.to(compute), size=hw, mode="bicubic", align_corners=False, antialias=True).to(images.dtype)
