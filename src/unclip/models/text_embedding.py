"""``TextEmbedding``: a batch of captions as the networks take them (pooled z_t, token states, mask).

The priors and the decoder are conditioned on it; every CLIP (:mod:`unclip.encoders`) produces it. It lives with
the networks so that they need nothing above them; :mod:`unclip.encoders.base` hands it on with the interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextEmbedding:
    """CLIP text features for a batch of B captions.

    Attributes:
        pooled: [B, D] the projected pooled text embedding z_t (not L2-normalised).
        tokens: [B, L, W] per-token final hidden states (after the final LayerNorm).
        mask: [B, L] bool, True for real tokens (start/end tokens included), False for padding.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEmbedding:
        return TextEmbedding(
            self.pooled.to(device=device, dtype=dtype),
            self.tokens.to(device=device, dtype=dtype),
            self.mask.to(device=device),
        )

    def __getitem__(self, index) -> TextEmbedding:
        return TextEmbedding(self.pooled[index], self.tokens[index], self.mask[index])

    @staticmethod
    def cat(items: list[TextEmbedding]) -> TextEmbedding:
        return TextEmbedding(
            torch.cat([i.pooled for i in items]),
            torch.cat([i.tokens for i in items]),
            torch.cat([i.mask for i in items]),
        )


def check_text_shapes(
    pooled: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, *, batch: int, clip_dim: int, text_len: int,
    text_width: int,
) -> None:  # fmt: skip
    """Raise a ValueError naming the first of ``text_pooled`` [B, D], ``text_tokens`` [B, L, W], ``text_mask``
    [B, L] whose shape differs (B = ``batch``)."""
    for name, tensor, shape in (
        ("text_pooled", pooled, (batch, clip_dim)),
        ("text_tokens", tokens, (batch, text_len, text_width)),
        ("text_mask", mask, (batch, text_len)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
