"""CLIP behind one interface: :class:`ClipEncoder` (see ``base.py``) and its implementations."""

from unclip.encoders.base import ClipEncoder, TextEmbedding

__all__ = ["ClipEncoder", "TextEmbedding"]
