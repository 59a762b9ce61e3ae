"""A small CLIP (Radford et al., 2021) for the shapes world: CNN image tower + transformer text tower.

Image tower: a stem convolution and one stride-2 stage per entry of ``image_channels`` (conv, norm,
SiLU, then a residual block; the norm is ``image_norm``, BatchNorm in the ``shapes`` preset), down to a
small ``map_size × map_size`` feature map that is *flattened* (not globally pooled, so that where an
object is survives), layer-normed and projected to ``embed_dim``.

Text tower: as OpenAI CLIP's: token + learned positional embeddings, pre-LN transformer blocks (causal
attention by default, GELU MLP), a final LayerNorm; the token states are that LayerNorm's output and the
pooled embedding is the state at the ``<end>`` token (the last True of the mask) times a projection
(no bias). The architecture matches transformers' ``CLIPTextModelWithProjection`` with
``hidden_act="gelu"``, so weights can be mapped one-to-one (tests check it).

A learned temperature ``logit_scale`` (log of the inverse temperature, initialised to log(1/0.07)) scales
the cosine similarities in the contrastive loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unclip.nn.attention import attention

IMAGE_NORMS = ("channel", "batch", "group")


@dataclass
class ClipConfig:
    """Shape of a :class:`SmallCLIP`.

    Attributes:
        embed_dim: D, the joint embedding width.
        image_size: S, the side of the square input images.
        image_channels: channels of each stride-2 stage; the map side is S / 2**len(image_channels).
        image_stem_channels: channels of the full-resolution stem convolution.
        image_map_channels: channels of the 1×1 conv applied to the final map before flattening.
        groups: GroupNorm groups (only with ``image_norm="group"``).
        image_norm: normalisation in the image tower: "channel" (:class:`ChannelNorm`, per pixel over
            channels), "batch" (BatchNorm) or "group" (GroupNorm, which lost colour, see ChannelNorm).
        image_pooled: also feed the first stage's per-channel global max and mean (a position-free
            summary of colour and fill) into the embedding, beside the flattened map. Without it the
            contrastive loss learned geometry but left the object's colour out of z_i (docs/clip.md).
        image_grid_pool: side g of a *located* first-stage summary (per-channel max and mean over each cell of
            a g×g grid, LayerNorm, a linear map to D added to the embedding; 0 = off). It says which colour is
            where, so z_i can bind colours to objects; its projection starts at zero, so adding it to a trained
            CLIP leaves the embedding unchanged until training uses it (:attr:`SmallCLIP.grown_prefixes`).
        vocab_size: text token ids are in [0, vocab_size).
        context_length: L, the maximum number of text tokens (positional embeddings).
        text_width: W, the text transformer width (= token-state width).
        text_layers: number of transformer blocks.
        text_heads: attention heads (text_width must be divisible by it).
        mlp_ratio: MLP hidden width / text_width.
        causal: causal self-attention (OpenAI CLIP) instead of full attention over real tokens.
        logit_scale_init: initial log inverse temperature.
        logit_scale_max: the inverse temperature is clamped to at most this value.
    """

    embed_dim: int = 128
    image_size: int = 64
    image_channels: tuple[int, ...] = (32, 64, 128, 128)
    image_stem_channels: int = 32
    image_map_channels: int = 128
    groups: int = 8
    image_norm: str = "channel"
    image_pooled: bool = False
    image_grid_pool: int = 0
    vocab_size: int = 512
    context_length: int = 32
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    mlp_ratio: float = 4.0
    causal: bool = True
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0

    def __post_init__(self) -> None:
        down = 2 ** len(self.image_channels)
        if self.image_size % down != 0 or self.image_size < down:
            raise ValueError(
                f"image_size {self.image_size} must be a positive multiple of 2**len(image_channels) = {down}"
            )
        if self.image_norm not in IMAGE_NORMS:
            raise ValueError(f"image_norm {self.image_norm!r} is not one of {IMAGE_NORMS}")
        first_map = self.image_size // 2
        if not isinstance(self.image_grid_pool, int) or not 0 <= self.image_grid_pool <= first_map:
            raise ValueError(f"image_grid_pool must be an integer in [0, {first_map}], got {self.image_grid_pool!r}")
        if self.text_width % self.text_heads != 0:
            raise ValueError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")
        for name in ("embed_dim", "vocab_size", "context_length", "text_width", "text_layers", "text_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def map_size(self) -> int:
        """Side of the image tower's final feature map."""
        return self.image_size // 2 ** len(self.image_channels)


PRESETS: dict[str, Callable[[], ClipConfig]] = {
    # ~1.9 M parameters, D = 128, 32 px input: the shipped shapes-world CLIP (docs/clip.md has its numbers:
    # BatchNorm learned geometry fastest; the pooled branch and hard-negative captions brought object colour).
    "shapes": lambda: ClipConfig(image_size=32, image_channels=(32, 64, 128), image_norm="batch", image_pooled=True),
    # The first shipped CLIP: 64 px, no pooled branch (its z_i carried no object colour).
    "shapes64": lambda: ClipConfig(image_norm="batch"),
    # For tests: a few thousand parameters.
    "tiny": lambda: ClipConfig(
        embed_dim=16,
        image_size=16,
        image_channels=(8, 16),
        image_stem_channels=8,
        image_map_channels=8,
        groups=4,
        vocab_size=320,
        context_length=16,
        text_width=16,
        text_layers=2,
        text_heads=2,
    ),
}


# ---------------------------------------------------------------------------------------------- image


class ChannelNorm(nn.Module):
    """LayerNorm over channels at every pixel ([B, C, H, W]).

    Unlike GroupNorm it does not subtract a per-image spatial mean, so a plain background's colour (a
    spatially constant signal) survives normalisation; with GroupNorm the image embedding lost colour.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "channel":
        return ChannelNorm(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(groups, channels)


class _ResBlock(nn.Module):
    def __init__(self, channels: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = _norm(norm, channels, groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(norm, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        return F.silu(x + self.norm2(self.conv2(h)))


class ImageTower(nn.Module):
    """[B, 3, S, S] in [-1, 1] -> [B, D]: the flattened final map (+ optional pooled first-stage summary),
    LayerNorm, linear projection."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        c = config
        self.image_size = c.image_size
        self.stem = nn.Sequential(
            nn.Conv2d(3, c.image_stem_channels, 3, padding=1), _norm(c.image_norm, c.image_stem_channels, c.groups)
        )
        stages = []
        cin = c.image_stem_channels
        for cout in c.image_channels:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                    _norm(c.image_norm, cout, c.groups),
                    nn.SiLU(),
                    _ResBlock(cout, c.image_norm, c.groups),
                )
            )
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.to_map = nn.Conv2d(cin, c.image_map_channels, 1)
        self.pooled = c.image_pooled
        flat = c.image_map_channels * c.map_size**2 + (2 * c.image_channels[0] if c.image_pooled else 0)
        self.norm = nn.LayerNorm(flat)
        self.proj = nn.Linear(flat, c.embed_dim, bias=False)
        self.grid = c.image_grid_pool
        if self.grid:
            located = 2 * c.image_channels[0] * self.grid**2
            self.grid_norm = nn.LayerNorm(located)
            self.grid_proj = nn.Linear(located, c.embed_dim, bias=False)
            nn.init.zeros_(self.grid_proj.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, S, S], got shape {tuple(images.shape)}")
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"images must be {self.image_size}×{self.image_size}, got {tuple(images.shape[-2:])}")
        # channels_last runs the convolutions ~3x faster on CPU and is harmless elsewhere.
        h = F.silu(self.stem(images.contiguous(memory_format=torch.channels_last)))
        first = self.stages[0](h)  # [B, C1, S/2, S/2]
        flat = self.to_map(self.stages[1:](first)).flatten(1)
        if self.pooled:  # + [B, 2*C1] position-free summary
            flat = torch.cat([flat, first.amax((2, 3)), first.mean((2, 3))], 1)
        out = self.proj(self.norm(flat))
        if self.grid:  # + located summary [B, 2*C1*g*g] -> [B, D]
            cells = torch.cat([F.adaptive_max_pool2d(first, self.grid), F.adaptive_avg_pool2d(first, self.grid)], 1)
            out = out + self.grid_proj(self.grid_norm(cells.flatten(1)))
        return out


# ---------------------------------------------------------------------------------------------- text


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(B, L, W))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class TextTower(nn.Module):
    """(ids [B, L] int64, mask [B, L] bool) -> (pooled [B, D], tokens [B, L, W])."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        c = config
        self.causal = c.causal
        self.vocab_size = c.vocab_size
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.text_width))
        self.blocks = nn.ModuleList(_Block(c.text_width, c.text_heads, c.mlp_ratio) for _ in range(c.text_layers))
        self.ln_final = nn.LayerNorm(c.text_width)
        self.projection = nn.Linear(c.text_width, c.embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.projection.weight, std=c.text_width**-0.5)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"ids and mask must both be [B, L]; got {tuple(ids.shape)} and {tuple(mask.shape)}")
        B, L = ids.shape
        if L > self.positional_embedding.shape[0]:
            raise ValueError(f"text length {L} exceeds context_length {self.positional_embedding.shape[0]}")
        mask = mask.bool()
        if not bool(mask[:, 0].all()):
            raise ValueError("every row of the mask must start with a real token (the start token)")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}); got [{int(ids.min())}, {int(ids.max())}]")
        x = self.token_embedding(ids) + self.positional_embedding[:L]
        # [B, 1, L, L] boolean "may attend": padding keys are hidden; row 0 (start token) is always visible.
        allowed = mask[:, None, None, :].expand(B, 1, L, L)
        if self.causal:
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
        for block in self.blocks:
            x = block(x, allowed)
        tokens = self.ln_final(x)
        end = mask.long().cumsum(1).argmax(1)  # index of the last real token (the end token)
        pooled = self.projection(tokens[torch.arange(B, device=ids.device), end])
        return pooled, tokens


# ---------------------------------------------------------------------------------------------- CLIP


class SmallCLIP(nn.Module):
    """Image tower + text tower + learned temperature (see the module docstring)."""

    # Modules that a fine-tune may add to a CLIP trained without them (zero-initialised: the function is kept).
    grown_prefixes = ("visual.grid_norm.", "visual.grid_proj.")

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.visual = ImageTower(config)
        self.text = TextTower(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [-1, 1] -> [B, D] image embeddings (not normalised)."""
        return self.visual(images)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, L], mask [B, L] bool) -> (pooled [B, D] not normalised, tokens [B, L, W] after the final LN)."""
        return self.text(ids, mask)

    def inverse_temperature(self) -> torch.Tensor:
        """exp(logit_scale) clamped to ``logit_scale_max`` (a scalar tensor)."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits [B_img, B_txt] = inverse temperature × cosine similarity of image and text embeddings."""
        zi = F.normalize(self.encode_image(images), dim=-1)
        zt = F.normalize(self.encode_text(ids, mask)[0], dim=-1)
        return self.inverse_temperature() * zi @ zt.t()


def contrastive_loss(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a [B, T] logit matrix (rows images, columns texts, T >= B).

    Args:
        logits: [B, T] scaled similarities. Columns beyond the B paired captions are extra texts (hard
            negatives), scored only in the image->text direction unless ``targets`` marks them as a match.
        targets: optional [B, T] non-negative matrix, > 0 where text j is a correct match for image i
            (e.g. identical captions); defaults to the identity (then T must equal B). Every row needs a
            match. The image->text term uses each row normalised to sum 1 as soft targets; the text->image
            term does the same for every column that matches some image.
    Returns:
        scalar: mean of the image->text and text->image cross-entropies.
    """
    if logits.ndim != 2 or logits.shape[1] < logits.shape[0]:
        raise ValueError(f"logits must be [B, T] with T >= B, got {tuple(logits.shape)}")
    if targets is None:
        if logits.shape[0] != logits.shape[1]:
            raise ValueError(f"without targets the logits must be square, got {tuple(logits.shape)}")
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    if targets.shape != logits.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must have the logits' shape {tuple(logits.shape)}")
    targets = targets.to(logits.dtype)
    row_sum = targets.sum(1, keepdim=True)
    if bool((row_sum <= 0).any()):
        raise ValueError("every image (row of targets) needs at least one matching text")
    loss_i = -(targets / row_sum * logits.log_softmax(1)).sum(1).mean()
    matched = targets.sum(0) > 0  # texts that describe some image in the batch
    col = targets.t()[matched]
    loss_t = -(col / col.sum(1, keepdim=True) * logits.t()[matched].log_softmax(1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)
