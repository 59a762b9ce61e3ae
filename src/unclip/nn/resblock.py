"""ADM/GLIDE residual blocks with timestep conditioning and optional up/down-sampling.

State-dict layout (identical to guided-diffusion / GLIDE / Karlo ``ResBlock``):
``in_layers.0`` GroupNorm, ``in_layers.2`` Conv3x3, ``emb_layers.1`` Linear(E, C_out or 2*C_out),
``out_layers.0`` GroupNorm, ``out_layers.3`` Conv3x3 (zero-initialised), ``skip_connection`` 1x1 conv when
the channel count changes. diffusers' ``ResnetBlock2D``: norm1, conv1, time_emb_proj, norm2, conv2,
conv_shortcut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unclip.nn.conv import Conv2d
from unclip.nn.norm import group_norm


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Downsample(nn.Module):
    """Halve H and W: stride-2 3x3 conv (``op``) if ``use_conv`` else 2x2 average pooling (no params)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("average-pool downsampling cannot change the channel count")
        self.op = Conv2d(channels, out_channels, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x) if self.op is not None else F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation, followed by a 3x3 conv (``conv``) if ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("nearest-neighbour upsampling cannot change the channel count")
        self.conv = Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding (the timestep embedding plus conditioning).

    ``h = conv(SiLU(norm(x)))``; with ``use_scale_shift_norm`` (FiLM) ``h = norm(h) * (1 + s) + b`` where
    ``[s, b] = Linear(SiLU(emb))``, otherwise ``h = norm(h + Linear(SiLU(emb)))``; then
    ``h = conv(dropout(SiLU(h)))`` and the output is ``skip(x) + h``. With ``up``/``down`` both paths are
    resampled (nearest x2 / avg-pool /2, no parameters) between the first norm+SiLU and the first conv.

    Args:
        channels: input channels C_in.
        emb_channels: embedding width E.
        out_channels: output channels (default C_in).
        dropout: dropout before the second conv.
        use_scale_shift_norm: FiLM conditioning (emb projected to 2*C_out) vs additive.
        up, down: resample inside the block ("resblock_updown").
        norm_groups: GroupNorm groups (32 in ADM/Karlo).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a ResBlock cannot both upsample and downsample")
        out_channels = out_channels or channels
        self.channels, self.out_channels = channels, out_channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            group_norm(channels, norm_groups), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        self.resample: nn.Module | None = None
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            group_norm(out_channels, norm_groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, H, W], emb [B, E] -> [B, C_out, H', W'] (H' = 2H up, H/2 down, else H).

        In eval mode without autograd (sampling) the activations, the FiLM and the residual are applied in place on
        tensors this block created (the same arithmetic, fewer allocations); ``x`` is never modified.
        """
        if torch.is_grad_enabled() or self.training:  # training (e.g. checkpoint recompute) keeps one path
            return self._forward_autograd(x, emb)
        norm_in, _, conv_in = self.in_layers
        h = F.silu(norm_in(x), inplace=True)
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = conv_in(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm_out, _, dropout, conv_out = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_out(h).mul_(1 + scale).add_(shift)
        else:
            h = norm_out(h.add_(emb_out))
        h = conv_out(dropout(F.silu(h, inplace=True)))
        return h.add_(self.skip_connection(x))  # == skip(x) + h: IEEE addition commutes exactly

    def _forward_autograd(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is not None:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.resample(h))
            x = self.resample(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h
