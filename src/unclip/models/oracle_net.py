"""``ShapesOracle``: a small CNN that reads every attribute of a shapes-world image (docs/oracle.md).

It predicts the number of objects, the background colour, and for two *slots* (A, B) the shape, colour,
size, fill and 3x3 position of an object, plus the relation of A to B. Slot order is canonical (see
:mod:`unclip.measure.oracle`): A is the object on the left when the pair is side by side (|dx| >= |dy|),
else the one above, so the relation is always "to the left of" or "above" and the relation head is a
binary horizontal / vertical decision. One-object images fill slot A only.

Architecture ("where, then what"): a small conv trunk (GroupNorm, SiLU) maps the image to a feature map
[C, s, s] (s = image_size / 8). A *spatial* branch flattens a 1x1 reduction of the map into a
position-aware vector; from it each slot gets an attention map over the s x s cells (supervised to
point at its object's centre), and the attention-weighted sum of the feature map is the slot's
position-invariant "what" vector. Slot heads (shared by both slots) read shape, colour, size, fill and
position from [what, attended centre, spatial vector]; image heads (count, background, relation) and
the Fréchet features read [spatial vector, global mean and max of the map].

Any input size is accepted: images are resized (bilinear, antialiased) to ``config.image_size`` first.
The penultimate image-level layer (``features``, [B, feature_dim]) is the feature space of the domain
Fréchet distance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NUM_SLOTS = 2
# Per-slot classification heads and their number of classes: the shapes world's 6 shapes, 8 colours, 2 sizes,
# 2 fills and 9 positions. The counts are part of the network (a trained oracle's weights fix them); the class
# names are the world's vocabulary, which unclip.measure.oracle reads the logits with (and checks against these).
SLOT_HEADS: dict[str, int] = {"shape": 6, "colour": 8, "size": 2, "fill": 2, "position": 9}
# Per-image classification heads: count is 1 or 2 objects (class 0 -> 1 object); background is one of the 8
# colours; relation 0 is "to the left of" (horizontal), 1 is "above" (vertical).
IMAGE_HEADS: dict[str, int] = {"count": 2, "background": 8, "relation": 2}


@dataclass
class OracleConfig:
    """Shape of a :class:`ShapesOracle`.

    Attributes:
        image_size: inputs are resized to this side before the network.
        widths: channels of the stem and of each following stride-2 stage.
        stem_stride: stride of the stem convolution (2 halves the cost of everything after it).
        convs_per_stage: 3x3 convolutions after each stride-2 convolution.
        head_channels: 1x1 reduction before the spatial feature map is flattened.
        spatial_dim: width of the spatial (flattened) branch.
        slot_dim: hidden width of the per-slot heads.
        feature_dim: width of the penultimate image-level layer (the Fréchet feature space).
        groups: GroupNorm groups (divides every width).
        coord_channels: append x, y coordinate channels to the input (helps positions).
    """

    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 96)
    stem_stride: int = 2
    convs_per_stage: int = 1
    head_channels: int = 32
    spatial_dim: int = 256
    slot_dim: int = 128
    feature_dim: int = 256
    groups: int = 8
    coord_channels: bool = True

    def __post_init__(self) -> None:
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride={self.stem_stride} must be 1 or 2")
        if self.image_size < 16 or self.image_size % self.downsampling:
            raise ValueError(f"image_size={self.image_size} must be >= 16 and divisible by {self.downsampling}")
        for w in (*self.widths, self.head_channels):
            if w % self.groups:
                raise ValueError(f"width {w} is not divisible by groups={self.groups}")

    @property
    def downsampling(self) -> int:
        """Total stride of the trunk."""
        return self.stem_stride * 2 ** (len(self.widths) - 1)


PRESETS: dict[str, Callable[[], OracleConfig]] = {
    "shapes": lambda: OracleConfig(),
    "tiny": lambda: OracleConfig(
        widths=(8, 16, 16), head_channels=8, spatial_dim=32, slot_dim=32, feature_dim=32, groups=4
    ),
}


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize square images [B, C, H, H] to [B, C, size, size] the way the oracle does (bilinear,
    antialiased when shrinking); returned unchanged when already ``size``."""
    if images.shape[-1] == size:
        return images
    shrink = images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def _conv(cin: int, cout: int, groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU()
    )


class ShapesOracle(nn.Module):
    """Attribute reader for shapes-world images.

    Input: float images [B, 3, H, W] in [-1, 1], any H = W. Output of ``forward``: dict of logits
    ``count`` [B, 2], ``background`` [B, 8], ``relation`` [B, 2], per slot ``shape`` [B, 2, 6],
    ``colour`` [B, 2, 8], ``size`` [B, 2, 2], ``fill`` [B, 2, 2], ``position`` [B, 2, 9]; the slots'
    attention logits ``attention`` [B, 2, s*s] and attended centres ``centre`` [B, 2, 2] (cx, cy as
    fractions of the side); and ``features`` [B, feature_dim].
    """

    def __init__(self, config: OracleConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        cin = 3 + (2 if c.coord_channels else 0)
        layers: list[nn.Module] = [_conv(cin, c.widths[0], c.groups, stride=c.stem_stride)]
        layers += [_conv(c.widths[0], c.widths[0], c.groups) for _ in range(c.convs_per_stage)]
        for prev, width in zip(c.widths[:-1], c.widths[1:]):
            layers.append(_conv(prev, width, c.groups, stride=2))
            layers += [_conv(width, width, c.groups) for _ in range(c.convs_per_stage)]
        self.trunk = nn.Sequential(*layers)
        side = c.image_size // c.downsampling
        self.map_side = side
        width = c.widths[-1]
        self.spatial = nn.Sequential(
            nn.Conv2d(width, c.head_channels, 1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(c.head_channels * side * side, c.spatial_dim),
            nn.SiLU(),
        )
        self.attention = nn.Linear(c.spatial_dim, NUM_SLOTS * side * side)
        self.image_features = nn.Sequential(nn.Linear(c.spatial_dim + 2 * width, c.feature_dim), nn.SiLU())
        self.image_heads = nn.Linear(c.feature_dim, sum(IMAGE_HEADS.values()))
        self.slot_mlp = nn.Sequential(nn.Linear(width + 2 + c.spatial_dim, c.slot_dim), nn.SiLU())
        self.slot_heads = nn.Linear(c.slot_dim, sum(SLOT_HEADS.values()))
        # centres of the s x s cells as fractions of the side: [s*s, 2] (x, y)
        ramp = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        grid = torch.stack(torch.meshgrid(ramp, ramp, indexing="ij")[::-1], dim=-1).reshape(-1, 2)
        self.register_buffer("cell_centres", grid, persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Validate and resize images [B, 3, H, W] in [-1, 1] to the network's input [B, 3|5, S, S]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"oracle expects images [B, 3, H, W], got shape {tuple(images.shape)}")
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"oracle expects square images, got {images.shape[-2]}x{images.shape[-1]}")
        param = next(self.parameters())
        x = images.to(device=param.device, dtype=param.dtype)
        s = self.config.image_size
        x = resize_images(x, s)
        if self.config.coord_channels:
            ramp = torch.linspace(-1.0, 1.0, s, device=x.device, dtype=x.dtype)
            coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="ij")[::-1])  # (x, y)
            x = torch.cat([x, coords.expand(x.shape[0], -1, -1, -1)], dim=1)
        return x

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fmap = self.trunk(self.prepare(images))  # [B, C, s, s]
        spatial = self.spatial(fmap)  # [B, spatial_dim]
        pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
        feats = self.image_features(torch.cat([spatial, pooled], dim=1))
        return fmap, spatial, feats

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate image-level features [B, feature_dim] of images [B, 3, H, W] in [-1, 1]."""
        return self._encode(images)[2]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap, spatial, feats = self._encode(images)
        b = fmap.shape[0]
        out: dict[str, torch.Tensor] = {"features": feats}
        image_logits = self.image_heads(feats)
        start = 0
        for name, n in IMAGE_HEADS.items():
            out[name] = image_logits[:, start : start + n]
            start += n
        attn_logits = self.attention(spatial).view(b, NUM_SLOTS, -1)  # [B, 2, s*s]
        attn = attn_logits.float().softmax(dim=-1).to(fmap.dtype)
        what = torch.einsum("bkn,bcn->bkc", attn, fmap.flatten(2))  # [B, 2, C]
        centre = attn @ self.cell_centres.to(attn.dtype)  # [B, 2, 2]
        slot_in = torch.cat([what, centre, spatial[:, None, :].expand(-1, NUM_SLOTS, -1)], dim=-1)
        slot_logits = self.slot_heads(self.slot_mlp(slot_in))  # [B, 2, sum classes]
        start = 0
        for name, n in SLOT_HEADS.items():
            out[name] = slot_logits[:, :, start : start + n]
            start += n
        out["attention"] = attn_logits
        out["centre"] = centre
        return out
