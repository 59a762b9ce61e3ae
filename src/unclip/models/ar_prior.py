"""The unCLIP autoregressive (AR) prior (paper §2.2): image embeddings as a sequence of discrete PCA tokens.

The image embedding z_i [D] is reduced by PCA to K components, each quantised into ``num_buckets`` equal-mass
buckets (:class:`unclip.models.pca_quantizer.PCAQuantizer`). A causal transformer reads the sequence::

    [text token states (L, Linear W->width) | pooled text embedding z_t (Linear D->width)
     | quantised cos(z_i, z_t) token (embedding, its own quantiser) | component tokens c_1 .. c_{K-1}]
    + learned positional embedding (every component has its own position)

and is trained with cross-entropy to predict the next token: the output at the pooled-text position predicts
the dot-product token, the output at the dot-product position predicts c_1, and the output at c_j predicts
c_{j+1}. Attention is causal with key padding on the text tokens (as in the diffusion prior). The
"dot product" is the cosine similarity of z_i and z_t (the dot product of the L2-normalised embeddings,
independent of embedding scale).

Sampling (:meth:`ARPrior.generate`) draws the dot-product token from the top half of its predicted
distribution (the paper's trick to favour captions-matching samples; ``dot_percentile``), then the components
one by one with temperature / top-k, using a key/value cache, and decodes through the bucket centres and the
inverse PCA. Classifier-free guidance mixes the log-probabilities of a conditional and a null-text branch,
run as one batch. The PCA and quantiser state are buffers, so they save with the weights; fit them with
:meth:`ARPrior.fit_quantizers` before training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unclip.models.pca_quantizer import PCAQuantizer, QuantileQuantizer
from unclip.models.prior import prefix_attention_mask, text_dropout
from unclip.models.text_embedding import TextEmbedding, check_text_shapes
from unclip.nn.norm import LayerNorm32
from unclip.nn.transformer import TransformerBlock

__all__ = ["PRESETS", "ARPrior", "ARPriorConfig", "upper_quantile_filter"]


@dataclass
class ARPriorConfig:
    """Autoregressive prior.

    Attributes:
        clip_dim: D, width of the CLIP embeddings.
        text_width: W, width of the CLIP text token states.
        text_len: L, number of text tokens.
        num_components: K, PCA components kept (choose with ``pca_quantizer.num_components_for``: the
            smallest K with < 1% relative reconstruction MSE on the training embeddings).
        num_buckets: vocabulary of each component token (1024 in the paper).
        dot_buckets: vocabulary of the quantised cos(z_i, z_t) token.
        whiten: divide PCA coefficients by their standard deviation (bucket indices are unaffected).
        width, layers, heads, mlp_mult, dropout: the transformer.
        text_drop_prob: probability of replacing the caption by the null text in training (guidance).
    """

    clip_dim: int = 768
    text_width: int = 768
    text_len: int = 77
    num_components: int = 319
    num_buckets: int = 1024
    dot_buckets: int = 1024
    whiten: bool = False
    width: int = 1664
    layers: int = 24
    heads: int = 26
    mlp_mult: int = 4
    dropout: float = 0.0
    text_drop_prob: float = 0.1

    def __post_init__(self) -> None:
        for name in ("clip_dim", "text_width", "text_len", "num_components", "width", "layers", "heads", "mlp_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"ARPriorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_components > self.clip_dim:
            raise ValueError(f"ARPriorConfig.num_components {self.num_components} exceeds clip_dim {self.clip_dim}")
        if self.num_buckets < 2 or self.dot_buckets < 2:
            raise ValueError(f"need >= 2 buckets, got num_buckets {self.num_buckets}, dot_buckets {self.dot_buckets}")
        if self.width % self.heads != 0:
            raise ValueError(f"ARPriorConfig.width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.text_drop_prob < 1.0:
            raise ValueError(f"ARPriorConfig.text_drop_prob must be in [0, 1), got {self.text_drop_prob}")


PRESETS: dict[str, Callable[[], ARPriorConfig]] = {
    # the paper's latent transformer shape (width 1664, 24 layers, 26 heads) over ViT-L/14 CLIP features;
    # num_components 319 is the paper's count for its 1024-d CLIP: refit K on your data.
    "vit_l": lambda: ARPriorConfig(),
    # shapes-world default (our CLIP: D = 128, token width 128, context 32); K is refit from the data
    "shapes": lambda: ARPriorConfig(
        clip_dim=128, text_width=128, text_len=32, num_components=64, width=256, layers=6, heads=4
    ),
    # unit tests (tiny CLIP: D = 16, token width 16, context 16)
    "tiny": lambda: ARPriorConfig(
        clip_dim=16, text_width=16, text_len=16, num_components=8, num_buckets=64, dot_buckets=32, width=32,
        layers=2, heads=4,
    ),
}  # fmt: skip


def upper_quantile_filter(logits: Tensor, percentile: float = 0.5, eps: float = 1e-6) -> Tensor:
    """Keep only the buckets above the ``percentile`` quantile of the distribution ``softmax(logits)``.

    Buckets are ordered by value (bucket 0 = lowest). Bucket j is kept iff its inclusive cumulative
    probability exceeds ``percentile`` (+ ``eps`` to absorb rounding), i.e. it holds mass above that quantile;
    the last non-empty bucket always survives. ``percentile=0.5`` is the paper's "top half".

    Args:
        logits: [B, N].
        percentile: in [0, 1).

    Returns:
        [B, N] logits with the removed buckets set to -inf.
    """
    if not 0.0 <= percentile < 1.0:
        raise ValueError(f"percentile must be in [0, 1), got {percentile}")
    cdf = torch.softmax(logits.to(torch.float64), dim=-1).cumsum(-1)
    keep = cdf > percentile + eps
    keep[..., -1] |= ~keep.any(-1)
    return logits.masked_fill(~keep, float("-inf"))


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """[B, N] logits -> [B] sampled indices (temperature 0 = argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]


class _KVCache:
    """Per-layer keys/values [B, H, T, d] of the tokens processed so far, and the key validity [B, T]."""

    def __init__(self, layers: int):
        self.k: list[Tensor | None] = [None] * layers
        self.v: list[Tensor | None] = [None] * layers
        self.valid: Tensor | None = None


def _block_forward_cached(block: TransformerBlock, x: Tensor, mask: Tensor, cache: _KVCache, layer: int) -> Tensor:
    """``block(x)`` for new tokens x [B, T, W] attending to the cached tokens and causally to each other.

    ``mask`` [B, 1, T, T_total] bool. Uses the block's own weights (per-head packed ``c_qkv``)."""
    attn = block.attn
    b, t, w = x.shape
    qkv = attn.c_qkv(block.ln_1(x)).view(b, t, attn.heads, 3, w // attn.heads)
    q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)
    if cache.k[layer] is not None:
        k = torch.cat([cache.k[layer], k], dim=2)
        v = torch.cat([cache.v[layer], v], dim=2)
    cache.k[layer], cache.v[layer] = k, v
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    x = x + attn.c_proj(out.transpose(1, 2).reshape(b, t, w))
    return x + block.mlp(block.ln_2(x))


class ARPrior(nn.Module):
    """Causal transformer over [caption, z_t, cos-similarity token, PCA component tokens]. See the module doc."""

    def __init__(self, config: ARPriorConfig):
        super().__init__()
        self.config = c = config
        self.text_enc_proj = nn.Linear(c.text_width, c.width)
        self.text_emb_proj = nn.Linear(c.clip_dim, c.width)
        self.dot_embed = nn.Embedding(c.dot_buckets, c.width)
        self.comp_embed = nn.Embedding(c.num_buckets, c.width)
        self.positional_embedding = nn.Parameter(torch.empty(1, c.text_len + 1 + c.num_components, c.width))
        self.blocks = nn.ModuleList(TransformerBlock(c.width, c.heads, c.mlp_mult, c.dropout) for _ in range(c.layers))
        self.final_ln = LayerNorm32(c.width)
        self.dot_head = nn.Linear(c.width, c.dot_buckets)
        self.comp_head = nn.Linear(c.width, c.num_buckets)
        self.quantizer = PCAQuantizer(c.clip_dim, c.num_components, c.num_buckets, whiten=c.whiten)
        self.dot_quantizer = QuantileQuantizer(1, c.dot_buckets)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.dot_embed.weight, std=0.02)
        nn.init.normal_(self.comp_embed.weight, std=0.02)

    # ---- tokens ---------------------------------------------------------------------------------------

    @staticmethod
    def cosine(image_emb: Tensor, text_pooled: Tensor) -> Tensor:
        """[B, D], [B, D] -> [B] cosine similarity cos(z_i, z_t) (computed in float32 or better)."""
        dtype = torch.promote_types(image_emb.dtype, torch.float32)
        return F.cosine_similarity(image_emb.to(dtype), text_pooled.to(dtype), dim=-1)

    @torch.no_grad()
    def fit_quantizers(self, image_emb: Tensor, text_pooled: Tensor) -> dict[str, float]:
        """Fit the PCA + component quantisers on training image embeddings [N, D] and the dot-product
        quantiser on cos(z_i, z_t) of the matching captions' pooled embeddings [N, D]. Returns fit stats."""
        if image_emb.shape != text_pooled.shape:
            raise ValueError(f"image {tuple(image_emb.shape)} and text {tuple(text_pooled.shape)} shapes differ")
        stats = self.quantizer.fit(image_emb)
        self.dot_quantizer.fit(self.cosine(image_emb, text_pooled)[:, None])
        return stats

    def encode_targets(self, image_emb: Tensor, text_pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Token targets: ``(dot token [B], component tokens [B, K])`` (long)."""
        dot = self.dot_quantizer.encode(self.cosine(image_emb, text_pooled)[:, None])[:, 0]
        return dot.to(image_emb.device), self.quantizer.encode(image_emb).to(image_emb.device)

    def decode_tokens(self, comp_tokens: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """[B, K] component tokens -> [B, D] image embeddings."""
        return self.quantizer.decode(comp_tokens, dtype=dtype)

    # ---- network --------------------------------------------------------------------------------------

    def _check_text(self, pooled: Tensor, tokens: Tensor, mask: Tensor) -> None:
        c = self.config
        check_text_shapes(
            pooled, tokens, mask, batch=pooled.shape[0], clip_dim=c.clip_dim, text_len=c.text_len,
            text_width=c.text_width,
        )  # fmt: skip

    def _embed(self, text_pooled: Tensor, text_tokens: Tensor, dot: Tensor | None, comps: Tensor | None) -> Tensor:
        dtype = self.positional_embedding.dtype
        parts = [self.text_enc_proj(text_tokens.to(dtype)), self.text_emb_proj(text_pooled.to(dtype))[:, None]]
        if dot is not None:
            parts.append(self.dot_embed(dot)[:, None])
        if comps is not None and comps.shape[1]:
            parts.append(self.comp_embed(comps))
        h = torch.cat(parts, dim=1)
        return h + self.positional_embedding[:, : h.shape[1]]

    def _heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Outputs from the pooled position onwards [B, n, width] -> (dot logits [B, nd], comp logits [B, n-1, nb])."""
        h = self.final_ln(h)
        return self.dot_head(h[:, 0]), self.comp_head(h[:, 1:])

    def forward(
        self,
        text_pooled: Tensor,
        text_tokens: Tensor,
        text_mask: Tensor,
        dot_tokens: Tensor | None = None,
        comp_tokens: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced next-token logits.

        Args:
            text_pooled: [B, D]; text_tokens: [B, L, W]; text_mask: [B, L] bool.
            dot_tokens: [B] long dot-product tokens, or None (then only the dot logits are computed).
            comp_tokens: [B, j] long component tokens c_1..c_j, 0 <= j <= K (c_K is never an input).

        Returns:
            ``(dot_logits [B, dot_buckets], comp_logits [B, n, num_buckets])``: n = 0 without ``dot_tokens``,
            else min(j + 1, K); ``comp_logits[:, i]`` predicts c_{i+1}.
        """
        self._check_text(text_pooled, text_tokens, text_mask)
        k = self.config.num_components
        if comp_tokens is not None:
            if dot_tokens is None:
                raise ValueError("comp_tokens given without dot_tokens")
            if comp_tokens.ndim != 2 or comp_tokens.shape[0] != text_pooled.shape[0] or comp_tokens.shape[1] > k:
                raise ValueError(f"comp_tokens must be [B, j <= {k}], got shape {tuple(comp_tokens.shape)}")
            comp_tokens = comp_tokens[:, : k - 1]
        h = self._embed(text_pooled, text_tokens, dot_tokens, comp_tokens)
        mask = prefix_attention_mask(text_mask, h.shape[1])
        for block in self.blocks:
            h = block(h, mask)
        return self._heads(h[:, self.config.text_len :])

    def loss(
        self,
        image_emb: Tensor,
        text: TextEmbedding,
        null_text: TextEmbedding | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Mean next-token cross-entropy over the K + 1 predicted tokens (dot token and components).

        Args:
            image_emb: [B, D] CLIP image embeddings z_i (raw, not normalised).
            text: the matching captions; the dot-product target always uses their pooled z_t.
            null_text: the CLIP encoding of ``""``; when given, captions are replaced by it with probability
                ``config.text_drop_prob`` (classifier-free guidance training), drawn from ``generator``.

        Returns:
            ``(loss, {"ce_dot", "ce_comp", "acc_comp"})``.
        """
        dot, comps = self.encode_targets(image_emb, text.pooled)
        if null_text is not None and self.config.text_drop_prob > 0:
            text, _ = text_dropout(text, null_text, self.config.text_drop_prob, generator)
        dot_logits, comp_logits = self(text.pooled, text.tokens, text.mask, dot, comps)
        ce_dot = F.cross_entropy(dot_logits.float(), dot)
        ce_comp = F.cross_entropy(comp_logits.float().flatten(0, 1), comps.flatten())
        k = self.config.num_components
        loss = (ce_dot + k * ce_comp) / (k + 1)
        acc = (comp_logits.detach().argmax(-1) == comps).float().mean()
        metrics = {"ce_dot": float(ce_dot.detach()), "ce_comp": float(ce_comp.detach()), "acc_comp": float(acc)}
        return loss, metrics

    # ---- sampling -------------------------------------------------------------------------------------

    def _step(self, h: Tensor, valid_new: Tensor, cache: _KVCache) -> Tensor:
        """Run new embedded tokens h [B, T, width] through the blocks with the cache; returns hidden [B, T, width]."""
        b, t, _ = h.shape
        cache.valid = valid_new if cache.valid is None else torch.cat([cache.valid, valid_new], dim=1)
        total = cache.valid.shape[1]
        q_pos = torch.arange(total - t, total, device=h.device)
        k_pos = torch.arange(total, device=h.device)
        causal = k_pos[None, :] <= q_pos[:, None]
        own = k_pos[None, :] == q_pos[:, None]
        mask = (causal[None] & (cache.valid[:, None, :] | own[None]))[:, None]  # [B, 1, t, total]
        for i, block in enumerate(self.blocks):
            h = _block_forward_cached(block, h, mask, cache, i)
        return h

    @torch.no_grad()
    def generate(
        self,
        text: TextEmbedding,
        null_text: TextEmbedding | None = None,
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        dot_percentile: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sample image embeddings for B captions.

        Args:
            text: B captions (CLIP encodings).
            null_text: CLIP encoding of ``""`` (batch 1 or B); required when ``guidance_scale != 1``.
            guidance_scale: s in ``log p_u + s (log p_c − log p_u)`` (1 = no guidance, one branch only).
            temperature: softmax temperature of the component tokens (0 = greedy).
            top_k: keep only the k most likely component buckets (None = all).
            dot_percentile: the dot-product token is drawn from the part of its distribution above this
                quantile (0.5 = the paper's top half; 0 = plain sampling).
            generator: randomness source (on the model's device).

        Returns:
            ``(image_emb [B, D] float32, dot_tokens [B], comp_tokens [B, K])``.
        """
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        device = self.positional_embedding.device
        text = text.to(device=device)
        self._check_text(text.pooled, text.tokens, text.mask)
        b = text.pooled.shape[0]
        guided = guidance_scale != 1.0
        if guided:
            if null_text is None:
                raise ValueError("guidance_scale != 1 needs null_text (the CLIP encoding of the empty caption)")
            null = null_text.to(device=device)
            null = TextEmbedding(
                null.pooled.expand_as(text.pooled), null.tokens.expand_as(text.tokens), null.mask.expand_as(text.mask)
            )
            text = TextEmbedding.cat([text, null])

        def mix(logits: Tensor) -> Tensor:
            if not guided:
                return logits.float()
            logp = torch.log_softmax(logits.float(), -1)
            cond, uncond = logp[:b], logp[b:]
            return uncond + guidance_scale * (cond - uncond)

        def twice(x: Tensor) -> Tensor:
            return torch.cat([x, x]) if guided else x

        cache = _KVCache(len(self.blocks))
        h = self._embed(text.pooled, text.tokens, None, None)
        valid = torch.cat([text.mask.bool(), torch.ones(text.mask.shape[0], 1, dtype=torch.bool, device=device)], 1)
        h = self._step(h, valid, cache)
        dot_logits = self.dot_head(self.final_ln(h[:, -1]))
        dot = _sample(upper_quantile_filter(mix(dot_logits), dot_percentile), temperature, None, generator)
        k = self.config.num_components
        ones = torch.ones(h.shape[0], 1, dtype=torch.bool, device=device)
        pos = self.config.text_len + 1
        token_emb = self.dot_embed(twice(dot))[:, None]
        comps = []
        for j in range(k):
            h = self._step(token_emb + self.positional_embedding[:, pos + j : pos + j + 1], ones, cache)
            logits = mix(self.comp_head(self.final_ln(h[:, -1])))
            comps.append(_sample(logits, temperature, top_k, generator))
            token_emb = self.comp_embed(twice(comps[-1]))[:, None]
        comp_tokens = torch.stack(comps, dim=1)
        return self.decode_tokens(comp_tokens).to(device), dot, comp_tokens
