import math

import pytest
import torch
import torch.nn.functional as F

from unclip.data.degrade import (
    blur,
    bsr_degrade,
    gaussian_blur_degrade,
    gaussian_kernel,
    jpeg,
    paired_random_crop,
)


def test_gaussian_kernel_closed_form():
    k = gaussian_kernel(0.6, size=3)
    w = [math.exp(-0.5 * (d / 0.6) ** 2) for d in (-1, 0, 1)]
    ref = torch.tensor([[a * b for b in w] for a in w], dtype=torch.float64)
    torch.testing.assert_close(k, ref / ref.sum())
    aniso = gaussian_kernel(2.0, 0.5, angle=math.pi / 2)
    assert aniso.shape == (13, 13)
    # rotated by 90 degrees: the long axis is vertical
    assert aniso[:, 6].sum() > aniso[6, :].sum()
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(1.0, size=4)


def test_blur_preserves_constants_and_first_stage_shapes():
    const = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(blur(const, gaussian_kernel(1.0)), const)
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    low = gaussian_blur_degrade(img, 32)
    assert low.shape == (2, 3, 32, 32) and low.abs().max() <= 1
    sharp = gaussian_blur_degrade(img, 32, sigma=0)
    assert (low - sharp).abs().mean() > 1e-3
    # blur == depthwise conv with the 3x3 kernel (reflect padding)
    k = gaussian_kernel(0.6, size=3).float()
    ref = F.conv2d(F.pad(sharp, (1, 1, 1, 1), mode="reflect"), k[None, None].repeat(3, 1, 1, 1), groups=3)
    torch.testing.assert_close(low, ref)


def test_jpeg_roundtrip_is_close_and_lossy():
    g = torch.Generator().manual_seed(0)
    img = F.interpolate(torch.rand(1, 3, 8, 8, generator=g) * 2 - 1, size=32, mode="bilinear")
    hi, lo = jpeg(img, [95]), jpeg(img, [10])
    assert hi.shape == img.shape
    assert (hi - img).abs().mean() < (lo - img).abs().mean()
    assert (lo - img).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="quality"):
        jpeg(img, [0])


def test_bsr_degrade_is_deterministic_given_generator():
    img = torch.rand(3, 3, 64, 64) * 2 - 1
    a = bsr_degrade(img, 16, torch.Generator().manual_seed(3))
    b = bsr_degrade(img, 16, torch.Generator().manual_seed(3))
    c = bsr_degrade(img, 16, torch.Generator().manual_seed(4))
    assert a.shape == (3, 3, 16, 16) and a.abs().max() <= 1
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3
    # still a corrupted version of the image: closer to its own downscale than to another image's
    clean = F.interpolate(img, size=16, mode="area")
    assert (a - clean).abs().mean() < (a - clean.roll(1, 0)).abs().mean()


def test_paired_random_crop_alignment_and_default_size():
    high = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16).repeat(1, 3, 1, 1)
    low = high[..., ::2, ::2].clone()
    h, lo = paired_random_crop(high, low, generator=torch.Generator().manual_seed(0))
    assert h.shape == (2, 3, 8, 8) and lo.shape == (2, 3, 4, 4)
    torch.testing.assert_close(h[..., ::2, ::2], lo)  # aligned
    h2, lo2 = paired_random_crop(high, low, 4, torch.Generator().manual_seed(0))
    assert h2.shape[-1] == 4 and lo2.shape[-1] == 2
    with pytest.raises(ValueError, match="multiple"):
        paired_random_crop(high, low, 5)
