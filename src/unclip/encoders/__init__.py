"""CLIP behind one interface: :class:`ClipEncoder` (see ``base.py``) and its implementations.

``load_clip(name_or_dir)`` returns the right implementation: our small CLIP (:class:`OwnClipEncoder`) or a
transformers CLIP (:class:`HFClipEncoder`, imported lazily: transformers is an optional extra).
"""

from unclip.encoders.base import ClipEncoder, TextEmbedding
from unclip.encoders.loading import load_clip
from unclip.encoders.own_clip import OwnClipEncoder

__all__ = ["ClipEncoder", "HFClipEncoder", "OwnClipEncoder", "TextEmbedding", "load_clip"]


def __getattr__(name: str):
    if name == "HFClipEncoder":
        from unclip.encoders.hf_clip import HFClipEncoder

        return HFClipEncoder
    raise AttributeError(f"module 'unclip.encoders' has no attribute {name!r}")
