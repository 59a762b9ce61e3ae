"""The one narrow CLIP interface every stage uses.

Any CLIP (our small one, transformers' OpenAI ViT-L/14, ...) is wrapped as a :class:`ClipEncoder`.
Images given to :meth:`ClipEncoder.embed_images` are float tensors in [-1, 1], shape [B, 3, H, W], of any
size: the encoder resizes/normalises them itself (its ``preprocess``). PIL images go through
:meth:`ClipEncoder.preprocess_pil` first. Captions come back as a :class:`TextEmbedding` (defined with the
networks that take it, :mod:`unclip.models.text_embedding`, and handed on here).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from unclip.models.text_embedding import TextEmbedding

__all__ = ["ClipEncoder", "TextEmbedding"]


@runtime_checkable
class ClipEncoder(Protocol):
    """A frozen CLIP: text -> (pooled, token states, mask); image -> embedding."""

    @property
    def dim(self) -> int:
        """D, the width of the joint (pooled) embedding space."""

    @property
    def token_width(self) -> int:
        """W, the width of the per-token states."""

    @property
    def max_text_length(self) -> int:
        """L, the padded token length of :meth:`embed_text`'s outputs."""

    @property
    def image_size(self) -> int:
        """Side of the square images the image tower sees after preprocessing."""

    def embed_text(self, texts: list[str]) -> TextEmbedding:
        """Encode B captions. Never fails on unseen words; over-long captions are truncated."""

    def text_warnings(self, text: str) -> list[str]:
        """What :meth:`embed_text` loses of ``text`` (words cut by truncation, words it does not know), one
        message each; empty when nothing is lost."""

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] (any H, W) -> [B, D] image embeddings z_i (not L2-normalised)."""

    def preprocess_pil(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images of any size/mode -> [B, 3, S, S] in [-1, 1] for :meth:`embed_images`."""
