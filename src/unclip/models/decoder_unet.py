"""The unCLIP decoder: a GLIDE/ADM U-Net conditioned on a CLIP image embedding (and optionally text).

Conditioning (paper §2.1, Karlo's ``PLMImUNet``):

- time embedding ``emb = time_embed(sinusoid(t)) + clip_emb(z_i) [+ text_feat_proj(z_t)]``;
- context tokens ``[clip_tok_proj(z_i) as clip_tokens tokens; LayerNorm(Linear(text token states))]``,
  used as extra keys/values by every attention block (the image tokens are never masked);
- ``null_image_embedding``: a learned vector that replaces z_i for classifier-free guidance.

The state dict uses Karlo's decoder names (``time_embed``, ``clip_emb``, ``text_feat_proj``,
``text_seq_proj.{0,1}``, ``clip_tok_proj``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``)
except ``cf_param``, which is called ``null_image_embedding`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unclip.models.unet_common import UNetTrunk, check_unet_args
from unclip.nn.attention import AttentionContext
from unclip.nn.norm import LayerNorm32


@dataclass
class DecoderConfig:
    """Hyper-parameters of :class:`DecoderUNet` (defaults = Karlo's ``decoder_900M_vit_l``).

    Attributes:
        image_size: side of the (square) images it generates.
        in_channels: image channels (3).
        model_channels: base width; level widths are ``model_channels * channel_mult[i]``.
        channel_mult: width multiplier per resolution level.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_ds: downsample factors (1, 2, 4, ...) of the levels that get attention.
        middle_attention: attention between the two middle ResBlocks.
        head_channels: channels per attention head.
        dropout: dropout inside ResBlocks.
        learn_sigma: output 2*in_channels (eps and the variance interpolation v) instead of in_channels.
        use_scale_shift_norm: FiLM (scale-shift) time conditioning in ResBlocks.
        resblock_updown: resample inside ResBlocks (no conv resampling layers).
        norm_groups: GroupNorm groups.
        clip_dim: width D of the CLIP image embedding (and of the pooled text embedding).
        clip_tokens: number of context tokens projected from the image embedding.
        text_width: width W of the CLIP text token states, or None for a decoder without text tokens.
        context_width: width of the context tokens (Karlo's ``xf_width``).
        use_pooled_text: add a projection of the pooled text embedding to the time embedding.
        image_drop: training probability of replacing z_i by the null embedding.
        text_drop: training probability of dropping the caption.
        image_embedding_grid: side G of a *located* map of z_i (0 = off, as in the paper and Karlo): a
            zero-initialised linear map z_i -> [model_channels, G, G], bilinearly resized to the image and
            added to the first convolution's output. z_i enters the paper's decoder only globally (time
            embedding, context tokens), so nothing tells a position what to draw there; this path does, which
            is what two-object binding needs. Zero-initialised, it can be grown on a trained decoder
            (:attr:`DecoderUNet.grown_prefixes`) without changing its function.
    """

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3
    attention_ds: tuple[int, ...] = (2, 4, 8)
    middle_attention: bool = True
    head_channels: int = 64
    dropout: float = 0.1
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    norm_groups: int = 32
    clip_dim: int = 768
    clip_tokens: int = 4
    text_width: int | None = 768
    context_width: int = 1536
    use_pooled_text: bool = True
    image_drop: float = 0.1
    text_drop: float = 0.5
    image_embedding_grid: int = 0

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels


class DecoderUNet(UNetTrunk):
    """unCLIP decoder U-Net. Build with ``DecoderUNet(config)`` or ``build_model("decoder", preset)``."""

    # Modules that a fine-tune may add to a decoder trained without them (zero-initialised: the function is kept).
    grown_prefixes = ("clip_grid_proj.",)

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        c = config
        check_unet_args(
            c.model_channels, c.channel_mult, c.num_res_blocks, c.attention_ds, c.head_channels,
            c.norm_groups, c.image_size,
        )  # fmt: skip
        if c.clip_tokens < 1:
            raise ValueError(f"clip_tokens must be >= 1, got {c.clip_tokens}")
        for name in ("image_drop", "text_drop", "dropout"):
            if not 0.0 <= getattr(c, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(c, name)}")
        grid = c.image_embedding_grid
        if isinstance(grid, bool) or not isinstance(grid, int) or not 0 <= grid <= c.image_size:
            raise ValueError(f"image_embedding_grid must be an integer in [0, {c.image_size}], got {grid!r}")
        self.config = c
        self.build_trunk(
            in_channels=c.in_channels,
            out_channels=c.out_channels,
            model_channels=c.model_channels,
            channel_mult=c.channel_mult,
            num_res_blocks=c.num_res_blocks,
            attention_ds=c.attention_ds,
            middle_attention=c.middle_attention,
            head_channels=c.head_channels,
            context_channels=c.context_width,
            dropout=c.dropout,
            use_scale_shift_norm=c.use_scale_shift_norm,
            resblock_updown=c.resblock_updown,
            norm_groups=c.norm_groups,
        )
        emb_dim = 4 * c.model_channels
        self.clip_emb = nn.Linear(c.clip_dim, emb_dim)
        self.text_feat_proj = nn.Linear(c.clip_dim, emb_dim) if c.use_pooled_text else None
        self.text_seq_proj = (
            nn.Sequential(nn.Linear(c.text_width, c.context_width), LayerNorm32(c.context_width))
            if c.text_width
            else None
        )
        self.clip_tok_proj = nn.Linear(c.clip_dim, c.clip_tokens * c.context_width)
        self.null_image_embedding = nn.Parameter(torch.zeros(c.clip_dim))
        self.clip_grid_proj = None
        if grid:
            self.clip_grid_proj = nn.Linear(c.clip_dim, c.model_channels * grid * grid)
            nn.init.zeros_(self.clip_grid_proj.weight)
            nn.init.zeros_(self.clip_grid_proj.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        image_embedding: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
        drop_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict eps (and the variance interpolation) for noisy images.

        Args:
            x: [B, 3, H, W] noisy images (H = W = image_size for the trained model; any multiple of
                2**(levels-1) runs).
            t: [B] timesteps (long, 0..999; floats are accepted for respaced schedules).
            image_embedding: [B, clip_dim] CLIP image embeddings z_i.
            text_tokens: [B, L, text_width] CLIP token states, or None (the context is then only the
                ``clip_tokens`` image tokens; equivalent to an all-False ``text_mask``).
            text_mask: [B, L] bool, True for real tokens; None = all real.
            text_pooled: [B, clip_dim] pooled text embedding z_t, or None (treated as zeros: only the
                projection's bias is added). Passing it to a decoder built with ``use_pooled_text=False``
                is an error.
            drop_image: [B] bool; where True, z_i is replaced by ``null_image_embedding``.

        Returns:
            [B, 6, H, W] (eps, then the learned-variance channels v in [-1, 1] by convention) when
            ``learn_sigma``, else [B, 3, H, W].
        """
        c = self.config
        b = x.shape[0]
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be [B, {c.in_channels}, H, W], got shape {tuple(x.shape)}")
        if image_embedding.shape != (b, c.clip_dim):
            raise ValueError(f"image_embedding must be [{b}, {c.clip_dim}], got {tuple(image_embedding.shape)}")
        conditioned = self.conditioned(image_embedding, text_tokens, text_mask, text_pooled, drop_image, dtype=x.dtype)
        return conditioned(x, t)  # checks t

    def conditioned(
        self,
        image_embedding: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
        drop_image: torch.Tensor | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> ConditionedDecoder:
        """This network with its conditioning fixed, for sampling: ``conditioned(...)(x, t) == forward(x, t, ...)``.

        What does not depend on the step is computed here once: the z_i and pooled-text projections added
        to the time embedding, the context tokens (z_i tokens and projected text states) and, lazily on
        first use, every attention layer's keys/values of them (:class:`~unclip.nn.attention.AttentionContext`).

        Args:
            image_embedding .. drop_image: as :meth:`forward`, batch B.
            dtype: the dtype the network will run in (default: its weights').

        Returns:
            a callable ``(x [B, 3, H, W], t [B]) -> [B, out_channels, H, W]``.
        """
        c = self.config
        dtype = dtype if dtype is not None else self.clip_emb.weight.dtype
        if image_embedding.dim() != 2 or image_embedding.shape[1] != c.clip_dim:
            raise ValueError(f"image_embedding must be [B, {c.clip_dim}], got {tuple(image_embedding.shape)}")
        b = image_embedding.shape[0]
        image_embedding = image_embedding.to(dtype)
        if drop_image is not None:
            if drop_image.shape != (b,) or drop_image.dtype != torch.bool:
                raise ValueError(
                    f"drop_image must be a bool tensor [B]=[{b}], got {drop_image.dtype} {tuple(drop_image.shape)}"
                )
            null = self.null_image_embedding.to(dtype)[None].expand(b, -1)
            image_embedding = torch.where(drop_image[:, None], null, image_embedding)

        image_term = self.clip_emb(image_embedding)
        grid_term = None
        if self.clip_grid_proj is not None:  # [B, model_channels, G, G]
            g = c.image_embedding_grid
            grid_term = self.clip_grid_proj(image_embedding).view(b, c.model_channels, g, g)
        text_term = None
        if self.text_feat_proj is not None:
            if text_pooled is None:
                text_term = self.text_feat_proj.bias.to(dtype)
            else:
                if text_pooled.shape != (b, c.clip_dim):
                    raise ValueError(f"text_pooled must be [{b}, {c.clip_dim}], got {tuple(text_pooled.shape)}")
                text_term = self.text_feat_proj(text_pooled.to(dtype))
        elif text_pooled is not None:
            raise ValueError("this decoder was built with use_pooled_text=False but got text_pooled")

        # Image tokens: channel-major reshape of the projection (as Karlo and diffusers do).
        context = self.clip_tok_proj(image_embedding).view(b, c.context_width, c.clip_tokens).transpose(1, 2)
        context_mask = None
        if text_tokens is not None:
            if self.text_seq_proj is None:
                raise ValueError("this decoder was built with text_width=None but got text_tokens")
            if text_tokens.dim() != 3 or text_tokens.shape[0] != b or text_tokens.shape[2] != c.text_width:
                raise ValueError(f"text_tokens must be [{b}, L, {c.text_width}], got {tuple(text_tokens.shape)}")
            context = torch.cat([context, self.text_seq_proj(text_tokens.to(dtype))], dim=1)
            if text_mask is not None:
                if text_mask.shape != text_tokens.shape[:2] or text_mask.dtype != torch.bool:
                    raise ValueError(
                        f"text_mask must be bool [{b}, {text_tokens.shape[1]}], "
                        f"got {text_mask.dtype} {tuple(text_mask.shape)}"
                    )
                context_mask = torch.cat([text_mask.new_ones(b, c.clip_tokens), text_mask], dim=1)
        elif text_mask is not None:
            raise ValueError("text_mask given without text_tokens")
        return ConditionedDecoder(self, image_term, text_term, AttentionContext(context, context_mask), grid_term)


class ConditionedDecoder:
    """A :class:`DecoderUNet` with its step-independent conditioning computed (see ``DecoderUNet.conditioned``)."""

    def __init__(
        self,
        decoder: DecoderUNet,
        image_term: torch.Tensor,
        text_term: torch.Tensor | None,
        context: AttentionContext,
        grid_term: torch.Tensor | None = None,
    ) -> None:
        self.decoder, self.image_term, self.text_term, self.context = decoder, image_term, text_term, context
        self.grid_term = grid_term  # [B, model_channels, G, G] or None
        self._grid_maps: dict[tuple[int, int], torch.Tensor] = {}
        self.batch, self.dtype = image_term.shape[0], image_term.dtype

    def _grid_map(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The located z_i map resized to ``size`` [B, model_channels, H, W] (computed once per size)."""
        if self.grid_term is None:
            return None
        if size not in self._grid_maps:
            resized = F.interpolate(self.grid_term, size=size, mode="bilinear", align_corners=False)
            self._grid_maps[size] = resized.contiguous(memory_format=torch.channels_last)
        return self._grid_maps[size]

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] noisy images (any float dtype: cast to the conditioning's), t [B] timesteps
        -> [B, out_channels, H, W] in the conditioning's dtype."""
        b, channels = self.batch, self.decoder.config.in_channels
        if x.dim() != 4 or x.shape[:2] != (b, channels):
            raise ValueError(f"x must be [{b}, {channels}, H, W] for this conditioning, got {tuple(x.shape)}")
        if t.shape != (b,):
            raise ValueError(f"t must be [B]=[{b}], got shape {tuple(t.shape)}")
        x = x.to(self.dtype)
        emb = self.decoder.time_embedding(t, x.dtype) + self.image_term  # summed in forward's historical order
        if self.text_term is not None:
            emb = emb + self.text_term
        return self.decoder.run_trunk(x, emb, self.context, input_features=self._grid_map(tuple(x.shape[-2:])))


def condition_dropout(
    config: DecoderConfig,
    image_embedding: torch.Tensor,
    text_tokens: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    text_pooled: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    null_text_tokens: torch.Tensor | None = None,
    null_text_mask: torch.Tensor | None = None,
    null_text_pooled: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Training-time classifier-free-guidance dropout; returns keyword arguments for ``DecoderUNet.forward``.

    Independently per sample: with probability ``config.image_drop`` set ``drop_image`` (z_i -> the learned
    null embedding); with probability ``config.text_drop`` drop the caption. A dropped caption becomes, by
    default, an all-False text mask (the text tokens are not attended to; the image tokens still are) and
    a zero pooled embedding. This is exactly what passing no text at all computes, so the unconditional
    branch at sampling time needs no text. To follow Karlo instead (the null caption is CLIP's encoding of
    ""), pass ``null_text_tokens`` [L, W], ``null_text_mask`` [L] and ``null_text_pooled`` [D]; dropped
    samples then get those. The random draws use ``generator`` (two draws of B uniforms: image, then text).
    """
    b = image_embedding.shape[0]
    device = image_embedding.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    drop_image = (torch.rand(b, generator=generator, device=gen_device) < config.image_drop).to(device)
    drop_text = (torch.rand(b, generator=generator, device=gen_device) < config.text_drop).to(device)
    out: dict[str, Any] = {"image_embedding": image_embedding, "drop_image": drop_image}
    if text_tokens is not None:
        mask = (
            text_mask if text_mask is not None else torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=device)
        )
        if null_text_tokens is not None:
            if null_text_mask is None:
                raise ValueError("null_text_tokens needs null_text_mask")
            text_tokens = torch.where(drop_text[:, None, None], null_text_tokens.to(text_tokens), text_tokens)
            mask = torch.where(drop_text[:, None], null_text_mask.to(device), mask)
        else:
            mask = mask & ~drop_text[:, None]
        out["text_tokens"], out["text_mask"] = text_tokens, mask
    if text_pooled is not None:
        null_pooled = (
            null_text_pooled.to(text_pooled)[None] if null_text_pooled is not None else torch.zeros_like(text_pooled)
        )
        out["text_pooled"] = torch.where(drop_text[:, None], null_pooled, text_pooled)
    return out


def _karlo() -> DecoderConfig:
    # Karlo's decoder_900M_vit_l.yaml: clip_emb_drop 0.1, text_drop 0.3 (the paper used 0.5).
    return DecoderConfig(text_drop=0.3)


def _tiny() -> DecoderConfig:
    return DecoderConfig(
        image_size=16,
        model_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_ds=(2,),
        head_channels=8,
        dropout=0.0,
        norm_groups=8,
        clip_dim=12,
        clip_tokens=4,
        text_width=10,
        context_width=24,
    )


def _shapes() -> DecoderConfig:
    return DecoderConfig(
        image_size=32,
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_ds=(4,),
        head_channels=32,
        dropout=0.0,
        norm_groups=32,
        clip_dim=128,
        clip_tokens=4,
        text_width=128,
        context_width=128,
    )


def _shapes64() -> DecoderConfig:
    return DecoderConfig(
        image_size=64,
        model_channels=32,
        channel_mult=(1, 2, 2, 4),
        num_res_blocks=2,
        attention_ds=(4, 8),
        head_channels=32,
        dropout=0.0,
        norm_groups=32,
        clip_dim=128,
        clip_tokens=4,
        text_width=128,
        context_width=128,
    )


PRESETS: dict[str, Callable[[], DecoderConfig]] = {
    "karlo": _karlo,
    "tiny": _tiny,
    "shapes": _shapes,
    "shapes64": _shapes64,
}
