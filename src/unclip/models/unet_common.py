"""The ADM/GLIDE U-Net trunk shared by the decoder and the upsamplers.

:class:`UNetTrunk` is a base class (not a sub-module) so that the trunk's parameters sit at the top of
the model's state dict with guided-diffusion/Karlo names: ``time_embed.{0,2}``, ``input_blocks.i.j``,
``middle_block.j``, ``output_blocks.i.j``, ``out.{0,2}``. A Karlo checkpoint's ``model.`` (decoder) or
``model_first_steps.`` / ``model_last_step.`` (super-resolution) weights therefore load by stripping the
prefix (the decoder renames ``cf_param``, see ``decoder_unet``).
"""

from __future__ import annotations

import torch
from torch import nn

from unclip.nn.attention import AttentionContext, SpatialAttention
from unclip.nn.conv import Conv2d
from unclip.nn.embeddings import timestep_embedding
from unclip.nn.norm import group_norm
from unclip.nn.resblock import Downsample, ResBlock, Upsample, zero_module


class UNetStage(nn.Sequential):
    """A sequence of layers that each take what they need: ResBlocks the embedding, attention the context."""

    def forward(  # type: ignore[override]
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | AttentionContext | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialAttention):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


def check_unet_args(
    model_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attention_ds: tuple[int, ...],
    head_channels: int,
    norm_groups: int,
    image_size: int,
) -> None:
    """Raise a ValueError naming the bad value if the U-Net hyper-parameters are inconsistent."""
    if model_channels <= 0 or num_res_blocks <= 0:
        raise ValueError(f"model_channels ({model_channels}) and num_res_blocks ({num_res_blocks}) must be > 0")
    if not channel_mult or any(m <= 0 for m in channel_mult):
        raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {channel_mult}")
    for m in channel_mult:
        if (m * model_channels) % norm_groups:
            raise ValueError(
                f"level width {m * model_channels} (mult {m}) is not divisible by norm_groups {norm_groups}"
            )
    valid_ds = {2**i for i in range(len(channel_mult))}
    bad = [ds for ds in attention_ds if ds not in valid_ds]
    if bad:
        raise ValueError(f"attention_ds {bad} are not downsample factors of this U-Net ({sorted(valid_ds)})")
    widths = [m * model_channels for m in channel_mult]
    if attention_ds and any(w % head_channels for w in widths):
        raise ValueError(f"head_channels {head_channels} must divide every level width {widths}")
    if image_size % 2 ** (len(channel_mult) - 1):
        raise ValueError(f"image_size {image_size} is not divisible by 2**{len(channel_mult) - 1}")


class UNetTrunk(nn.Module):
    """Base class holding the U-Net trunk; subclasses call :meth:`build_trunk` then use :meth:`run_trunk`."""

    def build_trunk(
        self,
        *,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        attention_ds: tuple[int, ...],
        middle_attention: bool,
        head_channels: int,
        context_channels: int | None,
        dropout: float,
        use_scale_shift_norm: bool,
        resblock_updown: bool,
        norm_groups: int,
    ) -> None:
        """Create ``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks`` and ``out`` on self.

        The time embedding width is ``4 * model_channels``. ``attention_ds`` lists the downsample factors
        (1, 2, 4, ...) whose levels get attention after each ResBlock; ``middle_attention`` adds one
        between the two middle ResBlocks. Without ``resblock_updown`` resampling uses convs.
        """
        self.model_channels = model_channels
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch_in: int, ch_out: int, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(
                ch_in, emb_dim, ch_out, dropout, use_scale_shift_norm, up=up, down=down, norm_groups=norm_groups
            )

        def attn(ch: int) -> SpatialAttention:
            return SpatialAttention(ch, head_channels, context_channels, norm_groups)

        ch = channel_mult[0] * model_channels
        self.input_blocks = nn.ModuleList([UNetStage(Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(UNetStage(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, use_conv=True)
                self.input_blocks.append(UNetStage(down))
                skip_channels.append(ch)
                ds *= 2
        middle: list[nn.Module] = [res(ch, ch)]
        if middle_attention:
            middle.append(attn(ch))
        middle.append(res(ch, ch))
        self.middle_block = UNetStage(*middle)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_ds:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, use_conv=True))
                    ds //= 2
                self.output_blocks.append(UNetStage(*layers))
        self.out = nn.Sequential(
            group_norm(ch, norm_groups), nn.SiLU(), zero_module(Conv2d(ch, out_channels, 3, padding=1))
        )

    def time_embedding(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t [B] (int or float) -> [B, 4 * model_channels] through the sinusoid and the ``time_embed`` MLP."""
        return self.time_embed(timestep_embedding(t, self.model_channels, dtype=dtype))

    def run_trunk(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | AttentionContext | None = None,
        context_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h [B, C_in, H, W], emb [B, 4*model_channels], context [B, S, E] (or an AttentionContext holding
        tokens, mask and cached projections), mask [B, S] -> [B, C_out, H, W].

        ``input_features`` [B, model_channels, H, W], if given, is added to the first convolution's output
        (a located conditioning map, e.g. the decoder's ``image_embedding_grid``).

        The trunk runs channels_last (faster convolutions on CPU and GPU, no copies in the attention layers);
        the output is channels_last too, which elementwise sampler arithmetic does not notice.
        """
        h = h.contiguous(memory_format=torch.channels_last)
        skips = []
        for index, block in enumerate(self.input_blocks):
            h = block(h, emb, context, context_mask)
            if index == 0 and input_features is not None:
                h = h + input_features
            skips.append(h)
        h = self.middle_block(h, emb, context, context_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.out(h)
