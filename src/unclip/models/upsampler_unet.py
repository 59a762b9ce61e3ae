"""The unCLIP upsamplers: convolution-only ADM U-Nets conditioned on a bicubically upsampled low-res image.

Input channels are ``[noisy high-res x; bicubic-upsampled low-res]`` (6 for RGB), output eps (3, fixed
variance). No attention anywhere (the middle block is two ResBlocks), no text or CLIP conditioning,
additive (not scale-shift) time conditioning, resampling inside ResBlocks: Karlo's ``SuperResUNetModel``.
The state dict uses Karlo's names (``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``,
``out``); Karlo's 64->256 stage is a *pair* of these (``model_first_steps`` and ``model_last_step``), one
network each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unclip.models.unet_common import UNetTrunk, check_unet_args
from unclip.nn.resample import bicubic_resize


@dataclass
class UpsamplerConfig:
    """Hyper-parameters of :class:`UpsamplerUNet` (defaults = one of Karlo's improved 64->256 SR U-Nets).

    Attributes:
        image_size: output side (the high resolution).
        low_res_size: side of the low-resolution input it is trained to upsample.
        in_channels: image channels (3); the first conv takes 2 * in_channels.
        model_channels, channel_mult, num_res_blocks: U-Net widths and depth (see ``DecoderConfig``).
        dropout: dropout inside ResBlocks.
        learn_sigma: output 2 * in_channels (eps + variance) instead of eps only.
        use_scale_shift_norm: FiLM time conditioning (Karlo's SR: False, additive).
        resblock_updown: resample inside ResBlocks.
        norm_groups: GroupNorm groups.
        residual: the network was trained on the residual r = x - bicubic(low_res) (its difference from the
            bicubic resize of its input) instead of on x; :func:`unclip.stages.decoding.image_space_denoiser`
            turns it into an image-space denoiser. False for Karlo's and diffusers' upsamplers.
    """

    image_size: int = 256
    low_res_size: int = 64
    in_channels: int = 3
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3
    dropout: float = 0.0
    learn_sigma: bool = False
    use_scale_shift_norm: bool = False
    resblock_updown: bool = True
    norm_groups: int = 32
    residual: bool = False

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels


class UpsamplerUNet(UNetTrunk):
    """Super-resolution U-Net. Build with ``UpsamplerUNet(config)`` or ``build_model("upsampler", preset)``."""

    def __init__(self, config: UpsamplerConfig) -> None:
        super().__init__()
        c = config
        check_unet_args(c.model_channels, c.channel_mult, c.num_res_blocks, (), 1, c.norm_groups, c.image_size)
        if not 0 < c.low_res_size <= c.image_size:
            raise ValueError(f"low_res_size must be in (0, image_size={c.image_size}], got {c.low_res_size}")
        if not 0.0 <= c.dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {c.dropout}")
        self.config = c
        self.build_trunk(
            in_channels=2 * c.in_channels,
            out_channels=c.out_channels,
            model_channels=c.model_channels,
            channel_mult=c.channel_mult,
            num_res_blocks=c.num_res_blocks,
            attention_ds=(),
            middle_attention=False,
            head_channels=1,
            context_channels=None,
            dropout=c.dropout,
            use_scale_shift_norm=c.use_scale_shift_norm,
            resblock_updown=c.resblock_updown,
            norm_groups=c.norm_groups,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        """Predict eps for noisy high-resolution images.

        Args:
            x: [B, 3, H, W] noisy high-resolution images (H = W = image_size when trained; crops of any
                size divisible by 2**(levels-1) run too, which is how training on crops works).
            t: [B] timesteps (long 0..999, or float).
            low_res: [B, 3, h, w] conditioning image in [-1, 1]; if h, w differ from H, W it is resized
                with :func:`unclip.nn.resample.bicubic_resize` (antialiased bicubic, no clamping: clamp
                a sampled image yourself, as Karlo does).

        Returns:
            [B, 3, H, W] eps (or [B, 6, H, W] with ``learn_sigma``).
        """
        c = self.config
        b = x.shape[0]
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be [B, {c.in_channels}, H, W], got shape {tuple(x.shape)}")
        if t.shape != (b,):
            raise ValueError(f"t must be [B]=[{b}], got shape {tuple(t.shape)}")
        if low_res.dim() != 4 or low_res.shape[:2] != x.shape[:2]:
            raise ValueError(f"low_res must be [{b}, {c.in_channels}, h, w], got shape {tuple(low_res.shape)}")
        return self.conditioned(low_res, (x.shape[-2], x.shape[-1]), dtype=x.dtype)(x, t)

    def conditioned(
        self, low_res: torch.Tensor, size: tuple[int, int], *, dtype: torch.dtype | None = None
    ) -> ConditionedUpsampler:
        """This network with its low-resolution input fixed, for sampling: the resize to ``size`` is done once.

        Args:
            low_res: [B, 3, h, w] conditioning images in [-1, 1].
            size: (H, W) of the images the sampler will pass.
            dtype: the dtype the network will run in (default: its weights').

        Returns:
            a callable ``(x [B, 3, H, W], t [B]) -> eps`` equal to ``forward(x, t, low_res)``.
        """
        c = self.config
        if low_res.dim() != 4 or low_res.shape[1] != c.in_channels:
            raise ValueError(f"low_res must be [B, {c.in_channels}, h, w], got shape {tuple(low_res.shape)}")
        dtype = dtype if dtype is not None else self.out[2].weight.dtype
        return ConditionedUpsampler(self, bicubic_resize(low_res.to(dtype), tuple(size)))


class ConditionedUpsampler:
    """An :class:`UpsamplerUNet` with its resized conditioning image [B, 3, H, W] computed once."""

    def __init__(self, upsampler: UpsamplerUNet, resized_low_res: torch.Tensor) -> None:
        self.upsampler, self.resized_low_res = upsampler, resized_low_res

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] (cast to the conditioning's dtype), t [B] -> [B, out_channels, H, W] in that dtype."""
        cond = self.resized_low_res
        x = x.to(cond.dtype)
        if x.shape != cond.shape:
            raise ValueError(f"x must be {tuple(cond.shape)} for this conditioning, got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be [B]=[{x.shape[0]}], got shape {tuple(t.shape)}")
        h = torch.cat([x, cond], dim=1)
        return self.upsampler.run_trunk(h, self.upsampler.time_embedding(t, x.dtype))


def _karlo() -> UpsamplerConfig:
    return UpsamplerConfig()


def _tiny() -> UpsamplerConfig:
    return UpsamplerConfig(
        image_size=16, low_res_size=8, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=8
    )


def _shapes() -> UpsamplerConfig:
    return UpsamplerConfig(
        image_size=64, low_res_size=32, model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1
    )


PRESETS: dict[str, Callable[[], UpsamplerConfig]] = {
    "karlo": _karlo,
    "tiny": _tiny,
    "shapes": _shapes,
}
