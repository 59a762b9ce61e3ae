"""The unCLIP diffusion prior: a decoder-only causal transformer that predicts the clean image embedding.

Paper §2.2 and Karlo's ``prior_1B_vit_l`` (see ``reference/karlo_and_diffusers.md``). The input sequence of
``L + 4`` tokens, each projected to the model width, is::

    [text token states (L, Linear W->width) | pooled text embedding z_t (Linear D->width)
     | timestep embedding (sinusoidal [cos, sin] -> Linear-SiLU-Linear) | noised image embedding (Linear D->width)
     | learned query ``prd_emb``] + learned positional embedding

Attention is causal, with key padding on the text tokens (the 4 trailing tokens are always visible); every
token also sees itself, so a fully padded caption never produces NaN. Pre-LN blocks
(:class:`unclip.nn.transformer.TransformerBlock`), a final LayerNorm and ``out_proj`` of the query token give
the x0 prediction in *normalised* CLIP space: z = (z_i − clip_mean) / clip_std, with the statistics kept as
buffers in the state dict (:meth:`DiffusionPrior.fit_clip_stats`, :meth:`normalize`, :meth:`denormalize`).

Parameter names follow Karlo (``model.`` prefix stripped): ``text_enc_proj``, ``text_emb_proj``,
``time_embed.0/.2``, ``clip_img_proj``, ``positional_embedding``, ``prd_emb``,
``transformer.resblocks.N.{ln_1, attn.c_qkv, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``final_ln``,
``out_proj``. The ``karlo`` preset has exactly the parameters of diffusers' ``PriorTransformer()`` once its
fused ``c_qkv`` is split into ``to_q/to_k/to_v`` (``unclip.nn.attention.unpack_heads``).

Guidance: the network is conditioned on whatever text it is given; classifier-free guidance drops the text
during training by substituting the *null text* — the CLIP encoding of the empty caption ``""`` (pooled
embedding, token states and mask), supplied by the caller, exactly as Karlo and diffusers do at sampling
time. :func:`text_dropout` does the substitution for both priors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unclip.models.text_embedding import TextEmbedding, check_text_shapes
from unclip.nn.embeddings import timestep_embedding
from unclip.nn.norm import LayerNorm32
from unclip.nn.transformer import KeyValues, TransformerBlock

__all__ = [
    "PRESETS",
    "ConditionedPrior",
    "DiffusionPrior",
    "PriorConfig",
    "prefix_attention_mask",
    "text_dropout",
]

NUM_EXTRA_TOKENS = 4  # pooled text embedding, timestep, noised image embedding, query


@dataclass
class PriorConfig:
    """Diffusion prior network.

    Attributes:
        clip_dim: D, width of the CLIP image/text embeddings (768 for ViT-L/14).
        text_width: W, width of the CLIP text token states.
        text_len: L, number of text tokens (the CLIP context length).
        width: transformer width.
        layers: number of transformer blocks.
        heads: attention heads (width must be divisible by heads).
        mlp_mult: MLP hidden width multiplier.
        dropout: attention / residual dropout (0 in Karlo).
        text_drop_prob: probability of replacing the caption by the null text during training (for
            classifier-free guidance; paper 0.1, Karlo 0.2). Read by the training code, not the network.
    """

    clip_dim: int = 768
    text_width: int = 768
    text_len: int = 77
    width: int = 2048
    layers: int = 20
    heads: int = 32
    mlp_mult: int = 4
    dropout: float = 0.0
    text_drop_prob: float = 0.1

    def __post_init__(self) -> None:
        for name in ("clip_dim", "text_width", "text_len", "width", "layers", "heads", "mlp_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"PriorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads != 0:
            raise ValueError(f"PriorConfig.width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.text_drop_prob < 1.0:
            raise ValueError(f"PriorConfig.text_drop_prob must be in [0, 1), got {self.text_drop_prob}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PriorConfig.dropout must be in [0, 1), got {self.dropout}")


PRESETS: dict[str, Callable[[], PriorConfig]] = {
    # Karlo prior_1B_vit_l (= diffusers PriorTransformer() defaults); Karlo trained with text_drop 0.2.
    "karlo": lambda: PriorConfig(text_drop_prob=0.2),
    # the shapes-world default, for our shapes CLIP (D = 128, token width 128, context 32)
    "shapes": lambda: PriorConfig(clip_dim=128, text_width=128, text_len=32, width=256, layers=6, heads=4),
    # unit tests; sized like the tiny CLIP (D = 16, token width 16, context 16)
    "tiny": lambda: PriorConfig(clip_dim=16, text_width=16, text_len=16, width=32, layers=2, heads=4),
}


def prefix_attention_mask(text_mask: Tensor, total_len: int) -> Tensor:
    """Causal self-attention mask with key padding on a text prefix.

    Args:
        text_mask: [B, L] bool, True for real text tokens; the sequence starts with these L tokens.
        total_len: T >= L, the full sequence length; tokens L..T-1 are always valid keys.

    Returns:
        [B, 1, T, T] bool, True where query i may attend to key j: j <= i and (key j valid or j == i).
    """
    b, length = text_mask.shape
    if total_len < length:
        raise ValueError(f"total_len {total_len} is shorter than the text prefix {length}")
    device = text_mask.device
    valid = torch.cat([text_mask.bool(), torch.ones(b, total_len - length, dtype=torch.bool, device=device)], dim=1)
    causal = torch.ones(total_len, total_len, dtype=torch.bool, device=device).tril()
    eye = torch.eye(total_len, dtype=torch.bool, device=device)
    return (causal[None] & (valid[:, None, :] | eye[None]))[:, None]


def text_dropout(
    text: TextEmbedding, null_text: TextEmbedding, prob: float, generator: torch.Generator | None = None
) -> tuple[TextEmbedding, Tensor]:
    """Replace each caption by the null text with probability ``prob`` (classifier-free guidance training).

    Args:
        text: B captions (pooled [B, D], tokens [B, L, W], mask [B, L]).
        null_text: the CLIP encoding of ``""``, batch 1 (broadcast) or B.
        prob: drop probability in [0, 1).
        generator: source of the drop decisions (on ``text.pooled``'s device).

    Returns:
        ``(text with dropped rows replaced, dropped [B] bool)``.
    """
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"text drop probability must be in [0, 1), got {prob}")
    b = text.pooled.shape[0]
    if null_text.pooled.shape[0] not in (1, b) or null_text.tokens.shape[1:] != text.tokens.shape[1:]:
        raise ValueError(
            f"null text (pooled {tuple(null_text.pooled.shape)}, tokens {tuple(null_text.tokens.shape)}) "
            f"does not match the captions (pooled {tuple(text.pooled.shape)}, tokens {tuple(text.tokens.shape)})"
        )
    device = text.pooled.device
    dropped = torch.rand(b, generator=generator, device=device) < prob
    null = null_text.to(device=device, dtype=text.pooled.dtype)
    pooled = torch.where(dropped[:, None], null.pooled.expand_as(text.pooled), text.pooled)
    tokens = torch.where(dropped[:, None, None], null.tokens.expand_as(text.tokens), text.tokens)
    mask = torch.where(dropped[:, None], null.mask.bool().expand_as(text.mask), text.mask.bool())
    return TextEmbedding(pooled, tokens, mask), dropped


class DiffusionPrior(nn.Module):
    """Causal transformer prior predicting the clean (normalised) image embedding x0. See the module doc."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = c = config
        self.text_enc_proj = nn.Linear(c.text_width, c.width)
        self.text_emb_proj = nn.Linear(c.clip_dim, c.width)
        self.time_embed = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.clip_img_proj = nn.Linear(c.clip_dim, c.width)
        self.positional_embedding = nn.Parameter(torch.empty(1, c.text_len + NUM_EXTRA_TOKENS, c.width))
        self.prd_emb = nn.Parameter(torch.empty(1, 1, c.width))
        self.transformer = nn.ModuleDict(
            {
                "resblocks": nn.ModuleList(
                    TransformerBlock(c.width, c.heads, c.mlp_mult, c.dropout) for _ in range(c.layers)
                )
            }
        )
        self.final_ln = LayerNorm32(c.width)
        self.out_proj = nn.Linear(c.width, c.clip_dim)
        self.register_buffer("clip_mean", torch.zeros(c.clip_dim))
        self.register_buffer("clip_std", torch.ones(c.clip_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        if self.positional_embedding.is_meta:
            return
        std = 0.01
        nn.init.normal_(self.positional_embedding, std=std)
        nn.init.normal_(self.prd_emb, std=std)

    # ---- normalisation of image embeddings ------------------------------------------------------------

    @torch.no_grad()
    def set_clip_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the per-dimension statistics (each [D], std > 0) used by :meth:`normalize`."""
        d = self.config.clip_dim
        if mean.shape != (d,) or std.shape != (d,):
            raise ValueError(f"clip stats must be [{d}], got mean {tuple(mean.shape)}, std {tuple(std.shape)}")
        if not bool((std > 0).all()) or not bool(torch.isfinite(mean).all()):
            raise ValueError("clip_std must be positive and clip_mean finite")
        self.clip_mean.copy_(mean)
        self.clip_std.copy_(std)

    @torch.no_grad()
    def fit_clip_stats(self, image_embeddings: Tensor, eps: float = 1e-6) -> None:
        """Set the statistics from training image embeddings [N, D] (N >= 2): per-dimension mean and std."""
        if image_embeddings.ndim != 2 or image_embeddings.shape[0] < 2:
            raise ValueError(f"need [N >= 2, D] image embeddings, got shape {tuple(image_embeddings.shape)}")
        x = image_embeddings.to(torch.float64)
        self.set_clip_stats(x.mean(0).to(self.clip_mean), x.std(0).clamp(min=eps).to(self.clip_std))

    def normalize(self, z: Tensor) -> Tensor:
        """[..., D] image embeddings -> normalised (z − clip_mean) / clip_std."""
        return (z - self.clip_mean.to(z.dtype)) / self.clip_std.to(z.dtype)

    def denormalize(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`."""
        return z * self.clip_std.to(z.dtype) + self.clip_mean.to(z.dtype)

    # ---- forward ----------------------------------------------------------------------------------------

    def _check_inputs(self, noisy_z: Tensor, t: Tensor, pooled: Tensor, tokens: Tensor, mask: Tensor) -> None:
        c = self.config
        b = noisy_z.shape[0]
        for name, tensor, shape in (("noisy_z", noisy_z, (b, c.clip_dim)), ("t", t, (b,))):
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        self._check_text(pooled, tokens, mask, b)

    def _check_text(self, pooled: Tensor, tokens: Tensor, mask: Tensor, batch: int) -> None:
        c = self.config
        check_text_shapes(
            pooled, tokens, mask, batch=batch, clip_dim=c.clip_dim, text_len=c.text_len, text_width=c.text_width
        )

    def _prefix_tokens(self, text_pooled: Tensor, text_tokens: Tensor) -> Tensor:
        """The step-independent first L + 1 tokens (text token states, pooled z_t), positions added.

        [B, D], [B, L, W] -> [B, L + 1, width].
        """
        dtype = self.prd_emb.dtype
        seq = torch.cat(
            [self.text_enc_proj(text_tokens.to(dtype)), self.text_emb_proj(text_pooled.to(dtype))[:, None]], dim=1
        )
        return seq + self.positional_embedding[:, : seq.shape[1]]

    def _step_tokens(self, noisy_z: Tensor, t: Tensor) -> Tensor:
        """The last three tokens (timestep, noised z_i, query), positions added: [B, D], [B] -> [B, 3, width]."""
        c = self.config
        dtype = self.prd_emb.dtype
        t_emb = self.time_embed(timestep_embedding(t, c.width).to(dtype))
        query = self.prd_emb[:, 0].expand(noisy_z.shape[0], -1)
        seq = torch.stack([t_emb, self.clip_img_proj(noisy_z.to(dtype)), query], dim=1)
        return seq + self.positional_embedding[:, c.text_len + 1 :]

    def _output(self, query_state: Tensor) -> Tensor:
        """The query token's last hidden state [B, width] -> x0 prediction [B, D]."""
        return self.out_proj(self.final_ln(query_state))

    def forward(
        self, noisy_z: Tensor, t: Tensor, text_pooled: Tensor, text_tokens: Tensor, text_mask: Tensor
    ) -> Tensor:
        """Predict the clean image embedding.

        Args:
            noisy_z: [B, D] noised image embedding x_t, in normalised space.
            t: [B] timesteps in training-step units (long, 0..999 for a 1000-step process).
            text_pooled: [B, D] pooled CLIP text embedding z_t.
            text_tokens: [B, L, W] CLIP text token states.
            text_mask: [B, L] bool, True for real tokens.

        Returns:
            [B, D] x0 prediction in normalised CLIP space.
        """
        self._check_inputs(noisy_z, t, text_pooled, text_tokens, text_mask)
        h = torch.cat([self._prefix_tokens(text_pooled, text_tokens), self._step_tokens(noisy_z, t)], dim=1)
        mask = prefix_attention_mask(text_mask, h.shape[1])
        for block in self.transformer["resblocks"]:
            h = block(h, mask)
        return self._output(h[:, -1])

    def conditioned(self, text_pooled: Tensor, text_tokens: Tensor, text_mask: Tensor) -> ConditionedPrior:
        """This network with its text fixed, for sampling: ``conditioned(...)(noisy_z, t) == forward(...)``.

        Under the causal mask the L + 1 text tokens never see the timestep or z_t, so their keys and values at
        every layer are the same at every step: they are computed here once, and each call runs only the last
        three tokens (timestep, noised z_i, query) against them.

        Args:
            text_pooled: [B, D]; text_tokens: [B, L, W]; text_mask: [B, L] bool.

        Returns:
            a callable ``(noisy_z [B, D], t [B]) -> [B, D]`` x0 prediction.
        """
        c = self.config
        self._check_text(text_pooled, text_tokens, text_mask, text_pooled.shape[0])
        prefix_len = c.text_len + 1
        h = self._prefix_tokens(text_pooled, text_tokens)
        prefix_mask = prefix_attention_mask(text_mask, prefix_len)
        blocks = list(self.transformer["resblocks"])
        past = []
        for i, block in enumerate(blocks):
            past.append(block.key_values(h))
            if i + 1 < len(blocks):  # the last block's prefix outputs are never read
                h = block(h, prefix_mask)
        step_mask = prefix_attention_mask(text_mask, prefix_len + NUM_EXTRA_TOKENS - 1)[:, :, prefix_len:]
        return ConditionedPrior(self, past, step_mask)


class ConditionedPrior:
    """A :class:`DiffusionPrior` with cached text keys/values (see :meth:`DiffusionPrior.conditioned`)."""

    def __init__(self, prior: DiffusionPrior, past: list[KeyValues], step_mask: Tensor) -> None:
        self.prior, self.past, self.step_mask = prior, past, step_mask
        self.batch = step_mask.shape[0]

    def __call__(self, noisy_z: Tensor, t: Tensor) -> Tensor:
        """noisy_z [B, D] (normalised x_t), t [B] -> [B, D] x0 prediction."""
        d = self.prior.config.clip_dim
        if tuple(noisy_z.shape) != (self.batch, d) or tuple(t.shape) != (self.batch,):
            raise ValueError(
                f"conditioned on {self.batch} captions: noisy_z must be [{self.batch}, {d}] and t [{self.batch}], "
                f"got {tuple(noisy_z.shape)} and {tuple(t.shape)}"
            )
        h = self.prior._step_tokens(noisy_z, t)
        for block, kv in zip(self.prior.transformer["resblocks"], self.past):
            h = block(h, self.step_mask, kv)
        return self.prior._output(h[:, -1])
